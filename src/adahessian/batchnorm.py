r"""Training-mode batch normalisation with a cheaper, exact double backward.

AdaHessian differentiates the gradient once more on every Hessian step. On ResNets most of that
time goes into PyTorch's double backward of batch norm (``NativeBatchNormBackwardBackward0``), a
composite of many elementwise passes over the activations. This module re-derives it in closed
form as a few per-channel reductions plus a handful of fused elementwise updates.

**Forward and first backward** are PyTorch's own kernels (``torch.native_batch_norm`` and
``aten.native_batch_norm_backward``), so outputs, running statistics and gradients are those of
``nn.BatchNorm*d``. Per channel, over the :math:`M` entries of the batch and spatial dimensions,
with :math:`\mu`, :math:`r = (\sigma^2+\epsilon)^{-1/2}`, :math:`\hat x = (x-\mu) r`,
:math:`y = \gamma \hat x + \beta` and :math:`a = \gamma r`, the backward maps the output gradient
:math:`g` to

.. math::

    d\beta = M A,\quad d\gamma = M B,\quad dx = a\,(g - A - B \hat x),
    \qquad A = \overline{g},\ B = \overline{g \hat x}

(bars are per-channel means over the :math:`M` entries).

**Double backward.** Given the cotangents :math:`u` of :math:`dx`, :math:`p` of :math:`d\gamma`
and :math:`q` of :math:`d\beta`, and the per-channel means :math:`U = \overline{u}`,
:math:`V = \overline{u \hat x}`, :math:`W = \overline{u g}`, differentiating
:math:`S = \sum u\, dx + p\, d\gamma + q\, d\beta` gives, with :math:`c = p - aV`,

.. math::

    \partial_g S &= a u + c \hat x + (q - aU) \\
    \partial_\gamma S &= r M (W - AU - BV) \\
    \partial_x S &= r c (g - A) - r a B (u - U)
        - r \hat x \,\bigl[c B + a (W - AU - 2BV)\bigr]

(the last uses :math:`\partial\hat x/\partial x` including the dependence of :math:`\mu` and
:math:`r` on :math:`x`, and :math:`\partial r / \partial x = -r^2 \hat x / M`). Each result is
an affine combination of :math:`g`, :math:`u` and :math:`x` with per-channel coefficients:
two reduction passes (``native_batch_norm_backward`` computes :math:`\sum u` and
:math:`\sum u\hat x` in one pass, and :math:`\sum u g` in another) and one ``addcmul`` chain per
output. The double backward is exact but, being hand-written, is itself not differentiable
again (third derivatives raise an error).

Use :func:`use_fast_batchnorm` to switch a model's ``nn.BatchNorm1d/2d/3d`` layers in place, or
the :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d` modules directly. In eval
mode (running statistics) they call the stock operator. The ``autograd.Function`` has no
``torch.func`` rules: use it with ``backward(create_graph=True)`` (reverse-over-reverse), not
inside :func:`adahessian.forward_hutchinson`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "batch_norm_train",
    "use_fast_batchnorm",
]

_bn_backward = torch.ops.aten.native_batch_norm_backward.default


def _channel_view(t: Tensor, ndim: int) -> Tensor:
    """Per-channel vector ``[C]`` shaped to broadcast against ``[N, C, *spatial]``."""
    return t.view((1, -1) + (1,) * (ndim - 2))


class _BatchNormBackward(torch.autograd.Function):
    """``(g, x, weight) -> (dx, dweight, dbias)`` of training-mode batch norm, with the
    closed-form double backward of the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        grad_out: Tensor,
        x: Tensor,
        weight: Tensor | None,
        mean: Tensor,
        invstd: Tensor,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dx, dweight, dbias = _bn_backward(
            grad_out, x, weight, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(grad_out, x, weight, mean, invstd, dweight, dbias)
        ctx.eps = eps
        return dx, dweight, dbias

    @staticmethod
    def backward(
        ctx: Any, u: Tensor | None, p: Tensor | None, q: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            # A graph of this backward was asked for (create_graph=True): third derivatives.
            # The closed form below is not differentiable again, and torch's once_differentiable
            # would silently drop the terms through the saved tensors, so refuse.
            raise RuntimeError(
                "adahessian.batchnorm: the closed-form batch-norm double backward cannot be "
                "differentiated again (third derivatives); do not pass create_graph=True to the "
                "Hessian-vector product, or use torch.nn.BatchNorm*d"
            )
        g, x, weight, mean, r, dweight, dbias = ctx.saved_tensors
        need_g, need_x, need_w = ctx.needs_input_grad[:3]
        nd = x.dim()
        m = x.numel() // x.shape[1]
        a = r if weight is None else weight * r  # gamma * invstd
        mean_g = dbias / m  # A
        mean_gx = dweight / m  # B
        zeros = torch.zeros_like(r)
        if u is not None:
            _, sum_ux, sum_u = _bn_backward(
                u, x, None, None, None, mean, r, True, ctx.eps, [False, True, True]
            )
            mean_u, mean_ux = sum_u / m, sum_ux / m  # U, V
        else:
            mean_u = mean_ux = zeros
        p = zeros if p is None else p
        q = zeros if q is None else q
        if u is not None and (need_x or need_w):  # W = mean(u g), one more pass
            ones = torch.ones_like(r)
            _, sum_ug, _ = _bn_backward(
                u, g, None, None, None, zeros, ones, True, ctx.eps, [False, True, False]
            )
            mean_ug = sum_ug / m
        else:
            mean_ug = zeros
        c = p - a * mean_ux
        # W - A U - B V: the cotangent of the scale a = gamma * r, per entry
        k = mean_ug - mean_g * mean_u - mean_gx * mean_ux

        grad_g = grad_x = grad_w = None
        if need_g:  # a u + c r (x - mu) + (q - a U)
            cr = c * r
            const = q - a * mean_u - cr * mean
            grad_g = torch.addcmul(_channel_view(const, nd), x, _channel_view(cr, nd))
            if u is not None:
                grad_g.addcmul_(u, _channel_view(a, nd))
        if need_x:
            e = c * mean_gx + a * (k - mean_gx * mean_ux)  # c B + a (W - AU - 2BV)
            coef_g = r * c
            coef_u = -r * a * mean_gx
            coef_x = -r * r * e
            const = -coef_g * mean_g - coef_u * mean_u - coef_x * mean
            grad_x = torch.addcmul(_channel_view(const, nd), x, _channel_view(coef_x, nd))
            grad_x.addcmul_(g, _channel_view(coef_g, nd))
            if u is not None:
                grad_x.addcmul_(u, _channel_view(coef_u, nd))
        if need_w and weight is not None:
            grad_w = r * m * k
        return grad_g, grad_x, grad_w, None, None, None


class _BatchNormTrain(torch.autograd.Function):
    """Training-mode batch norm; its backward is :class:`_BatchNormBackward`, so a graph built
    with ``create_graph=True`` gets the closed-form double backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momentum: float,
        eps: float,
    ) -> Tensor:
        out, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, momentum, eps
        )
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dweight, dbias = _BatchNormBackward.apply(grad_out, x, weight, mean, invstd, ctx.eps)
        return (
            dx if ctx.needs_input_grad[0] else None,
            dweight if weight is not None and ctx.needs_input_grad[1] else None,
            dbias if ctx.has_bias and ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
        )


def batch_norm_train(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, training=True, momentum, eps)``
    with the closed-form double backward. The running statistics, when given, are updated in
    place exactly as by ``F.batch_norm``.

    Args:
        x: the input, ``[batch, channels, *spatial]``.
        weight: the per-channel scale, or None.
        bias: the per-channel shift, or None.
        running_mean: the running mean, updated in place, or None.
        running_var: the running (unbiased) variance, updated in place, or None.
        momentum: the running statistics' update factor.
        eps: added to the batch variance.

    Returns:
        The normalised input, shaped like ``x``.

    Raises:
        ValueError: ``x`` has rank below 2.
    """
    if x.dim() < 2:
        raise ValueError(f"batch norm needs an input of rank >= 2, got shape {tuple(x.shape)}")
    out: Tensor = _BatchNormTrain.apply(x, weight, bias, running_mean, running_var, momentum, eps)
    return out


class _FastBatchNormMixin:
    """``forward`` of ``nn.modules.batchnorm._BatchNorm`` with :func:`batch_norm_train` whenever
    batch statistics are used; eval mode with running statistics uses the stock operator."""

    def forward(self, input: Tensor) -> Tensor:
        bn: Any = self
        bn._check_input_dim(input)
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average
                factor = 1.0 / float(bn.num_batches_tracked)
        use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        if not use_batch_stats:
            return nn.functional.batch_norm(
                input, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, factor, bn.eps
            )
        track = not bn.training or bn.track_running_stats
        return batch_norm_train(
            input,
            bn.weight,
            bn.bias,
            bn.running_mean if track else None,
            bn.running_var if track else None,
            factor,
            bn.eps,
        )


class BatchNorm1d(_FastBatchNormMixin, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with the closed-form double backward in training mode."""


class BatchNorm2d(_FastBatchNormMixin, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the closed-form double backward in training mode."""


class BatchNorm3d(_FastBatchNormMixin, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with the closed-form double backward in training mode."""


_FAST = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}


def use_fast_batchnorm(model: nn.Module) -> nn.Module:
    """Switch every ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` and ``nn.BatchNorm3d`` in ``model``
    (the model itself included) to the fast class of the same rank, in place, and return
    ``model``.

    Each layer keeps its identity, so its parameters, buffers, hooks and settings (``eps``,
    ``momentum``, ``affine``, ``track_running_stats``) are untouched and an optimizer built
    before the switch still holds the right tensors. Only layers whose class is exactly one of
    the three stock classes are switched (not ``SyncBatchNorm``, ``LazyBatchNorm*d`` or other
    subclasses).

    Use it with the reverse-over-reverse path (``loss.backward(create_graph=...)``); the fast
    class has no ``torch.func`` rules, so :func:`adahessian.forward_hutchinson` cannot transform
    it and :class:`adahessian.CompiledCurvature` refuses it.

    Args:
        model: the model; its batch-norm layers are switched in place.

    Returns:
        ``model`` itself.
    """
    for module in model.modules():
        fast = _FAST.get(type(module))  # type: ignore[arg-type]
        if fast is not None:
            module.__class__ = fast
    return model
