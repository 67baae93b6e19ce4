"""Triton helpers shared by the staged kernels: on-the-fly normalised tiles, rounded and split
dot operands, symmetric stores.

Matrices are row-major; ``n x n`` matrices are contiguous (row stride n).
"""
import triton
import triton.language as tl


@triton.jit
def x_tile(h_ptr, r_ptr, rows, cols, m, d, stride_h, SCALE: tl.constexpr):
    """Tile ``x[rows, cols]`` of the features, zero outside the (m, d) matrix.

    SCALE: ``x = h·r`` (r = 1/max(||h_i||, eps), float32); without SCALE the raw ``h`` tile in
    the input dtype.
    """
    rmask = rows < m
    cmask = cols < d
    msk = rmask[:, None] & cmask[None, :]
    x = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :], mask=msk, other=0.0)
    if SCALE:
        r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
        x = x.to(tl.float32) * r[:, None]
    return x


@triton.jit
def inv_norm(nrm, eps):
    """``1/max(nrm, eps)`` with a correctly rounded division (``1.0 / x`` compiles to an
    approximate one): rows at the floor get exactly the float32 ``1/eps`` that PyTorch and the
    grad kernel's threshold use."""
    return tl.math.div_rn(tl.full(nrm.shape, 1.0, tl.float32), tl.maximum(nrm, eps))


@triton.jit
def pow2_exponent(s):
    """The biased float32 exponent E of ``s >= 0`` clamped to [2, 252], so that ``pow2(E)`` and
    ``pow2(254 - E)`` are normal and ``s·pow2(254 - E) < 8``: the exact power-of-two row scale
    of the overflow-safe norm (as ``mmae_fast.reference.row_norms``)."""
    e = (s.to(tl.int32, bitcast=True) >> 23) & 0xFF
    return tl.minimum(tl.maximum(e, 2), 252)


@triton.jit
def pow2(e):
    """``2^(e - 127)`` in float32 for a biased exponent e in [1, 254] (int32)."""
    return (e << 23).to(tl.float32, bitcast=True)


@triton.jit
def pow2_floor(r):
    """The power of two ``2^floor(log2 r)`` of a float32 ``r >= 0`` (its exponent bits), at least
    2^-126; NaN and inf give inf."""
    return tl.maximum(r.to(tl.int32, bitcast=True) & 0x7F800000, 0x00800000).to(tl.float32,
                                                                                  bitcast=True)


@triton.jit
def dot_operand(x, like_ptr, HALF_DOT: tl.constexpr):
    """``x`` in the dtype fed to tl.dot: the element type of ``like_ptr`` or float32."""
    if HALF_DOT:
        y = x.to(like_ptr.dtype.element_ty)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def gram_operand(x, like_ptr, HALF_DOT: tl.constexpr):
    """float32 tile ``x`` of normalised rows (|x| <= 1) as the Gram's tl.dot operand. Half inputs,
    float16 and bfloat16 alike: rounded to float16, which has 8x bfloat16's precision on [-1, 1]
    at the same tensor-core rate (bfloat16 operands moved R by up to 4.6e-4, float16 ones by
    5e-5); in float16 when HALF_DOT, else the rounded values held in float32 (the interpreter).
    float32 inputs: unchanged."""
    if like_ptr.dtype.element_ty == tl.float32:
        y = x
    else:
        y = x.to(tl.float16)
        if not HALF_DOT:
            y = y.to(tl.float32)
    return y


@triton.jit
def triangle_pid(pid, n, BLOCK_N: tl.constexpr):
    """``(pa, pb)`` tile coordinates of program ``pid`` on an nt x nt grid of n x n tiles."""
    nt = tl.cdiv(n, BLOCK_N)
    return pid // nt, pid % nt


@triton.jit
def rne_bf16(x):
    """float32 ``x`` rounded to the nearest bfloat16 (ties to even), held in float32. For the
    interpreter, whose float32 -> bfloat16 cast truncates (finite values only)."""
    b = x.to(tl.int32, bitcast=True)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
    return b.to(tl.float32, bitcast=True)


@triton.jit
def rounded_operand(x, like_ptr, HALF_DOT: tl.constexpr, EMU_BF16: tl.constexpr):
    """float32 tile ``x`` rounded to the element type of ``like_ptr`` (the input's dtype), as a
    tl.dot operand: in that dtype (tensor cores) when HALF_DOT, else the same rounded values
    held in float32 (a no-op for float32 inputs). EMU_BF16 (interpreter, bfloat16 input, whose
    tl.dot and cast are wrong there): round to nearest in float32 arithmetic."""
    if EMU_BF16:
        y = rne_bf16(x)
    else:
        y = x.to(like_ptr.dtype.element_ty)
        if not HALF_DOT:
            y = y.to(tl.float32)
    return y


@triton.jit
def split3_dot(a, b, acc, like_ptr, SPLIT: tl.constexpr, HALF_DOT: tl.constexpr,
               EMU_BF16: tl.constexpr, PREC: tl.constexpr):
    """``acc + a·b`` for float32 tiles. SPLIT: a = ahi + alo, b = bhi + blo with
    hi = round(x), lo = round(x - hi) in the element type of ``like_ptr`` (split in registers),
    and ``a·b ≈ alo·bhi + ahi·blo + ahi·bhi`` (three half products, float32 accumulation);
    else one float32 dot with ``input_precision=PREC``."""
    if SPLIT:
        ahi = rounded_operand(a, like_ptr, HALF_DOT, EMU_BF16)
        alo = rounded_operand(a - ahi.to(tl.float32), like_ptr, HALF_DOT, EMU_BF16)
        bhi = rounded_operand(b, like_ptr, HALF_DOT, EMU_BF16)
        blo = rounded_operand(b - bhi.to(tl.float32), like_ptr, HALF_DOT, EMU_BF16)
        acc = tl.dot(alo, bhi, acc, input_precision="ieee")
        acc = tl.dot(ahi, blo, acc, input_precision="ieee")
        acc = tl.dot(ahi, bhi, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def sym_store_upper(ptr, val, offs_a, offs_b, n, pa, pb):
    """Store tile ``val`` (block row pa <= block column pb) at ``[offs_a, offs_b]`` of an n x n
    matrix and its transpose at ``[offs_b, offs_a]``; on a diagonal tile (pa == pb) only the
    entries on and above the diagonal are stored, both ways, so the result is exactly symmetric."""
    msk = (offs_a[:, None] < n) & (offs_b[None, :] < n)
    msk = msk & (offs_a[:, None] <= offs_b[None, :] + (pb - pa) * n)  # all of an off-diagonal tile
    tl.store(ptr + offs_a[:, None] * n + offs_b[None, :], val, mask=msk)
    tl.store(ptr + offs_b[None, :] * n + offs_a[:, None], val, mask=msk)
