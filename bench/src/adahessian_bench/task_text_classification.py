"""Sentence classification: clothing reviews -> recommended or not (the paper's GLUE analogue).

The paper fine-tunes SqueezeBERT on GLUE with AdamW and AdaHessian. GLUE and pretrained weights
are out of reach offline, so this task trains a small pre-norm Transformer encoder
(``transformer.TransformerClassifier``) from scratch on the Women's Clothing E-Commerce reviews
(``data_widedeep.load_reviews``: title + review text -> "Recommended IND", about 82 % recommended,
stratified 80/10/10 split). It is binary sentence classification, as SST-2 is.

The classes are imbalanced: predicting "recommended" for every review gives about 82 % accuracy
and a macro-F1 of about 0.45. The headline metric is test accuracy; the report also shows the
macro-F1 (the mean of the two classes' F1), which the imbalance does not flatter.

Profile tables: ``[data]`` holds ``vocab_size`` and ``max_len`` (the tokenisation); ``[model]``
holds the keyword arguments of ``TransformerClassifier`` (``vocab`` must equal ``vocab_size``,
``max_len`` must be at least the data's). ``[train]`` may set ``train_subset`` (a fixed
stratified subset of the training reviews) and ``test_subset`` (the same for the validation and
test reviews).

Batches are trimmed to their longest non-pad length: the padding is trailing and masked out of
attention, so trimming changes no logit and saves the work on padding columns. Evaluation goes
through the reviews sorted by length, so that its batches trim well.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data_widedeep
from .base import Metric, RunContext, Setup, Task, init_keys
from .transformer import TransformerClassifier


def classification_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of a batch ``(x, y)``; counts the correct predictions."""
    x, y = batch
    out = model(x)
    loss = F.cross_entropy(out, y)
    correct = (out.detach().argmax(1) == y).sum().item()
    return loss, {"n": len(y), "acc": correct}


DEFAULT_VOCAB = 20_000  # load_reviews' defaults
DEFAULT_MAX_LEN = 128
NUM_CLASSES = 2  # 0 = not recommended, 1 = recommended


