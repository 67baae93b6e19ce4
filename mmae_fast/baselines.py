"""Eager baselines the fused ops are measured against (``bench/``, trainer ``--backend
official-eager``). They imitate how the regulariser is written elsewhere, on purpose op by op;
``mmae_fast.reference`` stays the source of truth and the tests tie these to it.

All take features (m, d), return a 0-d float32 tensor: ``R = -logdet(I_d + mu/d · ZᵀZ)``
(``BASELINES``) or U-MAE's uniformity (``UNIFORMITY_BASELINES``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def official_tcr(z: torch.Tensor, mu: float = 1.0) -> torch.Tensor:
    """The official M-MAE ``loss_reg`` on one process: F.normalize, ``ZᵀZ`` under fp16 autocast
    (on CUDA, as the official mixed-precision training), ``torch.logdet`` (LU) in float32."""
    z = F.normalize(z, dim=1)
    d = z.shape[1]
    with torch.autocast("cuda", dtype=torch.float16, enabled=z.is_cuda):
        cov = z.T @ z
    eye = torch.eye(d, device=z.device, dtype=torch.float32)
    return -torch.logdet(eye + mu / d * cov.float())


def cholesky_tcr(z: torch.Tensor, mu: float = 1.0) -> torch.Tensor:
    """Eager exact alternative: float32 ``cholesky_ex`` of ``I + mu/d·ZᵀZ``, ``-2 Σ log diag L``."""
    z = F.normalize(z.float(), dim=1)
    d = z.shape[1]
    a = torch.addmm(torch.eye(d, device=z.device), z.T, z, alpha=mu / d)
    chol, _ = torch.linalg.cholesky_ex(a)
    return -2.0 * chol.diagonal().log().sum()


def taylor_tcr(z: torch.Tensor, mu: float = 1.0, order: int = 4) -> torch.Tensor:
    """MEC-style eager Taylor: sum the matrix powers ``±C^k/k`` of ``C = mu/d·ZᵀZ``, then trace."""
    z = F.normalize(z.float(), dim=1)
    c = (mu / z.shape[1]) * (z.T @ z)
    power, total = c, torch.zeros_like(c)
    for k in range(1, order + 1):
        if k > 1:
            power = power @ c
        total = total + power / k if k % 2 == 1 else total - power / k
    return -torch.trace(total)


#: name -> callable(z, mu), for benchmarks and the trainer.
BASELINES = {"official": official_tcr, "cholesky": cholesky_tcr, "taylor-eager": taylor_tcr}


def umae_uniformity(z: torch.Tensor) -> torch.Tensor:
    """U-MAE's eager uniformity: F.normalize, the (m, m) similarity ``ZZᵀ``, the mean of its
    squares."""
    z = F.normalize(z.float(), dim=1)
    return (z @ z.T).square().mean()


#: name -> callable(z), for benchmarks.
UNIFORMITY_BASELINES = {"umae-eager": umae_uniformity}
