"""``bible-translation``: Spanish -> English Bible verses with a small Transformer, judged by BLEU.

The analogue of the paper's IWSLT14 German -> English experiment (fairseq's pre-norm Transformer,
label-smoothed cross-entropy, inverse-sqrt lr schedule with warm-up, batches of about
``batch_size`` tokens, BLEU of the test set), on data that package registries ship:
``data_corpora.load_bible`` gives the verse pairs (whole books held out for valid and test) and
``data_corpora.bible_subwords`` a joint SentencePiece BPE vocabulary trained on the train pairs.

Profile options:

- ``[model]``: the keyword arguments of ``transformer.Seq2SeqTransformer``; ``vocab`` is the size of
  the joint subword vocabulary (default 8,000), and picks the BPE model too.
- ``[train]``: ``batch_size`` is a number of TOKENS per batch (fairseq's ``--max-tokens``): a batch
  of ``n`` pairs padded to ``S`` source and ``T`` target positions has ``n * max(S, T) <=
  batch_size``. ``eval_batch_size`` likewise for evaluation. ``train_subset`` (``--train-subset``),
  if given, overrides ``[data] train_pairs``; ``test_subset`` (``--test-subset``) overrides
  ``[data] bleu_subset``.
- ``[data]``:
  ``max_src_len`` / ``max_tgt_len``: length caps in subword positions (the source with its eos, the
  target with its eos); training pairs over a cap are DROPPED (truncating a verse would pair a
  translation with part of its source). ``filter_eval`` (default false): drop the valid and test
  pairs over the caps too (a model trained on short verses only has never learned the later
  position embeddings); otherwise they are kept, cut to the model's ``max_len`` positions if
  longer. ``train_pairs``: a fixed random subset of this many (kept) training pairs, the same in
  every run; 0 = all. ``bleu_subset``: BLEU on a fixed random subset of this many (evaluated) test
  pairs, the same at every epoch; 0 = all. ``valid_bleu`` (default false): report the BLEU of
  the valid pairs too (``valid_bleu``; a fixed random subset of ``bleu_subset`` of them), the score
  to choose settings by, since the test books must not be. ``label_smoothing`` (default 0.1).

Evaluation, every epoch: ``valid_loss`` / ``test_loss`` (the plain per-token NLL, nats, teacher
forced; ``valid_ppl`` / ``test_ppl`` its exp) over the whole evaluated valid and test sets, and
``test_bleu``: greedy decoding (with a key/value cache) of the BLEU pairs, detokenised with the
SentencePiece decoder, scored with ``sacrebleu.corpus_bleu`` against the original English verses
(and ``valid_bleu`` likewise, if asked for).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data_corpora
from .base import Metric, RunContext, Setup, Task, init_keys
from .transformer import Attention, Block, Embedding, Seq2SeqTransformer, label_smoothed_nll

# Decoding stops after ceil(DECODE_LEN_A * source length + DECODE_LEN_B) tokens (if no eos came
# first), and never beyond the model's position embeddings.
DECODE_LEN_A, DECODE_LEN_B = 1.5, 10


# ----------------------------------------------------------------------------- data


Encoded = dict[str, list[tuple[list[int], list[int]]]]  # split -> (source ids, target ids)


def encode(
    corpus: data_corpora.ParallelCorpus, vocab: int
) -> tuple[data_corpora.Subwords, Encoded]:
    """The BPE model of ``vocab`` pieces, and each split's (source ids, target ids) without bos
    and eos."""
    sw = data_corpora.bible_subwords(corpus, vocab_size=vocab)
    if sw.vocab_size != vocab:
        raise ValueError(f"the subword model has {sw.vocab_size} pieces, not {vocab}")
    encode = sw.processor.encode  # type: ignore[attr-defined]
    splits = {}
    for split in ("train", "valid", "test"):
        pairs = getattr(corpus, split)
        # One call per language: sentencepiece encodes a list in C++ (as Subwords.encode).
        es = encode([es for es, _ in pairs], out_type=int)
        en = encode([en for _, en in pairs], out_type=int)
        splits[split] = list(zip(es, en, strict=True))
    return sw, splits


@dataclass
class Pairs:
    """Sentence pairs as model inputs: ``src`` = ids + eos, ``tgt`` = bos + ids + eos, and the
    English text of each (the BLEU reference)."""

    src: list[torch.Tensor]
    tgt: list[torch.Tensor]
    refs: list[str]

    def __len__(self) -> int:
        return len(self.src)

    def subset(self, idx: Sequence[int]) -> Pairs:
        return Pairs([self.src[i] for i in idx], [self.tgt[i] for i in idx],
                     [self.refs[i] for i in idx])  # fmt: skip

    @property
    def src_lens(self) -> np.ndarray:
        return np.array([len(s) for s in self.src], dtype=np.int64)

    @property
    def tgt_lens(self) -> np.ndarray:
        """Target positions: the decoder's input (bos + ids) or output (ids + eos) length."""
        return np.array([len(t) - 1 for t in self.tgt], dtype=np.int64)


