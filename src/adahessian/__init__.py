"""AdaHessian: an adaptive second-order optimizer for PyTorch (Yao et al., AAAI 2021)."""

from .averaging import spatial_average
from .batchnorm import use_fast_batchnorm
from .compiled import CompiledCurvature, CompiledCurvatureError
from .finite_difference import FiniteDifferenceError, finite_difference_diagonal
from .functional import adahessian
from .hutchinson import hutchinson_diagonal, rademacher
from .hvp import (
    ForwardOverReverseError,
    HutchinsonResult,
    batched_hutchinson_diagonal,
    forward_hutchinson,
)
from .optimizer import AdaHessian
from .pattern import ActivationPatternError

__all__ = [
    "ActivationPatternError",
    "AdaHessian",
    "CompiledCurvature",
    "CompiledCurvatureError",
    "FiniteDifferenceError",
    "ForwardOverReverseError",
    "HutchinsonResult",
    "adahessian",
    "batched_hutchinson_diagonal",
    "finite_difference_diagonal",
    "forward_hutchinson",
    "hutchinson_diagonal",
    "rademacher",
    "spatial_average",
    "use_fast_batchnorm",
]
__version__ = "0.2.0"  # the distribution's version (pyproject.toml reads it); see CHANGELOG.md
