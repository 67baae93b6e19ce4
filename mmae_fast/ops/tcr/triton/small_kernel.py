"""The small side's n×n product on tensor cores: one Triton kernel for every product of the
Chebyshev / Newton–Schulz algorithms (``mmae_fast/ops/tcr/doubling.py``), with their affine
epilogue and the traces they need::

    OUT = alpha·(A @ B) + beta·C + gamma·I                  A, B, C, F, OUT: (n, n) float32
    partials[0, p] = Σ_(i in tile p) OUT[i, i]              (trace(OUT) = Σ_p partials[0, p])
    partials[1, p] = Σ_(i, j in tile p) OUT[i, j]·F[i, j]   (<OUT, F>  = Σ_p partials[1, p])

The products-only small side (``small_side.product_function``) calls it as
``symmetric_mm(a, b)``: every matrix there is a polynomial in Y, so only the tiles on and above
the diagonal compute (``symmetric=True``), about half the work. The
epilogue and the reductions fold element-wise work into the same launch: the Newton–Schulz step
``2I - A·X`` is ``product(A, X, alpha=-1, gamma=2)``, a Y-operand Chebyshev step
``2·beta·Y·T_(k-1) - C`` (``C = 2 T_(k-1) + T_(k-2)``) is ``product(Y, T_(k-1),
alpha=2·beta, c=C, beta=-1)``, and ``frob=T_j`` gives ``<OUT, T_j>`` in the same pass.

Precision. ``tl.dot(..., input_precision="tf32x3")`` (Triton 3.9's NVIDIA backend accepts
"tf32", "tf32x3", "ieee", "bf16x3", "bf16x6"; its interpreter "tf32", "tf32x3", "ieee"): each
float32 operand is split as ``x = hi + lo`` in TF32 and ``a·b ≈ hi_a·hi_b + hi_a·lo_b +
lo_a·hi_b`` — three TF32 tensor-core products with float32 accumulation, about float32
accuracy (``mmae_fast/ops/tcr/rounding.py`` emulates it on the CPU: ``product(a, b,
"tf32x3")``). Triton's interpreter computes tl.dot as a plain float32
numpy matmul whatever the precision, so on the CPU this kernel checks the tiling, the masks of
odd n, the epilogue and the reductions, not the TF32 rounding.

Reductions are deterministic: each program writes its tile's float32 sums to its own slot (no
atomics) and the caller adds the slots in float64 (``sums``). Rows of the tile are fully
reduced inside the program (fixed order), so two runs give the same bits.

Block sizes (``choose``): square BLOCK x BLOCK output tiles, 32 deep steps, 4 warps, 3 stages:
BLOCK = 64 for n >= 512 (n = 1023: 256 programs, about two per SM of an H100), else 32 (n = 255:
64 programs rather than 16). Shared memory per stage (BLOCK·32 floats of A and of B) is at most
16 KiB, 48 KiB for 3 stages: within sm_80's 164 KiB and sm_90's 227 KiB. ``compile_check``
compiles both: on sm_90 the 64-wide tiles give ``wgmma.mma_async`` (12 per 32-deep step: 4
k8 steps x 3 split products), the 32-wide ones ``mma.sync`` (narrower than a warpgroup's 64
rows); on sm_80 both ``mma.sync``. The interpreter takes 32-wide tiles (several tiles and
partial edges even at n = 37).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .config import interpreting

#: ``input_precision`` of the product's tl.dot.
PRECISION = "tf32x3"
#: n from which ``choose`` takes 64-wide tiles.
LARGE_N = 512


@dataclasses.dataclass(frozen=True)
class SmallConfig:
    """Launch settings of ``_product_kernel``: block x block output tiles, block_k deep steps;
    num_warps / num_stages: GPU only; precision: ``input_precision`` of tl.dot."""
    block: int
    block_k: int
    num_warps: int
    num_stages: int
    precision: str = PRECISION


def choose(n: int) -> SmallConfig:
    """Block sizes for an n x n product (the rule of the module docstring)."""
    if interpreting() or n < LARGE_N:
        return SmallConfig(32, 32, 4, 3)
    return SmallConfig(64, 32, 4, 3)


@triton.jit
def _product_kernel(a_ptr, b_ptr, c_ptr, f_ptr, out_ptr, part_ptr, n, alpha, beta, gamma,
                    HAS_C: tl.constexpr, HAS_GAMMA: tl.constexpr, TRACE: tl.constexpr,
                    FROB: tl.constexpr, SYM: tl.constexpr, PREC: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tile (pid_m, pid_n) of ``OUT = alpha·A@B + beta·C + gamma·I`` (row-major, row stride n),
    and its slot p = pid_m·nt + pid_n of ``part[2, nt²]``: its diagonal's sum (TRACE) and
    Σ OUT·F over the tile (FROB); slots not asked for are not written. SYM: OUT is symmetric
    (A, B commuting symmetric, C and F symmetric): only tiles with pid_m <= pid_n compute, an
    off-diagonal one also stores its transpose and counts twice in FROB, a diagonal one is
    replaced by its symmetric part."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if SYM:
        if pid_m > pid_n:
            return
    rows = pid_m * BLOCK + tl.arange(0, BLOCK)
    cols = pid_n * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < n
    cmask = cols < n
    row_off = rows.to(tl.int64)[:, None] * n
    acc = tl.zeros((BLOCK, BLOCK), tl.float32)
    for k0 in range(0, n, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < n
        a = tl.load(a_ptr + row_off + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        b = tl.load(b_ptr + ks.to(tl.int64)[:, None] * n + cols[None, :],
                    mask=kmask[:, None] & cmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PREC)
    msk = rmask[:, None] & cmask[None, :]
    offs = row_off + cols[None, :]
    out = acc * alpha
    if HAS_C:
        out += beta * tl.load(c_ptr + offs, mask=msk, other=0.0)
    diag = (rows[:, None] == cols[None, :]) & msk
    if HAS_GAMMA:
        out = tl.where(diag, out + gamma, out)
    if SYM:
        if pid_m == pid_n:  # a diagonal tile is its own mirror: made exactly symmetric
            out = (out + tl.trans(out)) * 0.5
    tl.store(out_ptr + offs, out, mask=msk)
    if SYM:
        if pid_m < pid_n:  # the mirror tile
            tl.store(out_ptr + cols.to(tl.int64)[:, None] * n + rows[None, :], tl.trans(out),
                     mask=cmask[:, None] & rmask[None, :])
    slot = pid_m * tl.num_programs(1) + pid_n
    if TRACE:
        tl.store(part_ptr + slot, tl.sum(tl.sum(tl.where(diag, out, 0.0), axis=1), axis=0))
    if FROB:
        f = tl.load(f_ptr + offs, mask=msk, other=0.0)
        tile = tl.sum(tl.sum(tl.where(msk, out * f, 0.0), axis=1), axis=0)
        if SYM:
            if pid_m < pid_n:
                tile = tile * 2.0
        tl.store(part_ptr + tl.num_programs(0) * tl.num_programs(1) + slot, tile)


def _check(name: str, x, like: torch.Tensor | None) -> None:
    """``x`` is a contiguous float32 (n, n) tensor on ``like``'s device, n = like's: a ValueError /
    TypeError naming ``name`` and the fix otherwise."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square 2-D (n, n) matrix, got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}; pass {name}.float()")
    if like is not None:
        if x.shape != like.shape:
            raise ValueError(f"{name} must have a's shape {tuple(like.shape)}, got "
                             f"{tuple(x.shape)}")
        if x.device != like.device:
            raise ValueError(f"{name} must be on a's device {like.device}, got {x.device}; "
                             f"move it with {name}.to(a.device)")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous (row-major); pass {name}.contiguous()")


