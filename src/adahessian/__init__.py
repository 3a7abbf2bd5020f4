"""AdaHessian: an adaptive second-order optimizer for PyTorch (Yao et al., AAAI 2021)."""

from .averaging import spatial_average
from .functional import adahessian
from .hutchinson import hutchinson_diagonal, rademacher
from .optimizer import AdaHessian

__all__ = ["AdaHessian", "adahessian", "hutchinson_diagonal", "rademacher", "spatial_average"]
__version__ = "0.1.0"