def make_pairs(
    encoded: Sequence[tuple[list[int], list[int]]],
    refs: Sequence[str],
    bos: int,
    eos: int,
    max_src_len: int,
    max_tgt_len: int,
    drop: bool,
) -> Pairs:
    """Add bos/eos; pairs over a cap (source ids + eos > ``max_src_len``, target ids + eos >
    ``max_tgt_len``) are dropped if ``drop``, else cut to the caps (keeping eos)."""
    src, tgt, kept = [], [], []
    for (s, t), ref in zip(encoded, refs, strict=True):
        if len(s) + 1 > max_src_len or len(t) + 1 > max_tgt_len:
            if drop:
                continue
            s, t = s[: max_src_len - 1], t[: max_tgt_len - 1]
        src.append(torch.tensor([*s, eos], dtype=torch.long))
        tgt.append(torch.tensor([bos, *t, eos], dtype=torch.long))
        kept.append(ref)
    return Pairs(src, tgt, kept)


def fixed_subset(n_items: int, n: int) -> list[int]:
    """A random subset of ``n`` of ``range(n_items)`` (sorted), the same for every run; all if
    ``n`` is 0 or at least ``n_items``."""
    if not n or n >= n_items:
        return list(range(n_items))
    return sorted(np.random.default_rng(0).choice(n_items, size=n, replace=False).tolist())


@dataclass
class BiblePairs:
    """The verse pairs a configuration trains and evaluates on, as model inputs (what
    ``TranslationTask.load`` returns), and the subword model that encoded them."""

    subwords: data_corpora.Subwords
    train: Pairs  # within the length caps, cut to the training subset
    valid: Pairs
    test: Pairs
    bleu: Pairs  # the test pairs that BLEU is computed on
    valid_bleu: Pairs | None = None  # as many valid pairs, with [data] valid_bleu


def bible_pairs(corpus: data_corpora.ParallelCorpus, cfg: dict[str, Any]) -> BiblePairs:
    """The pairs of ``corpus`` as ``cfg`` asks for them (see the module docstring): encoded with
    the ``[model] vocab`` BPE model, within the ``[data]`` length caps, cut to the subsets."""
    tc, dc, mc = cfg["train"], cfg.get("data", {}), cfg.get("model", {})
    positions = int(mc.get("max_len", 256))  # Seq2SeqTransformer's default
    max_src = int(dc.get("max_src_len", positions))
    max_tgt = int(dc.get("max_tgt_len", positions))
    if max(max_src, max_tgt) > positions:
        raise ValueError(
            f"the length caps ({max_src}, {max_tgt}) exceed the model's max_len {positions}"
        )
    sw, encoded = encode(corpus, int(mc.get("vocab", data_corpora.BIBLE_SUBWORDS)))

    def pairs(split: str, drop: bool) -> Pairs:
        refs = [en for _, en in getattr(corpus, split)]
        caps = (max_src, max_tgt) if drop else (positions, positions)
        return make_pairs(encoded[split], refs, sw.bos_id, sw.eos_id, *caps, drop=drop)

    train = pairs("train", drop=True)
    n_train = tc.get("train_subset")
    train = train.subset(fixed_subset(len(train), int(n_train or dc.get("train_pairs", 0))))
    filter_eval = bool(dc.get("filter_eval", False))
    valid, test = pairs("valid", filter_eval), pairs("test", filter_eval)
    n_bleu = tc.get("test_subset")
    n_bleu = int(n_bleu or dc.get("bleu_subset", 0))
    bleu_pairs = test.subset(fixed_subset(len(test), n_bleu))
    valid_bleu = (
        valid.subset(fixed_subset(len(valid), n_bleu)) if dc.get("valid_bleu", False) else None
    )
    return BiblePairs(sw, train, valid, test, bleu_pairs, valid_bleu)


