"""The AdaHessian update as one pure function over lists of tensors.

:class:`adahessian.AdaHessian` only gathers tensors and counters and calls :func:`adahessian`; the
function mutates ``params``, ``exp_avgs`` and ``exp_hessian_diag_sqs`` in place and touches
nothing else. It has a plain per-tensor path and a multi-tensor (``torch._foreach_*``) path that
run the same operations in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .averaging import spatial_average as _spatial_average

__all__ = ["Hyperparameters", "adahessian", "hessian_due", "hessian_steps", "state_dtype"]


def hessian_due(step: int, update_interval: int = 1, hessian_warmup: int = 0) -> bool:
    """Whether step ``step`` (0-based: the steps taken before it) estimates the Hessian: each of
    the first ``hessian_warmup`` steps, then every ``update_interval``-th.

    Args:
        step: the number of steps taken before this one.
        update_interval: estimate the Hessian every this many steps after the warm-up.
        hessian_warmup: the number of first steps that all estimate it.

    Returns:
        True when that step is a Hessian step.
    """
    if step < hessian_warmup:
        return True
    return (step - hessian_warmup) % update_interval == 0


def hessian_steps(steps: int, update_interval: int = 1, hessian_warmup: int = 0) -> int:
    """How many of the first ``steps`` steps estimate the Hessian (:func:`hessian_due`).

    Args:
        steps: the number of steps counted from the first.
        update_interval: as for :func:`hessian_due`.
        hessian_warmup: as for :func:`hessian_due`.

    Returns:
        The number of Hessian steps among them.
    """
    if steps <= hessian_warmup:
        return max(0, steps)
    return hessian_warmup + -(-(steps - hessian_warmup) // update_interval)


def state_dtype(t: Tensor) -> torch.dtype:
    """The dtype of the moments of a parameter: float32 for float16/bfloat16 ones (their
    squares overflow float16), the parameter's own otherwise.

    Args:
        t: the parameter.

    Returns:
        The dtype of its moments and of its Hessian-diagonal estimate.
    """
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


@dataclass(frozen=True)
class Hyperparameters:
    """The hyperparameters of one AdaHessian update (those of one parameter group)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    hessian_power: float
    block_size: int
    spatial_average: bool
    update_clip: float | None = None


def adahessian(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    hessians: Sequence[Tensor] | None,
    exp_avgs: Sequence[Tensor],
    exp_hessian_diag_sqs: Sequence[Tensor],
    steps: Sequence[int],
    hessian_steps: Sequence[int],
    *,
    foreach: bool = False,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    hessian_power: float,
    block_size: int,
    spatial_average: bool,
    update_clip: float | None = None,
) -> None:
    r"""Apply one AdaHessian step to ``params`` in place.

    With :math:`g` the gradient, :math:`\hat D` the Hessian-diagonal estimate (``hessians``; None on
    a step without a new estimate), :math:`t` = ``steps`` and :math:`h` = ``hessian_steps`` (both
    already counting this step):

    .. math::

        D &= \operatorname{avg}(|\hat D|) \quad\text{(spatial averaging, see averaging.py)} \\
        s &\leftarrow \beta_2 s + (1-\beta_2) D^2 \quad\text{(only when an estimate is given)} \\
        m &\leftarrow \beta_1 m + (1-\beta_1) g \\
        u &= \operatorname{clip}_{[-c, c]}\Bigl(
            \frac{m / (1-\beta_1^t)}{(s / (1-\beta_2^h))^{k/2} + \epsilon}\Bigr) \\
        p &\leftarrow p - \mathrm{lr}\,( u + \mathrm{wd}\, p )

    where the clip to :math:`[-c, c]` (``update_clip`` :math:`= c`) is applied only when
    ``update_clip`` is not None (None is the paper's update). Every parameter passed must have
    :math:`h \ge 1`.

    Args:
        params: the parameters, updated in place.
        grads: their gradients :math:`g`.
        hessians: the signed Hessian-diagonal estimates :math:`\hat D` (``v * Hv``), one per
            parameter, or None on a step without a new estimate.
        exp_avgs: the first moments :math:`m`, updated in place.
        exp_hessian_diag_sqs: the Hessian moving averages :math:`s`, updated in place when
            ``hessians`` is given.
        steps: :math:`t` per parameter, counting this step.
        hessian_steps: :math:`h` per parameter, counting this step's estimate if any.
        foreach: use the multi-tensor ``torch._foreach_*`` path instead of a per-tensor loop.
        lr: the learning rate.
        beta1: :math:`\beta_1`, the gradient average's coefficient.
        beta2: :math:`\beta_2`, the Hessian average's coefficient.
        eps: :math:`\epsilon`, added to the denominator.
        weight_decay: the decoupled decay ``wd``.
        hessian_power: :math:`k`.
        block_size: the block length of the spatial averaging of rank-2 parameters.
        spatial_average: average the estimate (False: :math:`D = |\hat D|`).
        update_clip: :math:`c`, or None for no clip.
    """
    n = len(params)
    for name, seq in (
        ("grads", grads),
        ("exp_avgs", exp_avgs),
        ("exp_hessian_diag_sqs", exp_hessian_diag_sqs),
        ("steps", steps),
        ("hessian_steps", hessian_steps),
    ):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} parameters")
    if hessians is not None and len(hessians) != n:
        raise ValueError(f"hessians has {len(hessians)} entries for {n} parameters")
    if any(h < 1 for h in hessian_steps):
        raise ValueError("every parameter needs at least one Hessian estimate (hessian_steps >= 1)")
    if update_clip is not None and not update_clip > 0:
        raise ValueError(f"update_clip must be None or a number > 0, got {update_clip!r}")
    if n == 0:
        return
    hp = Hyperparameters(
        lr, beta1, beta2, eps, weight_decay, hessian_power, block_size, spatial_average, update_clip
    )
    fn = _multi_tensor if foreach else _single_tensor
    fn(params, grads, hessians, exp_avgs, exp_hessian_diag_sqs, steps, hessian_steps, hp)


