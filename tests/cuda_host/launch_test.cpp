// Host-only checks of csrc/launch.h (no GPU, no CUDA headers): grid arithmetic and the split
// layouts, the latter by building the K-concatenated operands and comparing one product of them
// with the sum of the three (two) products they stand for. Prints "ok" and exits 0 on success.
#include <cmath>
#include <cstdio>
#include <vector>

#include "launch.h"

namespace l = mmae_fast::kernels::launch;

static int failures = 0;
#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("FAIL line %d: %s\n", __LINE__, #cond);              \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

using Mat = std::vector<double>;  // row-major

static Mat matmul(const Mat& a, const Mat& b, int64_t r, int64_t k, int64_t c) {
  Mat out(r * c, 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t t = 0; t < k; ++t)
      for (int64_t j = 0; j < c; ++j) out[i * c + j] += a[i * k + t] * b[t * c + j];
  return out;
}

//! What split_hi_lo writes, with hi/lo given (the kernel's element loop, on the host).
static void scatter(const Mat& hi, const Mat& lo, int64_t rows, int64_t cols,
                    const l::SplitLayout& s, Mat& dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      for (int b = 0; b < s.blocks; ++b)
        dst[l::split_offset(s, i, j, b)] = ((s.lo_mask >> b) & 1u) ? lo[i * cols + j] : hi[i * cols + j];
}

static Mat pattern(int64_t rows, int64_t cols, double seed) {
  Mat out(rows * cols);
  for (int64_t e = 0; e < rows * cols; ++e) out[e] = std::sin(seed * (e + 1));
  return out;
}

static double max_diff(const Mat& a, const Mat& b) {
  double worst = 0.0;
  for (size_t e = 0; e < a.size(); ++e) worst = std::fmax(worst, std::fabs(a[e] - b[e]));
  return a.size() == b.size() ? worst : 1e300;
}

int main() {
  // grids
  EXPECT(l::row_blocks(0) == 1u);
  EXPECT(l::row_blocks(1) == 1u);
  EXPECT(l::row_blocks(65537) == 65537u);
  EXPECT(l::row_blocks(int64_t(1) << 40) == static_cast<unsigned>(l::kMaxRowBlocks));
  // half input, d = 1024: rows of [h qhi | h qlo] are 2d float32 = 8 KiB -> 4096 rows (32 MiB)
  EXPECT(l::grad_chunk_rows(65536, 2 * 1024 * 4) == 4096);
  EXPECT(l::grad_chunk_rows(65536, 2 * 256 * 4) == 16384);
  EXPECT(l::grad_chunk_rows(65536, 2 * 16384 * 4) == 256);
  EXPECT(l::grad_chunk_rows(1, 8192) == 1);
  EXPECT(l::grad_chunk_rows(300, 2 * 129 * 4) == 300);
  EXPECT(l::grad_chunk_rows(300, 2 * 129 * 4, 7) == 7);
  EXPECT(l::grad_chunk_rows(5, 2 * 129 * 4, 7) == 5);
  EXPECT(l::grad_chunk_rows(0, 12) == 1);
  EXPECT(l::grad_chunk_rows(10, l::kGradChunkBytes * 2) == 1);  // a row above the budget
  EXPECT(l::elementwise_blocks(0, 256) == 1u);
  EXPECT(l::elementwise_blocks(257, 256) == 2u);
  EXPECT(l::elementwise_blocks(int64_t(1) << 40, 256) == 4096u);
  // feature side: h @ [qhi | qlo] (m, 2d) = [h qhi | h qlo]
  {
    const int64_t m = 5, d = 7;
    const Mat h = pattern(m, d, 0.3), qhi = pattern(d, d, 0.7), qlo = pattern(d, d, 1.1);
    const l::SplitLayout s = l::feature_q_layout(d);
    Mat qs(d * 2 * d, -99.0);
    scatter(qhi, qlo, d, d, s, qs);
    const Mat out = matmul(h, qs, m, d, 2 * d);
    const Mat want_hi = matmul(h, qhi, m, d, d), want_lo = matmul(h, qlo, m, d, d);
    Mat got_hi(m * d), got_lo(m * d);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < d; ++j) {
        got_hi[i * d + j] = out[i * 2 * d + j];
        got_lo[i * d + j] = out[i * 2 * d + d + j];  // part2_offset = d, gx_ld = 2d
      }
    EXPECT(max_diff(got_hi, want_hi) < 1e-12 && max_diff(got_lo, want_lo) < 1e-12);
  }
  // sample side: [qhi | qhi | qlo] @ [zhi; zlo; zhi] = qhi zhi + qhi zlo + qlo zhi
  {
    const int64_t m = 6, d = 9;
    const Mat zhi = pattern(m, d, 0.2), zlo = pattern(m, d, 0.5);
    const Mat qhi = pattern(m, m, 0.9), qlo = pattern(m, m, 1.3);
    Mat zs(3 * m * d, -99.0), qs(m * 3 * m, -99.0);
    scatter(zhi, zlo, m, d, l::sample_z_layout(m, d), zs);
    scatter(qhi, qlo, m, m, l::sample_q_layout(m), qs);
    const Mat out = matmul(qs, zs, m, 3 * m, d);
    Mat want = matmul(qhi, zhi, m, m, d);
    const Mat b = matmul(qhi, zlo, m, m, d), c = matmul(qlo, zhi, m, m, d);
    for (size_t e = 0; e < want.size(); ++e) want[e] += b[e] + c[e];
    EXPECT(max_diff(out, want) < 1e-12);
  }
  if (failures == 0) std::printf("ok\n");
  return failures == 0 ? 0 : 1;
}
