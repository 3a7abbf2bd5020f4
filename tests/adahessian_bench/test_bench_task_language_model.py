"""The Brown-corpus language-model tasks (brown-lm: Transformer, brown-lm-lstm: LSTM).

Batching and evaluation are checked on small hand-computed streams; the training runs use the real
corpus (fetched once into the default cache folder, as in test_bench_data_corpora: a corpus that
cannot be fetched FAILS these tests) at tiny sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

# tasks before task_language_model (the task modules import tasks, which registers them)
from adahessian_bench import cli, config, data, data_corpora, tasks, train
from adahessian_bench import task_language_model as lm
from adahessian_bench.base import RunContext
from adahessian_bench.transformer import LSTMLM

CACHE = data.cache_dir()  # before any fixture points $ADAHESSIAN_DATA at a temporary folder


@pytest.fixture(scope="module")
def brown() -> data_corpora.WordCorpus:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(CACHE))
        try:
            return data_corpora.load_brown()
        except data_corpora.DataUnavailable as e:
            pytest.fail(f"could not fetch the Brown corpus into {CACHE}:\n{e}", pytrace=False)


# ----------------------------------------------------------------------------- batching


def test_batchify_and_windows_on_a_hand_computed_stream() -> None:
    x, y = lm.pairs(torch.arange(11))  # inputs 0..9, targets 1..10
    bx, by = lm.batchify(x, 2), lm.batchify(y, 2)
    assert bx.tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert by.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert lm.windows(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert lm.batchify(torch.arange(7), 3).tolist() == [[0, 1], [2, 3], [4, 5]]  # 6 left out
    with pytest.raises(ValueError, match="cannot fill"):
        lm.batchify(torch.arange(2), 3)


def test_token_subset_takes_evenly_spaced_stretches_and_vocab_limit_maps_to_unk() -> None:
    ids = torch.arange(100)
    # 5 stretches of 2 tokens, starting at linspace(0, 98, 5) = 0, 24.5, 49, 73.5, 98 (floored).
    assert lm.token_subset(ids, 10, segments=5).tolist() == [0, 1, 24, 25, 49, 50, 73, 74, 98, 99]
    # 11 tokens: the last stretch one longer; starts at linspace(0, 97, 5) = 0, 24.25, 48.5, ...
    got = lm.token_subset(ids, 11, segments=5).tolist()
    assert got == [0, 1, 24, 25, 48, 49, 72, 73, 97, 98, 99]
    assert lm.token_subset(ids, 0) is ids and lm.token_subset(ids, 500) is ids
    assert lm.limit_vocab(torch.tensor([0, 1, 4, 5, 9]), 5, unk_id=0).tolist() == [0, 1, 4, 0, 0]


def test_transformer_batches_shuffle_chunks_of_consecutive_pairs_from_the_generator() -> None:
    ids = torch.arange(200)  # the target of every input is input + 1
    batches = lm.TransformerBatches(
        ids, 4, 8, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    assert batches.chunks == (199 - 7) // 8 and len(batches) == 24 // 4
    epochs = []
    for _ in range(2):
        seen = []
        for x, y in batches:
            assert x.shape == y.shape == (4, 8)
            assert torch.equal(y, x + 1)
            assert torch.equal(x, x[:, :1] + torch.arange(8))  # contiguous stretches
            seen.extend(x[:, 0].tolist())
        offset = seen[0] % 8
        assert len(set(seen)) == 24 and all(s % 8 == offset for s in seen)  # one offset per epoch
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # a new order (and offset) each epoch
    again = lm.TransformerBatches(ids, 4, 8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert [x[:, 0].tolist() for x, _ in again] == [epochs[0][i : i + 4] for i in range(0, 24, 4)]


class Recorder(nn.Module):
    """An LSTM LM that records the state it is given and the state it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = LSTMLM(20, d_model=8, n_layers=2, dropout=0.0)
        self.given: list[Any] = []
        self.returned: list[Any] = []

    def forward(self, ids: torch.Tensor, state: Any = None) -> Any:
        self.given.append(state)
        logits, new = self.lm(ids, state)
        self.returned.append(tuple(s.detach().clone() for s in new))
        return logits, new


