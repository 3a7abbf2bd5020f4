"""The framework recipes: Lightning manual optimisation and a Hugging Face Trainer subclass."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adahessian import AdaHessian

sys.path.insert(0, str(Path(__file__).parents[2] / "examples" / "recipes"))


def tiny_data(n: int = 64) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(
        torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def test_lightning_manual_optimisation_equals_a_plain_loop():
    pytest.importorskip("lightning", reason="the recipe needs PyTorch Lightning")
    import lightning_manual

    loader = torch.utils.data.DataLoader(tiny_data(), batch_size=16, shuffle=False)
    net = tiny_net()
    module = lightning_manual.fit(net, loader, max_steps=4)
    opt = module.optimizers().optimizer
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 4

    plain = tiny_net()
    plain_opt = AdaHessian(plain.parameters(), lr=0.15, seed=0)
    for x, y in loader:
        plain_opt.zero_grad()
        nn.functional.cross_entropy(plain(x), y).backward(create_graph=plain_opt.hessian_due)
        plain_opt.step()
    for p, q in zip(net.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_hf_trainer_subclass_takes_hessian_steps(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the recipe needs transformers")
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate")
    import hf_trainer

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2,
        attn_implementation="eager",
    )  # fmt: skip
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(1, 32, (32, 8))
    data = [{"input_ids": i, "labels": (i[0] > 16).long()} for i in ids]
    opt = AdaHessian(model.parameters(), lr=0.05, update_interval=2, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8, max_grad_norm=0.0,
        report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = hf_trainer.AdaHessianTrainer(
        model=model, args=args, train_dataset=data,
        optimizers=(opt, hf_trainer.constant_schedule(opt)),
    )  # fmt: skip
    trainer.train()
    extra = opt.state_dict()["adahessian"]
    assert extra["steps"] == 3 and extra["hessian_updates"] == 2
    assert any(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None or p.grad.grad_fn is None for p in model.parameters())