def pad(seqs: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_id)


class TokenBatches:
    """Batches of about ``max_tokens`` tokens, of pairs of similar length (fairseq-style buckets).

    The pairs are sorted by (target length, source length) and cut, in that order, into batches of
    at most ``max_tokens`` padded positions (``n * max(S, T)``; a longer single pair makes a batch
    of its own) and at most ``max_sentences`` pairs. With ``shuffle``, every epoch breaks the ties
    between pairs of equal lengths at random and visits the batches in random order, both from
    ``generator``; since only equal-length pairs trade places, the batches' shapes and number stay
    the same. Yields ``(src, tgt)`` padded LongTensors on ``device``.
    """

    def __init__(
        self,
        pairs: Pairs,
        max_tokens: int,
        device: torch.device,
        pad_id: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        max_sentences: int = 0,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self.pairs, self.device, self.pad_id = pairs, device, pad_id
        self.shuffle, self.generator = shuffle, generator
        self.src_lens, self.tgt_lens = pairs.src_lens, pairs.tgt_lens
        order = np.lexsort((self.src_lens, self.tgt_lens))
        self.bounds: list[tuple[int, int]] = []
        start, longest = 0, 0
        for i, j in enumerate(order):
            longest_with = max(longest, self.src_lens[j], self.tgt_lens[j])
            n = i - start + 1
            if n > 1 and (n * longest_with > max_tokens or (max_sentences and n > max_sentences)):
                self.bounds.append((start, i))
                start, longest_with = i, max(self.src_lens[j], self.tgt_lens[j])
            longest = longest_with
        if len(order):
            self.bounds.append((start, len(order)))
        self._order = order

    def __len__(self) -> int:
        return len(self.bounds)

    def batch_indices(self) -> list[np.ndarray]:
        """The pair indices of each batch, in the order of this epoch (draws from the generator)."""
        if not self.shuffle:
            return [self._order[a:b] for a, b in self.bounds]
        perm = torch.randperm(len(self.pairs), generator=self.generator).numpy()
        # lexsort is stable: among equal (tgt, src) lengths the random order of perm stays.
        order = perm[np.lexsort((self.src_lens[perm], self.tgt_lens[perm]))]
        visit = torch.randperm(len(self.bounds), generator=self.generator).tolist()
        return [order[self.bounds[k][0] : self.bounds[k][1]] for k in visit]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.batch_indices():
            src = pad([self.pairs.src[i] for i in idx], self.pad_id).to(self.device)
            tgt = pad([self.pairs.tgt[i] for i in idx], self.pad_id).to(self.device)
            yield src, tgt


# ----------------------------------------------------------------------------- decoding


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, heads, T, D / heads)."""
    b, t, d = x.shape
    return x.view(b, t, n_heads, d // n_heads).transpose(1, 2)


def _attend(
    attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``attn``'s output for queries ``q`` against keys/values ``k``, ``v`` (all split in heads)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    b, h, t, dh = out.shape
    return attn.out(out.transpose(1, 2).reshape(b, t, h * dh))


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src: torch.Tensor, bos: int, eos: int, max_len: int
) -> torch.Tensor:
    """``model.greedy`` with a key/value cache: each step feeds only the newest token through the
    decoder (the same result, in O(T) instead of O(T^2) decoder positions). The model must be in
    eval mode. Returns (B, <= max_len) ids, ``model.pad_id`` after each sentence's eos."""
    if model.training:
        raise ValueError("greedy_decode needs the model in eval mode (no dropout)")
    memory, src_mask = model.encode(src)
    b = src.shape[0]
    blocks = [cast(Block, block) for block in model.decoder]
    cross_kv = []
    for block in blocks:
        assert block.cross is not None
        k, v = block.cross.kv(memory).chunk(2, dim=-1)
        h = block.cross.n_heads
        cross_kv.append((_heads(k.contiguous(), h), _heads(v.contiguous(), h)))
    self_kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(blocks)
    tok = torch.full((b,), bos, dtype=torch.long, device=src.device)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    out = []
    emb = cast(Embedding, model.embed)
    for t in range(min(max_len, emb.positions.num_embeddings)):
        x = (emb.tokens(tok) * emb.scale + emb.positions.weight[t])[:, None]  # (B, 1, D)
        for i, block in enumerate(blocks):
            h = block.attn.n_heads
            y = block.norm1(x)
            k, v = block.attn.kv(y).chunk(2, dim=-1)
            k, v = _heads(k.contiguous(), h), _heads(v.contiguous(), h)
            cached = self_kv[i]
            if cached is not None:
                k, v = torch.cat([cached[0], k], dim=2), torch.cat([cached[1], v], dim=2)
            self_kv[i] = (k, v)
            x = x + _attend(block.attn, _heads(block.attn.q(y), h), k, v, None)
            assert block.cross is not None and block.norm_cross is not None
            y = block.norm_cross(x)
            x = x + _attend(block.cross, _heads(block.cross.q(y), h), *cross_kv[i], src_mask)
            x = x + block.mlp(block.norm2(x))
        logits = model.dec_norm(x[:, 0]) @ emb.tokens.weight.t()
        nxt = torch.where(done, torch.full_like(tok, model.pad_id), logits.argmax(-1))
        out.append(nxt)
        done |= nxt == eos
        tok = nxt
        if bool(done.all()):
            break
    if not out:
        return torch.empty(b, 0, dtype=torch.long, device=src.device)
    return torch.stack(out, dim=1)