def test_lstm_state_carries_over_consecutive_windows_and_resets_each_epoch() -> None:
    loss_fn = lm.RecurrentLoss()
    batches = lm.StreamBatches(torch.arange(41) % 20, 2, 5, torch.device("cpu"), loss_fn)
    assert len(batches) == 4  # 40 pairs -> 2 rows of 20 -> 4 windows of 5
    model = Recorder()
    for epoch in range(2):
        for i, batch in enumerate(batches):
            if epoch == 1 and i == 2:  # an epoch cut short (max_steps): the next starts afresh
                break
            loss, stats = loss_fn(model, batch)
            loss.backward()
            assert stats == {"n": 10}
    given, returned = model.given, model.returned
    assert len(given) == 6
    assert given[0] is None and given[4] is None  # zeros at the start of each epoch
    for k in (1, 2, 3, 5):  # otherwise the previous batch's final state, detached
        assert all(not s.requires_grad for s in given[k])
        assert all(torch.equal(a, b) for a, b in zip(given[k], returned[k - 1], strict=True))
    for x, y in batches:  # consecutive windows continue each row's stretch
        assert torch.equal(y[:, :-1], x[:, 1:])
    xs = torch.cat([x for x, _ in batches], dim=1)
    assert xs.tolist() == [list(range(20)), [(20 + i) % 20 for i in range(20)]]
    loss_fn(model, next(iter(batches)))
    assert model.given[-1] is None  # a new iteration reset the state


# ----------------------------------------------------------------------------- evaluation


class Uniform(nn.Module):
    """Zero logits: every word has probability 1 / vocab."""

    def __init__(self, vocab: int, recurrent: bool) -> None:
        super().__init__()
        self.vocab, self.recurrent = vocab, recurrent
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, ids: torch.Tensor, state: Any = None) -> Any:
        logits = self.w * torch.zeros(*ids.shape, self.vocab)
        if self.recurrent:
            return logits, (torch.zeros(1, ids.shape[0], 1), torch.zeros(1, ids.shape[0], 1))
        return logits


@pytest.mark.parametrize("recurrent", [False, True])
@pytest.mark.parametrize("rows", [1, 3, 7])
def test_uniform_logits_give_perplexity_equal_to_the_vocabulary(recurrent: bool, rows: int) -> None:
    ids = torch.randint(0, 37, (101,), generator=torch.Generator().manual_seed(0))
    nll, count = lm.evaluate_stream(
        Uniform(37, recurrent), ids, rows, 6, recurrent, torch.device("cpu")
    )
    assert count == 100  # every token but the first, once, with the rows' leftover tail
    assert lm.perplexity(nll, count) == pytest.approx(37.0, rel=1e-5)


def test_lstm_evaluation_carries_the_state_over_windows_and_into_the_tail() -> None:
    torch.manual_seed(0)
    model = LSTMLM(30, d_model=8, n_layers=2, dropout=0.0).double().eval()
    ids = torch.randint(0, 30, (24,), generator=torch.Generator().manual_seed(1))
    x, y = lm.pairs(ids)  # 23 pairs: 2 rows of 11 and a tail of 1 that continues row 2

    def nll_from_zeros(xs: torch.Tensor, ys: torch.Tensor) -> float:
        with torch.no_grad():
            logits, _ = model(xs[None])
        return torch.nn.functional.cross_entropy(logits[0], ys, reduction="sum").item()

    want = nll_from_zeros(x[:11], y[:11]) + nll_from_zeros(x[11:], y[11:])
    nll, count = lm.evaluate_stream(model, ids, 2, 4, True, torch.device("cpu"))
    assert count == 23 and nll == pytest.approx(want, rel=1e-6)
    nll1, _ = lm.evaluate_stream(model, ids, 1, 5, True, torch.device("cpu"))
    assert nll1 == pytest.approx(nll_from_zeros(x, y), rel=1e-6)


