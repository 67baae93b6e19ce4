"""The "reference" backend: ``mmae_fast.reference`` in eager PyTorch, any device and dtype.

One process: ``reference.tcr`` with autograd (the float64 formulas). With ``group=`` the staged
path (``mmae_fast.ops.staged``) runs on ``torch_stages`` instead.
"""
from __future__ import annotations

import torch

from . import torch_stages


def availability() -> str | None:
    """Always available."""
    return None


def supports(z: torch.Tensor) -> str | None:
    """Every floating tensor on every device."""
    return None


# The staged path (mmae_fast.ops.staged; used with group=): stages 1 and 3 in plain PyTorch.
gram = torch_stages.gram
grad = torch_stages.grad
