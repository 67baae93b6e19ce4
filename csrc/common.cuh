// Device helpers shared by the .cu files: element types, conversions, reductions, dispatch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "mmae_kernels.h"

namespace mmae_fast {
namespace kernels {
namespace detail {

//! Accumulation type: double for double, float for float / __half / __nv_bfloat16.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

//! Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the sum.
//! Safe to call repeatedly in one kernel.
template <typename A> __device__ A block_sum(A v) {
  __shared__ A partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  __syncthreads();  // partial may still be read by a previous call
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A total = lane < warps ? partial[lane] : A(0);
  return warp_sum(total);
}

template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

//! Maximum over the block (as block_sum: blockDim.x a multiple of 32; every thread gets it).
template <typename A> __device__ A block_max(A v) {
  __shared__ A partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = (blockDim.x + 31) >> 5;
  __syncthreads();
  v = warp_max(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  A total = lane < warps ? partial[lane] : A(0);
  return warp_max(total);
}

//! The exponent k of s >= 0 (s = f 2^k, f in [0.5, 1)), clamped so that 2^k and 2^-k are
//! normal numbers of A: the exact power-of-two row scale of the overflow-safe norm
//! (as mmae_fast.reference.row_norms).
__device__ __forceinline__ int pow2_exponent(float s) {
  int k = 0;
  frexpf(s, &k);
  return min(max(k, -125), 125);
}
__device__ __forceinline__ int pow2_exponent(double s) {
  int k = 0;
  frexp(s, &k);
  return min(max(k, -1021), 1021);
}
__device__ __forceinline__ float pow2(float, int k) { return ldexpf(1.0f, k); }
__device__ __forceinline__ double pow2(double, int k) { return ldexp(1.0, k); }

//! Call f(T{}) with T the element type of dtype; cudaErrorInvalidValue for unknown codes.
template <typename F> cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

//! As dispatch, for the half types only (__half, __nv_bfloat16).
template <typename F> cudaError_t dispatch_half(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

//! As dispatch, for kernels on accumulation-type matrices only (float, double).
template <typename F> cudaError_t dispatch_acc(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat64: return f(double{});
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace detail
}  // namespace kernels
}  // namespace mmae_fast
