// Torch-free CUDA kernels of the mmae_fast staged TCR ops: host launchers on raw pointers.
//
// Every launcher enqueues on `stream`, returns cudaGetLastError() and never synchronises.
// Element types are chosen at run time by DType; "acc" is the accumulation type of a DType:
// double for kFloat64, float otherwise. Matrices are dense row-major unless stated.
//
// The contract of the stages these kernels serve (shapes, formulas, coef = [s, t], the floor
// rows): mmae_fast/ops/tcr/stages.py. csrc/bindings.cpp puts cuBLAS GEMMs between them:
//   gram:  row_normalize -> cuBLAS on z (float16 for half h, else h's type) -> symmetrize;
//   grad:  [split_hi_lo for half h] -> cuBLAS z q or q z -> grad_epilogue.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "launch.h"

namespace mmae_fast {
namespace kernels {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// ---- normalize.cu ------------------------------------------------------------------------
//! rinv[i] = 1 / max(||h_i||, eps) (sum of squares in acc of h_i scaled by the power of two of
//! max_j |h_ij|: no overflow) and z_i = h_i * rinv_i, rounded once
//! to the Gram's operand type: float16 for both half types, else t. h: (m, d) of type t, z: (m, d)
//! of that operand type; rinv: (m,) acc(t).
cudaError_t row_normalize(DType t, const void* h, int64_t m, int64_t d, double eps, void* rinv,
                          void* z, cudaStream_t stream);

//! a = (a + a^T) / 2 in place for a dense n x n matrix of type acc (kFloat32 or kFloat64).
cudaError_t symmetrize(DType acc, void* a, int64_t n, cudaStream_t stream);

// ---- split.cu ----------------------------------------------------------------------------
//! Split x = src_ij * row_scale_i (float; row_scale nullptr means 1) into hi = round_t(x) and
//! lo = round_t(x - hi), written to dst (type t) as `layout` says (launch.h). t is kFloat16 or
//! kBFloat16 (else cudaErrorInvalidValue); src has type t when src_is_acc is false, else float.
cudaError_t split_hi_lo(DType t, const void* src, bool src_is_acc, const float* row_scale,
                        int64_t rows, int64_t cols, void* dst, const launch::SplitLayout& layout,
                        cudaStream_t stream);

// ---- grad_epilogue.cu --------------------------------------------------------------------
//! Stage 3's dh from the GEMM product (acc(t); row i at gx + i * gx_ld), which is
//!   y_i = s_i (gx_i + gx_i[part2_offset:])   (second part only when part2_offset > 0;
//!                                             s_i = rinv_i if row_scaled else 1)
//! i.e. (Z q)_i or (q Z)_i; the rest (v, coef = [s, t], the projection and the floor rows,
//! detected as rinv_i >= 1/eps) as mmae_fast/ops/tcr/stages.py states. v nullptr: v = 0;
//! coef holds 1 value, or 2 when has_shift. h, dh: (m, d) of type t; rinv (m,), v (d,),
//! coef: acc(t). z_i = h_i rinv_i is recomputed in acc.
cudaError_t grad_epilogue(DType t, const void* gx, int64_t gx_ld, int64_t part2_offset,
                          bool row_scaled, const void* v, const void* h, const void* rinv,
                          const void* coef, bool has_shift, double scale, double eps, int64_t m,
                          int64_t d, void* dh, cudaStream_t stream);

}  // namespace kernels
}  // namespace mmae_fast
