// Stage 1 (gram) kernels: row norms and normalised rows, Gram symmetrisation (the Gram is
// uncentred: the staged op centres the operand itself, mmae_fast/ops/tcr/stages.py).
#include "common.cuh"

namespace mmae_fast {
namespace kernels {
namespace {

using detail::acc_t;
using detail::block_max;
using detail::block_sum;
using detail::from_acc;
using detail::to_acc;

//! The Gram's operand type for input type T: float16 for both half types (the normalised rows
//! lie in [-1, 1], where float16 has 8x bfloat16's precision at the same tensor-core rate),
//! else T itself.
template <typename T> struct GramOperand { using type = T; };
template <> struct GramOperand<__nv_bfloat16> { using type = __half; };

//! One block per row: rinv_i = 1 / max(||h_i||, eps) and z_i = h_i rinv_i (rounded once to Z).
//! The norm without overflow: a first pass finds s = max_j |h_ij|, the squares are summed of
//! h_ij 2^-k (2^k the power of two of s: exact) and ||h_i|| = 2^k sqrt(sum).
template <typename T, typename Z>
__global__ void row_normalize_kernel(const T* __restrict__ h, int64_t m, int64_t d, double eps,
                                     acc_t<T>* __restrict__ rinv, Z* __restrict__ z) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const T* row = h + i * d;
    A s = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s = max(s, abs(to_acc(row[j])));
    const int k = detail::pow2_exponent(block_max(s));
    const A down = detail::pow2(A(0), -k);
    A ss = 0;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const A v = to_acc(row[j]) * down;
      ss += v * v;
    }
    const A inv = A(1) / max(sqrt(block_sum(ss)) * detail::pow2(A(0), k), A(eps));
    if (threadIdx.x == 0) rinv[i] = inv;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) z[i * d + j] = from_acc<Z>(to_acc(row[j]) * inv);
  }
}

//! Each pair i < j: a_ij = a_ji = (a_ij + a_ji) / 2 (one thread per pair, so in place is safe).
template <typename A>
__global__ void symmetrize_kernel(A* __restrict__ a, int64_t n) {
  const int64_t total = n * n;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / n, j = e - i * n;
    if (i < j) {
      const A mean = (a[e] + a[j * n + i]) * A(0.5);
      a[e] = mean;
      a[j * n + i] = mean;
    }
  }
}

}  // namespace

cudaError_t row_normalize(DType t, const void* h, int64_t m, int64_t d, double eps, void* rinv,
                          void* z, cudaStream_t stream) {
  return detail::dispatch(t, [&](auto tag) {
    using T = decltype(tag);
    using Z = typename GramOperand<T>::type;
    row_normalize_kernel<T, Z><<<launch::row_blocks(m), launch::kRowThreads, 0, stream>>>(
        static_cast<const T*>(h), m, d, eps, static_cast<acc_t<T>*>(rinv), static_cast<Z*>(z));
    return cudaGetLastError();
  });
}

cudaError_t symmetrize(DType acc, void* a, int64_t n, cudaStream_t stream) {
  return detail::dispatch_acc(acc, [&](auto tag) {
    using A = decltype(tag);
    symmetrize_kernel<A><<<launch::elementwise_blocks(n * n, 256), 256, 0, stream>>>(
        static_cast<A*>(a), n);
    return cudaGetLastError();
  });
}

}  // namespace kernels
}  // namespace mmae_fast
