"""Tolerances, one place for all: one table per path, by input dtype, each bound set from the
arithmetic of that path, with the worst error measured and its reason in the comment above it.

Errors are relative: |x - ref| / |ref| for a loss value, ||g - g_ref||_F / ||g_ref||_F for a
gradient. Bit-exact properties (determinism, resume) are not tolerances: test them with
``torch.equal``.
"""
import torch

#: The reference path (``mmae_fast.reference`` in eager PyTorch on the CPU) against the
#: independent float64 formulas of tests/independent.py, by input dtype -> (value, gradient).
#: Measured worst (scripts/measure_tolerances.py: 6 seeds x 6 shapes from 7x13 to 128x32, every
#: public function, TCR estimators centred and not):
#:
#: - float64: value 1.8e-15 (TCR, entropies, MCE), gradient = float64 autograd itself. Reason:
#:   eigen-decomposition vs Cholesky / GEMM summation orders differ by a few N·eps_64.
#: - float32: value 1.3e-7 (TCR: fp32 Gram, float64 small side), 7.9e-7 (MI, a difference of
#:   entropies: the tests scale by its cancellation), 6.1e-7 (effective rank), 3.3e-7
#:   (uniformity), 2.7e-6 (MEC: cancellation inside its traces, scaled in the tests);
#:   gradient 6.5e-6 (exact, series; the Taylor gradient of a tiny mu=0.2 loss reached 9e-5 and
#:   is not tested against this bound). Reason: fp32 GEMMs, error ~ sqrt(N)·eps_32, N <= 128.
#: - float16 / bfloat16: the input is rounded to half *before* both sides (the reference sees
#:   the same rounded numbers), then computed in fp32: values as fp32. The gradient is returned
#:   in the input dtype, so it carries that rounding: unit roundoff u = 4.9e-4 (fp16) / 3.9e-3
#:   (bf16) per entry; measured 1.2e-3 / 1.8e-3 with many fp16 entries subnormal (< 6.1e-5,
#:   grad ~ mu/(d·||h||)). Tests keep gradients normal (rows of norm ~1, small d): 2u.
REFERENCE_TOLERANCES = {
    torch.float64: (1e-14, 1e-12),
    torch.float32: (1e-6, 5e-5),
    torch.float16: (1e-6, 1e-3),
    torch.bfloat16: (1e-6, 8e-3),
}


#: Sums of terms of both signs (Taylor series, MEC's traces, MI = difference of entropies): the
#: rounding error of the sum is relative to Σ|t| rather than |Σ t|, so value tolerances are
#: multiplied by ``cancellation(terms)`` = Σ|t_k| / |Σ t_k| (>= 1).
def cancellation(terms) -> float:
    """Condition number Σ|t_k| / |Σ t_k| of a sum of terms (floats, complex or arrays: every
    entry is a term)."""
    import numpy as np

    flat = np.concatenate([np.ravel(np.real(np.asarray(t))) for t in terms])
    total = abs(flat.sum())
    return max(1.0, float(np.abs(flat).sum() / max(total, 1e-300)))


