"""Public losses and metrics: checked inputs, backend dispatch, one call each.

``group=`` (a torch.distributed process group) computes a loss on the rows of every rank where it
is a function of the all-reduced d×d Gram (``tcr_loss``, ``uniformity_loss``, ``matrix_entropy``,
``effective_rank``); the two-view functions raise for it (``mmae_fast.distributed``).

Every function takes features of shape (m, d) (m samples, d feature dims) in any float dtype,
L2-normalises the rows itself (without overflow, for features of any finite size) and returns a
0-d tensor: float64 for float64 input, else float32 (two views: float64 if either is float64,
``_checks.pair``). NaN/Inf features give NaN unless ``check_finite=True`` rejects them; all-zero
features have entropy 0 (``reference.renyi_entropy_psd``).
Formulas: ``mmae_fast.reference`` (the single source of truth); the staged op behind the kernel
backends: ``mmae_fast.ops.tcr`` (docs/architecture.md).
"""
from __future__ import annotations


import torch

from . import _checks, backends, distributed, reference, series
from .ops import tcr as staged
from .ops.tcr.small_side import warn_if_taylor_diverges


def _bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _reference_only(backend: str, fn: str) -> None:
    """Functions with only a PyTorch implementation accept "auto" and "reference"."""
    _checks.choice(backend, "backend", backends.BACKENDS)
    if backend not in ("auto", "reference"):
        raise ValueError(f"{fn} has no {backend!r} kernel yet; use backend='auto' or 'reference'")


def tcr_loss(z: torch.Tensor, mu: float = 1.0, *, centering: bool = False,
             estimator: str = "exact", order: int | None = None, tol: float = 1e-4, group=None,
             grad_semantics: str = "exact", backend: str = "auto",
             check_finite: bool = False) -> torch.Tensor:
    """M-MAE's total coding rate regulariser (the official ``loss_reg``)::

        R = -logdet(I_d + mu/d · ZᵀZ),   Z = [J] normalize(z)   (m, d) -> 0-d

    Add ``lamb * tcr_loss(cls_features, mu)`` to the MAE loss (official: lamb = 1e-2, mu = 3 for
    ViT-L). ``mu`` follows the official code (c = mu/d, d the feature dim).

    Args:
        centering: use ``ZᵀJZ`` (features minus their batch mean).
        estimator: "exact" (Cholesky on the smaller Gram side, float64 on the kernel path),
            "series" (convergence-safe Chebyshev polynomial, relative error <= ``tol`` for every
            input, GEMMs only) or "taylor" (order-``order`` Taylor of log(I + X), default 4, as
            MEC / Matrix-SSL; converges only if mu·m/d < 1).
        order: polynomial degree for "series" / "taylor" (overrides ``tol``).
        tol: relative error target of "series", in (0, 1).
        group: a torch.distributed process group: R on the rows of all its ranks via one
            all-reduce of the d x d Gram on the same staged kernels (``mmae_fast.distributed``);
            None for one process.
        grad_semantics: with ``group``: "exact" (DDP-averaged gradient = gradient of R on the
            full batch) or "per_rank" (official scaling, 1/K of it). Same thing without a group.
        backend: "auto" (cuda, then triton for CUDA tensors, cpu for CPU tensors, else
            reference: the first that is available and takes the input; env MMAE_FAST_BACKEND
            overrides), "reference" (autograd through the float64-capable formula), "cpu" (the
            staged op with CPU stages: float32 products, float64 n×n side), "triton" or "cuda".
        check_finite: raise ValueError if ``z`` holds NaN/Inf (costs a host sync).
    """
    _checks.features(z, "z", check_finite=check_finite)
    mu = _checks.positive(mu, "mu")
    _bool(centering, "centering")
    _checks.choice(estimator, "estimator", _checks.ESTIMATORS)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    _checks.choice(backend, "backend", backends.BACKENDS)
    tol = _checks.tolerance(tol)
    order = _checks.estimator_order(order, estimator)
    degree = order or 0  # 0: the default, chosen at run time inside the op (from tol and kappa)
    name = backends.resolve_name(backend, z)
    compiling = torch.compiler.is_compiling()
    if group is not None:
        return distributed.tcr(z, mu, centering=centering, estimator=estimator, degree=degree,
                               tol=tol, group=group, grad_semantics=grad_semantics, backend=name)
    if name == "reference" and not compiling:
        m, d = z.shape
        warn_if_taylor_diverges(estimator, mu, m, d, stacklevel=3)
        return reference.tcr(z, mu, centering=centering, estimator=estimator,
                             degree=degree or reference.default_degree(
                                 estimator, series.kappa(mu, m, d), tol) or None)
    # kernel backends, and the reference under torch.compile (the same float64 small side; its
    # degree and coefficients are computed at run time inside the op, never traced)
    return staged.tcr(z, backend=name, mu=mu, centering=centering, estimator=estimator,
                      degree=degree, tol=tol)


