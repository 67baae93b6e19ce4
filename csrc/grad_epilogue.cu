// Stage 3 (grad) epilogue: the vT subtraction, coef * scale, and the normalisation Jacobian
// (I - z zT) rinv on the GEMM product, written once in the input's type.
#include "common.cuh"

namespace mmae_fast {
namespace kernels {
namespace {

using detail::acc_t;
using detail::block_sum;
using detail::from_acc;
using detail::to_acc;

template <typename A>
__device__ __forceinline__ A product_at(const A* __restrict__ row, int64_t j, int64_t part2_offset) {
  return part2_offset > 0 ? row[j] + row[part2_offset + j] : row[j];
}

//! One block per row i (see grad_epilogue in mmae_kernels.h).
template <typename T>
__global__ void grad_epilogue_kernel(const acc_t<T>* __restrict__ gx, int64_t gx_ld,
                                     int64_t part2_offset, bool row_scaled,
                                     const acc_t<T>* __restrict__ v, const T* __restrict__ h,
                                     const acc_t<T>* __restrict__ rinv,
                                     const acc_t<T>* __restrict__ coef, bool has_shift,
                                     double scale, double eps, int64_t m, int64_t d,
                                     T* __restrict__ dh) {
  using A = acc_t<T>;
  const A s = static_cast<A>(scale) * coef[0];
  const A shift = has_shift ? static_cast<A>(scale) * coef[1] : A(0);  // q's radial shift
  const A inv_floor = A(1) / A(eps);
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const A r = rinv[i];
    const bool clamped = !(r < inv_floor);  // ||h_i|| <= eps: no gradient through the norm
    const A rs = row_scaled ? r : A(1);
    const A* g_row = gx + i * gx_ld;
    const T* h_row = h + i * d;
    A dot = clamped ? shift : A(0);  // clamped rows: remove the shift only, no projection
    if (!clamped) {
      for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        const A g = s * (rs * product_at(g_row, j, part2_offset) - (v != nullptr ? v[j] : A(0)));
        dot += to_acc(h_row[j]) * r * g;
      }
      dot = block_sum(dot);
    }
    T* out = dh + i * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A g = s * (rs * product_at(g_row, j, part2_offset) - (v != nullptr ? v[j] : A(0)));
      const A z = to_acc(h_row[j]) * r;
      out[j] = from_acc<T>((g - z * dot) * r);
    }
  }
}

}  // namespace

cudaError_t grad_epilogue(DType t, const void* gx, int64_t gx_ld, int64_t part2_offset,
                          bool row_scaled, const void* v, const void* h, const void* rinv,
                          const void* coef, bool has_shift, double scale, double eps, int64_t m,
                          int64_t d, void* dh, cudaStream_t stream) {
  return detail::dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    grad_epilogue_kernel<T><<<launch::row_blocks(m), launch::kRowThreads, 0, stream>>>(
        static_cast<const A*>(gx), gx_ld, part2_offset, row_scaled, static_cast<const A*>(v),
        static_cast<const T*>(h), static_cast<const A*>(rinv), static_cast<const A*>(coef),
        has_shift, scale, eps, m, d, static_cast<T*>(dh));
    return cudaGetLastError();
  });
}

}  // namespace kernels
}  // namespace mmae_fast
