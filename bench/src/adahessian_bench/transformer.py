"""Small pre-norm Transformers (language model, encoder classifier, encoder-decoder) and an LSTM LM.

AdaHessian differentiates the gradient once more (a Hessian-vector product), so every operation
here must have a double backward. Attention is therefore written out with matmul and softmax (the
"math" kernel): the fused kernels behind ``F.scaled_dot_product_attention`` (flash, memory-
efficient) have no double backward. Pre-norm blocks (LayerNorm before attention and MLP, as in
the paper's reference Transformer setting with ``normalize_before``), GELU MLPs, learned position
embeddings, tied input and output embeddings.

Masks are boolean, ``True`` = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention written with matmul + softmax, so that it is twice differentiable."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (B, T, D) attends to ``memory`` (B, S, D; default ``x``); ``mask`` broadcasts to
        (B, heads, T, S)."""
        b, t, d = x.shape
        src = x if memory is None else memory
        h = self.n_heads
        q = self.q(x).view(b, t, h, d // h).transpose(1, 2)
        k, v = self.kv(src).view(b, src.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // h)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = self.dropout(torch.softmax(scores, dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention (decoder), MLP; each residual."""

    def __init__(
        self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0, cross: bool = False
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads, dropout)
        self.norm_cross = nn.LayerNorm(d_model) if cross else None
        self.cross = Attention(d_model, n_heads, dropout) if cross else None
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), mask=mask))
        if self.cross is not None and self.norm_cross is not None:
            x = x + self.dropout(self.cross(self.norm_cross(x), memory, memory_mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


def causal_mask(t: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T): position i may attend to positions <= i."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


class Embedding(nn.Module):
    """Token embedding x sqrt(d) plus a learned position embedding, then dropout."""

    def __init__(self, vocab: int, d_model: int, max_len: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.tokens.weight, std=d_model**-0.5)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        if t > self.positions.num_embeddings:
            raise ValueError(f"sequence length {t} > max_len {self.positions.num_embeddings}")
        pos = self.positions(torch.arange(t, device=ids.device))
        return self.dropout(self.tokens(ids) * self.scale + pos)


class TransformerLM(nn.Module):
    """Causal language model: ids (B, T) -> logits (B, T, vocab)."""

    def __init__(
        self,
        vocab: int,
        d_model: int = 256,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 1024,
        max_len: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = Embedding(vocab, d_model, max_len, dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        mask = causal_mask(ids.shape[1], ids.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x) @ self.embed.tokens.weight.t()  # tied output embedding


class TransformerClassifier(nn.Module):
    """Encoder over padded ids (B, T) -> class logits, read at the first token (a <cls> token)."""

    def __init__(
        self,
        vocab: int,
        num_classes: int = 2,
        d_model: int = 128,
        n_heads: int = 4,
        n_layers: int = 2,
        d_ff: int = 512,
        max_len: int = 256,
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = Embedding(vocab, d_model, max_len, dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.pad_id)[:, None, None, :]  # no attention to padding
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x[:, 0]))


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder: (src ids (B, S), tgt input ids (B, T)) -> logits (B, T, tgt vocab).

    One shared (joint) vocabulary; the decoder's output embedding is tied to its input one."""

    def __init__(
        self,
        vocab: int,
        d_model: int = 256,
        n_heads: int = 4,
        n_layers: int = 3,
        d_ff: int = 1024,
        max_len: int = 256,
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = Embedding(vocab, d_model, max_len, dropout)
        self.encoder = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.decoder = nn.ModuleList(
            Block(d_model, n_heads, d_ff, dropout, cross=True) for _ in range(n_layers)
        )
        self.enc_norm = nn.LayerNorm(d_model)
        self.dec_norm = nn.LayerNorm(d_model)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        src_mask = (src != self.pad_id)[:, None, None, :]
        x = self.embed(src)
        for block in self.encoder:
            x = block(x, src_mask)
        return self.enc_norm(x), src_mask

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor):
        y = self.embed(tgt)
        mask = causal_mask(tgt.shape[1], tgt.device)
        for block in self.decoder:
            y = block(y, mask, memory, src_mask)
        return self.dec_norm(y) @ self.embed.tokens.weight.t()

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory, src_mask = self.encode(src)
        return self.decode(tgt, memory, src_mask)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, bos: int, eos: int, max_len: int) -> torch.Tensor:
        """Greedy decoding: (B, <= max_len) ids after ``bos``, padded with ``pad_id`` after eos."""
        memory, src_mask = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            nxt = self.decode(out, memory, src_mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return out[:, 1:]


class LSTMLM(nn.Module):
    """LSTM language model (the paper's PTB recipe shape, smaller): ids (B, T) -> logits.

    On GPU, cuDNN's LSTM has no double backward: ``forward`` turns cuDNN off while gradients are
    being recorded (the Hessian-vector product then works through the native kernel), and keeps it
    for evaluation. ``state`` carries the hidden state between consecutive batches (truncated BPTT);
    it is detached by the caller."""

    def __init__(
        self,
        vocab: int,
        d_model: int = 256,
        n_layers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.lstm = nn.LSTM(d_model, d_model, n_layers, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)

    def forward(
        self, ids: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        x = self.dropout(self.embed(ids))
        with torch.backends.cudnn.flags(enabled=not torch.is_grad_enabled()):
            y, state = self.lstm(x, state)
        logits = self.dropout(y) @ self.embed.weight.t()  # tied output embedding
        return logits, state


def label_smoothed_nll(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean label-smoothed loss, summed plain NLL, number of tokens) over non-pad targets."""
    logp = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
    t = target.reshape(-1)
    keep = t != pad_id
    logp, t = logp[keep], t[keep]
    nll = -logp.gather(1, t[:, None]).squeeze(1)
    loss = (1 - smoothing) * nll - smoothing * logp.mean(dim=-1)
    return loss.mean(), nll.detach().sum(), int(keep.sum())
