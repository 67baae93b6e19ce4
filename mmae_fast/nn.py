"""The losses and metrics of ``mmae_fast.functional`` as ``torch.nn.Module`` s.

Hyper-parameters go to the constructor (checked there, as the functions check them), features to
``forward``; ``forward`` is one call of the function. A module holds its settings and nothing
else (no buffers, no parameters), so it is safe under DDP, ``deepcopy``, pickling and
``torch.compile(fullgraph=True)``.

Ranks (``mmae_fast.distributed.module_group``):

    distributed=False, group=None   one process: the loss of this rank's rows
    distributed=True,  group=None   the default process group when torch.distributed is
                                    initialised, else one process (single-GPU runs unchanged)
    distributed=True,  group=G      process group G
    distributed=False, group=G      ValueError (ambiguous): pass distributed=True with it

``grad_semantics`` ("exact" / "per_rank") as ``mmae_fast.tcr_loss``. The joint entropy and
mutual information modules (``MatrixJointEntropy``, ``MatrixMutualInformation``) are computed
per process: ``distributed=True`` raises where they are built. A module given
``group=`` pickles and deep-copies only as far as that group object does; ``distributed=True``
resolves the default group at call time and always does.
"""
from __future__ import annotations

import torch

from . import _checks, backends, distributed as _dist, functional as F

__all__ = [
    "EffectiveRank", "MECLoss", "MatrixCrossEntropy", "MatrixEntropy", "MatrixJointEntropy",
    "MatrixMutualInformation", "TCRLoss", "UniformityLoss",
]


class _Loss(torch.nn.Module):
    """Settings, their ``extra_repr``, and the group of one call."""

    #: the constructor arguments shown by ``extra_repr``, in order
    _shown: tuple = ()

    def __init__(self, *, distributed: bool, group, backend: str, check_finite: bool,
                 grad_semantics: str | None = None):
        super().__init__()
        _dist.check_module_group(distributed, group)
        _checks.choice(backend, "backend", backends.BACKENDS)
        F._bool(check_finite, "check_finite")
        if grad_semantics is not None:
            _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
            self.grad_semantics = grad_semantics
        self.distributed, self.group = distributed, group
        self.backend, self.check_finite = backend, check_finite

    def _group(self):
        return _dist.module_group(self.distributed, self.group)

    def extra_repr(self) -> str:
        names = self._shown + ("distributed",) + (("grad_semantics",) if hasattr(
            self, "grad_semantics") else ()) + ("backend",)
        text = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return text + (f", group={self.group!r}" if self.group is not None else "")


class _PerProcess(_Loss):
    """The joint entropy and mutual information: computed on each process's own batch (the
    Hadamard product of two m×m kernels has no d×d all-reduce form)."""

    def __init__(self, *, distributed: bool, group, backend: str, check_finite: bool):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite)
        if distributed:
            raise ValueError(
                f"distributed: {type(self).__name__} is computed on each process's own batch "
                f"(its sample kernels have no d×d all-reduce form, mmae_fast.distributed); "
                f"use distributed=False")


class TCRLoss(_Loss):
    """``mmae_fast.tcr_loss``: M-MAE's ``-logdet(I_d + mu/d · ZᵀZ)``, (m, d) -> 0-d."""

    _shown = ("mu", "centering", "estimator", "order", "tol")

    def __init__(self, mu: float = 1.0, *, centering: bool = False, estimator: str = "exact",
                 order: int | None = None, tol: float = 1e-4, distributed: bool = False,
                 group=None, grad_semantics: str = "exact", backend: str = "auto",
                 check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)
        self.mu = _checks.positive(mu, "mu")
        self.centering = F._bool(centering, "centering")
        self.estimator = _checks.choice(estimator, "estimator", _checks.ESTIMATORS)
        self.order = _checks.estimator_order(order, estimator)
        self.tol = _checks.tolerance(tol)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.tcr_loss(z, self.mu, centering=self.centering, estimator=self.estimator,
                          order=self.order, tol=self.tol, group=self._group(),
                          grad_semantics=self.grad_semantics, backend=self.backend,
                          check_finite=self.check_finite)