def strip_special(ids: Sequence[int], eos: int) -> list[int]:
    """The ids before the first eos."""
    ids = list(ids)
    return ids[: ids.index(eos)] if eos in ids else ids


def translate(
    model: Seq2SeqTransformer,
    batches: TokenBatches,
    detokenize: Callable[[list[int]], str],
    bos: int,
    eos: int,
) -> list[str]:
    """Greedy translations of every pair of ``batches`` (in the order of ``batches.pairs``)."""
    hyps = [""] * len(batches.pairs)
    for idx in batches.batch_indices():
        src = pad([batches.pairs.src[i] for i in idx], batches.pad_id).to(batches.device)
        max_len = math.ceil(DECODE_LEN_A * src.shape[1] + DECODE_LEN_B)
        out = greedy_decode(model, src, bos, eos, max_len).tolist()
        for i, ids in zip(idx, out, strict=True):
            hyps[i] = detokenize(strip_special(ids, eos))
    return hyps


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenisation, exp smoothing), 0..100."""
    import sacrebleu  # the bench extra; only needed here

    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


# ----------------------------------------------------------------------------- loss and evaluation


def pair_loss(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], smoothing: float, pad_id: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Label-smoothed cross-entropy per target token; ``n``: target tokens, ``nll``: summed NLL."""
    src, tgt = batch
    logits = model(src, tgt[:, :-1])
    loss, nll, n = label_smoothed_nll(logits, tgt[:, 1:], smoothing, pad_id)
    return loss, {"n": n, "nll": float(nll)}


