"""Spatial (block) averaging of a Hessian-diagonal estimate, by tensor rank.

AdaHessian lowers the variance of the Hutchinson estimate by replacing each entry with the mean over
a block of entries that play the same role:

* rank 0 and 1 (biases, norm weights): no averaging;
* rank 2 (``Linear`` / ``Embedding`` weights ``[out, in]``): mean over contiguous blocks of
  ``block_size`` entries along the last dimension (a shorter last block averages what it holds);
  ``block_size=1`` means none;
* rank >= 3 (convolution kernels ``[out, in, *kernel]`` of any spatial rank): mean over every
  dimension after the first two.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["spatial_average"]


def spatial_average(d: Tensor, block_size: int = 1) -> Tensor:
    """Return ``d`` with every entry replaced by the mean of its block (see the module docstring).

    The result has the shape of ``d``; ``d`` itself is not modified (for rank 0 and 1, and rank 2
    with ``block_size=1``, ``d`` is returned as is).

    Args:
        d: a Hessian-diagonal estimate shaped like its parameter: rank 0 or 1 (biases, norm
            weights), 2 (``Linear`` and ``Embedding`` weights ``[out, in]``) or 3 and more
            (convolution kernels ``[out, in, *kernel]``).
        block_size: the block length along the last dimension of a rank-2 ``d`` (a shorter last
            block averages what it holds); 1 averages nothing. Ranks 0 and 1 are never
            averaged, and rank 3 and more always over all dimensions after the first two.

    Returns:
        The averaged estimate, shaped like ``d`` (a view of an expanded mean for rank 3 and
        more: copy it before writing into it).

    Raises:
        ValueError: ``block_size < 1``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if d.dim() >= 3:
        return d.mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)
    if d.dim() < 2 or block_size == 1 or d.shape[-1] == 0:
        return d
    rows, n = d.shape
    full = (n // block_size) * block_size
    out = torch.empty_like(d)
    if full:
        blocks = d[:, :full].reshape(rows, full // block_size, block_size)
        out[:, :full] = blocks.mean(dim=-1, keepdim=True).expand_as(blocks).reshape(rows, full)
    if full < n:
        out[:, full:] = d[:, full:].mean(dim=-1, keepdim=True)
    return out
