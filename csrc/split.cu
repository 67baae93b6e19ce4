// Split operands for the half-input backward GEMM: x = hi + lo, hi = round(x), lo = round(x - hi)
// in the input's half type, written as copies in a K-concatenated layout (launch.h).
#include "common.cuh"

namespace mmae_fast {
namespace kernels {
namespace {

using detail::from_acc;
using detail::to_acc;

//! Element (i, j): x = src_ij * row_scale_i (float); hi / lo to the `layout.blocks` copies.
template <typename T, typename S>
__global__ void split_hi_lo_kernel(const S* __restrict__ src, const float* __restrict__ row_scale,
                                   int64_t rows, int64_t cols, T* __restrict__ dst,
                                   launch::SplitLayout layout) {
  const int64_t total = rows * cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / cols, j = e - i * cols;
    float x = to_acc(src[e]);
    if (row_scale != nullptr) x *= row_scale[i];
    const T hi = from_acc<T>(x);
    const T lo = from_acc<T>(x - to_acc(hi));
    T* out = dst + i * layout.ld + j;
    for (int b = 0; b < layout.blocks; ++b) {
      out[static_cast<int64_t>(b) * layout.block_stride] = ((layout.lo_mask >> b) & 1u) ? lo : hi;
    }
  }
}

}  // namespace

cudaError_t split_hi_lo(DType t, const void* src, bool src_is_acc, const float* row_scale,
                        int64_t rows, int64_t cols, void* dst, const launch::SplitLayout& layout,
                        cudaStream_t stream) {
  return detail::dispatch_half(t, [&](auto tag) {
    using T = decltype(tag);
    const unsigned blocks = launch::elementwise_blocks(rows * cols, 256);
    if (src_is_acc) {
      split_hi_lo_kernel<T, float><<<blocks, 256, 0, stream>>>(
          static_cast<const float*>(src), row_scale, rows, cols, static_cast<T*>(dst), layout);
    } else {
      split_hi_lo_kernel<T, T><<<blocks, 256, 0, stream>>>(
          static_cast<const T*>(src), row_scale, rows, cols, static_cast<T*>(dst), layout);
    }
    return cudaGetLastError();
  });
}

}  // namespace kernels
}  // namespace mmae_fast