def mean_nll(model: nn.Module, batches: TokenBatches) -> float:
    """The per-token NLL (teacher forced) over every pair of ``batches``."""
    total, n = 0.0, 0
    for src, tgt in batches:
        logits = model(src, tgt[:, :-1])
        target = tgt[:, 1:]
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            ignore_index=batches.pad_id,
            reduction="sum",
        ).item()
        n += int((target != batches.pad_id).sum())
    return total / max(n, 1)


class TranslationTask(Task):
    """Spanish -> English verse translation (see the module docstring)."""

    name = "bible-translation"
    dataset = "bible-es-en"
    description = "Spanish -> English Bible verses, pre-norm Transformer, BLEU (IWSLT14 analogue)"
    metric = Metric("test_bleu", "test BLEU", True, 1.0, ".2f", ("test_ppl",))
    model_keys = init_keys(Seq2SeqTransformer, "pad_id")
    data_keys = ("max_src_len", "max_tgt_len", "filter_eval", "train_pairs", "bleu_subset",
                 "valid_bleu", "label_smoothing")  # fmt: skip

    def load(self, cfg: dict[str, Any]) -> BiblePairs:
        return bible_pairs(data_corpora.load_bible(), cfg)

    def model(self, **kwargs: Any) -> nn.Module:
        kwargs = dict(kwargs)
        vocab = kwargs.pop("vocab", data_corpora.BIBLE_SUBWORDS)
        return Seq2SeqTransformer(vocab, pad_id=data_corpora.PAD_ID, **kwargs)

    def setup(self, data: BiblePairs, ctx: RunContext) -> Setup:
        tc, device, sw = ctx.cfg["train"], ctx.device, data.subwords
        smoothing = float(ctx.cfg.get("data", {}).get("label_smoothing", 0.1))
        train = data.train
        if ctx.world_size > 1:  # each rank its own shard
            train = train.subset(range(ctx.rank, len(train), ctx.world_size))
        eval_tokens = int(tc.get("eval_batch_size", 4096))
        train_batches = TokenBatches(train, ctx.batch_size, device, sw.pad_id, shuffle=True,
                                     generator=ctx.generator)  # fmt: skip
        valid_batches = TokenBatches(data.valid, eval_tokens, device, sw.pad_id)
        test_batches = TokenBatches(data.test, eval_tokens, device, sw.pad_id)
        bleu_batches = TokenBatches(data.bleu, eval_tokens, device, sw.pad_id)
        valid_bleu = (  # the batches to decode and their references, with [data] valid_bleu
            (TokenBatches(data.valid_bleu, eval_tokens, device, sw.pad_id), data.valid_bleu.refs)
            if data.valid_bleu
            else None
        )

        def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            return pair_loss(model, batch, smoothing, sw.pad_id)

        def evaluate(model: nn.Module) -> dict[str, float]:
            model.eval()
            with torch.no_grad():
                valid_loss = mean_nll(model, valid_batches)
                test_loss = mean_nll(model, test_batches)
                assert isinstance(model, Seq2SeqTransformer)
                hyps = translate(model, bleu_batches, sw.decode, sw.bos_id, sw.eos_id)
                extra: dict[str, float] = {}
                if valid_bleu is not None:
                    batches, refs = valid_bleu
                    valid_hyps = translate(model, batches, sw.decode, sw.bos_id, sw.eos_id)
                    extra["valid_bleu"] = bleu(valid_hyps, refs)
            return {
                "test_bleu": bleu(hyps, data.bleu.refs),
                **extra,
                "valid_loss": valid_loss,
                "valid_ppl": math.exp(min(valid_loss, 50.0)),
                "test_loss": test_loss,
                "test_ppl": math.exp(min(test_loss, 50.0)),
            }

        return Setup(train_batches, loss, evaluate)


BIBLE_TRANSLATION = TranslationTask()