class UniformityLoss(_Loss):
    """``mmae_fast.uniformity_loss``: U-MAE's ``||ZᵀZ||_F² / M²``, (m, d) -> 0-d."""

    def __init__(self, *, distributed: bool = False, group=None, grad_semantics: str = "exact",
                 backend: str = "auto", check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.uniformity_loss(z, group=self._group(), grad_semantics=self.grad_semantics,
                                 backend=self.backend, check_finite=self.check_finite)


class MatrixEntropy(_Loss):
    """``mmae_fast.matrix_entropy``: Rényi-alpha entropy of ``ZZᵀ/tr``, (m, d) -> 0-d."""

    _shown = ("alpha",)

    def __init__(self, alpha: float = 1.0, *, distributed: bool = False, group=None,
                 grad_semantics: str = "exact", backend: str = "auto",
                 check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)
        self.alpha = _checks.alpha(alpha)
        if self.alpha != 2.0:  # Rényi-2 also runs on the kernel backends (matrix_entropy)
            F._reference_only(backend, "matrix_entropy")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.matrix_entropy(z, self.alpha, group=self._group(),
                                grad_semantics=self.grad_semantics, backend=self.backend,
                                check_finite=self.check_finite)


class EffectiveRank(_Loss):
    """``mmae_fast.effective_rank``: ``exp(H_1)``, (m, d) -> 0-d."""

    def __init__(self, *, distributed: bool = False, group=None, grad_semantics: str = "exact",
                 backend: str = "auto", check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)
        F._reference_only(backend, "effective_rank")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.effective_rank(z, group=self._group(), grad_semantics=self.grad_semantics,
                                backend=self.backend, check_finite=self.check_finite)


class MatrixJointEntropy(_PerProcess):
    """``mmae_fast.matrix_joint_entropy``: ``H_alpha(K1 ∘ K2)``, (m, d1), (m, d2) -> 0-d."""

    _shown = ("alpha",)

    def __init__(self, alpha: float = 1.0, *, distributed: bool = False, group=None,
                 backend: str = "auto", check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite)
        F._reference_only(backend, "matrix_joint_entropy")
        self.alpha = _checks.alpha(alpha)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return F.matrix_joint_entropy(z1, z2, self.alpha, backend=self.backend,
                                      check_finite=self.check_finite)


class MatrixMutualInformation(_PerProcess):
    """``mmae_fast.matrix_mutual_information``: ``H(K1) + H(K2) - H(K1 ∘ K2)``, two views
    (m, d1), (m, d2) -> 0-d."""

    _shown = ("alpha",)

    def __init__(self, alpha: float = 1.0, *, distributed: bool = False, group=None,
                 backend: str = "auto", check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite)
        F._reference_only(backend, "matrix_mutual_information")
        self.alpha = _checks.alpha(alpha)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return F.matrix_mutual_information(z1, z2, self.alpha, backend=self.backend,
                                           check_finite=self.check_finite)


class MECLoss(_Loss):
    """``mmae_fast.mec_loss``: Maximum Entropy Coding of two views (m, d) -> 0-d."""

    _shown = ("eps_sq", "order")

    def __init__(self, *, eps_sq: float = 0.06, order: int = 4, distributed: bool = False,
                 group=None, grad_semantics: str = "exact", backend: str = "auto",
                 check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)
        F._reference_only(backend, "mec_loss")
        self.eps_sq = _checks.positive(eps_sq, "eps_sq")
        self.order = _checks.order(order)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return F.mec_loss(z1, z2, eps_sq=self.eps_sq, order=self.order, group=self._group(),
                          grad_semantics=self.grad_semantics, backend=self.backend,
                          check_finite=self.check_finite)


class MatrixCrossEntropy(_Loss):
    """``mmae_fast.matrix_cross_entropy``: Matrix-SSL's ``MCE(I_d/d, Q)``, two views
    (m, d) -> 0-d."""

    _shown = ("mu", "order")

    def __init__(self, *, mu: float = 1.0, order: int = 4, distributed: bool = False,
                 group=None, grad_semantics: str = "exact", backend: str = "auto",
                 check_finite: bool = False):
        super().__init__(distributed=distributed, group=group, backend=backend,
                         check_finite=check_finite, grad_semantics=grad_semantics)
        F._reference_only(backend, "matrix_cross_entropy")
        self.mu = _checks.positive(mu, "mu")
        self.order = _checks.order(order)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return F.matrix_cross_entropy(z1, z2, mu=self.mu, order=self.order,
                                      group=self._group(), grad_semantics=self.grad_semantics,
                                      backend=self.backend, check_finite=self.check_finite)