def _curvature(hessian: Tensor, hp: Hyperparameters) -> Tensor:
    d = hessian.abs()
    return _spatial_average(d, hp.block_size) if hp.spatial_average else d


def _single_tensor(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    hessians: Sequence[Tensor] | None,
    exp_avgs: Sequence[Tensor],
    exp_hessian_diag_sqs: Sequence[Tensor],
    steps: Sequence[int],
    hessian_steps: Sequence[int],
    hp: Hyperparameters,
) -> None:
    for i, param in enumerate(params):
        exp_avg, exp_hess = exp_avgs[i], exp_hessian_diag_sqs[i]
        if hessians is not None:
            d = _curvature(hessians[i], hp)
            exp_hess.mul_(hp.beta2).addcmul_(d, d, value=1 - hp.beta2)
        exp_avg.lerp_(grads[i], 1 - hp.beta1)
        bias_correction1 = 1 - hp.beta1 ** steps[i]
        bias_correction2 = 1 - hp.beta2 ** hessian_steps[i]
        denom = exp_hess.div(bias_correction2)
        if hp.hessian_power == 1:
            denom.sqrt_()
        else:
            denom.pow_(hp.hessian_power / 2)
        denom.add_(hp.eps)
        if hp.weight_decay != 0:
            param.mul_(1 - hp.lr * hp.weight_decay)
        if hp.update_clip is None:
            param.addcdiv_(exp_avg, denom, value=-hp.lr / bias_correction1)
        else:
            update = exp_avg.div(denom).div_(bias_correction1)
            update.clamp_(-hp.update_clip, hp.update_clip)
            param.add_(update, alpha=-hp.lr)


def _multi_tensor(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    hessians: Sequence[Tensor] | None,
    exp_avgs: Sequence[Tensor],
    exp_hessian_diag_sqs: Sequence[Tensor],
    steps: Sequence[int],
    hessian_steps: Sequence[int],
    hp: Hyperparameters,
) -> None:
    params, grads = list(params), list(grads)
    exp_avgs, exp_hess = list(exp_avgs), list(exp_hessian_diag_sqs)
    if hessians is not None:
        ds = [_curvature(h, hp) for h in hessians]
        torch._foreach_mul_(exp_hess, hp.beta2)
        torch._foreach_addcmul_(exp_hess, ds, ds, value=1 - hp.beta2)
    torch._foreach_lerp_(exp_avgs, grads, 1 - hp.beta1)
    bias_correction2 = [1 - hp.beta2**h for h in hessian_steps]
    denom = torch._foreach_div(exp_hess, bias_correction2)
    if hp.hessian_power == 1:
        torch._foreach_sqrt_(denom)
    else:
        torch._foreach_pow_(denom, hp.hessian_power / 2)
    torch._foreach_add_(denom, hp.eps)
    if hp.weight_decay != 0:
        torch._foreach_mul_(params, 1 - hp.lr * hp.weight_decay)
    if hp.update_clip is None:
        step_sizes = [-hp.lr / (1 - hp.beta1**t) for t in steps]
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)
    else:
        updates = torch._foreach_div(exp_avgs, denom)
        torch._foreach_div_(updates, [1 - hp.beta1**t for t in steps])
        torch._foreach_clamp_min_(updates, -hp.update_clip)
        torch._foreach_clamp_max_(updates, hp.update_clip)
        torch._foreach_add_(params, updates, alpha=-hp.lr)
