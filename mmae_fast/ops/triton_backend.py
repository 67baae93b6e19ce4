"""The "triton" backend: the TCR regulariser from the Triton kernels in ``mmae_fast.triton``.

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set
before import; slow, for tests). Inputs float16 / bfloat16 / float32, computed in float32.
"""
from __future__ import annotations

import os

import torch

try:
    import triton  # noqa: F401
except ImportError as exc:  # the backend reports it through availability()
    _IMPORT_REASON = f"triton is not installed ({exc}); pip install triton"
    triton_ops = None
else:
    _IMPORT_REASON = None
    from . import triton_ops

#: Input dtypes the kernels take.
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def availability() -> str | None:
    """None when triton imports and a CUDA device is visible (or the interpreter is on)."""
    if _IMPORT_REASON is not None:
        return _IMPORT_REASON
    if not (torch.cuda.is_available() or _interpreting()):
        return ("no CUDA device is visible to torch (set TRITON_INTERPRET=1 before importing "
                "mmae_fast to run the kernels in Triton's CPU interpreter, slowly)")
    return None


def supports(z: torch.Tensor) -> str | None:
    """CUDA tensors (CPU tensors in interpreter mode) of shape (m, d) in float32/16, bfloat16."""
    if z.device.type != "cuda" and not (z.device.type == "cpu" and _interpreting()):
        return (f"the triton backend needs a CUDA tensor (or a CPU tensor with "
                f"TRITON_INTERPRET=1), got device {z.device.type!r}")
    if z.dtype not in DTYPES:
        return (f"the triton backend takes float32, float16 or bfloat16, got {z.dtype}; use "
                f"backend='cuda' or 'reference' for float64")
    if z.dim() != 2 or z.shape[0] < 1 or z.shape[1] < 1:
        return f"the triton backend needs a non-empty (m, d) matrix, got shape {tuple(z.shape)}"
    return None


def tcr(z: torch.Tensor, *, mu: float, centering: bool, estimator: str, degree: int) -> torch.Tensor:
    """``-logdet(I + mu/d·ZᵀZ)`` of the normalised (optionally centred) rows; 0-d float32,
    differentiable. Matches ``mmae_fast.reference.tcr``."""
    return triton_ops.tcr(z, mu=mu, centering=centering, estimator=estimator, degree=degree)