def product(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0, c: torch.Tensor | None = None,
            beta: float = 0.0, gamma: float = 0.0, frob: torch.Tensor | None = None,
            trace: bool = False, symmetric: bool = False, config: SmallConfig | None = None):
    """``(OUT, partials)``: ``OUT = alpha·(a @ b) + beta·c + gamma·I`` (n, n) float32 with tf32x3
    products, and ``partials`` (2, programs) float32 — row 0 the per-tile sums of trace(OUT)
    (when ``trace``), row 1 those of ``<OUT, frob>`` (when ``frob`` is given), zero otherwise —
    or None when neither is asked for; ``sums(partials)`` adds them in float64.

    a, b, c, frob: contiguous float32 (n, n) on one device (frob may be a, b or c). ``c`` is read
    only when ``beta != 0`` (``beta != 0`` needs a ``c``). ``symmetric``: the caller promises a
    symmetric OUT (a, b commuting symmetric matrices — polynomials in one Y —, c and frob
    symmetric): the tiles on and above the diagonal compute and store their mirror, about half
    the products' work; OUT is then exactly symmetric (a diagonal tile is averaged with its
    transpose). config: block sizes (``choose(n)`` by
    default)."""
    _check("a", a, None)
    _check("b", b, a)
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a Python float, got {type(value).__name__}")
    if c is not None:
        _check("c", c, a)
    elif beta != 0.0:
        raise ValueError(f"beta = {beta} needs c: pass c=(n, n) tensor or beta=0")
    if frob is not None:
        _check("frob", frob, a)
    n = a.shape[0]
    cfg = choose(n) if config is None else config
    nt = triton.cdiv(n, cfg.block)
    out = torch.empty_like(a)
    reduce = bool(trace) or frob is not None
    part = (torch.zeros((2, nt * nt), dtype=torch.float32, device=a.device) if reduce
            else out)  # never written without a reduction
    has_c = c is not None and beta != 0.0
    _product_kernel[(nt, nt)](
        a, b, c if has_c else a, frob if frob is not None else a, out, part, n,
        float(alpha), float(beta), float(gamma),
        HAS_C=has_c, HAS_GAMMA=gamma != 0.0, TRACE=bool(trace), FROB=frob is not None,
        SYM=bool(symmetric), PREC=cfg.precision, BLOCK=cfg.block, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, (part if reduce else None)


def sums(partials: torch.Tensor) -> torch.Tensor:
    """``[trace(OUT), <OUT, frob>]`` (2,) float64 from ``product``'s partials (fixed order)."""
    return partials.double().sum(1)


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` (float32 (n, n), tf32x3) for ``doubling.inverse``."""
    return product(a, b)[0]


def symmetric_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of two commuting symmetric matrices (float32 (n, n), tf32x3; the upper tiles
    and their mirror): the products-only small side's product (``small_side.product_function``;
    every matrix there is a polynomial in Y)."""
    return product(a, b, symmetric=True)[0]
