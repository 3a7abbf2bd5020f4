"""Word-level language modelling on the Brown corpus: the paper's PTB experiment, on open data.

The paper trains Transformer language models on PTB (and Wikitext-103) and reports test perplexity
against AdamW. PTB is not freely redistributable; the Brown corpus (``data_corpora.load_brown``: 10k
words incl. ``<unk>``/``<eos>``, 976k / 121k / 121k tokens) takes its place, batched the way PTB
language-model code batches it:

- The token stream is turned into (input, target) pairs, target = the next token, and both are
  cut into ``rows`` parallel streams (``batchify``): row ``b`` holds a contiguous stretch of the
  corpus. Windows of ``bptt`` columns (``windows``) give (rows, <= bptt) batches. Every token but
  the first of a split is a target exactly once (the few pairs that do not fill the last row are
  scored as one extra short row, see ``evaluate_stream``).
- Transformer (``brown-lm``): each epoch the training pairs are cut into chunks of ``bptt`` tokens
  from a random offset, and the chunks are shuffled into batches of ``batch_size`` (both from the
  run's generator). Each window is its own context, in training and evaluation.
- LSTM (``brown-lm-lstm``): consecutive windows of the batchified stream, in order, with the hidden
  state carried (detached) from one batch to the next (truncated backpropagation through time); it
  starts from zeros at each epoch (``RecurrentLoss``). Evaluation carries it over the whole split.

Perplexity = exp(mean token NLL) over the whole validation / test split.

Profile keys: ``[model] arch`` ("transformer" | "lstm", default the task's), ``vocab`` (default
10,000: with a smaller one the rarer words become ``<unk>``, exactly as if the vocabulary had been
built with that size, since ids are ranked by frequency) and the model's sizes; ``[train]``
``bptt``, ``batch_size``, ``eval_batch_size``, ``train_subset`` / ``valid_subset`` /
``test_subset`` (tokens, 0 = all: that many tokens in ``SEGMENTS`` evenly spaced stretches, so
every genre of the corpus is represented).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import data_corpora
from .base import Metric, RunContext, Setup, Task, init_keys
from .transformer import LSTMLM, TransformerLM

ARCHS = ("transformer", "lstm")
SEGMENTS = 20  # stretches a token subset is made of

State = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------- data


def limit_vocab(ids: torch.Tensor, vocab: int, unk_id: int) -> torch.Tensor:
    """Ids >= ``vocab`` become ``unk_id`` (the corpus ranks its words by frequency)."""
    return torch.where(ids < vocab, ids, torch.full_like(ids, unk_id))


def token_subset(ids: torch.Tensor, n: int, segments: int = SEGMENTS) -> torch.Tensor:
    """``n`` tokens of ``ids`` (all if ``n`` is 0 or too large) in ``segments`` contiguous
    stretches evenly spaced over the stream."""
    if not n or n >= len(ids):
        return ids
    segments = max(1, min(segments, n))
    length = n // segments
    rest = n - length * segments  # the last stretch is this much longer
    starts = torch.linspace(0, len(ids) - length - rest, segments).long().tolist()
    ends = [s + length for s in starts[:-1]] + [starts[-1] + length + rest]
    return torch.cat([ids[s:e] for s, e in zip(starts, ends, strict=True)])


def pairs(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of next-token prediction over a stream: ``ids[:-1]``, ``ids[1:]``."""
    return ids[:-1], ids[1:]


def batchify(stream: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, n): ``rows`` contiguous stretches of ``stream``, row ``b`` = ``stream[b*n:(b+1)*n]``
    with n = len // rows; the last len % rows tokens are left out."""
    n = len(stream) // rows
    if n == 0:
        raise ValueError(f"a stream of {len(stream)} tokens cannot fill {rows} rows")
    return stream[: rows * n].view(rows, n)


def windows(length: int, bptt: int) -> list[tuple[int, int]]:
    """(start, end) column ranges of at most ``bptt`` columns covering ``range(length)``."""
    return [(i, min(i + bptt, length)) for i in range(0, length, bptt)]


