"""The :class:`AdaHessian` optimizer: a thin ``torch.optim.Optimizer`` over :mod:`.functional`."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _checks, curvature, distributed, functional
from . import finite_difference as fd
from .functional import adahessian
from .functional import state_dtype as _state_dtype
from .hutchinson import hutchinson_diagonal, rademacher
from .scaling import GROWTH_INTERVAL, ProbeScaler

__all__ = ["HVP_SOURCES", "AdaHessian"]

#: The ways a Hessian step takes its Hessian-vector products (``AdaHessian(hvp=...)``).
HVP_SOURCES = ("autograd", "finite-difference")

_PROBE_SCALE_GROWTH_INTERVAL = GROWTH_INTERVAL


@dataclass(frozen=True)
class _Field:
    """One attribute of the optimizer's own state (beside torch's ``state`` and groups)."""

    attr: str
    default: Any  # what a copy pickled before the attribute existed gets
    key: str | None = None  # its key in state_dict()["adahessian"]; None: not saved there


# The one record of the optimizer's own state: copies (deepcopy, pickle, torch.save(opt)) carry
# every field, state_dict() saves those with a key, load_state_dict() restores them, and a copy
# pickled by an older version gets the defaults of the fields it lacks. The probe scaler and the
# generator are saved by state_dict() in their own formats.
_OWN_STATE = (
    _Field("_update_interval", 1, "update_interval"),
    _Field("_hessian_warmup", 0, "hessian_warmup"),
    _Field("_n_samples", 1, "n_samples"),
    _Field("seed", 0, "seed"),
    _Field("_steps", 0, "steps"),
    _Field("_hessian_updates", 0, "hessian_updates"),
    _Field("skipped_steps", 0, "skipped_steps"),
    _Field("shared_probes", False),
    _Field("hvp", "autograd"),
    _Field("fd_eps", None),
    _Field("fd_scheme", "forward"),
    _Field("fd_keep_pattern", True),
    _Field("_probe_scaler", None),
    _Field("_generator", None),
    _Field("_pending", None),
    _Field("_graph_kept", None),
)


class AdaHessian(Optimizer):
    r"""AdaHessian (Yao et al., AAAI 2021): Adam with the squared gradient replaced by a
    root-mean-square moving average of the Hessian diagonal, estimated by Hutchinson's method.

    On a *Hessian step* (steps :math:`1, \dots, W` of the warm-up ``hessian_warmup`` :math:`W`,
    then :math:`W+1, W+1+N, W+1+2N, \dots` for ``update_interval`` :math:`N`),
    for each parameter :math:`p` with gradient :math:`g` and Hessian :math:`H`, with Rademacher
    probes :math:`v_1, \dots, v_n` (``n_samples``) drawn from the optimizer's own generator:

    .. math::

        \hat D &= \Bigl|\tfrac1n \textstyle\sum_i v_i \odot H v_i\Bigr|
            \qquad (\mathbb E[v \odot Hv] = \operatorname{diag} H) \\
        D &= \operatorname{avg}(\hat D) \\
        s &\leftarrow \beta_2 s + (1-\beta_2)\, D^2, \qquad h \leftarrow h + 1

    where :math:`\operatorname{avg}` is the spatial averaging (off with ``spatial_average=False``):
    none for rank 0 and 1; for rank 2 (``[out, in]``), the mean over contiguous blocks of
    ``block_size`` entries along the last dimension (``block_size=1``: none; the reference
    transformer setting is 32); for rank :math:`\ge 3` (``[out, in, *kernel]``), the mean over all
    dimensions after the first two. Then, on every step :math:`t`:

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1)\, g \\
        p &\leftarrow p - \mathrm{lr}\Bigl(
            \frac{m / (1-\beta_1^t)}{\bigl(s / (1-\beta_2^h)\bigr)^{k/2} + \epsilon}
            + \lambda\, p \Bigr)

    with :math:`k` = ``hessian_power`` and :math:`\lambda` = ``weight_decay`` (with
    ``update_clip`` :math:`c`, the fraction is clipped to :math:`[-c, c]` first). The β2 bias
    correction counts Hessian updates :math:`h`, not steps, so delayed updates
    (``update_interval > 1``) never divide by a nearly empty average.

    **Weight decay is decoupled** (AdamW style, scaled by ``lr``), as in the reference code, whose
    docstring calls it L2. The reference CIFAR script passes ``weight_decay = 5e-4 / lr`` so that
    the effective decay at the initial learning rate is ``5e-4``.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: learning rate (default 0.15, the reference CIFAR value).
        betas: coefficients of the gradient and Hessian moving averages.
        eps: added to the denominator (default 1e-4, as in the reference code).
        weight_decay: decoupled weight decay :math:`\lambda`.
        hessian_power: :math:`k \in [0, 1]`; 1 is the paper's default, 0 turns the curvature off.
        update_interval: estimate the Hessian every this many steps (1 = every step). The
            attribute ``opt.update_interval`` may be changed between steps, e.g. raised after a
            warm-up of every-step estimates (early curvature goes stale fast).
        hessian_warmup: the first this many steps are all Hessian steps; the every-
            ``update_interval``-th schedule starts after them (0: from the first step). Early
            curvature changes fast: a lazy schedule from the first step acts on stale estimates.
        update_clip: when set to :math:`c`, each coordinate of the preconditioned step
            :math:`\hat m / (\hat s^{k/2} + \epsilon)` is clipped to :math:`[-c, c]` before it
            is multiplied by ``lr`` (Sophia's guard against near-zero curvature estimates); None
            (the default) is the paper's update. Can be set per parameter group.
        n_samples: Rademacher probes averaged per Hessian estimate.
        block_size: block length for rank-2 weights (1 = no block averaging).
        spatial_average: average the estimate over blocks/kernels as above.
        seed: seed of the probe generator; None draws one from the operating system. The
            generator is the optimizer's own: the global RNG is never touched.
        foreach: use the multi-tensor ``torch._foreach_*`` path (None: yes).
        process_group: a ``torch.distributed`` process group (``torch.distributed.group.WORLD``
            for all ranks). Each step then averages the gradients and, on Hessian steps, the
            estimates across its ranks in one collective call, so every rank applies the same
            update. Use the model unwrapped (DDP does not synchronise double backward).
        shared_probes: with a process group, draw the same probes on every rank (then R ranks
            with batch B are equivalent to one process with batch R*B); by default each rank
            draws its own, and averaging R independent probes lowers the variance for free.
        hvp: how a Hessian step takes its Hessian-vector products. ``"autograd"`` (the
            default): double backward through the graph that
            ``loss.backward(create_graph=opt.hessian_due)`` keeps. ``"finite-difference"``:
            :math:`Hv \approx (g(\theta + \varepsilon v) - g(\theta)) / \varepsilon` from
            ordinary gradients; steps are ``opt.step(closure)`` with ``torch.optim``'s ordinary
            closure, which a Hessian step calls once more per probe (see
            :mod:`adahessian.finite_difference`). It needs no graph (Adam's activation memory)
            and runs with fused attention, compiled models, DDP and FSDP2.
        fd_eps: the finite-difference step ε (None: the parameters' dtype's,
            :func:`adahessian.finite_difference.default_eps`; float32: 1e-4, or 1e-3 with
            ``fd_keep_pattern=False``). Under autocast pass the compute dtype's (1e-2 for
            float16/bfloat16).
        fd_scheme: ``"forward"`` (one extra pass per probe, error :math:`O(\varepsilon)`) or
            ``"central"`` (two, :math:`O(\varepsilon^2)`).
        fd_keep_pattern: the perturbed passes keep the first pass's activation pattern (which
            side of every ReLU, LeakyReLU, Hardtanh/ReLU6 kink each unit is on, and the argmax
            of every max pooling; :mod:`adahessian.pattern`), so that the quotient converges to
            autograd's product on piecewise-linear networks. False: they take their own pattern
            (the loss's curvature smoothed at scale ε). Smooth models give identical results.

    ``lr``, ``betas``, ``eps``, ``weight_decay``, ``hessian_power``, ``block_size``,
    ``spatial_average``, ``update_clip`` and ``foreach`` can be set per parameter group.

    Usage::

        opt = AdaHessian(model.parameters())
        loss = criterion(model(x), y)
        loss.backward(create_graph=opt.hessian_due)  # a graph is only needed on Hessian steps
        opt.step()                                   # the graph is freed here
        opt.zero_grad()

    ``step(closure)`` runs the closure with gradients enabled (it calls
    ``backward(create_graph=...)`` itself; with ``hvp="finite-difference"`` plain
    ``backward()``). ``step(hessian=[...])`` takes a Hessian-diagonal
    estimate from elsewhere (one tensor per parameter that has a gradient, in parameter-group
    order) in place of Hutchinson's, and makes that step a Hessian step.

    **Mixed precision.** With ``torch.amp.GradScaler``, ``scaler.step(opt)`` hands the scale to
    the optimizer, which unscales the gradients *and* the Hessian estimate (the Hessian-vector
    product comes from the scaled loss) and skips a step whose gradients or estimate hold inf/NaN
    without touching its state. After ``scaler.unscale_(opt)`` (for clipping) the scale must be
    passed on: ``scaler.step(opt, loss_scale=scaler.get_scale())``. When only the estimate
    overflows (the scaler sees finite gradients and would never back off), the step is skipped
    and ``opt.probe_scale`` halved: the next products are taken on probes scaled by it and
    divided back, which leaves the estimate unchanged; it doubles again after 2,000 finite
    Hessian steps. Moments and the Hessian average are kept in float32 for float16/bfloat16
    parameters.

    A loss linear in the parameters, differentiated with ``create_graph=True``, has zero
    curvature (the optimizer records whether each backward pass kept the graph, and so tells it
    from a forgotten ``create_graph=True``, which raises). Bad input raises before anything is
    changed; ``lr`` and ``betas`` may be 1-element tensors, as in ``torch.optim``.

    **Gradient accumulation.** ``opt.backward(loss)`` replaces ``loss.backward(create_graph=...)``:
    on a Hessian step it takes the Hessian-vector product of this micro-batch at once, with probes
    shared by all micro-batches of the step, adds it to the step's estimate and frees the graph.
    K calls with ``loss_k / K`` then one ``step()`` equal one step on the concatenated batch.

    A parameter is updated only once it has a curvature estimate: on a non-Hessian step before
    its first Hessian step (for example a parameter added with ``add_param_group`` between Hessian
    steps) it is left untouched, as if it had no gradient.
    """

    # torch.amp.GradScaler.step() then passes the scale (grad_scale) and found_inf to step()
    # instead of unscaling the gradients itself: the Hessian estimate needs the scale too.
    _step_supports_amp_scaling = True

    # The optimizer's own state (see _OWN_STATE).
    _update_interval: int
    _hessian_warmup: int
    _n_samples: int
    seed: int
    _steps: int  # optimizer steps taken
    _hessian_updates: int  # Hessian steps taken
    skipped_steps: int  # steps skipped for inf/NaN under a GradScaler
    shared_probes: bool
    hvp: str
    fd_eps: float | None
    fd_scheme: str
    fd_keep_pattern: bool
    _probe_scaler: ProbeScaler
    _generator: torch.Generator | None
    _pending: dict[str, Any] | None  # this step's probes and the estimate added so far
    _graph_kept: bool | None  # did the last backward() keep the graph?

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.15,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-4,
        weight_decay: float = 0.0,
        hessian_power: float = 1.0,
        update_interval: int = 1,
        n_samples: int = 1,
        block_size: int = 1,
        spatial_average: bool = True,
        seed: int | None = None,
        foreach: bool | None = None,
        *,
        hessian_warmup: int = 0,
        update_clip: float | None = None,
        process_group: Any = None,
        shared_probes: bool = False,
        hvp: str = "autograd",
        fd_eps: float | None = None,
        fd_scheme: str = "forward",
        fd_keep_pattern: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            hessian_power=hessian_power,
            block_size=block_size,
            spatial_average=spatial_average,
            foreach=foreach,
            update_clip=update_clip,
        )
        _checks.check_group(defaults)
        _checks.check_warmup(hessian_warmup)
        _checks.check_count("update_interval", update_interval)
        _checks.check_count("n_samples", n_samples)
        _checks.check_seed(seed)
        if not isinstance(shared_probes, bool):
            raise ValueError(f"shared_probes must be True or False, got {shared_probes!r}")
        if hvp not in HVP_SOURCES:
            raise ValueError(
                f"Invalid hvp: {hvp!r} (must be one of {', '.join(map(repr, HVP_SOURCES))})"
            )
        fd_eps = fd.check_eps(fd_eps)
        fd_scheme = fd.check_scheme(fd_scheme)
        if not isinstance(fd_keep_pattern, bool):
            raise ValueError(f"fd_keep_pattern must be True or False, got {fd_keep_pattern!r}")
        for field in _OWN_STATE:
            setattr(self, field.attr, field.default)
        self._update_interval = update_interval
        self._hessian_warmup = hessian_warmup
        self._n_samples = n_samples
        self.process_group = process_group
        self.shared_probes = shared_probes
        self.hvp = hvp
        self.fd_eps = fd_eps
        self.fd_scheme = fd_scheme
        self.fd_keep_pattern = fd_keep_pattern
        self._probe_scaler = ProbeScaler(growth_interval=_PROBE_SCALE_GROWTH_INTERVAL)
        super().__init__(params, defaults)
        if hvp == "autograd":
            distributed.check_not_sharded(self.param_groups)
            distributed.warn_if_unsynchronised(process_group)
        # With the finite-difference source a DDP model's ranks must perturb by the same probes:
        # rank 0's seed is broadcast whenever there are several ranks.
        self.seed = distributed.resolve_seed(
            seed, process_group, everywhere=hvp == "finite-difference"
        )

    # ------------------------------------------------------------------ settings

    @property
    def update_interval(self) -> int:
        """Estimate the Hessian every this many steps; may be changed between steps."""
        return self._update_interval

    @update_interval.setter
    def update_interval(self, value: int) -> None:
        self._update_interval = _checks.check_count("update_interval", value)

    @property
    def hessian_warmup(self) -> int:
        """The first this many steps are all Hessian steps; may be changed between steps."""
        return self._hessian_warmup

    @hessian_warmup.setter
    def hessian_warmup(self, value: int) -> None:
        self._hessian_warmup = _checks.check_warmup(value)

    @property
    def n_samples(self) -> int:
        """Rademacher probes per Hessian estimate; may be changed between steps."""
        return self._n_samples

    @n_samples.setter
    def n_samples(self, value: int) -> None:
        self._n_samples = _checks.check_count("n_samples", value)

    # ------------------------------------------------------------------ groups and state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        if isinstance(merged.get("betas"), list):
            merged["betas"] = tuple(merged["betas"])
        _checks.check_group(merged)
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        if not isinstance(params, set):  # torch refuses sets (their order is arbitrary)
            params = list(params)
            _checks.check_params(params, self.param_groups)
        param_group["params"] = params
        super().add_param_group(param_group)
        self._watch_graphs(self.param_groups[-1]["params"])

    def _watch_graphs(self, params: list[Any]) -> None:
        """Record, on each backward pass, whether it kept the graph (``create_graph=True``):
        the autograd engine runs the hooks under the pass's grad mode. This tells a loss without
        curvature (its gradient is constant) from a forgotten ``create_graph=True``."""
        ref = weakref.ref(self)

        def hook(_: Tensor) -> None:
            opt = ref()
            if opt is not None:
                opt._graph_kept = torch.is_grad_enabled()

        handles = self.__dict__.setdefault("_graph_hooks", [])
        for item in params:
            p = item[1] if isinstance(item, tuple) else item
            if isinstance(p, Tensor) and p.requires_grad:
                handles.append(p.register_post_accumulate_grad_hook(hook))
        if "_graph_hooks_finalizer" not in self.__dict__:
            self._graph_hooks_finalizer = weakref.finalize(self, _remove_hooks, handles)

    @property
    def hessian_due(self) -> bool:
        """True when the next :meth:`step` estimates the Hessian diagonal, so the backward pass
        before it must keep the graph: ``loss.backward(create_graph=opt.hessian_due)``."""
        return functional.hessian_due(self._steps, self._update_interval, self._hessian_warmup)

    @property
    def probe_scale(self) -> float:
        """The scale of the probes of scaled-loss products (:class:`.scaling.ProbeScaler`)."""
        return self._probe_scaler.scale

    @property
    def _probe_scale_growth(self) -> int:
        return self._probe_scaler.growth

    def __getstate__(self) -> dict[str, Any]:
        if self.process_group is not None:
            raise TypeError(
                "an AdaHessian with a process_group cannot be copied or pickled (process groups "
                "cannot): save opt.state_dict() and load it into a new optimizer"
            )
        state = super().__getstate__()
        state.update({f.attr: self.__dict__[f.attr] for f in _OWN_STATE})
        state["process_group"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Called by copy/pickle with __getstate__'s dict, and by Optimizer.load_state_dict with
        # only "state" and "param_groups".
        super().__setstate__(state)
        defaults = {k: v for k, v in self.defaults.items() if k in _checks.GROUP_KEYS}
        for group in self.param_groups:  # groups saved before a key existed get its default
            for key, value in defaults.items():
                group.setdefault(key, value)
        self.__dict__.setdefault("process_group", None)
        if "_probe_scaler" not in self.__dict__:  # pickled before the probe scaler existed
            self._probe_scaler = ProbeScaler(
                self.__dict__.pop("probe_scale", 1.0), self.__dict__.pop("_probe_scale_growth", 0)
            )
        for field in _OWN_STATE:
            self.__dict__.setdefault(field.attr, field.default)
        if "_graph_hooks" not in self.__dict__:  # a copy: its parameters are new tensors
            for group in self.param_groups:
                self._watch_graphs(group["params"])

    def state_dict(self) -> dict[str, Any]:
        """Like ``torch.optim.Optimizer.state_dict``, plus the step counters and the probe
        generator's state under the key ``"adahessian"``.

        Returns:
            A dict of tensors and plain data (it loads with ``torch.load(weights_only=True)``):
            ``state`` (the moments), ``param_groups`` and ``adahessian``.
        """
        state = super().state_dict()
        generator = None
        if self._generator is not None:
            generator = {
                "device": str(self._generator.device),
                "state": self._generator.get_state(),
            }
        state["adahessian"] = {
            **{f.key: getattr(self, f.attr) for f in _OWN_STATE if f.key is not None},
            **self._probe_scaler.state_dict(),
            "generator": generator,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like ``torch.optim.Optimizer.load_state_dict``; a state_dict that this optimizer could
        not continue from (another model's, altered counters or moments) is refused, and nothing
        is changed. Moments of float16/bfloat16 parameters stay float32.

        Args:
            state_dict: what :meth:`state_dict` returned (a state_dict of an older version,
                without a later key, loads with that key's default).

        Raises:
            ValueError: the state_dict cannot be continued from; the message says why.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                "state_dict must be a dict with 'state' and 'param_groups', as returned by "
                "AdaHessian.state_dict()"
            )
        extra = _checks.check_extra(state_dict.get("adahessian"))
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state_dict has {len(saved_groups)} parameter groups but this optimizer has "
                f"{len(self.param_groups)}: load the state_dict saved with this model"
            )
        param_of: dict[Any, Tensor] = {}
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"parameter group {g} has {len(group['params'])} parameters but the "
                    f"state_dict's has {len(saved['params'])}: load the state_dict saved with "
                    "this model"
                )
            _checks.check_group(
                {**self.defaults, **{k: saved[k] for k in saved if k != "params"}},
                constructing=False,
            )
            param_of.update(zip(saved["params"], group["params"], strict=True))
        for key, value in state_dict["state"].items():
            if key not in param_of:
                raise ValueError(
                    f"the state_dict has state for parameter {key!r}, which no group lists"
                )
            _checks.check_param_state(f"state of parameter {key!r}", param_of[key], value)
        saved_generator = extra["generator"]
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts the moments to the parameter's dtype: keep float32 ones
        # for float16/bfloat16 parameters.
        for key, value in state_dict["state"].items():
            p = param_of[key]
            for name in _checks.MOMENTS:
                if name in value and self.state[p][name].dtype != _state_dtype(p):
                    self.state[p][name] = value[name].to(device=p.device, dtype=_state_dtype(p))
        for field in _OWN_STATE:
            if field.key is not None:
                setattr(self, field.attr, extra[field.key])
        self.seed = int(extra["seed"])
        self._probe_scaler.load_state_dict(extra)
        self._pending = None
        self._graph_kept = None
        self._generator = None
        if saved_generator is not None:
            generator = self._probe_generator()
            if torch.device(saved_generator["device"]).type == generator.device.type:
                generator.set_state(saved_generator["state"].cpu())
            else:
                warnings.warn(
                    f"the probe generator was saved on {saved_generator['device']} and cannot be "
                    f"restored on {generator.device}; it is re-seeded deterministically instead",
                    stacklevel=2,
                )
                generator.manual_seed(self.seed + self._hessian_updates)

    def _probe_generator(self) -> torch.Generator:
        if self._generator is None:
            params = self._probe_params() or [p for g in self.param_groups for p in g["params"]]
            device = params[0].device if params else "cpu"
            sharded = any(distributed.is_sharded(p) for p in params)
            offset = distributed.rank_offset(self.process_group, self.shared_probes, sharded)
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed + offset)
        return self._generator

    def _probe_params(self) -> list[Tensor]:
        """Every parameter that can have a gradient, in param-group order: probes are drawn for
        all of them, so the random stream does not depend on which ones got gradients."""
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    # ------------------------------------------------------------------ backward

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Like ``torch.optim.Optimizer.zero_grad``; also drops a Hessian estimate accumulated by
        :meth:`backward` since the last step.

        Args:
            set_to_none: set the gradients to None instead of zeroing them, as in ``torch.optim``.
        """
        self._pending = None
        super().zero_grad(set_to_none=set_to_none)

    def backward(self, loss: Tensor) -> None:
        """Back-propagate ``loss`` and, on a Hessian step, take its Hessian-vector products now.

        Use it in place of ``loss.backward(create_graph=opt.hessian_due)``, once per micro-batch
        when accumulating gradients: gradients add up in ``p.grad`` as usual, and the estimates
        of all micro-batches of a step use the same probes, so the step's estimate is that of
        the Hessian of the summed loss (pass ``loss / K`` for the mean over K micro-batches).
        Each micro-batch's graph is freed before the call returns. If it raises, the step's
        probes are put back (when no micro-batch has added an estimate yet).

        Args:
            loss: this micro-batch's scalar loss (under a GradScaler: the scaled loss).

        Raises:
            RuntimeError: with ``hvp="finite-difference"``, which accumulates inside the closure
                instead.
        """
        if self.hvp != "autograd":
            raise RuntimeError(
                "opt.backward(loss) takes double-backward products (hvp='autograd'); with "
                "hvp='finite-difference' accumulate the micro-batches inside the closure and "
                "call opt.step(closure)"
            )
        if not self.hessian_due:
            loss.backward()
            return
        params, probes = self.hessian_probes()
        try:
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        except BaseException:
            self.discard_hessian_probes()
            raise
        if any(g is not None and g.requires_grad for g in grads):
            self._add_estimate(
                hutchinson_diagonal(grads, params, probes=probes, scale=self.probe_scale)
            )
        elif any(g is not None for g in grads):
            # The graph was kept, yet no gradient depends on the parameters: the loss is linear
            # in them and its curvature is exactly zero.
            self._add_estimate([torch.zeros_like(p) for p in params])
        self._graph_kept = True
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.detach()
                else:
                    p.grad = p.grad.detach() + g.detach()

    def hessian_probes(self) -> tuple[list[Tensor], list[list[Tensor]]]:
        """The parameters and the Rademacher probes of this Hessian step, for an estimator
        outside the optimizer (the compiled path, :meth:`backward`).

        They are drawn from the optimizer's own generator on the first call of a step (exactly
        as the step itself would draw them) and the same ones are returned until the step is
        taken or ``zero_grad()`` is called. Estimates taken with them go to
        :meth:`add_hessian_estimate`; an estimator that fails before adding one returns them
        with :meth:`discard_hessian_probes`.

        Returns:
            ``(params, probes)``: every parameter that can have a gradient, in param-group
            order, and ``n_samples`` lists of probes shaped like them.
        """
        if not self.hessian_due:
            raise RuntimeError(
                "hessian_probes() is for Hessian steps: check opt.hessian_due before calling it"
            )
        params = self._probe_params()
        if self._pending is None:
            generator = self._probe_generator()
            rng_state = generator.get_state()
            probes = [rademacher(params, generator=generator) for _ in range(self.n_samples)]
            self._pending = {
                "params": params,
                "probes": probes,
                "estimate": None,
                "rng_state": rng_state,
            }
        if [id(p) for p in self._pending["params"]] != [id(p) for p in params]:
            raise RuntimeError("the parameters changed between backward() calls of one step")
        return params, self._pending["probes"]

    def discard_hessian_probes(self) -> bool:
        """Put back the probes that :meth:`hessian_probes` drew for this step, if no estimate has
        been added with them: the generator is rewound, so the next step draws exactly what it
        would have drawn had the failed attempt never happened.

        Returns:
            Whether they were put back (False when there were none, or an estimate already uses
            them).
        """
        if self._pending is None or self._pending["estimate"] is not None:
            return False
        self._drop_pending()
        return True

    def hessian_estimate(self) -> list[Tensor] | None:
        """The estimate added to this step so far (by :meth:`add_hessian_estimate`,
        :meth:`backward` or the finite-difference passes), one tensor per parameter of
        :meth:`hessian_probes`; None when none was added. It is the optimizer's own: read it,
        do not change it.

        Returns:
            The tensors of the estimate so far, or None.
        """
        return None if self._pending is None else self._pending["estimate"]

    def add_hessian_estimate(self, estimate: Sequence[Tensor]) -> None:
        """Add ``estimate`` (one tensor per parameter of :meth:`hessian_probes`, taken with its
        probes, scaled by ``opt.probe_scale`` as :func:`adahessian.hutchinson_diagonal`'s
        ``scale`` does, on the loss that the gradients come from) to this step's estimate; the
        next :meth:`step` uses the sum, unscales it with the gradients under a GradScaler, and
        skips the step (backing off the probe scale) if it overflowed; without a GradScaler
        that step refuses an estimate holding inf or NaN, with nothing changed.

        Args:
            estimate: one tensor per parameter of :meth:`hessian_probes`, in its order.

        Raises:
            ValueError: with nothing added, for an estimate that is not one floating-point
                tensor per parameter, shaped like it and on its device.
        """
        if self._pending is None:
            raise RuntimeError("call hessian_probes() first: it draws this step's probes")
        params = self._pending["params"]
        _checks.check_estimate(estimate, params, "add_hessian_estimate")
        self._add_estimate([e.detach() for e in estimate], copy=True)

    def _add_estimate(self, estimate: list[Tensor], copy: bool = False) -> None:
        """Add to the step's estimate; ``copy``: the first one is the caller's, not ours to
        accumulate into."""
        assert self._pending is not None
        if self._pending["estimate"] is None:
            self._pending["estimate"] = [e.clone() for e in estimate] if copy else estimate
        else:
            torch._foreach_add_(self._pending["estimate"], estimate)

    # ------------------------------------------------------------------ the step

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        hessian: Sequence[Tensor] | None = None,
        loss_scale: float | Tensor | None = None,
        scaler: Any = None,
    ) -> Any:
        """Take one optimisation step.

        Args:
            closure: re-evaluates the model and returns the loss; it runs with gradients enabled.
                With ``hvp="autograd"`` it calls ``loss.backward(create_graph=opt.hessian_due)``
                itself. With ``hvp="finite-difference"`` it is ``torch.optim``'s ordinary closure
                (zero the gradients, compute the loss, ``loss.backward()``, return the loss),
                which a Hessian step calls once more per probe at :math:`\\theta + \\varepsilon
                v` (twice for the central difference); it is required on Hessian steps.
            hessian: optional Hessian-diagonal estimates (signed, like ``v * Hv``), one per
                parameter that has a gradient, in parameter-group order; used in place of the
                Hutchinson estimate, and the step becomes a Hessian step.
            loss_scale: the factor the loss was multiplied by, when the gradients were already
                unscaled (``scaler.step(opt, loss_scale=scaler.get_scale())`` after
                ``scaler.unscale_(opt)``); the Hessian estimate is divided by it.
            scaler: a ``torch.amp.GradScaler`` whose scaled loss the closure back-propagates
                (``scaler.scale(loss).backward()``): the step is then taken through it, as
                ``scaler.step(opt)`` would (which refuses closures); call ``scaler.update()``
                after it as usual.

        Returns:
            The closure's loss, or None.
        """
        if scaler is not None:
            return self._step_with_scaler(closure, scaler, hessian)
        loss, first_pass = self._run_closure(closure, hessian)
        # Every check comes first: a step that fails changes nothing (a finite-difference step
        # also puts back its probes and the gradients held before its closure ran).
        try:
            groups = self._gather()
            scaling = self._scaling(loss_scale, hessian)
            flat = [p for ps in groups for p in ps]
            grads = [cast(Tensor, p.grad) for p in flat]
            if first_pass is not None:  # a finite-difference Hessian step: the perturbed passes
                self._finite_differences(cast(Callable[[], Any], closure), first_pass)
            source = self._curvature_source(hessian, bool(flat), finite=not scaling.active)
            estimates = None if source is None else source.estimate(flat, grads)
        except BaseException:
            if first_pass is not None:
                self._drop_pending()
                first_pass.restore_grads()
            raise
        from_loss = source is not None and source.from_loss

        # From here on nothing can fail on user input.
        self._release_graphs(flat)
        grads = [cast(Tensor, p.grad) for p in flat]
        with torch.no_grad():
            estimates = scaling.unscale(grads, estimates, from_loss)
            if self.process_group is not None:
                distributed.all_reduce_mean_(grads + (estimates or []), self.process_group)
            if self._overflowed(scaling, grads, estimates, from_loss):
                return loss
            offset = 0
            for group, ps in zip(self.param_groups, groups, strict=True):
                n = len(ps)
                group_estimates = None if estimates is None else estimates[offset : offset + n]
                self._update_group(group, ps, grads[offset : offset + n], group_estimates)
                offset += n
        self._steps += 1
        if estimates is not None:
            self._hessian_updates += 1
            if scaling.active and from_loss:
                self._probe_scaler.grow()
        return loss

    def _run_closure(
        self, closure: Callable[[], Any] | None, hessian: Sequence[Tensor] | None
    ) -> tuple[Any, fd.FirstPass | None]:
        """Call the closure once, as torch's optimizers do. On a finite-difference Hessian step,
        also return what the perturbed passes need (and check the closure's contract)."""
        finite_difference = self.hvp == "finite-difference" and self.hessian_due and hessian is None
        if not finite_difference:
            if closure is None:
                return None, None
            with torch.enable_grad():
                return closure(), None
        if closure is None:
            if self._pending is not None:  # an estimate from the compiled path or elsewhere
                return None, None
            raise RuntimeError(
                f"step {self._steps + 1} is a Hessian step and AdaHessian(hvp='finite-difference')"
                " needs the closure to take its gradients at θ + εv: call opt.step(closure) with "
                "def closure(): opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); "
                "return loss"
            )
        if self._pending is not None:
            raise RuntimeError(
                "this Hessian step already has an estimate (from hessian_probes() / "
                "add_hessian_estimate, e.g. CompiledCurvature): with hvp='finite-difference' "
                "the closure takes it; call opt.step() without a closure, or zero_grad() first"
            )
        first = fd.FirstPass.run(closure, self._probe_params(), keep_pattern=self.fd_keep_pattern)
        return first.loss, first

    def _finite_differences(self, closure: Callable[[], Any], first: fd.FirstPass) -> None:
        """The perturbed passes of a finite-difference Hessian step: the estimate becomes the
        step's pending estimate (the probes are put back if they fail)."""
        params, probes = self.hessian_probes()
        pending = self._pending  # the closure's opt.zero_grad() drops it: keep it here
        eps = self.fd_eps or fd.params_eps(params, self.fd_scheme, self.fd_keep_pattern)
        try:
            estimate = fd.finite_difference_products(
                closure,
                params,
                [p.grad for p in params],
                probes,
                eps=eps,
                scheme=self.fd_scheme,
                first=first,
            )
        except BaseException:
            self._pending = pending
            self._drop_pending()  # the probes were drawn for these passes alone
            first.restore_grads()
            raise
        self._pending = pending
        self._add_estimate(estimate)

    def _step_with_scaler(
        self, closure: Callable[[], Any] | None, scaler: Any, hessian: Sequence[Tensor] | None
    ) -> Any:
        """``step(closure, scaler=scaler)``: the closure's passes here, then ``scaler.step``."""
        if closure is None:
            raise ValueError(
                "step(scaler=...) is for a closure that scales its own loss; without a closure "
                "call scaler.step(opt) as usual"
            )
        loss, first_pass = self._run_closure(closure, hessian)
        if first_pass is None:
            scaler.step(self, hessian=hessian)
            return loss
        self._gather()  # the checks of the step, before the perturbed passes
        self._finite_differences(closure, first_pass)
        try:
            estimate = cast(list[Tensor], self.hessian_estimate())
            if not _all_finite(estimate, None, None) and scaler.is_enabled():
                # A perturbed gradient overflowed where g(θ) did not: the loss scale is too
                # large near θ. Tell the scaler, which backs off on update().
                scaler.unscale_(self)
                _record_inf(scaler, self)
                scaler.step(self, loss_scale=scaler.get_scale())
            else:
                scaler.step(self)
        except BaseException:
            self._drop_pending()
            raise
        return loss

    def _overflowed(
        self,
        scaling: _Scaling,
        grads: list[Tensor],
        estimates: list[Tensor] | None,
        from_loss: bool,
    ) -> bool:
        """Under a GradScaler, a step whose gradients or estimate hold inf/NaN is skipped; when
        the estimate alone overflowed, the probe scale backs off."""
        if not scaling.active or _all_finite(grads, estimates, scaling.found_inf):
            return False
        self.skipped_steps += 1
        if _all_finite(grads, None, scaling.found_inf) and from_loss:
            self._probe_scaler.backoff()
        return True

    def _drop_pending(self) -> None:
        """Forget this step's probes and estimate and rewind the generator to before them."""
        if self._pending is not None:
            self._probe_generator().set_state(self._pending["rng_state"])
            self._pending = None

    def _gather(self) -> list[list[Tensor]]:
        """The parameters with gradients, per group, after checking the groups and states."""
        groups: list[list[Tensor]] = []
        for index, group in enumerate(self.param_groups):
            try:
                _checks.check_group(group, constructing=False)
            except ValueError as e:
                raise ValueError(f"parameter group {index}: {e}") from None
            with_grad = [p for p in group["params"] if p.grad is not None]
            for dtype in {p.dtype for p in with_grad}:
                _checks.check_step_fits(group, dtype, index)
            for p in with_grad:
                if p.grad.is_sparse:
                    raise RuntimeError(
                        "AdaHessian does not support sparse gradients; "
                        "use nn.Embedding(sparse=False)"
                    )
                self._check_state_matches(p)
            groups.append(with_grad)
        return groups

    def _scaling(self, loss_scale: Any, hessian: Sequence[Tensor] | None) -> _Scaling:
        """How the gradients and the estimate of this step are scaled (GradScaler, loss_scale)."""
        if loss_scale is not None:
            value = _checks.scalar("loss_scale", "loss_scale", loss_scale, tensor_ok=True)
            if not 0.0 < value < float("inf"):
                raise ValueError(f"Invalid loss_scale: {value} (must be finite and > 0)")
        # Set by torch.amp.GradScaler.step() (see _step_supports_amp_scaling).
        scaling = _Scaling(
            getattr(self, "grad_scale", None), getattr(self, "found_inf", None), loss_scale
        )
        hessian_step = hessian is not None or self._pending is not None or self.hessian_due
        if (
            scaling.found_inf is not None
            and scaling.grad_scale is None
            and loss_scale is None
            and hessian_step
            and hessian is None
        ):
            raise RuntimeError(
                "the gradients were unscaled by scaler.unscale_(opt), but the Hessian estimate "
                "comes from the scaled loss and AdaHessian cannot tell the scale: call "
                "scaler.step(opt, loss_scale=scaler.get_scale())"
            )
        return scaling

    def _release_graphs(self, params: list[Tensor]) -> None:
        """The step's estimate is taken: drop its probes and the graphs held by ``p.grad``."""
        self._pending = None
        self._graph_kept = None
        for p in params:
            if p.grad is not None and p.grad.grad_fn is not None:
                p.grad = p.grad.detach()

    def _check_state_matches(self, p: Tensor) -> None:
        """Refuse a parameter whose state no longer fits it (``model.double()`` after steps)."""
        state = self.state.get(p)
        if not state:
            return
        for name in _checks.MOMENTS:
            t = state[name]
            if t.shape != p.shape or t.dtype != _state_dtype(p) or t.device != p.device:
                raise RuntimeError(
                    f"the state of a parameter of shape {tuple(p.shape)} ({p.dtype}, "
                    f"{p.device}) holds {name} of shape {tuple(t.shape)} ({t.dtype}, {t.device}):"
                    " the parameter changed after the optimizer last updated it. Move or convert "
                    "the model before creating the optimizer, or load a matching state_dict"
                )

    def _curvature_source(
        self, hessian: Sequence[Tensor] | None, any_grad: bool, *, finite: bool
    ) -> curvature.Source | None:
        """Where this step's estimate comes from; None on a step without one."""
        if hessian is not None:
            return curvature.Given(hessian, finite)
        if self._pending is not None:
            return curvature.Accumulated(self._pending["params"], self._pending["estimate"], finite)
        if self.hessian_due and any_grad:
            return curvature.OnGradientGraph(
                self._probe_params(),
                self._probe_generator(),
                self.n_samples,
                self.probe_scale,
                self._graph_kept,
                self._steps + 1,
            )
        return None

    def _update_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        estimates: list[Tensor] | None,
    ) -> None:
        active: list[int] = []
        for i, p in enumerate(params):
            state = self.state[p]
            if not state:
                dtype = _state_dtype(p)
                state["step"] = 0
                state["hessian_step"] = 0
                state["exp_avg"] = torch.zeros_like(p, dtype=dtype)
                state["exp_hessian_diag_sq"] = torch.zeros_like(p, dtype=dtype)
            if estimates is None and state["hessian_step"] == 0:
                continue  # no curvature yet: wait for the first Hessian step
            state["step"] += 1
            if estimates is not None:
                state["hessian_step"] += 1
            active.append(i)
        if not active:
            return
        states = [self.state[params[i]] for i in active]
        # float16/bfloat16 parameters are updated through float32 copies of themselves.
        work = [_as_state_dtype(params[i]) for i in active]
        beta1, beta2 = (float(b) for b in group["betas"])  # 1-element tensors allowed
        foreach = group["foreach"]
        adahessian(
            work,
            [_as_state_dtype(grads[i]) for i in active],
            None if estimates is None else [_as_state_dtype(estimates[i]) for i in active],
            [s["exp_avg"] for s in states],
            [s["exp_hessian_diag_sq"] for s in states],
            [s["step"] for s in states],
            [s["hessian_step"] for s in states],
            foreach=True if foreach is None else foreach,
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            hessian_power=float(group["hessian_power"]),
            block_size=group["block_size"],
            spatial_average=group["spatial_average"],
            update_clip=None if group["update_clip"] is None else float(group["update_clip"]),
        )
        for i, w in zip(active, work, strict=True):
            if w is not params[i]:
                params[i].copy_(w)


