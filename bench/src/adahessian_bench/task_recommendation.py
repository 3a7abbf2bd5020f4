"""Click-through-rate prediction with a DLRM (the analogue of the paper's Criteo / DLRM experiment).

Data: MovieLens-100k as a CTR task (``data_widedeep.load_movielens``): 5 sparse features (user,
movie, occupation, zip code, gender; id 0 = unknown), 20 dense features (standardised age, 19 genre
flags), label "liked" (rating >= 4). The profile's ``[data]`` table picks the split: ``split``
(``"random"`` or ``"temporal"``) and ``split_seed`` (the permutation of the random split, the same
for every run seed).

Model: the DLRM of Naumov et al. (2019), as in the paper's Criteo experiment, at a small size. One
embedding table per sparse feature, a bottom MLP that maps the dense features to the embedding
dimension, the dot products of every pair of the (embeddings + bottom output) vectors (each pair
once, no vector with itself), concatenated with the bottom output, and a top MLP to one logit.
The loss is the binary cross-entropy of that logit. The embedding tables are dense ``nn.Embedding``
(not ``sparse=True``): AdaHessian differentiates the gradient once more, and sparse gradients have
no double backward.

Evaluation (each epoch): AUC (scikit-learn's ``roc_auc_score``), log loss and accuracy (threshold
probability 0.5) on the validation and the test split. The headline metric is the test AUC.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data_widedeep, hints
from .base import Metric, RunContext, Setup, Task, init_keys

# Rows of the embedding tables: the distinct values of each sparse feature in the whole of
# MovieLens-100k (943 users, 1682 movies, 21 occupations, 795 zip codes, 2 genders) + the unknown
# id 0. Ids are numbered over the training split, so every split's ids fit (tests check it).
MOVIELENS_CARDINALITIES = (944, 1683, 22, 796, 3)


# ----------------------------------------------------------------------------- model


def pairwise_interactions(vectors: torch.Tensor) -> torch.Tensor:
    """The dot products of every pair of the F vectors of each example: (B, F, D) -> (B, F(F-1)/2).

    Pairs (i, j) with i < j, in row-major order of the strict upper triangle of the Gram matrix:
    (0, 1), (0, 2), ..., (0, F-1), (1, 2), ... No vector with itself (DLRM's default)."""
    n = vectors.shape[1]
    gram = vectors @ vectors.transpose(1, 2)
    i, j = torch.triu_indices(n, n, offset=1, device=vectors.device)
    return gram[:, i, j]


def mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    """Linear layers between consecutive ``sizes``, ReLU after each (after the last if asked)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(a, b)
        # DLRM's initialisation: weights N(0, 2 / (fan_in + fan_out)), biases N(0, 1 / fan_out).
        nn.init.normal_(linear.weight, 0.0, float(np.sqrt(2.0 / (a + b))))
        nn.init.normal_(linear.bias, 0.0, float(np.sqrt(1.0 / b)))
        layers.append(linear)
        if k < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM: embeddings + bottom MLP, pairwise dot-product interactions, top MLP -> one logit.

    ``cardinalities``: rows of each embedding table (id 0 = unknown is a row like any other).
    ``bottom``: hidden sizes of the bottom MLP (``n_dense`` -> ... -> ``embedding_dim``, ReLU after
    every layer, as DLRM). ``top``: hidden sizes of the top MLP (``embedding_dim`` + number of
    pairs -> ... -> 1; ReLU after the hidden layers, the logit is linear).
    """

    def __init__(
        self,
        cardinalities: Sequence[int],
        n_dense: int,
        embedding_dim: int = 16,
        bottom: Sequence[int] = (64,),
        top: Sequence[int] = (64, 32),
    ) -> None:
        super().__init__()
        tables = [nn.Embedding(n, embedding_dim) for n in cardinalities]
        for table, n in zip(tables, cardinalities, strict=True):
            # DLRM's initialisation: uniform in +-sqrt(1 / rows).
            nn.init.uniform_(table.weight, -float(np.sqrt(1.0 / n)), float(np.sqrt(1.0 / n)))
        self.embeddings = nn.ModuleList(tables)
        self.bottom = mlp([n_dense, *bottom, embedding_dim], last_activation=True)
        f = len(cardinalities) + 1
        self.top = mlp([embedding_dim + f * (f - 1) // 2, *top, 1], last_activation=False)

    def forward(self, sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``sparse`` int64 (B, n_sparse), ``dense`` float (B, n_dense) -> logits (B,)."""
        x = self.bottom(dense)
        vectors = torch.stack([x, *(e(sparse[:, k]) for k, e in enumerate(self.embeddings))], 1)
        z = torch.cat([x, pairwise_interactions(vectors)], dim=1)
        return self.top(z).squeeze(1)


# ----------------------------------------------------------------------------- metrics


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def ctr_metrics(labels: torch.Tensor, logits: torch.Tensor) -> dict[str, float]:
    """AUC, log loss (mean binary cross-entropy, natural log) and accuracy at probability 0.5."""
    logits, labels = logits.double(), labels.double()
    logloss = F.binary_cross_entropy_with_logits(logits, labels).item()
    acc = ((logits > 0).double() == labels).double().mean().item()
    return {"auc": auc(labels.numpy(), logits.numpy()), "logloss": logloss, "acc": acc}


# ----------------------------------------------------------------------------- data


class CTRBatches:
    """Mini-batches ``(sparse, dense, label)`` of one split, reshuffled each epoch (``generator``)
    when ``shuffle``; the last, incomplete batch is kept."""

    def __init__(
        self,
        split: data_widedeep.CTRSplit,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.sparse = split.sparse.to(device)
        self.dense = split.dense.to(device)
        self.label = split.label.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.label) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.label)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.label.device)
        else:
            order = torch.arange(n, device=self.label.device)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.sparse[idx], self.dense[idx], self.label[idx]


def ctr_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean binary cross-entropy of a batch; counts the correct predictions (probability 0.5)."""
    sparse, dense, label = batch
    logits = model(sparse, dense)
    loss = F.binary_cross_entropy_with_logits(logits, label)
    correct = ((logits.detach() > 0).float() == label).sum().item()
    return loss, {"n": len(label), "acc": correct}


def evaluate_ctr(model: nn.Module, splits: dict[str, CTRBatches]) -> dict[str, float]:
    """``{split}_auc``, ``{split}_logloss``, ``{split}_acc`` and ``{split}_loss`` (= log loss)
    for each split (valid, test)."""
    model.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, batches in splits.items():
            logits = torch.cat([model(s, d) for s, d, _ in batches]).cpu()
            for k, v in ctr_metrics(batches.label.cpu(), logits).items():
                out[f"{name}_{k}"] = v
            out[f"{name}_loss"] = out[f"{name}_logloss"]
    return out


def take(split: data_widedeep.CTRSplit, n: int) -> data_widedeep.CTRSplit:
    """The first ``n`` rows of a split (all of them when ``n`` is 0 or too large); a random split
    is already in random order, the temporal one keeps its earliest rows."""
    if not n or n >= len(split):
        return split
    return data_widedeep.CTRSplit(split.sparse[:n], split.dense[:n], split.label[:n],
                             split.timestamp[:n])  # fmt: skip


# ----------------------------------------------------------------------------- task


class RecommendationTask(Task):
    """MovieLens-100k CTR ("liked": rating >= 4) with a DLRM; judged by the test AUC."""

    name = "movielens-dlrm"
    dataset = "widedeep"
    description = "MovieLens-100k as CTR (rating >= 4), DLRM; test AUC"
    metric = Metric("test_auc", "test AUC", higher_is_better=True, scale=1.0, fmt=".4f",
                    extra=("test_logloss", "test_acc"))  # fmt: skip
    model_keys = init_keys(DLRM)
    data_keys = ("split", "split_seed")

    def check(self, cfg: dict[str, Any]) -> None:
        """``[data]`` split and split_seed, before the data is fetched."""
        dc = cfg.get("data", {})
        split, seed = dc.get("split", "random"), dc.get("split_seed", 0)
        if split not in data_widedeep.MOVIELENS_SPLITS:
            hint = hints.did_you_mean(str(split), data_widedeep.MOVIELENS_SPLITS)
            raise ValueError(
                f"[data] split {split!r} is not one of "
                f"{', '.join(data_widedeep.MOVIELENS_SPLITS)}{hint}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"[data] split_seed must be an integer >= 0, got {seed!r}")

    def load(self, cfg: dict[str, Any]) -> data_widedeep.MovieLensCTR:
        """The ``[data]`` split (``split``, ``split_seed``), its training rows cut to
        ``[train] train_subset``, its valid and test rows to ``test_subset``."""
        tc, dc = cfg["train"], cfg.get("data", {})
        directory = data_widedeep.fetch_widedeep(verbose=True, parts=("movielens",))
        ml = data_widedeep.load_movielens(
            directory, dc.get("split", "random"), dc.get("split_seed", 0)
        )
        train_n, test_n = tc.get("train_subset", 0), tc.get("test_subset", 0)
        return dataclasses.replace(ml, train=take(ml.train, train_n), valid=take(ml.valid, test_n),
                                   test=take(ml.test, test_n))  # fmt: skip

    def model(self, **kwargs: Any) -> nn.Module:
        """``[model]``: embedding_dim, bottom, top (hidden sizes). The tables have a row for every
        value in the whole data set (``MOVIELENS_CARDINALITIES``), so the model does not depend on
        the split; rows of values absent from the training split are never trained nor used
        (``load_movielens`` maps such values to the unknown id 0)."""
        kw = dict(kwargs)
        cardinalities = kw.pop("cardinalities", MOVIELENS_CARDINALITIES)
        n_dense = kw.pop("n_dense", len(data_widedeep.DENSE_FEATURES))
        return DLRM(cardinalities, n_dense, **kw)

    def setup(self, data: data_widedeep.MovieLensCTR, ctx: RunContext) -> Setup:
        train = data.train
        columns = (train.sparse, train.dense, train.label, train.timestamp)
        # each rank its own shard of the rows
        train = data_widedeep.CTRSplit(*map(ctx.shard, columns))
        train_batches = CTRBatches(train, ctx.batch_size, ctx.device, shuffle=True,
                                   generator=ctx.generator)  # fmt: skip
        eval_bs = ctx.cfg["train"].get("eval_batch_size", 4096)
        evaluation = {s: CTRBatches(getattr(data, s), eval_bs, ctx.device)
                      for s in ("valid", "test")}  # fmt: skip
        return Setup(train_batches, ctr_loss, lambda m: evaluate_ctr(m, evaluation))


MOVIELENS_DLRM: Task = RecommendationTask()
