"""Validation of what :class:`adahessian.AdaHessian` is given: hyperparameters, parameters,
external Hessian estimates and saved state.

Every check raises before anything is changed, with a message that names the argument and says
what it must be. The wording of the checks that ``torch.optim`` also makes follows torch's
(``Invalid learning rate: ...``, ``Tensor lr must be 1-element``), so that code written against
torch's optimizers reads the same errors.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

# The keys of a parameter group (their defaults are the constructor's).
GROUP_KEYS = (
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "hessian_power",
    "block_size",
    "spatial_average",
    "foreach",
    "update_clip",
)


class FiniteDifferenceError(RuntimeError):
    """The closure cannot be used for finite differences (it returned no loss, called no
    ``backward()``, or changed the parameters), or a perturbed pass took another path."""


MAX_SEED = 2**63 - 2**16  # the generator takes 64 bits; room is left for the rank offset


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def scalar(name: str, label: str, value: Any, *, tensor_ok: bool = False) -> float:
    """``value`` as a float: a real number, or (with ``tensor_ok``) a 1-element float tensor."""
    if isinstance(value, Tensor):
        if not tensor_ok:
            raise ValueError(f"{name} must be a Python number, not a tensor (got {value!r})")
        if value.numel() != 1:
            raise ValueError(f"Tensor {name} must be 1-element")
        if not value.is_floating_point():
            raise ValueError(f"Tensor {name} must have a floating-point dtype, got {value.dtype}")
        return float(value.item())
    if not _is_real(value):
        raise ValueError(f"Invalid {label}: {value!r} ({name} must be a number)")
    return float(value)


def check_group(group: dict[str, Any], *, constructing: bool = True) -> None:
    """Raise ValueError for a hyperparameter that a parameter group cannot use. Float and tensor
    betas may only be mixed after construction, as ``torch.optim.Adam`` allows (OneCycleLR with
    ``cycle_momentum`` writes a float beta1 next to a tensor beta2)."""
    lr = scalar("lr", "learning rate", group["lr"], tensor_ok=True)
    if not 0.0 <= lr < math.inf:
        raise ValueError(f"Invalid learning rate: {group['lr']} (lr must be finite and >= 0)")
    eps = scalar("eps", "epsilon value", group["eps"])
    if not 0.0 <= eps < math.inf:
        raise ValueError(f"Invalid epsilon value: {eps} (eps must be finite and >= 0)")
    wd = scalar("weight_decay", "weight_decay value", group["weight_decay"])
    if not 0.0 <= wd < math.inf:
        raise ValueError(f"Invalid weight_decay value: {wd} (weight_decay must be finite and >= 0)")
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas must be a pair (beta1, beta2), e.g. (0.9, 0.999); got {betas!r}")
    if constructing and isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        b = scalar(f"betas[{i}]", f"beta parameter at index {i}", beta, tensor_ok=True)
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {b} (must be in [0, 1))")
    k = scalar("hessian_power", "hessian_power", group["hessian_power"])
    if not 0.0 <= k <= 1.0:
        raise ValueError(f"Invalid hessian_power: {k} (must be in [0, 1]; 1 is the paper's)")
    block = group["block_size"]
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"Invalid block_size: {block!r} (must be an integer >= 1; 1 = no blocks)")
    if not isinstance(group["spatial_average"], bool):
        raise ValueError(f"spatial_average must be True or False, got {group['spatial_average']!r}")
    clip = group.get("update_clip")
    if clip is not None:
        c = scalar("update_clip", "update_clip", clip)
        if not 0.0 < c < math.inf:
            raise ValueError(f"Invalid update_clip: {c} (must be None or a finite number > 0)")
    if group["foreach"] not in (None, True, False):
        raise ValueError(f"foreach must be None, True or False, got {group['foreach']!r}")


def check_step_fits(group: dict[str, Any], dtype: torch.dtype, index: int) -> None:
    """The scalars a step multiplies ``dtype`` parameters by (lr / (1 - beta1^t), largest at
    t = 1, and 1 - lr * weight_decay) must be finite in that dtype: a finite lr can overflow it
    (1e39 in float32), which would fail inside the update after the state had changed."""
    lr, beta1 = float(group["lr"]), float(group["betas"][0])
    wd = float(group["weight_decay"])
    largest = max(lr / (1.0 - beta1), abs(1.0 - lr * wd))
    top = torch.finfo(dtype).max
    if not largest <= top:
        raise ValueError(
            f"parameter group {index}: lr {lr:g} is too large for {dtype} parameters: a step "
            f"multiplies by lr / (1 - beta1) = {lr / (1.0 - beta1):g} and 1 - lr * weight_decay "
            f"= {1.0 - lr * wd:g}, beyond {dtype}'s largest value {top:g}; use a smaller lr"
        )


def check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 1)")
    return value


def check_warmup(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Invalid hessian_warmup: {value!r} (must be an integer >= 0)")
    return value


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(
            f"Invalid seed: {seed!r} (must be None or an integer in [0, 2**63 - 2**16])"
        )
    return seed


def check_params(params: list[Any], param_groups: list[dict[str, Any]]) -> None:
    """Refuse parameters that AdaHessian cannot update, and a parameter listed twice."""
    seen: dict[int, int] = {}
    in_groups = {id(p): g for g, group in enumerate(param_groups) for p in group["params"]}
    for i, item in enumerate(params):
        p = item[1] if isinstance(item, tuple) else item
        if not isinstance(p, Tensor):
            continue  # torch's add_param_group names the type
        if p.is_complex():
            raise ValueError(
                "AdaHessian does not support complex parameters; "
                "optimise torch.view_as_real(p) instead"
            )
        if not p.is_floating_point():
            raise ValueError(
                f"parameter {i} of this group has dtype {p.dtype}: AdaHessian optimises "
                "floating-point tensors only; convert it with .float() or leave it out"
            )
        if id(p) in seen:
            raise ValueError(
                f"parameter {i} of this group is the same tensor as parameter {seen[id(p)]}: "
                "list each parameter once (a tensor listed twice would take its step twice)"
            )
        if id(p) in in_groups:
            raise ValueError(
                "some parameters appear in more than one parameter group: parameter "
                f"{i} of this group is already in parameter group {in_groups[id(p)]} (each "
                "parameter belongs to exactly one group)"
            )
        if p.device.type == "meta":
            raise ValueError(
                f"parameter {i} of this group is on the meta device, which holds no values: "
                "materialise the model first (model.to_empty(device=...) and load its weights), "
                "then create the optimizer"
            )
        seen[id(p)] = i


def _tensor_like(label: str, value: Any, param: Tensor) -> Tensor:
    """``value`` (named ``label`` in the message), checked to be a tensor shaped like ``param``."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{label} is {type(value).__name__}, not a tensor")
    if value.shape != param.shape:
        raise ValueError(
            f"{label} has shape {tuple(value.shape)} but its parameter has shape "
            f"{tuple(param.shape)}"
        )
    return value


