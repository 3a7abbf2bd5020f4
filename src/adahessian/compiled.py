"""A compiled curvature path: loss, gradient and Hutchinson's estimate from one ``torch.compile``
function.

``torch.compile`` cannot compile double backward (``loss.backward(create_graph=True)``), but it
does compile ``torch.func``'s forward-over-reverse product: ``jvp`` of ``grad_and_value`` through
``functional_call`` (the transform :func:`adahessian.forward_hutchinson` runs eagerly).
:class:`CompiledCurvature` compiles that whole transform, probes batched with ``vmap``, into one
graph, and hands its estimate to the optimizer (:meth:`adahessian.AdaHessian.add_hessian_estimate`,
with the step's own probes from :meth:`adahessian.AdaHessian.hessian_probes`). Plain steps
(between Hessian steps, with ``update_interval > 1``) are an ordinary eager forward and
``backward()``, so they cost what a first-order optimizer's step costs; with
``compile_plain=True`` they are a compiled ``grad_and_value`` instead.

Usage (three changed lines in a normal loop)::

    opt = AdaHessian(model.parameters(), update_interval=1)
    curv = CompiledCurvature(model, criterion)           # once; compiles on the first Hessian step
    for x, y in loader:
        opt.zero_grad()
        loss = curv.backward(opt, x, y)                  # was: criterion(model(x), y).backward(...)
        opt.step()

On a Hessian step (``opt.hessian_due``) :meth:`CompiledCurvature.backward` draws the probes
exactly as the eager step would (``opt.n_samples`` calls of :func:`adahessian.rademacher` over
the optimizer's parameters, from its own generator), runs the compiled function, adds the
gradients to ``p.grad`` as ``backward()`` would, copies the updated buffers (BatchNorm's running
statistics) back into the model and adds the estimate to the step's in the optimizer, which the
next ``opt.step()`` uses (as after :meth:`adahessian.AdaHessian.backward`; a copy in step order is
left in :attr:`CompiledCurvature.estimate`). The parameters after N steps therefore equal those
of N eager steps (``loss.backward(create_graph=opt.hessian_due); opt.step()``) up to rounding.

What it supports and refuses:

* BatchNorm: the buffers are cloned inside the transform and written back once per step, so the
  running statistics are updated exactly once, as in eager training. Dropout draws once per
  forward; the gradient and every probe's product see the same mask (the compiled random stream
  is not eager's unless ``torch._inductor.config.fallback_random`` is set).
* No recompilation in steady state. Shapes are compiled static (dynamo's tracing of
  ``torch.func.jvp`` specialises the batch size in torch 2.13), so a batch of another size than
  the compiled one (a smaller last batch) runs the same function uncompiled: the same result at
  eager speed (:attr:`CompiledCurvature.eager_calls` counts them; ``recompile_batch_sizes=True``
  compiles each size instead). A changed learning rate (the optimizer step is not compiled) and
  ``model.eval()`` for evaluation between training steps recompile nothing. A Hessian step taken
  in another train/eval mode or with another ``n_samples`` compiles once more.
* The first call of each kind (``n_samples``, train/eval mode) also runs the function
  uncompiled once, to check that ``torch.func`` can transform the model and loss (the compiled
  code could crash or silently drop a derivative where eager ``torch.func`` raises); its result
  is dropped and the random state restored.
* Several calls on one Hessian step (gradient accumulation) share the probes and add their
  estimates, as :meth:`adahessian.AdaHessian.backward` does.
* Models or losses that ``torch.func`` or ``torch.compile`` cannot handle raise
  :class:`CompiledCurvatureError` (a :class:`adahessian.ForwardOverReverseError`) whose message
  names the eager path. Custom ``torch.autograd.Function``s (e.g. the fast BatchNorm of
  :func:`adahessian.use_fast_batchnorm`) are refused up front: under ``torch.compile`` their
  forward-mode derivative can be dropped silently (pytorch#192985).
* Not supported: ``GradScaler`` (mixed precision), keyword inputs, parameters that the loss does
  not reach (they get a zero gradient here, where ``backward()`` leaves ``p.grad`` None).

The time spent compiling is reported apart: :attr:`CompiledCurvature.compile_seconds` is the
wall time of the calls that compiled (:attr:`CompiledCurvature.compiles` counts them).
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import vmap

from .batchnorm import _FastBatchNormMixin
from .hutchinson import check_n_samples
from .hvp import (
    ForwardOverReverseError,
    ModuleSplit,
    error_chain,
    functional_curvature,
    is_transform_failure,
)

__all__ = ["CompiledCurvature", "CompiledCurvatureError"]

_EAGER_HINT = (
    "Use the eager path instead: loss.backward(create_graph=opt.hessian_due); opt.step() "
    "(reverse-over-reverse), or adahessian.forward_hutchinson (forward-over-reverse, uncompiled)."
)


class CompiledCurvatureError(ForwardOverReverseError):
    """The model or loss cannot go through the compiled forward-over-reverse transform."""


def _dynamo_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo import exc

    return (exc.Unsupported, exc.BackendCompilerFailed, exc.UserError, exc.InternalTorchDynamoError)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _is_transform_failure(error: BaseException) -> bool:
    return is_transform_failure(error) or isinstance(error, _dynamo_errors())


def _graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _refuse_custom_functions(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, _FastBatchNormMixin):
            raise CompiledCurvatureError(
                f"module {name or type(module).__name__!r} is adahessian's fast BatchNorm, a "
                "custom torch.autograd.Function whose forward-mode derivative torch.compile can "
                "drop silently (pytorch#192985). Keep the stock nn.BatchNorm*d layers for the "
                f"compiled path, or keep use_fast_batchnorm with the eager path. {_EAGER_HINT}"
            )


def _add_grads(params: Sequence[Tensor], grads: Sequence[Tensor]) -> None:
    """Accumulate into ``p.grad`` as ``backward()`` does."""
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.grad = g if p.grad is None else p.grad.detach() + g


def _devices(tensors: Sequence[Tensor]) -> list[Any]:
    """The accelerator devices whose random state :func:`torch.random.fork_rng` must keep."""
    return sorted({t.device for t in tensors if t.device.type != "cpu"}, key=str)


class CompiledCurvature:
    """Loss, gradients and the Hutchinson estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i` from
    one compiled forward-over-reverse function.

    Args:
        model: the module, called as ``model(*inputs)`` in its current train/eval mode.
        loss_fn: ``loss_fn(output, target)`` returns the scalar loss.
        backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` compiles fast and
            runs eagerly, useful in tests).
        mode: the ``torch.compile`` mode (None, ``"max-autotune"``, ...).
        recompile_batch_sizes: compile once more for each new batch size. By default a batch
            whose size differs from the compiled code's (a smaller last batch) runs the same
            function uncompiled instead (same result, eager speed), with no recompilation.
        compile_plain: also compile the plain steps (between Hessian steps): a compiled
            ``torch.func.grad_and_value`` in place of the eager forward and ``backward()``. It
            compiles a second graph; on CPU it made ResNet20's plain step about 0.8x as long.

    Attributes:
        estimate: after a Hessian step's :meth:`backward`, the step's estimate so far (which
            the optimizer already holds), one tensor per parameter with a gradient in
            parameter-group order; None after a plain step.
        compile_seconds: one-time cost: the wall time of the calls that compiled (compile plus
            that step) and of the uncompiled checks.
        compiles: how many calls compiled a graph.
        eager_calls: how many steps ran uncompiled because of their batch size.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        *,
        backend: str | Callable[..., Any] = "inductor",
        mode: str | None = None,
        recompile_batch_sizes: bool = False,
        compile_plain: bool = False,
    ) -> None:
        if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            # torch.compile(model): this class compiles the model's math itself; the wrapper's
            # own compiled forward would only stand in the way of the transforms.
            model = cast(nn.Module, model._orig_mod)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        _refuse_custom_functions(model)
        self.model = model
        self.loss_fn = loss_fn
        self.recompile_batch_sizes = recompile_batch_sizes
        self.compile_plain = compile_plain
        self.estimate: list[Tensor] | None = None
        self.compile_seconds = 0.0
        self.compiles = 0
        self.eager_calls = 0

        def curvature(
            params: dict[str, Tensor],
            frozen: dict[str, Tensor],
            buffers: dict[str, Tensor],
            tangents: dict[str, Tensor],
            inputs: tuple[Any, ...],
            target: Any,
            n_samples: int,
        ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
            grad_fn, with_tangent = functional_curvature(
                model, params, frozen, buffers, inputs, lambda out: loss_fn(out, target)
            )

            if n_samples == 0:  # a plain step: the gradient only
                grads, (loss, state) = grad_fn(params)
                estimate: dict[str, Tensor] = {}
            elif n_samples == 1:
                (grads, loss, state), hvp = with_tangent(tangents)
                estimate = {n: tangents[n] * hvp[n] for n in params}
            else:
                batched = vmap(with_tangent, out_dims=(None, 0), randomness="same")  # type: ignore[arg-type]
                (grads, loss, state), hvp = batched(tangents)
                estimate = {n: (tangents[n] * hvp[n]).sum(0) / n_samples for n in params}
            return loss, grads, estimate, state

        # Dynamo caches compiled code per code object: a copy of its own keeps this instance's
        # graphs apart from other instances' (no recompilation, no shared limit). Shapes are
        # static: dynamo's tracing of torch.func.jvp specialises the batch size anyway in torch
        # 2.13 (and a vmapped convolution's fails with a symbolic one).
        fresh = types.FunctionType(
            curvature.__code__.replace(),
            curvature.__globals__,
            curvature.__name__,
            None,
            curvature.__closure__,
        )
        self._compiled = torch.compile(
            fresh, backend=backend, mode=mode, fullgraph=True, dynamic=False
        )
        self._eager = curvature
        self._checked: set[Any] = set()  # kinds of call checked uncompiled
        self._compiled_keys: set[Any] = set()  # (kind, shapes) the compiled code has run
        self._kinds: set[Any] = set()  # (kind, shapes without the batch size) compiled

    # ------------------------------------------------------------------ the compiled call

    def hutchinson(
        self, probes: Sequence[Sequence[Tensor]], *inputs: Any, target: Any
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Run the compiled function on one batch with the given probes.

        Args:
            probes: one list per sample of tensors shaped like the model's trainable parameters
                (``requires_grad``), in ``model.parameters()`` order, as
                :func:`adahessian.rademacher` draws them.
            inputs: the model's positional inputs.
            target: the loss function's second argument.

        Returns:
            ``(loss, grads, estimate)``: the detached loss, the gradients and the estimate in
            ``model.parameters()`` order (trainable parameters only). Nothing is written to
            ``p.grad``; the module's buffers are updated as by one forward.

        Raises:
            CompiledCurvatureError: the model or loss cannot be compiled or transformed.
        """
        split = ModuleSplit.of(self.model)
        n_samples = len(probes)
        check_n_samples(n_samples)
        if any(len(v) != len(split.names) for v in probes):
            raise ValueError(
                f"each probe needs one tensor per trainable parameter ({len(split.names)})"
            )
        return self._evaluate(split.tangents(probes), n_samples, inputs, target)

    def _evaluate(
        self, tangents: dict[str, Tensor], n_samples: int, inputs: tuple[Any, ...], target: Any
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        split = ModuleSplit.of(self.model)
        args = (
            split.params,
            split.frozen,
            split.buffers,
            tangents,
            tuple(inputs),
            target,
            n_samples,
        )
        try:
            loss, grads, estimate, state = self._run(args)
        except Exception as exc:
            if not _is_transform_failure(exc):
                raise
            causes = " <- ".join(_first_line(e) for e in error_chain(exc)[:3])
            raise CompiledCurvatureError(
                "the compiled forward-over-reverse path (torch.compile of torch.func.jvp of "
                f"torch.func.grad_and_value) failed for this model or loss ({causes}). "
                f"{_EAGER_HINT}"
            ) from exc
        split.write_back(state)
        return loss.detach(), [grads[n] for n in split.names], [estimate[n] for n in estimate]

    def _run(self, args: tuple[Any, ...]) -> Any:
        n_samples = args[6]
        tensors = [t for t in (*args[4], args[5]) if isinstance(t, Tensor)]
        mode = (n_samples, tuple(m.training for m in self.model.modules()))
        if mode not in self._checked:
            # Once per kind of call, the same function runs uncompiled first: a model or loss
            # that torch.func cannot transform then fails with torch.func's own error, where
            # the compiled code could crash or drop a derivative. The random state is restored
            # and the result dropped, so the step is the compiled one.
            start = time.perf_counter()
            with torch.random.fork_rng(devices=_devices(tensors)):
                self._eager(*args)
            self.compile_seconds += time.perf_counter() - start
            self._checked.add(mode)
        shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        key = (mode, shapes)
        kind = (mode, tuple((s[1:], dtype, device) for s, dtype, device in shapes))
        if key in self._compiled_keys:
            return self._call(args)
        if kind in self._kinds and not self.recompile_batch_sizes:
            # Only the batch size differs from compiled code (a smaller last batch): run the
            # same function uncompiled rather than compile again.
            self.eager_calls += 1
            return self._eager(*args)
        out = self._call(args)
        self._compiled_keys.add(key)
        self._kinds.add(kind)
        return out

    def _call(self, args: tuple[Any, ...]) -> Any:
        graphs = _graph_count()
        start = time.perf_counter()
        try:
            return self._compiled(*args)
        finally:
            if _graph_count() != graphs:
                self.compiles += 1
                self.compile_seconds += time.perf_counter() - start

    # ------------------------------------------------------------------ with an optimizer

    def _check_optimizer(self, opt: Any) -> None:
        """``opt`` is an AdaHessian over this model's trainable parameters (all of its trainable
        parameters are the model's: one used only inside ``loss_fn`` would never get a
        gradient here)."""
        from .optimizer import AdaHessian

        if not isinstance(opt, AdaHessian):
            raise TypeError(
                f"CompiledCurvature.backward(opt, ...) needs the AdaHessian that steps the model, "
                f"got {type(opt).__name__}: the estimate goes to that optimizer"
            )
        mine = {id(p) for p in self.model.parameters()}
        theirs = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
        if not any(id(p) in mine for p in theirs):
            raise ValueError(
                "none of the optimizer's parameters belongs to this CompiledCurvature's model: "
                "pass the optimizer of the model it was built with"
            )
        strangers = [i for i, p in enumerate(theirs) if id(p) not in mine]
        if strangers:
            raise ValueError(
                f"trainable parameter {strangers[0]} of the optimizer ({len(strangers)} in all) "
                "is not a parameter of the model: CompiledCurvature differentiates the model's "
                "parameters only, so one used inside loss_fn would never be trained. Make it a "
                "parameter of the model (a submodule), or optimise it with another optimizer"
            )

    def backward(self, opt: Any, *inputs: Any) -> Tensor:
        """Replace ``loss_fn(model(*inputs[:-1]), inputs[-1]).backward(create_graph=...)``.

        The last positional argument is the target; the others are the model's inputs. On a
        Hessian step of ``opt`` (an :class:`adahessian.AdaHessian`; ``opt.hessian_due``) it runs
        the compiled function with probes drawn from the optimizer's own generator, exactly as
        the eager step would draw them, adds the gradients to ``p.grad`` and the estimate to the
        optimizer's for this step (``opt.step()`` then uses it). On other steps it runs an
        ordinary forward and ``backward()`` (the compiled gradient with ``compile_plain``) and
        sets :attr:`estimate` to None.

        Several calls before one ``opt.step`` (micro-batches) share the probes and add up
        their gradients and estimates, as :meth:`adahessian.AdaHessian.backward` does; after
        ``opt.zero_grad()`` a call starts afresh with new probes, as ``opt.backward`` does.

        Args:
            opt: the :class:`adahessian.AdaHessian` over this model's parameters.
            inputs: the model's positional inputs, then the target (``loss_fn``'s second
                argument) last.

        Returns:
            The loss, detached.

        Raises:
            TypeError: ``opt`` is not an :class:`adahessian.AdaHessian`, or no target is given.
            ValueError: the optimizer's trainable parameters are not this model's (with nothing
                changed).
            CompiledCurvatureError: the model or loss cannot be transformed or compiled; the
                message names the eager path.
        """
        if len(inputs) < 2:
            raise TypeError("backward(opt, *inputs, target) needs the inputs and the target")
        self._check_optimizer(opt)
        *model_inputs, target = inputs
        if not opt.hessian_due:
            self.estimate = None
            if self.compile_plain:
                trainable = [p for p in self.model.parameters() if p.requires_grad]
                if not trainable:
                    raise ValueError("the model has no parameter with requires_grad=True")
                loss, grads, _ = self._evaluate({}, 0, tuple(model_inputs), target)
                _add_grads(trainable, grads)
                return loss
            loss = self.loss_fn(self.model(*model_inputs), target)
            loss.backward()
            return loss.detach()

        # The step's probes, drawn from the optimizer's generator on the first call of the step
        # (exactly as the eager step draws them) and shared by later micro-batches.
        probe_params, drawn = opt.hessian_probes()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        position = {id(p): i for i, p in enumerate(probe_params)}
        probes = [
            [v[position[id(p)]] if id(p) in position else torch.zeros_like(p) for p in trainable]
            for v in drawn
        ]
        try:
            loss, grads, estimate = self.hutchinson(probes, *model_inputs, target=target)
        except BaseException:
            opt.discard_hessian_probes()  # a failed first call draws nothing
            raise
        by_param = {id(p): e for p, e in zip(trainable, estimate, strict=True)}
        opt.add_hessian_estimate([by_param.get(id(p), torch.zeros_like(p)) for p in probe_params])
        _add_grads(trainable, grads)
        total = dict(zip(map(id, probe_params), opt.hessian_estimate(), strict=True))
        flat = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        self.estimate = [total.get(id(p), torch.zeros_like(p)) for p in flat]
        return loss
