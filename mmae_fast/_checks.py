"""Input validation for the public API: every error names the argument and the fix."""
from __future__ import annotations

import math
import numbers

import torch

ESTIMATORS = ("exact", "series", "taylor")
#: Largest polynomial degree / Taylor order accepted (the series' own cap, series.MAX_DEGREE).
MAX_ORDER = 512
GRAD_SEMANTICS = ("exact", "per_rank")


def features(z, name: str = "z", *, check_finite: bool = False) -> torch.Tensor:
    """Check that ``z`` is a non-empty floating (m, d) tensor; return it."""
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be True or False, got {check_finite!r}")
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (m, d), got {type(z).__name__}")
    if z.dim() != 2:
        raise ValueError(
            f"{name} must be 2-D (m samples, d features), got shape {tuple(z.shape)}; "
            f"flatten extra dimensions first, e.g. {name}.flatten(0, -2) or {name}.flatten(1)")
    if z.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {z.layout}; "
                        f"convert with {name}.to_dense()")
    if not z.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {z.dtype}; "
                        f"convert with {name}.float()")
    m, d = z.shape
    if m == 0:
        raise ValueError(f"{name} has an empty batch (m = 0 rows); pass at least one sample")
    if d == 0:
        raise ValueError(f"{name} has no features (d = 0 columns)")
    if check_finite and not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or Inf values (check_finite=True)")
    return z


def pair(z1: torch.Tensor, z2: torch.Tensor, *, same_d: bool, check_finite: bool = False):
    """Check two feature matrices of the same batch (and, if ``same_d``, the same width).

    Their dtypes may differ: every two-view function computes in ``reference.pair_dtype`` (the
    compute dtype of the promoted dtype: float64 if either view is float64, else float32) and
    returns a value of that dtype; each view's gradient comes back in its own dtype.
    """
    features(z1, "z1", check_finite=check_finite)
    features(z2, "z2", check_finite=check_finite)
    if z1.device != z2.device:
        raise ValueError(f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    if z1.shape[0] != z2.shape[0]:
        raise ValueError(f"z1 and z2 must have the same number of rows (samples), got "
                         f"{z1.shape[0]} and {z2.shape[0]}")
    if same_d and z1.shape[1] != z2.shape[1]:
        raise ValueError(f"z1 and z2 must have the same feature dimension, got {z1.shape[1]} "
                         f"and {z2.shape[1]}")


def positive(value, name: str) -> float:
    """Check a finite real number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not 0 < value < math.inf:  # also False for NaN (comparisons only: torch.compile-safe)
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def tolerance(value, name: str = "tol") -> float:
    """Check a relative error target: a number in (0, 1) (1 would allow a 100 % error)."""
    value = positive(value, name)
    if not value < 1:
        raise ValueError(f"{name} is a relative error target: give 0 < {name} < 1 (e.g. 1e-4), "
                         f"got {value}")
    return value


def alpha(value) -> float:
    """Check a Rényi order alpha: finite and > 0 (alpha = 1 is von Neumann)."""
    return positive(value, "alpha")


def order(value, name: str = "order") -> int:
    """Check a polynomial order/degree: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > MAX_ORDER:
        raise ValueError(f"{name} must be <= {MAX_ORDER}, got {value} (the polynomial keeps "
                         f"about {name}/2 n×n matrices); use estimator='exact' or a larger tol")
    return int(value)


def estimator_order(value, estimator: str) -> int | None:
    """Check ``order`` of a TCR estimator: None, or an ``order`` for "series" / "taylor"."""
    if value is None:
        return None
    if estimator == "exact":
        raise ValueError("order applies to estimator='series' or 'taylor', not 'exact'; "
                         "drop order or change the estimator")
    return order(value)


def choice(value, name: str, options) -> str:
    """Check that ``value`` is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value