def nonfinite(tensors: Sequence[Tensor]) -> list[int]:
    """The indices of the tensors that hold inf or NaN."""
    return [i for i, t in enumerate(tensors) if not bool(torch.isfinite(t).all())]


def check_hessian(hessian: Any, params: list[Tensor], *, finite: bool) -> None:
    """An external Hessian-diagonal estimate: one finite floating tensor per parameter."""
    if isinstance(hessian, Tensor) or not isinstance(hessian, Sequence):
        raise ValueError("hessian must be a list of tensors, one per parameter with a gradient")
    if len(hessian) != len(params):
        raise ValueError(
            f"hessian has {len(hessian)} tensors but {len(params)} parameters have a "
            "gradient; pass one per parameter with a gradient, in param-group order"
        )
    for i, (h, p) in enumerate(zip(hessian, params, strict=True)):
        h = _tensor_like(f"hessian[{i}]", h, p)
        if h.is_complex() or h.dtype == torch.bool:
            raise ValueError(f"hessian[{i}] has dtype {h.dtype}: pass a real-valued estimate")
    if finite:
        bad = nonfinite(hessian)
        if bad:
            raise ValueError(
                f"hessian[{bad[0]}] holds inf or NaN ({len(bad)} tensor(s) in all): pass a "
                "finite estimate (under a GradScaler such a step is skipped instead)"
            )


def check_estimate(estimate: Any, params: list[Tensor], where: str) -> None:
    """An estimate handed to the optimizer for its own probes: one floating-point tensor per
    parameter, shaped like it and on its device (inf and NaN are judged by the step, which
    skips them under a GradScaler)."""
    if isinstance(estimate, Tensor) or not isinstance(estimate, Sequence):
        raise ValueError(f"{where}: the estimate must be a list of tensors, one per parameter")
    if len(estimate) != len(params):
        raise ValueError(
            f"{where}: the estimate needs one tensor per parameter of hessian_probes() "
            f"({len(params)}), shaped like it; got {len(estimate)}"
        )
    for i, (e, p) in enumerate(zip(estimate, params, strict=True)):
        e = _tensor_like(f"{where}: estimate[{i}]", e, p)
        if not e.is_floating_point():
            raise ValueError(
                f"{where}: estimate[{i}] has dtype {e.dtype}: pass a floating-point estimate"
            )
        if e.device != p.device:
            raise ValueError(
                f"{where}: estimate[{i}] is on {e.device} but its parameter is on {p.device}: "
                "move it to the parameter's device"
            )