class TransformerBatches:
    """Shuffled chunks of ``bptt`` (input, target) pairs, ``batch_size`` chunks per batch.

    Each epoch (each ``iter``) draws an offset in [0, bptt) and a permutation of the chunks from
    ``generator``; the number of batches is the same whatever the offset. Incomplete batches are
    left out."""

    def __init__(
        self,
        ids: torch.Tensor,
        batch_size: int,
        bptt: int,
        device: torch.device,
        generator: torch.Generator,
    ) -> None:
        self.inputs, self.targets = pairs(ids)
        self.batch_size, self.bptt = batch_size, bptt
        self.device, self.generator = device, generator
        # Chunks that fit after any offset in [0, bptt).
        self.chunks = (len(self.inputs) - (bptt - 1)) // bptt
        if self.chunks < batch_size:
            raise ValueError(
                f"{len(ids)} training tokens make {self.chunks} chunks of {bptt}, "
                f"fewer than one batch of {batch_size}"
            )

    def __len__(self) -> int:
        return self.chunks // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offset = int(torch.randint(self.bptt, (1,), generator=self.generator))
        span = self.chunks * self.bptt
        x = self.inputs[offset : offset + span].view(self.chunks, self.bptt)
        y = self.targets[offset : offset + span].view(self.chunks, self.bptt)
        order = torch.randperm(self.chunks, generator=self.generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield x[idx].to(self.device), y[idx].to(self.device)


class RecurrentLoss:
    """The loss of a batch for a recurrent LM, carrying its hidden state between batches.

    The state after a batch is detached and fed to the next one (truncated BPTT); ``reset``
    (called by ``StreamBatches`` at the start of every epoch) starts again from zeros."""

    def __init__(self) -> None:
        self.state: State | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        logits, state = model(x, self.state)
        self.state = (state[0].detach(), state[1].detach())
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, {"n": y.numel()}


class StreamBatches:
    """Consecutive windows of the batchified (input, target) stream, in order (LSTM training);
    ``loss.reset()`` at the start of each epoch."""

    def __init__(
        self, ids: torch.Tensor, rows: int, bptt: int, device: torch.device, loss: RecurrentLoss
    ) -> None:
        x, y = pairs(ids)
        self.x, self.y = batchify(x, rows), batchify(y, rows)
        self.spans = windows(self.x.shape[1], bptt)
        self.device, self.loss = device, loss

    def __len__(self) -> int:
        return len(self.spans)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.loss.reset()
        for a, b in self.spans:
            yield self.x[:, a:b].to(self.device), self.y[:, a:b].to(self.device)


def transformer_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, {"n": y.numel()}


@dataclass(frozen=True)
class Streams:
    """The token ids of each split as a configuration uses them (what ``BrownLM.load`` returns):
    the words beyond its vocabulary as ``<unk>``, cut to its token subsets."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def streams(corpus: data_corpora.WordCorpus, cfg: dict[str, Any]) -> Streams:
    """The splits of ``corpus`` with ``[model] vocab`` words and the ``[train]`` token subsets
    (``train_subset``, ``valid_subset``, ``test_subset``) of ``cfg``."""
    tc, mc = cfg["train"], cfg.get("model", {})
    vocab = mc.get("vocab", data_corpora.BROWN_VOCAB)
    if not 2 <= vocab <= len(corpus.vocab):
        raise ValueError(f"vocab {vocab} is not in [2, {len(corpus.vocab)}]")

    def split(ids: torch.Tensor, key: str) -> torch.Tensor:
        return token_subset(limit_vocab(ids, vocab, corpus.unk_id), tc.get(key, 0))

    return Streams(split(corpus.train, "train_subset"), split(corpus.valid, "valid_subset"),
                   split(corpus.test, "test_subset"))  # fmt: skip


# ----------------------------------------------------------------------------- evaluation


def evaluate_stream(
    model: nn.Module,
    ids: torch.Tensor,
    rows: int,
    bptt: int,
    recurrent: bool,
    device: torch.device,
) -> tuple[float, int]:
    """(summed NLL, number of targets) of next-token prediction over the whole stream ``ids``.

    The pairs are batchified into ``rows`` streams and read in windows of ``bptt``; a recurrent
    model carries its state from window to window. The pairs left over by ``batchify`` continue
    the last row's stretch and are scored as one more row (with the last row's state)."""
    model.eval()
    x, y = pairs(ids)
    rows = max(1, min(rows, len(x)))
    bx, by = batchify(x, rows), batchify(y, rows)
    tail = rows * bx.shape[1]
    nll, count = 0.0, 0
    state: State | None = None

    def score(xs: torch.Tensor, ys: torch.Tensor, st: State | None) -> State | None:
        nonlocal nll, count
        if recurrent:
            logits, st = model(xs.to(device), st)
        else:
            logits = model(xs.to(device))
        ys = ys.to(device)
        nll += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), ys.reshape(-1), reduction="sum"
        ).item()
        count += ys.numel()
        return st

    with torch.no_grad():
        for a, b in windows(bx.shape[1], bptt):
            state = score(bx[:, a:b], by[:, a:b], state)
        if tail < len(x):
            last = None if state is None else (state[0][:, -1:], state[1][:, -1:])
            for a, b in windows(len(x) - tail, bptt):
                last = score(x[None, tail + a : tail + b], y[None, tail + a : tail + b], last)
    return nll, count


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean NLL); inf where it overflows."""
    mean = nll_sum / count
    return math.exp(mean) if mean < 700 else math.inf