def test_perplexity_of_a_huge_loss_is_inf_not_an_overflow() -> None:
    assert lm.perplexity(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    assert lm.perplexity(1e6, 1) == math.inf


# ----------------------------------------------------------------------------- profiles


@pytest.mark.parametrize("task", ["brown-lm", "brown-lm-lstm"])
@pytest.mark.parametrize("profile", ["quick", "paper"])
def test_profiles_load_resolve_and_build(
    task: str, profile: str, brown: data_corpora.WordCorpus
) -> None:
    assert config.profile_names(task) == ["paper", "quick"]
    cfg_file = config.load(task, profile)
    names = list(cfg_file["optimizers"])
    assert names[:3] == ["adamw", "adam", "adahessian"]
    lazy = ["adahessian-lazy"] if (task, profile) == ("brown-lm", "quick") else []
    fd = ["adahessian-fd", "adahessian-fd-lazy"] if profile == "quick" else []
    assert names[3:] == lazy + fd
    cfg = train.resolve(task, cfg_file, profile, names, 1)
    assert cfg["metric"]["key"] == "test_ppl" and cfg["metric"]["higher_is_better"] is False
    assert cfg["metric"]["extra"] == ["valid_ppl"]
    t = tasks.TASKS[task]
    assert cfg["model"]["arch"] == t.arch  # type: ignore[attr-defined]
    ctx = RunContext(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    setup = t.setup(lm.streams(brown, cfg), ctx)
    # The steps per epoch the profiles' comments state.
    want = {("brown-lm", "quick"): 97, ("brown-lm", "paper"): 238,
            ("brown-lm-lstm", "quick"): 108, ("brown-lm-lstm", "paper"): None}  # fmt: skip
    if want[task, profile] is not None:
        assert len(setup.train_batches) == want[task, profile]
    if profile == "quick":  # the paper-sized models are not built here (large)
        model = t.model(**cfg["model"])
        for name in names:
            train.optimizers.build(name, model.parameters(), cfg["optimizers"][name], 0)


def test_load_gives_the_streams_the_configuration_asks_for(brown: data_corpora.WordCorpus) -> None:
    cfg = {"train": {"train_subset": 3000, "valid_subset": 800}, "model": {"vocab": 400}}
    s = lm.streams(brown, cfg)
    assert (len(s.train), len(s.valid), len(s.test)) == (3000, 800, len(brown.test))
    assert int(max(s.train.max(), s.valid.max(), s.test.max())) < 400
    valid, test = (lm.limit_vocab(ids, 400, brown.unk_id) for ids in (brown.valid, brown.test))
    assert torch.equal(s.test, test) and torch.equal(s.valid, lm.token_subset(valid, 800))
    cfg["model"]["vocab"] = len(brown.vocab) + 1
    with pytest.raises(ValueError, match=r"vocab \d+ is not in \[2, "):
        lm.streams(brown, cfg)


def test_unknown_arch_and_too_long_context_are_refused(brown: data_corpora.WordCorpus) -> None:
    t = tasks.TASKS["brown-lm"]
    with pytest.raises(ValueError, match="unknown arch"):
        t.model(arch="gru", vocab=10)
    cfg = {"train": {"bptt": 64, "batch_size": 4}, "model": {"max_len": 32}}
    with pytest.raises(ValueError, match="max_len"):
        t.setup(lm.streams(brown, cfg), RunContext(cfg, torch.device("cpu"), torch.Generator()))


# ----------------------------------------------------------------------------- real training


TINY = """
task = "{task}"

[train]
epochs = 2
batch_size = 4
bptt = 16
eval_batch_size = 5
train_subset = 3000
valid_subset = 800
test_subset = 800
schedule = "cosine"
warmup_steps = 2

[model]
vocab = 400
d_model = 16
{extra}
dropout = 0.1

[optimizers.adamw]
lr = 3e-3
weight_decay = 1e-4

[optimizers.adam]
lr = 3e-3

[optimizers.adahessian]
lr = 0.05
block_size = 8
"""


@pytest.mark.parametrize(
    ("task", "extra"),
    [("brown-lm", "n_heads = 2\nn_layers = 1\nd_ff = 32\nmax_len = 16"),
     ("brown-lm-lstm", "n_layers = 2")],
)  # fmt: skip
def test_every_optimizer_trains_a_few_steps_on_the_real_corpus(
    task: str, extra: str, brown: data_corpora.WordCorpus, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("ADAHESSIAN_DATA", str(CACHE))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    profile = tmp_path / "tiny.toml"
    profile.write_text(TINY.format(task=task, extra=extra))
    out = tmp_path / "out"
    argv = ["run", task, "--config", str(profile), "--max-steps", "4", "--threads", "1",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    for opt in ("adamw", "adam", "adahessian"):
        lines = (out / f"{opt}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [m["step"] for m in metrics] == [4, 8]
        for m in metrics:
            for key in ("valid_ppl", "test_ppl", "test_loss", "valid_loss", "train_loss"):
                assert math.isfinite(m[key]), (opt, key, m)
            assert m["test_ppl"] == pytest.approx(math.exp(m["test_loss"]))
        # 8 steps from a uniform-ish start: below the vocabulary size, i.e. learning.
        assert metrics[-1]["test_ppl"] < 400
        assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] + 0.5
    assert cli.main(["report", str(out)]) == 0
    assert "test perplexity" in (out / "report.md").read_text()