def _remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()


@dataclass
class _Scaling:
    """The loss scale of a step: a GradScaler's (``grad_scale``, ``found_inf``, set on the
    optimizer by ``scaler.step``) or one passed as ``step(loss_scale=...)``."""

    grad_scale: Tensor | None
    found_inf: Tensor | None
    loss_scale: float | Tensor | None

    @property
    def active(self) -> bool:
        """Under a GradScaler: a step whose values hold inf/NaN is skipped, not refused."""
        return self.grad_scale is not None or self.found_inf is not None

    def unscale(
        self, grads: list[Tensor], estimates: list[Tensor] | None, from_loss: bool
    ) -> list[Tensor] | None:
        """Unscale the gradients in place (under a GradScaler) and return the estimate unscaled
        (when it was taken on the scaled loss)."""
        if self.grad_scale is not None:  # gradients and estimate are both scaled
            inv_scale = self.grad_scale.double().reciprocal()
            for g in grads:
                g.mul_(inv_scale.to(g.device, g.dtype))
            if estimates is not None and from_loss:
                return [e * inv_scale.to(e.device, e.dtype) for e in estimates]
        elif self.loss_scale is not None and estimates is not None and from_loss:
            return [e / self.loss_scale for e in estimates]
        return estimates


def _record_inf(scaler: Any, opt: Optimizer) -> None:
    """Make ``scaler.update()`` back off as for an overflowed gradient, after
    ``scaler.unscale_(opt)`` recorded this step's (finite) gradients."""
    found = scaler._per_optimizer_states[id(opt)]["found_inf_per_device"]
    for t in found.values():
        t.fill_(1.0)


def _as_state_dtype(t: Tensor) -> Tensor:
    return t.float() if t.dtype != _state_dtype(t) else t


def _all_finite(grads: list[Tensor], estimates: list[Tensor] | None, found_inf: Any) -> bool:
    if found_inf is not None and float(found_inf) > 0:
        return False
    tensors = grads + (estimates or [])
    if not tensors:
        return True
    sums = torch.stack([t.detach().float().sum().to(tensors[0].device) for t in tensors])
    return bool(torch.isfinite(sums).all())
