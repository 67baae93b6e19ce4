"""The "triton" backend: stages 1 and 3 of the staged TCR from the Triton kernels in
``mmae_fast.ops.tcr.triton`` (the contract: ``mmae_fast/ops/tcr/stages.py``).

Runs on CUDA tensors, and on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set
before import; slow, for tests): ``supports`` accepts CPU tensors exactly when the interpreter is
on, so the tests run the same public path (``tcr_loss(..., backend="triton")``) as a GPU does.
``"auto"`` still never picks a kernel backend for CPU tensors (``mmae_fast.backends``).
Inputs float16 / bfloat16 / float32, float32 accumulation and outputs; ``gram`` / ``grad`` call
the custom ops of ``mmae_fast.ops.tcr.triton.custom_ops``.
"""
from __future__ import annotations

import torch

from ..input_check import input_reason
from .config import DTYPES, interpreting

try:
    import triton  # noqa: F401
except ImportError as exc:  # the backend reports it through availability()
    _IMPORT_REASON = f"triton is not installed ({exc}); pip install triton"
    triton_ops = None
else:
    _IMPORT_REASON = None
    from . import custom_ops as triton_ops


def availability() -> str | None:
    """None when triton imports and a CUDA device is visible (or the interpreter is on)."""
    if _IMPORT_REASON is not None:
        return _IMPORT_REASON
    if not (torch.cuda.is_available() or interpreting()):
        return ("no CUDA device is visible to torch (set TRITON_INTERPRET=1 before importing "
                "mmae_fast to run the kernels in Triton's CPU interpreter, slowly)")
    return None


def supports(z: torch.Tensor) -> str | None:
    """CUDA tensors (CPU tensors in interpreter mode) of shape (m, d) in float32/16, bfloat16."""
    return input_reason(z, "triton", DTYPES, cpu_ok=interpreting(),
                        cpu_hint=" (or a CPU tensor with TRITON_INTERPRET=1)",
                        dtype_hint="; use backend='cuda' or 'reference' for float64")


def gram(h: torch.Tensor, feature: bool):
    """Stage 1: ``(G, rinv)`` in float32, through ``torch.ops.mmae_fast.triton_gram``."""
    return torch.ops.mmae_fast.triton_gram(h, bool(feature))


def grad(coef: torch.Tensor, h: torch.Tensor, rinv: torch.Tensor, q: torch.Tensor,
         v: torch.Tensor, feature: bool, scale: float) -> torch.Tensor:
    """Stage 3: dh (m, d) in h's dtype, ``coef = [s, t]`` or ``[s]``, through
    ``torch.ops.mmae_fast.triton_grad``."""
    return torch.ops.mmae_fast.triton_grad(coef, h, rinv, q, v, bool(feature), float(scale))