def uniformity_loss(z: torch.Tensor, *, group=None, grad_semantics: str = "exact",
                    backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """U-MAE uniformity ``mean((ZZᵀ)²) = ||ZᵀZ||_F² / m²`` of the normalised rows (m, d) -> 0-d.

    It is R's order-2 Taylor term: ``lamb·R ≈ const + w·mean((ZZᵀ)²)`` with
    ``w = lamb·mu²m²/(2d²)`` (``reference.uniformity_equivalent_weight``).

    Args:
        group: a torch.distributed process group: the value on the rows of all its ranks,
            ``||Σ_r Z_rᵀZ_r||_F² / M²`` (one all-reduce of the d×d Gram and the row count, shards
            of any sizes; ``mmae_fast.distributed``); None for one process.
        grad_semantics: with ``group``, as ``tcr_loss``: "exact" or "per_rank" (1/K).
        backend: as ``tcr_loss``: "triton" / "cuda" run the staged op's fused Gram of the
            smaller side and its backward, "cpu" (and "auto" on CPU tensors) its CPU stages;
            "reference" the float64-capable formula for one process, the staged op's
            reference stages with ``group``.
    """
    _checks.features(z, "z", check_finite=check_finite)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    name = backends.resolve_name(backend, z)
    if group is not None:
        return distributed.uniformity(z, group=group, grad_semantics=grad_semantics, backend=name)
    if name == "reference":
        return reference.uniformity(z)
    return staged.uniformity(z, backend=name)


#: Backends whose fused Gram and backward also run Rényi-2 (as the staged uniformity).
KERNEL_BACKENDS = ("triton", "cuda")


def _renyi_2_on_kernels(z: torch.Tensor, backend: str) -> torch.Tensor:
    """``H_2 = -log tr(K̂²) = -log U + 2 log(tr(ZᵀZ)/m)``, U = ``uniformity_loss`` on the staged
    op; ``tr(ZᵀZ) = Σ_i ‖z_i‖²`` is m unless rows lie below the 1e-12 norm floor (one pass of
    row norms). An all-zero batch has U = 0 and takes the reference's defined value."""
    u = staged.uniformity(z, backend=backend)
    norms = reference.row_norms(z.float() if z.dtype != torch.float64 else z)
    mean_sq = (norms / norms.clamp_min(reference.EPS)).square().mean()
    some = u > 0  # where(…) with safe operands keeps the unselected branch's gradient finite
    value = 2.0 * torch.where(some, mean_sq, 1.0).log() - torch.where(some, u, 1.0).log()
    return torch.where(some, value, torch.zeros_like(value))


def matrix_entropy(z: torch.Tensor, alpha: float = 1.0, *, group=None,
                   grad_semantics: str = "exact", backend: str = "auto",
                   check_finite: bool = False) -> torch.Tensor:
    """Matrix Rényi-alpha entropy of ``K̂ = ZZᵀ / tr(ZZᵀ)`` (m, d) -> 0-d, in nats::

        H_alpha = log tr(K̂^alpha) / (1 - alpha),   alpha = 1: von Neumann -tr(K̂ log K̂)

    ``group``: a torch.distributed process group: H of the rows of all its ranks, from the
    spectrum of the all-reduced d×d Gram ``Σ_r Z_rᵀZ_r`` (``mmae_fast.distributed``);
    ``grad_semantics`` as ``tcr_loss``. ``backend``: "reference" for every alpha; alpha = 2
    without a group also runs on "triton" / "cuda" (and "auto" on CUDA tensors) from the staged
    uniformity (``_renyi_2_on_kernels``).
    """
    _checks.features(z, "z", check_finite=check_finite)
    alpha = _checks.alpha(alpha)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    if alpha == 2.0 and group is None and backends.resolve_name(backend, z) in KERNEL_BACKENDS:
        return _renyi_2_on_kernels(z, backends.resolve_name(backend, z))
    _reference_only(backend, "matrix_entropy")
    if group is not None:
        return distributed.renyi_entropy(z, alpha, group=group, grad_semantics=grad_semantics)
    return reference.renyi_entropy(z, alpha)


def effective_rank(z: torch.Tensor, *, group=None, grad_semantics: str = "exact",
                   backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Effective rank ``exp(H_1)`` of the normalised features (m, d) -> 0-d, in [1, min(m, d)];
    ``group`` / ``grad_semantics`` as ``matrix_entropy`` (then in [1, min(M, d)])."""
    _checks.features(z, "z", check_finite=check_finite)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    _reference_only(backend, "effective_rank")
    if group is not None:
        return distributed.renyi_entropy(z, 1.0, group=group, grad_semantics=grad_semantics).exp()
    return reference.effective_rank(z)


def matrix_joint_entropy(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 1.0, *, group=None,
                         backend: str = "auto", check_finite: bool = False) -> torch.Tensor:
    """Matrix joint entropy ``H_alpha(K1 ∘ K2)`` of two views (m, d1), (m, d2) -> 0-d."""
    _checks.pair(z1, z2, same_d=False, check_finite=check_finite)
    alpha = _checks.alpha(alpha)
    _reference_only(backend, "matrix_joint_entropy")
    distributed.no_group(group, "matrix_joint_entropy")
    return reference.joint_entropy(z1, z2, alpha)


def matrix_mutual_information(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 1.0, *,
                              group=None, backend: str = "auto",
                              check_finite: bool = False) -> torch.Tensor:
    """Matrix mutual information ``H_alpha(K1) + H_alpha(K2) - H_alpha(K1 ∘ K2)``
    of two views (m, d1), (m, d2) -> 0-d."""
    _checks.pair(z1, z2, same_d=False, check_finite=check_finite)
    alpha = _checks.alpha(alpha)
    _reference_only(backend, "matrix_mutual_information")
    distributed.no_group(group, "matrix_mutual_information")
    return reference.mutual_information(z1, z2, alpha)


def mec_loss(z1: torch.Tensor, z2: torch.Tensor, *, eps_sq: float = 0.06, order: int = 4,
             group=None, grad_semantics: str = "exact", backend: str = "auto",
             check_finite: bool = False) -> torch.Tensor:
    """Maximum Entropy Coding loss of two views (m, d) -> 0-d::

        -mu_mec · Σ_{k<=order} (-1)^(k+1) tr((lam · Z1 Z2ᵀ)^k) / k,
        lam = d / (m · eps_sq),  mu_mec = (m + d) / 2

    (order-``order`` Taylor of ``-mu_mec · tr log(I + lam Z1Z2ᵀ)``; MEC warms ``eps_sq`` up so the
    series converges).

    ``group``: the rows of all its ranks (m = M), from the all-reduced d×d cross Gram
    ``Σ_r Z2_rᵀZ1_r`` (``mmae_fast.distributed``); ``grad_semantics`` as ``tcr_loss``.
    """
    _checks.pair(z1, z2, same_d=True, check_finite=check_finite)
    eps_sq = _checks.positive(eps_sq, "eps_sq")
    order = _checks.order(order)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    _reference_only(backend, "mec_loss")
    if group is not None:
        return distributed.mec(z1, z2, eps_sq=eps_sq, order=order, group=group,
                               grad_semantics=grad_semantics)
    return reference.mec(z1, z2, eps_sq=eps_sq, order=order)


def matrix_cross_entropy(z1: torch.Tensor, z2: torch.Tensor, *, mu: float = 1.0, order: int = 4,
                         group=None, grad_semantics: str = "exact", backend: str = "auto",
                         check_finite: bool = False) -> torch.Tensor:
    """Matrix-SSL's uniformity loss, the matrix cross-entropy ``MCE(I_d/d, Q)`` (m, d) -> 0-d::

        MCE(P, Q) = tr(-P log Q + Q),  Q = (1/m) Z1ᵀ J Z2 + mu·I_d,
        log Q by its order-``order`` Taylor series at I

    ``group``: the rows of all its ranks (m = M, J the centring over all of them), from the
    all-reduced ``Σ_r Z1_rᵀZ2_r`` and column sums (``mmae_fast.distributed``);
    ``grad_semantics`` as ``tcr_loss``.
    """
    _checks.pair(z1, z2, same_d=True, check_finite=check_finite)
    mu = _checks.positive(mu, "mu")
    order = _checks.order(order)
    _checks.choice(grad_semantics, "grad_semantics", _checks.GRAD_SEMANTICS)
    _reference_only(backend, "matrix_cross_entropy")
    if group is not None:
        return distributed.matrix_cross_entropy(z1, z2, mu=mu, order=order, group=group,
                                                grad_semantics=grad_semantics)
    return reference.matrix_cross_entropy(z1, z2, mu=mu, order=order)
