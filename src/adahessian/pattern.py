"""The first pass's activation pattern, kept in the finite-difference passes.

A ReLU network is piecewise linear, and autodiff's Hessian-vector product is the derivative of
the gradient *on the linear piece* the forward pass is on: it ignores the kinks. A difference of
gradients at :math:`\\theta` and :math:`\\theta + \\varepsilon v` does not: every unit that
switches sides inside the step adds a spike of about :math:`1/\\varepsilon`, and the quotient
grows like :math:`\\varepsilon^{-1/2}` instead of converging. Keeping the pattern removes the
spikes: in the perturbed pass every kink takes the side the first pass took,

.. math::

    \\operatorname{relu}(x') \\;\\to\\; x' \\odot [x > 0], \\qquad
    \\operatorname{maxpool}(x') \\;\\to\\; x'[\\operatorname{argmax} x],

the same linear piece, differentiably. The quotient then converges to autodiff's product, as
:math:`O(\\varepsilon)` (forward difference) and :math:`O(\\varepsilon^2)` (central).

Covered, in every spelling that reaches :mod:`torch.nn.functional` or the ``torch`` namespace:
ReLU (``nn.ReLU`` incl. ``inplace=True``, ``F.relu``, ``F.relu_``, ``torch.relu``,
``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_``), LeakyReLU (``F.leaky_relu``,
``F.leaky_relu_``), Hardtanh and ReLU6 (``F.hardtanh``, ``F.hardtanh_``, ``F.relu6``), and max
pooling in 1, 2 and 3 dimensions (``nn.MaxPool1d/2d/3d``, ``F.max_pool*d``,
``F.max_pool*d_with_indices``, ``torch.max_pool*d``). Not covered (they keep their kinks):
``clamp``, ``abs``, ``maximum``/``minimum``, ``max``/``min`` reductions, adaptive and fractional
max pooling, Hardswish, Hardsigmoid, ``threshold``, sorting and top-k.

The pattern is recorded by a :class:`torch.overrides.TorchFunctionMode` around the first pass and
replayed by the same mode around the perturbed passes, in call order: one bit per unit for ReLU
and LeakyReLU (two for Hardtanh), the argmax as an ``int32`` per pooled output. It works under
``torch.compile`` (the mode is traced into the graph: one graph records, one replays), and with
activation checkpointing (the forward recomputed inside ``backward()`` replays the masks its
segment used; not with nested checkpoints, which raise). A perturbed pass that takes another
path than the first (another kink, another shape, more or fewer kinks) raises
:class:`ActivationPatternError`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ._checks import FiniteDifferenceError

__all__ = ["ActivationPatternError", "Pattern", "PatternMode"]


class ActivationPatternError(FiniteDifferenceError):
    """A perturbed pass did not take the first pass's path: another kink, another shape, or
    more or fewer kinks (data-dependent control flow)."""


_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack(mask: Tensor) -> Tensor:
    """A mask (bool, or uint8 holding 0 and 1) as bits: ``ceil(n / 8)`` bytes (bit ``j`` of byte
    ``i`` is element ``j * ceil(n / 8) + i`` of the flattened mask)."""
    flat = mask.reshape(-1).view(torch.uint8)  # a bool is one byte, 0 or 1
    pad = -flat.numel() % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    rows = flat.view(8, -1)
    shifts = _SHIFTS.to(rows.device).view(8, 1)
    return (rows << shifts).sum(0, dtype=torch.uint8)


def _rows(bits: Tensor, n: int) -> Tensor:
    """The first ``n`` entries of the mask packed into ``bits``, as uint8 0 and 1."""
    shifts = _SHIFTS.to(bits.device).view(8, 1)
    return ((bits.view(1, -1) >> shifts) & 1).view(-1)[:n]


def unpack(bits: Tensor, shape: torch.Size) -> Tensor:
    """The boolean mask of ``shape`` that :func:`pack` packed into ``bits``."""
    return _rows(bits, shape.numel()).view(torch.bool).view(shape)


def unpack_as(bits: Tensor, like: Tensor) -> Tensor:
    """The mask packed into ``bits`` as 0 and 1 in ``like``'s dtype and shape (a float mask
    multiplies faster than a boolean one selects)."""
    return _rows(bits, like.numel()).to(like.dtype).view(like.shape)


_SAME_SIZE_INT = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def positive(x: Tensor) -> Tensor:
    """``x > 0`` as uint8 0 and 1. For floats read from the sign and magnitude bits (as an integer
    of the same size, clamped to [0, 1]), which is faster than a comparison's boolean output;
    NaN counts as positive."""
    if x.is_floating_point() and x.element_size() in _SAME_SIZE_INT:
        return x.view(_SAME_SIZE_INT[x.element_size()]).clamp(0, 1).to(torch.uint8)
    return (x > 0).to(torch.uint8)


class _KeptPiece(torch.autograd.Function):
    """The linear piece of a kink that the first pass was on, for the perturbed input ``x``:
    ``x * f + c`` with the slope ``f`` = 1 on the units packed into ``keep`` and ``slope``
    elsewhere, and (Hardtanh) the constant ``c`` = ``max_val`` on the units packed into ``above``
    and ``min_val`` on the others outside, 0 inside. Only the bits are saved for backward, whose
    gradient is ``grad * f``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        keep: Tensor,
        slope: float,
        above: Tensor | None,
        min_val: float,
        max_val: float,
        inplace: bool,
    ) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.slope = slope
        inside = unpack_as(keep, x)
        factor = inside if slope == 0 else inside + (1 - inside) * slope  # exactly 1 or slope
        if inplace:
            ctx.mark_dirty(x)
            out = x.mul_(factor)
        else:
            out = x * factor
        if above is not None:
            limit = unpack_as(above, x).mul_(max_val - min_val).add_(min_val)
            out.add_(limit.mul_(1 - inside))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (keep,) = ctx.saved_tensors
        inside = unpack_as(keep, grad)
        factor = inside if ctx.slope == 0 else inside + (1 - inside) * ctx.slope
        return grad * factor, None, None, None, None, None, None