# ----------------------------------------------------------------------------- the task

PERPLEXITY = Metric(
    "test_ppl", "test perplexity", higher_is_better=False, scale=1.0, fmt=".1f",
    extra=("valid_ppl",),
)  # fmt: skip


@dataclass(frozen=True)
class BrownLM(Task):
    """Word-level LM on the Brown corpus with a Transformer or an LSTM (``arch``)."""

    name: str
    arch: str
    description: str
    dataset: str = "brown"
    metric: Metric = PERPLEXITY
    train_keys = ("bptt", "valid_subset")
    model_keys = ("arch", *dict.fromkeys(init_keys(TransformerLM) + init_keys(LSTMLM)))

    def check(self, cfg: dict[str, Any]) -> None:
        """``[model] vocab`` within the corpus's vocabulary, before the corpus is fetched."""
        vocab = cfg.get("model", {}).get("vocab", data_corpora.BROWN_VOCAB)
        if isinstance(vocab, bool) or not isinstance(vocab, int):
            raise ValueError(f"[model] vocab must be an integer, got {vocab!r}")
        if not 2 <= vocab <= data_corpora.BROWN_VOCAB:
            raise ValueError(f"[model] vocab {vocab} is not in [2, {data_corpora.BROWN_VOCAB}]")

    def load(self, cfg: dict[str, Any]) -> Streams:
        return streams(data_corpora.load_brown(), cfg)

    def model(self, **kwargs: Any) -> nn.Module:
        kw = dict(kwargs)
        arch = kw.pop("arch", self.arch)
        vocab = kw.pop("vocab", data_corpora.BROWN_VOCAB)
        if arch == "transformer":
            return TransformerLM(vocab, **kw)
        if arch == "lstm":
            return LSTMLM(vocab, **kw)
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")

    def setup(self, data: Streams, ctx: RunContext) -> Setup:
        tc, mc, device = ctx.cfg["train"], ctx.cfg.get("model", {}), ctx.device
        arch = mc.get("arch", self.arch)
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
        bptt = tc["bptt"]
        if arch == "transformer" and bptt > mc.get("max_len", 256):
            raise ValueError(f"bptt {bptt} > the model's max_len {mc.get('max_len', 256)}")
        train, valid, test = data.train, data.valid, data.test
        if ctx.world_size > 1:  # each rank a contiguous shard of the stream
            n = len(train) // ctx.world_size
            train = train[ctx.rank * n : (ctx.rank + 1) * n + 1]
        batch_size = ctx.batch_size
        recurrent = arch == "lstm"
        batches: TransformerBatches | StreamBatches
        if recurrent:
            loss_fn: Any = RecurrentLoss()
            batches = StreamBatches(train, batch_size, bptt, device, loss_fn)
        else:
            loss_fn = transformer_loss
            batches = TransformerBatches(train, batch_size, bptt, device, ctx.generator)
        rows = tc.get("eval_batch_size", 10)

        def evaluate(model: nn.Module) -> dict[str, float]:
            out: dict[str, float] = {}
            for key, ids in (("valid", valid), ("test", test)):
                nll, count = evaluate_stream(model, ids, rows, bptt, recurrent, device)
                out[f"{key}_loss"] = nll / count
                out[f"{key}_ppl"] = perplexity(nll, count)
            return out

        return Setup(batches, loss_fn, evaluate)


BROWN_LM: Task = BrownLM(
    "brown-lm", "transformer", "Brown corpus word-level LM (PTB analogue), pre-norm Transformer"
)
BROWN_LM_LSTM: Task = BrownLM(
    "brown-lm-lstm", "lstm", "Brown corpus word-level LM (PTB analogue), 2-layer LSTM"
)