def exp_condition(log_value: float) -> float:
    """The factor by which ``exp`` multiplies a relative error: exp(x) is off by the absolute
    error of x, i.e. its relative error times |x| (the effective rank exp(H_1) by H_1 ~ log n)."""
    return max(1.0, abs(float(log_value)))


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of x against ref (computed in float64)."""
    x, ref = x.detach().double().cpu(), ref.detach().double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


def assert_close(x, ref, dtype, *, kind="value", table=None, scale=1.0):
    """Assert x matches ref within ``scale`` x the tolerance of input dtype ``dtype`` (kind:
    value|grad) from ``table`` (default STAGED_BACKEND, the kernel backends end to end)."""
    table = STAGED_BACKEND if table is None else table
    rtol = table[dtype][0 if kind == "value" else 1] * scale
    err = rel_err(torch.as_tensor(x), torch.as_tensor(ref))
    assert err <= rtol, f"{kind} relative error {err:.3e} > {rtol:.1e} for {dtype}"


#: The staged op on the "reference" stages (tests/ops/test_staged.py): input dtype ->
#: (value rtol, gradient rtol) against the float64 reference on the same rounded input. The
#: arithmetic is float32 for every non-float64 input (float64 small side), so half inputs are as
#: accurate as float32 in value; half gradients are compared after rounding the reference to
#: that dtype, so the error is the entries whose rounding differs by one ulp (2^-11 fp16, 2^-8
#: bf16, relative). Measured worst over the test's shapes, estimators and centring, seeds 0..3:
#: float64 4.7e-15 / 2.4e-14 (summation orders), float32 1.1e-7 / 3.0e-7 (float32 GEMMs,
#: ~sqrt(N)·u_32), float16 1.0e-7 / 3.4e-5, bfloat16 1.2e-7 / 1.8e-4 (one-ulp flips); each bound
#: within 10x of it.
STAGED = {
    torch.float64: (3e-14, 2e-13),
    torch.float32: (1e-6, 3e-6),
    torch.float16: (1e-6, 3e-4),
    torch.bfloat16: (1e-6, 2e-3),
}


#: The series' small side (float64 arithmetic) alone on a float32 feature Gram at a realistic
#: n = 768, kappa 65 and 257 (tests/ops/test_staged.py::test_series_contract_in_float32, d = 768
#: cases): |value - R_poly| / |R|, R_poly the degree-D series' own value from the float64
#: eigenvalues of that Gram, so the truncation error (up to the 1e-4 contract) is not in it.
#: Measured worst 5.0e-8 (aniso / collapsed / offset, centred and not, both kappas, seeds 0..4):
#: the float32 rounding of the returned value (u = 6.0e-8); bound 10x. Float32 arithmetic in the
#: small side (the regression it guards) measured 3.4e-7 .. 8.8e-4 on those inputs, >= 4.4e-5 on
#: the test's cases.
SERIES_SMALL_SIDE_ARITHMETIC = 5e-7

#: The radial shift of Q in the half-input backward product (mmae_fast/ops/tcr/small_side.py), by the
#: CPU emulation of tests/ops/test_staged.py::test_split3_backward_emulation (bf16, 2048x256, mu = 3,
#: seeds 0..5). SPLIT3_BF16_FLOOR_FRACTION: split3's gradient error / the bf16 output's own
#: rounding (1.66e-3) measured worst 1.7e-2 (collapsed; aniso 1.2e-3, offset 6.0e-4) -> 0.04
#: (2.4x); without the shift collapsed features measured 0.071 .. 0.095. SPLIT3_SHIFT_GAIN:
#: split3 on the unshifted Q (2P) / split3 on the shifted Q measured 5.5 .. 5.8 (collapsed),
#: 8.7 .. 10.2 (aniso), 14.9 .. 15.4 (offset); required >= 3 (the same Q both times gives 1).
SPLIT3_BF16_FLOOR_FRACTION = 0.04
SPLIT3_SHIFT_GAIN = 3.0


#: The triton backend's staged ops (``triton_gram`` / ``triton_grad``, tests/ops/test_triton_backend.py)
#: vs float64 formulas on the same input values, relative Frobenius errors, by input dtype:
#: "gram": G (float32: float32 accumulation, ~sqrt(m)·u_32; half inputs: the operand is z rounded
#: to float16, bf16 inputs too, whose rounding ~0.5 of fp16's unit roundoff u = 4.9e-4 dominates);
#: "grad": dh in the input dtype
#: (half inputs: the rounding of dh itself, ~0.5 u of that dtype; the split3 product adds < 1e-4).
TRITON_STAGE_TOLERANCES = {
    torch.float32: {"gram": 2e-6, "grad": 2e-5},
    torch.float16: {"gram": 6e-4, "grad": 6e-4},
    torch.bfloat16: {"gram": 6e-4, "grad": 5e-3},
}


#: The cuda backend's staged ops (tests/ops/test_cuda_backend.py), input dtype -> relative Frobenius
#: error vs a float64 computation from the same input values: "gram": G (half: z rounded to
#: float16 for both half types, worst 5.1e-4 / 4.3e-4 (fp16 / bf16) by the CPU emulation on
#: the GPU test's shapes); "stats": rinv (acc arithmetic); "grad": dh in the input dtype (half:
#: the split product; floor = dh's own rounding, bf16 1.7e-3 / fp16 2.1e-4 by the CPU emulation,
#: where a single half product gives 4.8e-2 / 5.8e-3 on collapsed features).
CUDA_STAGE_TOLERANCES = {
    torch.float64: {"gram": 1e-12, "stats": 1e-13, "grad": 1e-10},
    torch.float32: {"gram": 1e-5, "stats": 1e-6, "grad": 1e-4},
    torch.float16: {"gram": 2e-3, "stats": 1e-6, "grad": 5e-4},
    torch.bfloat16: {"gram": 2e-3, "stats": 1e-6, "grad": 3e-3},
}


#: Kernel backends (Triton, CUDA) end to end through the staged op / tcr_loss
#: (tests/ops/test_staged_backends.py, tests/library/test_values_backends.py, the end-to-end tests of
#: tests/ops/test_triton_backend.py and tests/ops/test_cuda_backend.py): input dtype -> (value rtol,
#: gradient rtol) vs float64 on the same rounded input.
#: - float64: rounding only (GEMM vs factorisation summation orders, a few N·eps_64).
#: - float32: the float32 Gram (error ~ sqrt(N)·u_32, u_32 = 6e-8, N the summed length)
#:   feeding a float64 small side, then the backward's float32 GEMM. Measured worst on the CPU
#:   (Triton interpreter; 24x16, 37x21, 21x37, 70x53; every estimator, centred and not): value
#:   6.5e-8, gradient 2.2e-7. The bounds are set for the GPU tests' shapes too (up to 1000x257:
#:   sums up to 16x longer, the kernels' blocked summation orders), which the CPU does not run.
#: - float16 / bfloat16: the Gram's operand is the normalised rows rounded to float16 (for bf16
#:   inputs too: rows in [-1, 1], 8x finer than bf16 at the same tensor-core rate), which moves
#:   the value by up to 4.9e-5 (fp16) / 3.5e-5 (bf16) on 37x21 ... 200x64, offset and collapsed
#:   rows; the backward's split3 product keeps the gradient at the rounding of the output in the
#:   input dtype (u = 4.9e-4 fp16, 3.9e-3 bf16, a few u in Frobenius norm).
STAGED_BACKEND = {
    torch.float64: (1e-12, 1e-10),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-4, 1e-2),
    torch.bfloat16: (2e-4, 2e-2),
}
TOLERANCES = STAGED_BACKEND


#: U-MAE's uniformity on the staged op's "reference" stages (tests/ops/test_staged_uniformity.py):
#: input dtype -> (value rtol, gradient rtol) against the float64 reference on the same rounded
#: input, half gradients against the reference rounded to that dtype (as ``STAGED``). Its small
#: side is one Frobenius norm, so the errors are the Gram's and the backward GEMM's rounding.
#: Measured worst over the test's shapes (37x21 .. 53x70, 5x5), seeds 0..3: float64 6.4e-16 /
#: 8.9e-16, float32 1.5e-7 / 3.4e-7, float16 1.6e-7 / 1.5e-5, bfloat16 2.2e-7 / 6.0e-5 (one-ulp
#: flips of the half gradient); each bound within 10x of it. The kernel backends end to end:
#: ``STAGED_BACKEND`` (measured on the CPU 7.7e-8 / 2.4e-7 float32, 9.6e-5 / 4.1e-4 float16,
#: 3.9e-5 / 1.4e-3 bfloat16: the same float16 Gram operand and split3 product as TCR).
STAGED_UNIFORMITY = {
    torch.float64: (5e-15, 5e-15),
    torch.float32: (1e-6, 3e-6),
    torch.float16: (1e-6, 1e-4),
    torch.bfloat16: (2e-6, 5e-4),
}

#: The "cpu" backend end to end (tests/ops/test_cpu_backend.py, ``backend="auto"`` on CPU tensors:
#: float32 products on the m×d side, float64 small side): input dtype -> (value rtol, gradient
#: rtol) against the independent float64 oracle on the same rounded input (half gradients against
#: the oracle rounded to that dtype). Measured worst over the test's cases (every estimator,
#: centred and not, n = 31 on both sides, kappa 2 .. 257): float64 7.7e-15 / 8.0e-15 (summation
#: orders); float32 9.6e-7 (Taylor at kappa 4: its terms cancel; exact and series <= 1.2e-7) /
#: 2.0e-6 (kappa 257: the float32 Gram's error through the conditioning); float16 5.9e-7 /
#: 4.0e-5, bfloat16 5.3e-7 / 1.6e-4 (one-ulp flips of the rounded gradient). Bounds ~10x.
CPU_BACKEND = {
    torch.float64: (1e-13, 1e-13),
    torch.float32: (1e-5, 2e-5),
    torch.float16: (1e-5, 4e-4),
    torch.bfloat16: (1e-5, 2e-3),
}
#: Exact on float32 input at n = 255 / 1023 rows, kappa 16, 65 and 257, collapsed and not: the
#: cpu backend's gradient error / that of reference.tcr on the same float32 input (float32 Gram,
#: float64 small side), both against the float64 oracle — the contract "within 10x of float32
#: arithmetic". The gradient takes the float32 form of the inverse at each of these kappa
#: (mmae_fast/ops/tcr/cpu.py, exact_derivative). Measured worst 4.4 (255x1023 centred at every
#: kappa, as with the float64 inverse; 0.4 .. 2.4 elsewhere), seeds 0 and 1.
CPU_BACKEND_EXACT_GRAD_VS_REFERENCE = 10.0
#: The cpu backend's native stages (tests/ops/test_cpu_native.py): input dtype -> (cpu_gram's G
#: and rinv, cpu_grad's dh) against the stages in float64 on the same rounded input, relative
#: Frobenius. Measured worst over the test's shapes (n from 31 to 515 on both sides, zero rows
#: and rows below the floor, rows of 1e30 / 1e200), seeds 0 .. 2: float64 4.2e-16 / 1.4e-16;
#: float32 1.7e-7 / 3.1e-7; float16 4.8e-7 / 2.0e-5 and bfloat16 1.7e-7 / 8.2e-5 (the gradient
#: rounded to the half dtype). Bounds ~10x.
CPU_NATIVE_STAGES = {
    torch.float64: (5e-15, 2e-15),
    torch.float32: (2e-6, 3e-6),
    torch.float16: (5e-6, 2e-4),
    torch.bfloat16: (2e-6, 8e-4),
}
#: cpu_exact_side against the Python small side (R, Q, qinfo; n = 1 .. 191, float32 and float64
#: g, need_grad on and off): the same LAPACK calls, the shift and scale in another order.
#: Measured worst 2.5e-14. Bound ~10x.
CPU_NATIVE_EXACT_SIDE = 2e-13
#: ``cpu.float32_complement`` (W = I - A⁻¹ in float32 products from the float64 factor) against
#: the eigendecomposition's W, relative Frobenius (tests/ops/test_cpu_backend.py): kappa 1.01,
#: 4, 257, n = 255 and 517, spread and collapsed rows, seeds 0 .. 3. Measured worst 2.1e-6
#: (kappa 257, n = 517, collapsed; 1.4e-7 .. 2.8e-7 at kappa 1.01 and 4). ``I - inv32(A)``
#: measures 2e-4 .. 3e-4 at kappa 1.01 (W ~ 1e-2), where this bound fails it.
CPU_FLOAT32_COMPLEMENT = 1e-5
#: ``small_side._shift_and_scale`` (Q, qscale, alpha of q = a·w + b·I from a float32 w
#: alone) against the float64 shift and scale of the dense q (tests/ops/test_small_products.py):
#: measured worst relative errors 7.7e-8 (Q, Frobenius), 6.8e-8 (qscale), 1.4e-13 (alpha);
#: the float32 dense route measures 1.9e-4 and 1.1e-3 on the same inputs.
COMPLEMENT_OUTPUTS = 1e-6
#: The same of a dense float64 q with the feature side's v (``Complement(q, 1, 0)``) against
#: that float64 formula: the same arithmetic in another order; measured worst 1.6e-16.
COMPLEMENT_OUTPUTS_FLOAT64 = 1e-14

#: The doubling inverse's rounding floor (tests/ops/test_doubling.py): with products in format f
#: (unit roundoff u_f, mmae_fast/ops/tcr/rounding.py) the residual ||I - A X_K||_2 stops at about
#: kappa·u_f·sqrt(n); the tests allow the a-priori bound plus this factor times it. Measured at
#: n = 101, kappa 2 .. 257 (floor / (kappa·u_f·sqrt(n))): float32 0.07 .. 0.7, tf32x3 0.01 ..
#: 0.6, bf16x3 0.01 .. 0.05, tf32 0.03 .. 0.07, bf16 0.02 .. 0.08; float64 reaches 1.6e-15 at
#: kappa 2 (1.4). Factor 3.
DOUBLING_FLOOR_FACTOR = 3.0

#: The products-only small side (tests/ops/test_small_products.py, ``MMAE_FAST_SMALL_PRODUCTS``),
#: each product rounded as a tensor core rounds it (mmae_fast/ops/tcr/rounding.py), kappa 2 .. 257,
#: n = 101 and 255, anisotropic, collapsed and centred rows:
#:  - "moments": relative error of the exact log-determinant from Y-weighted moments against the
#:    oracle; measured worst float32 1.9e-7, tf32x3 1.9e-7 (both the truncation bound 1e-6 at
#:    kappa 4, rounding below 8e-8), bf16x3 1.2e-6 (collapsed rows, kappa 65 and 257); at n = 255
#:    through tcr_loss at most 2.9e-7 (bf16x3). Every format keeps the exact contract 1e-5.
#:  - "complement": relative Frobenius error of the shifted gradient matrix 2c·U against the
#:    float64 solve; measured worst float32 1.0e-5, tf32x3 1.1e-5 (collapsed rows at kappa 257: the
#:    float32 rounding of Y, the same error as the float64 complement of that Y), bf16x3 8.7e-5.
#:  - "complement_tightness": the float64 per-eigenvalue error of U_K over ``complement_bound``
#:    on a spectrum filling [0, kappa - 1]: 0.98 .. 0.999 at K = 1, falling with K (Markov's N² is
#:    loose once the error is small), measured least 2.2e-3 (kappa 257, K = 8, bound 1.3e-11).
#:  - "exact_grad_vs_reference": the exact gradient's error through tcr_loss at n = 255 over the
#:    float32 reference's (reference.tcr on the same input, the floor of
#:    tests/ops/test_cpu_backend.py::test_exact_float32_contract_at_large_kappa); measured worst
#:    float32 3.8, tf32x3 4.2 (collapsed rows on the sample side), bf16x3 33 (bf16x3 products carry
#:    2^-16 relative, 256x float32's, into U).
#:  - "end_to_end": (value rtol, gradient rtol) of float32 / bf16x3 products through tcr_loss on
#:    the cpu backend, n = 61 on both sides, against the oracle and against the float64 side on
#:    the same input; measured worst float32 9.6e-8 / 2.4e-6, bf16x3 1.0e-7 / 5.2e-5 (exact at
#:    kappa 257).
#: Bounds within 10x of the measured worst.
SMALL_PRODUCTS = {
    "moments": {"float32": 1e-6, "tf32x3": 1e-6, "bf16x3": 4e-6},
    "complement": {"float32": 1e-4, "tf32x3": 1e-4, "bf16x3": 5e-4},
    "complement_tightness": 1e-3,
    "exact_grad_vs_reference": {"float32": 10.0, "tf32x3": 10.0, "bf16x3": 100.0},
    "end_to_end": {"float32": (1e-6, 2e-5), "bf16x3": (1e-6, 3e-4)},
}
#: The products-only small side end to end (tf32x3 products; the staged op on the cpu, reference
#: and Triton stages, tcr_loss on the cpu backend): input dtype -> (value rtol, gradient rtol)
#: against the oracle of the same estimator and degree (half gradients against the oracle
#: rounded to the dtype). Measured worst over the test's cases: float32 1.3e-7 (series) / 4.7e-6
#: (exact at kappa 257); float16 9.1e-8 / 9.6e-6; bfloat16 2.1e-8 / 0 (no one-ulp flip in these
#: inputs; the bound is the cpu backend's, whose inputs flip: CPU_BACKEND). Bounds within 10x.
SMALL_PRODUCTS_END_TO_END = {
    torch.float32: (1e-6, 2e-5),
    torch.float16: (1e-6, 1e-4),
    torch.bfloat16: (1e-6, 2e-3),
}
#: The small side's tf32x3 product kernel (tests/ops/test_small_kernel.py,
#: mmae_fast/ops/tcr/triton/small_kernel.py) against float64 torch, n = 37, 101, 130, every
#: epilogue: "out": ||OUT - ref||_F / ||ref||_F; "trace": |Σ partials - trace| / Σ|OUT_ii|;
#: "frob": |Σ partials - <OUT, F>| / Σ|OUT·F| (the sums' condition numbers divided out).
#: Measured worst in Triton's interpreter (plain float32 tl.dot; seeds 0..3, 32- and 64-wide
#: tiles): out 1.15e-7, trace 4.1e-8, frob 1.0e-8 (float32 accumulation over n <= 130 terms and
#: the float32 epilogue, ~u_32 = 6e-8 per entry; the sums of the partials are float64). Bounds
#: 9x, 10x, 10x of them. On a GPU the operands are tf32x3's (hi + lo, lo·lo dropped: unit
#: roundoff 2^-22, 4x float32's, mmae_fast/ops/tcr/rounding.py), so the tests scale the bounds by
#: SMALL_KERNEL_GPU_FACTOR = that ratio (derived, not measured: no GPU run yet).
SMALL_KERNEL = {"out": 1e-6, "trace": 4e-7, "frob": 1e-7}
SMALL_KERNEL_GPU_FACTOR = 4.0
