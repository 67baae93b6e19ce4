"""Triton helpers shared by the TCR kernels: on-the-fly normalised tiles and symmetric stores.

Matrices are row-major; ``n x n`` matrices are contiguous (row stride n).
"""
import triton
import triton.language as tl


@triton.jit
def x_tile(h_ptr, r_ptr, zbar_ptr, rows, cols, m, d, stride_h,
           SCALE: tl.constexpr, CENTER: tl.constexpr):
    """Tile ``x[rows, cols]`` of the features, zero outside the (m, d) matrix.

    SCALE: ``x = h·r`` (r = 1/max(||h_i||, eps), float32), CENTER: ``x = h·r - zbar``;
    without SCALE the raw ``h`` tile in the input dtype.
    """
    rmask = rows < m
    cmask = cols < d
    msk = rmask[:, None] & cmask[None, :]
    x = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :], mask=msk, other=0.0)
    if SCALE:
        r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
        x = x.to(tl.float32) * r[:, None]
        if CENTER:
            zb = tl.load(zbar_ptr + cols, mask=cmask, other=0.0)
            x = tl.where(msk, x - zb[None, :], 0.0)
    return x


@triton.jit
def dot_operand(x, like_ptr, HALF_DOT: tl.constexpr):
    """``x`` in the dtype fed to tl.dot: the element type of ``like_ptr`` or float32."""
    if HALF_DOT:
        y = x.to(like_ptr.dtype.element_ty)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def square_tile(ptr, offs_a, offs_b, n):
    """Tile ``A[offs_a, offs_b]`` of a contiguous n x n float32 matrix, zero outside."""
    msk = (offs_a[:, None] < n) & (offs_b[None, :] < n)
    return tl.load(ptr + offs_a[:, None] * n + offs_b[None, :], mask=msk, other=0.0)


@triton.jit
def sym_store(ptr, val, offs_a, offs_b, n, mirror):
    """Store tile ``val`` at ``[offs_a, offs_b]`` of an n x n matrix and, if ``mirror``, its
    transpose at ``[offs_b, offs_a]`` (the programs of a symmetric result cover one triangle)."""
    msk = (offs_a[:, None] < n) & (offs_b[None, :] < n)
    tl.store(ptr + offs_a[:, None] * n + offs_b[None, :], val, mask=msk)
    if mirror:
        tl.store(ptr + offs_b[None, :] * n + offs_a[:, None], val, mask=msk)


@triton.jit
def tile_sum(x):
    """Sum of all elements of a 2-D tile (float32 scalar)."""
    return tl.sum(tl.sum(x, axis=1), axis=0)


@triton.jit
def triangle_pid(pid, n, BLOCK_N: tl.constexpr):
    """``(pa, pb)`` tile coordinates of program ``pid`` on an nt x nt grid of n x n tiles."""
    nt = tl.cdiv(n, BLOCK_N)
    return pid // nt, pid % nt
