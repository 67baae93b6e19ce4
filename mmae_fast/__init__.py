"""mmae_fast: fused, exact matrix-information regularisers for self-supervised learning.

The public API (``mmae_fast.functional``, re-exported here)::

    tcr_loss(z, mu=1.0, ...)            M-MAE total coding rate  -logdet(I + mu/d · ZᵀZ)
    uniformity_loss(z)                  U-MAE  mean((ZZᵀ)²)
    matrix_entropy(z, alpha=1.0)        matrix Rényi / von Neumann entropy
    effective_rank(z)                   exp(von Neumann entropy)
    matrix_joint_entropy(z1, z2, alpha)
    matrix_mutual_information(z1, z2, alpha)
    mec_loss(z1, z2)                    Maximum Entropy Coding
    matrix_cross_entropy(z1, z2)        Matrix-SSL uniformity

The same as ``torch.nn.Module`` s (settings in the constructor, features in ``forward``):
``mmae_fast.nn`` (``TCRLoss``, ``UniformityLoss``, ``MatrixEntropy``, ``EffectiveRank``, ...).

Formulas: ``mmae_fast.reference``; series coefficients and bounds: ``mmae_fast.series``;
backends: ``mmae_fast.backends``; multi-GPU: ``mmae_fast.distributed``.
"""
from . import nn
from .backends import available_backends
from .functional import (
    effective_rank,
    matrix_cross_entropy,
    matrix_entropy,
    matrix_joint_entropy,
    matrix_mutual_information,
    mec_loss,
    tcr_loss,
    uniformity_loss,
)

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "effective_rank",
    "matrix_cross_entropy",
    "matrix_entropy",
    "matrix_joint_entropy",
    "matrix_mutual_information",
    "mec_loss",
    "nn",
    "tcr_loss",
    "uniformity_loss",
]