@dataclass
class Kink:
    """One call of a kink in the first pass: what it was, the shape of its input, and the side
    each unit took (packed masks, or the argmax indices of a max pooling)."""

    kind: str
    shape: torch.Size
    data: tuple[Tensor, ...]


class Pattern:
    """The kinks of one pass, in call order."""

    def __init__(self) -> None:
        self.kinks: list[Kink] = []

    def __len__(self) -> int:
        return len(self.kinks)

    @property
    def nbytes(self) -> int:
        """The memory the pattern holds."""
        return sum(t.numel() * t.element_size() for k in self.kinks for t in k.data)


def _checkpoint_frame() -> Any:
    """The activation-checkpoint frame (``torch.utils.checkpoint``, non-reentrant) whose forward
    is running, found through the saved-tensor hook it installs; None outside checkpointing."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, RuntimeError):  # pragma: no cover - another torch
        return None
    if hooks is None:
        return None
    for cell in getattr(hooks[0], "__closure__", None) or ():
        try:
            obj = cell.cell_contents
        except ValueError:  # pragma: no cover - an empty cell
            continue
        if type(obj).__name__ == "_CheckpointFrame" and hasattr(obj, "recompute_fn"):
            return obj
    return None


def _reentrant_checkpoint() -> Any:
    """The ``ctx`` of the reentrant activation checkpoint (``use_reentrant=True``) whose forward
    is running (it runs without gradients), found on the call stack; None outside one."""
    if torch.is_grad_enabled():
        return None
    code = torch.utils.checkpoint.CheckpointFunction.forward.__code__
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return frame.f_locals.get("ctx")
        frame = frame.f_back
    return None


class PatternMode(TorchFunctionMode):
    """Record the kinks of a pass into ``pattern`` (``replay=False``), or make a pass take the
    sides ``pattern`` recorded (``replay=True``). Use one mode per pass; after a replayed pass,
    :meth:`finish` checks that it met every kink.

    A checkpointed segment (``torch.utils.checkpoint``) recomputes its forward inside
    ``backward()``, where this mode is off: while replaying, the mode wraps the segment's
    recomputation in a mode that replays the kinks (``positions``) its forward met."""

    def __init__(
        self, pattern: Pattern, *, replay: bool, positions: list[int] | None = None
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self.replay = replay
        self.positions = positions
        self.count = 0
        self.segments: dict[int, tuple[Any, list[int]]] = {}  # frame id -> frame, its kinks

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        spec = _KINKS.get(func)
        if spec is None:
            return func(*args, **kwargs)
        handler, fixed = spec
        return handler(self, *args, **kwargs, **fixed)

    def next(self, kind: str, x: Tensor) -> Kink | None:
        """The recorded kink this call replays (None: compute it as usual and :meth:`record`
        it)."""
        if not self.replay:
            return None
        kinks = self.pattern.kinks
        if self.positions is not None:  # a checkpointed segment's recomputation
            if not torch.compiler.is_compiling() and (
                _checkpoint_frame() is not None or _reentrant_checkpoint() is not None
            ):
                raise ActivationPatternError(
                    f"a {kind} on {tuple(x.shape)} runs in a checkpoint nested inside a "
                    "checkpointed segment's recomputation: its kinks cannot be matched to the "
                    "first pass's, so checkpoints must not be nested while the pattern is kept; "
                    "checkpoint without nesting, or turn the pattern off with "
                    "fd_keep_pattern=False"
                )
            if self.count >= len(self.positions):
                raise ActivationPatternError(
                    f"a checkpointed segment's recomputation met more kinks than its forward "
                    f"({len(self.positions)}): a {kind} on {tuple(x.shape)}. The segment's "
                    "forward must be deterministic, and checkpoints must not be nested; or turn "
                    "the pattern off with fd_keep_pattern=False"
                )
            position = self.positions[self.count]
        else:
            position = self.count
            if not torch.compiler.is_compiling():
                frame = _checkpoint_frame()
                if frame is not None:
                    self._segment(frame, "recompute_fn").append(position)
                else:
                    ctx = _reentrant_checkpoint()
                    if ctx is not None:
                        self._segment(ctx, "run_function").append(position)
        self.count += 1
        if position >= len(kinks):
            raise ActivationPatternError(
                f"the perturbed pass met more kinks than the first pass ({len(kinks)}): kink "
                f"{position + 1} is a {kind} on {tuple(x.shape)}. The closure must take the same "
                "path at θ + εv as at θ (no data-dependent control flow); or turn the pattern off "
                "with fd_keep_pattern=False"
            )
        kink = kinks[position]
        if kink.kind != kind or kink.shape != x.shape:
            raise ActivationPatternError(
                f"the perturbed pass took another path than the first: kink {position + 1} is a "
                f"{kind} on {tuple(x.shape)} where the first pass had a {kink.kind} on "
                f"{tuple(kink.shape)}. The closure must take the same path at θ + εv as at θ (no "
                "data-dependent control flow); or turn the pattern off with fd_keep_pattern=False"
            )
        return kink

    def _segment(self, owner: Any, attr: str) -> list[int]:
        """The kinks of a checkpointed segment, whose recomputation (``owner.attr``: the
        checkpoint's frame or autograd context) is made to replay them."""
        entry = self.segments.get(id(owner))
        if entry is None:
            positions: list[int] = []
            original = getattr(owner, attr)
            pattern = self.pattern

            def recompute(*args: Any) -> Any:
                with PatternMode(pattern, replay=True, positions=positions):
                    return original(*args)

            setattr(owner, attr, recompute)
            entry = self.segments[id(owner)] = (owner, positions)
        return entry[1]

    def record(self, kind: str, x: Tensor, *data: Tensor) -> None:
        self.pattern.kinks.append(Kink(kind, x.shape, data))

    def finish(self) -> None:
        """After a replayed pass: it met every kink of the first."""
        if self.replay and self.count != len(self.pattern.kinks):
            raise ActivationPatternError(
                f"the perturbed pass met {self.count} kinks where the first pass met "
                f"{len(self.pattern.kinks)}: the closure must take the same path at θ + εv as at "
                "θ (no data-dependent control flow); or turn the pattern off with "
                "fd_keep_pattern=False"
            )


# ---------------------------------------------------------------------------- the kinks


def _relu(mode: PatternMode, x: Tensor, inplace: bool = False) -> Tensor:
    kink = mode.next("relu", x)
    if kink is None:
        out = torch.relu_(x) if inplace else torch.relu(x)
        mode.record("relu", x, pack(positive(out)))  # the units relu passes
        return out
    return _KeptPiece.apply(x, kink.data[0], 0.0, None, 0.0, 0.0, inplace)


def _leaky_relu(
    mode: PatternMode, x: Tensor, negative_slope: float = 0.01, inplace: bool = False
) -> Tensor:
    kind = f"leaky_relu({negative_slope})"
    kink = mode.next(kind, x)
    if kink is None:
        bits = pack(positive(x))  # before an in-place call changes x
        if inplace:
            out = torch._C._nn.leaky_relu_(x, negative_slope)
        else:
            out = torch._C._nn.leaky_relu(x, negative_slope)
        mode.record(kind, x, bits)
        return out
    return _KeptPiece.apply(x, kink.data[0], negative_slope, None, 0.0, 0.0, inplace)


def _hardtanh(
    mode: PatternMode,
    x: Tensor,
    min_val: float = -1.0,
    max_val: float = 1.0,
    inplace: bool = False,
) -> Tensor:
    kind = f"hardtanh({min_val}, {max_val})"
    kink = mode.next(kind, x)
    if kink is None:
        inside = (x > min_val) & (x < max_val)  # where autograd's derivative is 1
        above = x >= max_val
        mode.record(kind, x, pack(inside), pack(above))
        if inplace:
            return torch._C._nn.hardtanh_(x, min_val, max_val)
        return torch._C._nn.hardtanh(x, min_val, max_val)
    inside_bits, above_bits = kink.data
    return _KeptPiece.apply(x, inside_bits, 0.0, above_bits, min_val, max_val, inplace)


def _relu6(mode: PatternMode, x: Tensor, inplace: bool = False) -> Tensor:
    return _hardtanh(mode, x, 0.0, 6.0, inplace)


_WITH_INDICES = {
    1: F.max_pool1d_with_indices,
    2: F.max_pool2d_with_indices,
    3: F.max_pool3d_with_indices,
}


def _max_pool(
    mode: PatternMode,
    x: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    dims: int,
    always_indices: bool = False,
) -> Any:
    if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0):
        stride = None
    kind = (
        f"max_pool{dims}d(kernel_size={kernel_size}, stride={stride}, padding={padding}, "
        f"dilation={dilation}, ceil_mode={ceil_mode})"
    )
    kink = mode.next(kind, x)
    if kink is None:
        out, indices = _WITH_INDICES[dims](x, kernel_size, stride, padding, dilation, ceil_mode)
        plane = x.shape[-dims:].numel()
        small = indices.to(torch.int32) if plane < 2**31 else indices
        mode.record(kind, x, small)
    else:
        small = kink.data[0]
        indices = small.long()
        flat = x.flatten(start_dim=x.dim() - dims)
        out = flat.gather(-1, indices.flatten(start_dim=indices.dim() - dims)).view(indices.shape)
    if return_indices or always_indices:
        return out, indices
    return out