def _count(where: str, name: str, value: Any, *, lowest: int = 0) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value.item())
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ValueError(
            f"{where}: {name} is {value!r}, not an integer >= {lowest}. The state_dict was "
            "altered or does not come from AdaHessian.state_dict(): load the one that was saved"
        )
    return value


MOMENTS = ("exp_avg", "exp_hessian_diag_sq")


def check_param_state(where: str, p: Tensor, state: Any) -> None:
    """The saved state of one parameter: counters, and moments shaped like it, finite, with a
    non-negative Hessian average."""
    hint = "load the state_dict saved with this model"
    if not isinstance(state, dict):
        raise ValueError(f"{where}: the state is {type(state).__name__}, not a dict; {hint}")
    if not state:
        return
    missing = [k for k in ("step", "hessian_step", *MOMENTS) if k not in state]
    if missing:
        raise ValueError(f"{where}: the state lacks {missing}; {hint}")
    step = _count(where, "step", state["step"])
    hessian_step = _count(where, "hessian_step", state["hessian_step"])
    if hessian_step > step:
        raise ValueError(
            f"{where}: hessian_step ({hessian_step}) exceeds step ({step}), which no run "
            f"produces; {hint}"
        )
    for key in MOMENTS:
        t = state[key]
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{where}: {key} is not a floating-point tensor; {hint}")
        if t.shape != p.shape:
            raise ValueError(
                f"{where}: {key} has shape {tuple(t.shape)} but the parameter has shape "
                f"{tuple(p.shape)}: the state_dict belongs to another model; {hint}"
            )
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: {key} holds inf or NaN; {hint}")
    if bool((state["exp_hessian_diag_sq"] < 0).any()):
        raise ValueError(
            f"{where}: exp_hessian_diag_sq (a mean of squares) has negative entries; {hint}"
        )


def check_extra(extra: Any) -> dict[str, Any]:
    """The ``"adahessian"`` entry of a state_dict: counters, settings and the probe generator.
    Returns it with the entries that older versions did not save filled in."""
    where = "the 'adahessian' entry of this state_dict"
    if not isinstance(extra, dict):
        raise ValueError(
            "this state_dict has no 'adahessian' entry: it was not saved by "
            "AdaHessian.state_dict() and cannot restore the step counters and probe generator"
        )
    missing = {"steps", "hessian_updates", "update_interval", "n_samples", "seed"} - set(extra)
    if missing:
        raise ValueError(f"{where} lacks {sorted(missing)}")
    out = dict(extra)
    out["steps"] = _count(where, "steps", extra["steps"])
    out["hessian_updates"] = _count(where, "hessian_updates", extra["hessian_updates"])
    if out["hessian_updates"] > out["steps"]:
        raise ValueError(f"{where}: hessian_updates exceeds steps, which no run produces")
    out["skipped_steps"] = _count(where, "skipped_steps", extra.get("skipped_steps", 0))
    out["update_interval"] = check_count("update_interval", extra["update_interval"])
    out["n_samples"] = check_count("n_samples", extra["n_samples"])
    out["hessian_warmup"] = check_warmup(extra.get("hessian_warmup", 0))
    seed = check_seed(extra["seed"])
    if seed is None:
        raise ValueError(f"{where}: seed is None; load the state_dict that was saved")
    scale = extra.get("probe_scale", 1.0)
    if not _is_real(scale) or not 0.0 < scale <= 1.0 or math.frexp(scale)[0] != 0.5:
        raise ValueError(f"{where}: probe_scale {scale!r} is not a power of two in (0, 1]")
    out["probe_scale"] = float(scale)
    growth = extra.get("probe_scale_growth", 0)
    out["probe_scale_growth"] = _count(where, "probe_scale_growth", growth)
    generator = extra.get("generator")
    if generator is not None:
        ok = (
            isinstance(generator, dict)
            and isinstance(generator.get("device"), str)
            and isinstance(generator.get("state"), Tensor)
            and generator["state"].dtype == torch.uint8
        )
        if ok:
            try:
                device = torch.device(generator["device"])
                if device.type == "cpu":  # a state of the wrong size is refused here
                    torch.Generator().set_state(generator["state"].cpu())
            except (RuntimeError, ValueError):
                ok = False
        if not ok:
            raise ValueError(
                f"{where}: the probe generator's state is not one that "
                "torch.Generator.get_state() returns; load the state_dict that was saved"
            )
    return out