# ----------------------------------------------------------------------------- metrics


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor) -> float:
    """Macro-averaged F1 (as scikit-learn's ``f1_score(average="macro")``): the mean over the
    labels present in ``y_true`` or ``y_pred`` of 2 TP / (2 TP + FP + FN), 0 where that is 0/0."""
    labels = torch.unique(torch.cat([y_true, y_pred]))
    scores = []
    for c in labels:
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        fn = int(((y_pred != c) & (y_true == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(scores)) if scores else 0.0


# ----------------------------------------------------------------------------- batches


def trim(ids: torch.Tensor, pad_id: int = data_widedeep.PAD) -> torch.Tensor:
    """``ids`` (B, T) cut to its longest non-pad row (padding is trailing, <cls> comes first)."""
    longest = int((ids != pad_id).sum(1).max())
    return ids[:, : max(1, longest)]


class TextBatches:
    """Batches ``(ids, labels)`` of token ids trimmed to their longest review.

    ``shuffle``: a new order each pass, drawn from ``generator`` only (so a checkpoint of the
    generator resumes the exact sequence). Otherwise the rows go in order of length (evaluation).
    """

    def __init__(
        self,
        tokens: torch.Tensor,  # int64 (N, max_len)
        labels: torch.Tensor,  # int64 (N,)
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.tokens = tokens.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        lengths = (tokens != data_widedeep.PAD).sum(1)
        self.by_length = torch.argsort(lengths, stable=True).to(device)

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.tokens.device)
        else:
            order = self.by_length
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            yield trim(self.tokens[idx]), self.labels[idx]


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of a fixed subset of about ``n`` rows with the label balance of all."""
    if not n or n >= len(labels):
        return torch.arange(len(labels))
    frac = n / len(labels)
    split = data_widedeep.stratified_split(labels.numpy(), (frac, 1.0 - frac, 0.0), seed=seed)
    return torch.from_numpy(np.flatnonzero(split == 0))


def evaluate_split(model: nn.Module, batches: TextBatches, prefix: str) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro-F1 over one split."""
    model.eval()
    loss_sum, preds, targets = 0.0, [], []
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            preds.append(out.argmax(1).cpu())
            targets.append(y.cpu())
    pred, target = torch.cat(preds), torch.cat(targets)
    return {
        f"{prefix}_loss": loss_sum / len(target),
        f"{prefix}_acc": float((pred == target).double().mean()),
        f"{prefix}_f1": macro_f1(target, pred),
    }


# ----------------------------------------------------------------------------- the task


def data_sizes(cfg: dict[str, Any]) -> tuple[int, int]:
    """``[data]`` vocab_size and max_len; ValueError if the ``[model]`` cannot take them."""
    dc, mc = cfg.get("data", {}), cfg.get("model", {})
    vocab_size = dc.get("vocab_size", DEFAULT_VOCAB)
    max_len = dc.get("max_len", DEFAULT_MAX_LEN)
    if mc.get("vocab", DEFAULT_VOCAB) != vocab_size:
        raise ValueError(
            f"[model] vocab {mc.get('vocab', DEFAULT_VOCAB)} != [data] vocab_size {vocab_size}"
        )
    if mc.get("max_len", DEFAULT_MAX_LEN) < max_len:
        raise ValueError(
            f"[model] max_len {mc.get('max_len', DEFAULT_MAX_LEN)} < [data] max_len {max_len}"
        )
    return vocab_size, max_len


def subsets(reviews: data_widedeep.ReviewsData, cfg: dict[str, Any]) -> data_widedeep.ReviewsData:
    """``reviews`` cut to the fixed stratified subsets of ``[train]``: ``train_subset`` of the
    training reviews, ``test_subset`` of the validation and of the test reviews."""
    tc = cfg["train"]

    def pick(split: data_widedeep.TextSplit, n: int) -> data_widedeep.TextSplit:
        idx = stratified_subset(split.label, n)
        return data_widedeep.TextSplit(split.tokens[idx], split.label[idx],
                                  [split.text[i] for i in idx.tolist()])  # fmt: skip

    train_n, test_n = tc.get("train_subset", 0), tc.get("test_subset", 0)
    return dataclasses.replace(reviews, train=pick(reviews.train, train_n),
                               valid=pick(reviews.valid, test_n),
                               test=pick(reviews.test, test_n))  # fmt: skip


class ReviewsClassification(Task):
    """Clothing reviews -> recommended or not, a small Transformer encoder trained from scratch."""

    name = "reviews-classification"
    dataset = "widedeep"
    description = "Clothing reviews -> recommended (82/18), small Transformer (GLUE analogue)"
    metric = Metric("test_acc", "test accuracy (%)", higher_is_better=True, scale=100.0,
                    fmt=".2f", extra=("test_f1",))  # fmt: skip
    model_keys = init_keys(TransformerClassifier, "num_classes", "pad_id")
    data_keys = ("vocab_size", "max_len")

    def load(self, cfg: dict[str, Any]) -> data_widedeep.ReviewsData:
        """The reviews tokenised with the ``[data]`` vocab_size and max_len, cut to the
        ``[train]`` subsets."""
        vocab_size, max_len = data_sizes(cfg)  # checked before the reviews are read
        directory = data_widedeep.fetch_widedeep(parts=("reviews",))
        return subsets(data_widedeep.load_reviews(directory, vocab_size, max_len), cfg)

    def model(self, **kwargs: Any) -> nn.Module:
        kw = {"vocab": DEFAULT_VOCAB, "max_len": DEFAULT_MAX_LEN, **kwargs}
        return TransformerClassifier(num_classes=NUM_CLASSES, pad_id=data_widedeep.PAD, **kw)

    def setup(self, data: data_widedeep.ReviewsData, ctx: RunContext) -> Setup:
        train = data.train
        train_batches = TextBatches(ctx.shard(train.tokens), ctx.shard(train.label),
                                    ctx.batch_size, ctx.device, shuffle=True,
                                    generator=ctx.generator)  # fmt: skip
        eval_bs = ctx.cfg["train"].get("eval_batch_size", 256)
        evals = {name: TextBatches(split.tokens, split.label, eval_bs, ctx.device)
                 for name, split in (("valid", data.valid), ("test", data.test))}  # fmt: skip

        def evaluate(model: nn.Module) -> dict[str, float]:
            out: dict[str, float] = {}
            for name, batches in evals.items():
                out.update(evaluate_split(model, batches, name))
            return out

        return Setup(train_batches, classification_loss, evaluate)


REVIEWS_CLASSIFICATION: Task = ReviewsClassification()