def _kink_table() -> dict[Any, tuple[Callable[..., Any], dict[str, Any]]]:
    table: dict[Any, tuple[Callable[..., Any], dict[str, Any]]] = {
        F.relu: (_relu, {}),
        torch.relu: (_relu, {}),
        Tensor.relu: (_relu, {}),
        torch.relu_: (_relu, {"inplace": True}),
        Tensor.relu_: (_relu, {"inplace": True}),
        F.leaky_relu: (_leaky_relu, {}),
        F.leaky_relu_: (_leaky_relu, {"inplace": True}),
        torch._C._nn.leaky_relu: (_leaky_relu, {}),
        F.hardtanh: (_hardtanh, {}),
        F.hardtanh_: (_hardtanh, {"inplace": True}),
        torch._C._nn.hardtanh: (_hardtanh, {}),
        F.relu6: (_relu6, {}),
        torch._C._nn.relu6: (_relu6, {}),
    }
    for dims in (1, 2, 3):
        table[getattr(F, f"max_pool{dims}d")] = (_max_pool, {"dims": dims})
        table[_WITH_INDICES[dims]] = (_max_pool, {"dims": dims, "always_indices": True})
        table[getattr(torch, f"max_pool{dims}d")] = (_max_pool, {"dims": dims})
    table[torch.max_pool1d_with_indices] = (_max_pool, {"dims": 1, "always_indices": True})
    return table


_KINKS = _kink_table()
