"""The harness's Transformers and LSTM: masks do what they say, and Hessian-vector products through
them are right (against central differences of the gradient, float64), as AdaHessian needs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adahessian_bench.transformer import (
    LSTMLM,
    Seq2SeqTransformer,
    TransformerClassifier,
    TransformerLM,
    label_smoothed_nll,
)

SMALL = {"d_model": 16, "n_heads": 2, "n_layers": 2, "d_ff": 32, "max_len": 12, "dropout": 0.0}


def ids(*shape: int, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_language_model_is_causal() -> None:
    torch.manual_seed(0)
    model = TransformerLM(20, **SMALL).eval()
    x = ids(2, 8)
    y = x.clone()
    y[:, 5:] = ids(2, 3, seed=1)  # change the future only
    a, b = model(x), model(y)
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6)
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)


def test_classifier_ignores_padding() -> None:
    torch.manual_seed(0)
    model = TransformerClassifier(20, num_classes=2, **SMALL).eval()
    x = ids(3, 6)
    padded = torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(model(x), model(padded), atol=1e-6)


def test_seq2seq_decoder_is_causal_and_source_padding_is_ignored() -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(20, **SMALL).eval()
    src, tgt = ids(2, 7), ids(2, 6, seed=2)
    src_padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    assert torch.allclose(model(src, tgt), model(src_padded, tgt), atol=1e-6)
    tgt2 = tgt.clone()
    tgt2[:, 4:] = 5
    assert torch.allclose(model(src, tgt)[:, :4], model(src, tgt2)[:, :4], atol=1e-6)
    out = model.greedy(src, bos=1, eos=2, max_len=5)
    assert out.shape[0] == 2 and 1 <= out.shape[1] <= 5


def _hvp_matches_central_differences(model: nn.Module, loss_fn) -> None:
    model = model.double()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
    hv = torch.autograd.grad(grads, params, v)

    def grad_at(scale: float) -> list[torch.Tensor]:
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.add_(d, alpha=scale)
        out = torch.autograd.grad(loss_fn(model), params)
        with torch.no_grad():
            for p, d in zip(params, v, strict=True):
                p.sub_(d, alpha=scale)
        return list(out)

    eps = 1e-5
    plus, minus = grad_at(eps), grad_at(-eps)
    for h, a, b in zip(hv, plus, minus, strict=True):
        fd = (a - b) / (2 * eps)
        assert torch.allclose(h, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["lm", "classifier", "seq2seq", "lstm"])
def test_hessian_vector_product_through_the_model(kind: str) -> None:
    torch.manual_seed(0)
    x, y = ids(2, 6), ids(2, 6, seed=1)
    ce = nn.functional.cross_entropy
    if kind == "lm":
        model: nn.Module = TransformerLM(20, **SMALL)
        loss_fn = lambda m: ce(m(x).flatten(0, 1), y.flatten())  # noqa: E731
    elif kind == "classifier":
        model = TransformerClassifier(20, num_classes=3, **SMALL)
        loss_fn = lambda m: ce(m(x), torch.tensor([0, 2]))  # noqa: E731
    elif kind == "seq2seq":
        model = Seq2SeqTransformer(20, **SMALL)
        loss_fn = lambda m: label_smoothed_nll(m(x, y), y, 0.1, 0)[0]  # noqa: E731
    else:
        model = LSTMLM(20, d_model=8, n_layers=2, dropout=0.0)
        loss_fn = lambda m: ce(m(x)[0].flatten(0, 1), y.flatten())  # noqa: E731
    _hvp_matches_central_differences(model, loss_fn)


def test_label_smoothing_skips_padding_and_reduces_to_nll_without_smoothing() -> None:
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[1, 2, 0], [3, 0, 0]])
    loss, nll_sum, n = label_smoothed_nll(logits, target, 0.0, pad_id=0)
    keep = target != 0
    want = nn.functional.cross_entropy(logits[keep], target[keep])
    assert n == 3 and torch.allclose(loss, want) and torch.allclose(nll_sum, want * 3)
    smoothed, _, _ = label_smoothed_nll(logits, target, 0.1, pad_id=0)
    logp = logits[keep].log_softmax(-1)
    want = (0.9 * -logp.gather(1, target[keep][:, None]).squeeze(1) - 0.1 * logp.mean(-1)).mean()
    assert torch.allclose(smoothed, want)
