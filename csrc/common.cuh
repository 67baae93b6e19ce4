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
