// Host-only launch arithmetic of the kernels (no CUDA headers): grid sizes and the layouts of the
// split (hi/lo) GEMM operands. Plain C++ so that tests compile and check it without a GPU
// (tests/ops/test_cuda_backend.py, tests/cuda_host/launch_test.cpp).
#pragma once

#include <cstdint>

namespace mmae_fast {
namespace kernels {
namespace launch {

//! Threads per block of the row kernels (one block per row).
constexpr int kRowThreads = 256;
//! Most blocks of a grid-stride row launch (rows beyond it are looped over).
constexpr int64_t kMaxRowBlocks = 65535LL * 16;

//! Blocks for a one-block-per-row grid-stride launch over m rows: clamp(m, 1, kMaxRowBlocks).
inline unsigned row_blocks(int64_t m) {
  if (m < 1) return 1u;
  return static_cast<unsigned>(m < kMaxRowBlocks ? m : kMaxRowBlocks);
}

//! Blocks of an element-wise grid-stride launch over `count` items: clamp(ceil(count/threads), 1, cap).
inline unsigned elementwise_blocks(int64_t count, int threads, int64_t cap = 4096) {
  int64_t blocks = (count + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned>(blocks);
}

//! Rows per chunk of the feature-side backward product (m rows of `row_bytes` in acc): one
//! chunk's product is all the scratch the backward keeps, so it is bounded by
//! kGradChunkBytes (at least one row), not O(m·d). `override_rows` > 0 replaces the rule
//! (MMAE_FAST_CUDA_GRAD_CHUNK_ROWS, for tests). Result in [1, max(m, 1)].
constexpr int64_t kGradChunkBytes = int64_t(32) << 20;
inline int64_t grad_chunk_rows(int64_t m, int64_t row_bytes, int64_t override_rows = 0) {
  int64_t rows = override_rows > 0 ? override_rows
                                   : kGradChunkBytes / (row_bytes > 0 ? row_bytes : 1);
  if (rows > m) rows = m;
  return rows < 1 ? 1 : rows;
}

//! Where split_hi_lo writes element (i, j) of a (rows, cols) source: `blocks` copies at
//!   dst[i * ld + j + b * block_stride],  b = 0 .. blocks-1,
//! copy b holding the lo part when bit b of lo_mask is set, else the hi part.
struct SplitLayout {
  int64_t ld;
  int64_t block_stride;
  int blocks;
  unsigned lo_mask;
};

inline int64_t split_offset(const SplitLayout& s, int64_t i, int64_t j, int b) {
  return i * s.ld + j + static_cast<int64_t>(b) * s.block_stride;
}

//! Feature side, q (d, d) -> [qhi | qlo] (d, 2d):  h @ [qhi | qlo] = [h qhi | h qlo] (m, 2d).
inline SplitLayout feature_q_layout(int64_t d) { return {2 * d, d, 2, 0x2u}; }

//! Sample side, z (m, d) -> [zhi; zlo; zhi] (3m, d), rows stacked.
inline SplitLayout sample_z_layout(int64_t m, int64_t d) { return {d, m * d, 3, 0x2u}; }

//! Sample side, q (m, m) -> [qhi | qhi | qlo] (m, 3m): the K-concatenated product
//!   [qhi | qhi | qlo] @ [zhi; zlo; zhi] = qhi zhi + qhi zlo + qlo zhi   (one GEMM).
inline SplitLayout sample_q_layout(int64_t m) { return {3 * m, m, 3, 0x4u}; }

}  // namespace launch
}  // namespace kernels
}  // namespace mmae_fast
