// The only file with torch types: registers torch.ops.mmae_fast.cuda_gram / cuda_grad, the
// stage-1 and stage-3 ops of the staged TCR regulariser (the contract they implement:
// mmae_fast/ops/tcr/stages.py; precision and chunking: mmae_fast/ops/tcr/cuda.py). Here: the
// argument checks, and the order of the torch-free kernels of mmae_kernels.h around the GEMMs
// in cuBLAS through ATen (aten::mm.dtype: half operands, float32 output). Nothing here
// synchronises the host.
#include <algorithm>
#include <cstdlib>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>
#include <torch/library.h>
#include <torch/version.h>

#include "mmae_kernels.h"

// aten::mm.dtype (half x half -> float output) is used when present; older torch upcasts.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
#define MMAE_FAST_HAS_MM_DTYPE 1
#else
#define MMAE_FAST_HAS_MM_DTYPE 0
#endif

namespace {

namespace k = mmae_fast::kernels;
namespace kl = mmae_fast::kernels::launch;

//! The norm floor: mmae_fast.reference.EPS (a CPU test compares the two).
constexpr double kEps = 1e-12;

k::DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return k::DType::kFloat32;
    case at::kDouble: return k::DType::kFloat64;
    case at::kHalf: return k::DType::kFloat16;
    case at::kBFloat16: return k::DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": h must be float32, float64, float16 or bfloat16, got ",
                  t.scalar_type(), "; convert it with h.float()");
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

//! MMAE_FAST_CUDA_GRAD_CHUNK_ROWS as a positive row count, else 0 (the rule of grad_chunk_rows).
int64_t chunk_rows_override() {
  const char* s = std::getenv("MMAE_FAST_CUDA_GRAD_CHUNK_ROWS");
  if (s == nullptr) return 0;
  const long long v = std::strtoll(s, nullptr, 10);
  return v > 0 ? static_cast<int64_t>(v) : 0;
}

//! The address of row r0 of t (any element type, rows r0 * stride(0) elements apart).
void* row_ptr(const at::Tensor& t, int64_t r0) {
  return static_cast<char*>(t.data_ptr()) + r0 * t.stride(0) * static_cast<int64_t>(t.element_size());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

//! a @ b with an acc-typed result (fp32 accumulation for half operands, on tensor cores).
at::Tensor mm_acc(const at::Tensor& a, const at::Tensor& b, at::ScalarType acc) {
  if (a.scalar_type() == acc) return at::mm(a, b);
#if MMAE_FAST_HAS_MM_DTYPE
  return at::mm(a, b, acc);
#else
  return at::mm(a.to(acc), b.to(acc));
#endif
}

void check_h(const at::Tensor& h, const char* op) {
  TORCH_CHECK(h.is_cuda(), op, ": h must be a CUDA tensor, got device ", h.device(),
              "; move it with h.cuda()");
  TORCH_CHECK(h.dim() == 2 && h.size(0) > 0 && h.size(1) > 0, op,
              ": h must be a non-empty 2-D (m, d) tensor, got shape ", h.sizes());
}

void check_acc(const at::Tensor& t, const at::Tensor& h, at::ScalarType acc, at::IntArrayRef shape,
               const char* op, const char* name) {
  TORCH_CHECK(t.device() == h.device(), op, ": ", name, " must be on h's device ", h.device(),
              ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == acc, op, ": ", name, " must be ", acc, " for ", h.scalar_type(),
              " h, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

//! Stage 1: (G, rinv), G uncentred, both in acc.
std::tuple<at::Tensor, at::Tensor> cuda_gram(const at::Tensor& h_in, bool feature) {
  const char* op = "cuda_gram";
  check_h(h_in, op);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous();
  const k::DType dt = dtype_of(h, op);
  const at::ScalarType acc = acc_type(h.scalar_type());
  const k::DType dt_acc = acc == at::kDouble ? k::DType::kFloat64 : k::DType::kFloat32;
  const int64_t m = h.size(0), d = h.size(1);
  const auto acc_opts = h.options().dtype(acc);

  at::Tensor rinv = at::empty({m}, acc_opts);
  // the GEMM operand: float16 for both half types (normalize.cu: GramOperand), else h's type
  at::Tensor z = at::empty(h.sizes(), h.options().dtype(
      h.scalar_type() == at::kBFloat16 ? at::kHalf : h.scalar_type()));
  C10_CUDA_CHECK(k::row_normalize(dt, h.data_ptr(), m, d, kEps, rinv.data_ptr(), z.data_ptr(),
                                  stream()));
  at::Tensor g = (feature ? mm_acc(z.t(), z, acc) : mm_acc(z, z.t(), acc)).contiguous();
  C10_CUDA_CHECK(k::symmetrize(dt_acc, g.data_ptr(), g.size(0), stream()));
  return {g, rinv};
}

//! Stage 3: dh in h's dtype; coef = [s] or [s, t].
at::Tensor cuda_grad(const at::Tensor& coef_in, const at::Tensor& h_in, const at::Tensor& rinv_in,
                     const at::Tensor& q_in, const at::Tensor& v_in, bool feature, double scale) {
  const char* op = "cuda_grad";
  check_h(h_in, op);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous();
  const k::DType dt = dtype_of(h, op);
  const at::ScalarType acc = acc_type(h.scalar_type());
  const int64_t m = h.size(0), d = h.size(1), n = feature ? d : m;
  check_acc(rinv_in, h, acc, {m}, op, "rinv");
  check_acc(q_in, h, acc, {n, n}, op, "q");
  const bool has_v = v_in.numel() > 0;
  if (has_v) {
    check_acc(v_in, h, acc, {d}, op, "v");
  } else {
    TORCH_CHECK(v_in.dim() == 1, op, ": v must be (d,) or an empty (0,) tensor, got shape ",
                v_in.sizes());
  }
  TORCH_CHECK((coef_in.numel() == 1 || coef_in.numel() == 2) && coef_in.dim() <= 1 &&
                  coef_in.device() == h.device() && at::isFloatingType(coef_in.scalar_type()),
              op, ": coef must be a float tensor of one or two numbers ([s] or [s, t]: q's "
              "scale and radial shift) on h's device, got shape ", coef_in.sizes(), " on ",
              coef_in.device());
  const at::Tensor rinv = rinv_in.contiguous();
  const at::Tensor q = q_in.contiguous();
  const at::Tensor v = has_v ? v_in.contiguous() : v_in;
  const at::Tensor coef = coef_in.to(h.options().dtype(acc)).reshape({-1}).contiguous();

  const bool has_shift = coef.numel() == 2;
  at::Tensor dh = at::empty_like(h, at::MemoryFormat::Contiguous);
  if (feature) {
    // gx = z q = diag(rinv) (h q), rows in chunks (launch.h: grad_chunk_rows) so that the acc
    // product, the only scratch, stays within 32 MiB instead of O(m·d). float32 / float64: one product h q;
    // half: h is exact in its type and q = qhi + qlo, so h @ [qhi | qlo] (rows of 2d: both
    // parts, added in the epilogue).
    at::Tensor rhs = q;
    int64_t gx_ld = d, part2 = 0;
    if (h.scalar_type() != acc) {
      const kl::SplitLayout lq = kl::feature_q_layout(d);
      rhs = at::empty({d, 2 * d}, h.options());
      C10_CUDA_CHECK(k::split_hi_lo(dt, q.data_ptr(), /*src_is_acc=*/true, nullptr, d, d,
                                    rhs.data_ptr(), lq, stream()));
      gx_ld = 2 * d;
      part2 = d;
    }
    const int64_t rows = kl::grad_chunk_rows(
        m, gx_ld * static_cast<int64_t>(c10::elementSize(acc)), chunk_rows_override());
    for (int64_t r0 = 0; r0 < m; r0 += rows) {
      const int64_t r = std::min(rows, m - r0);
      const at::Tensor gx = mm_acc(h.narrow(0, r0, r), rhs, acc).contiguous();  // (r, gx_ld)
      C10_CUDA_CHECK(k::grad_epilogue(dt, gx.data_ptr(), gx_ld, part2, /*row_scaled=*/true,
                                      has_v ? v.data_ptr() : nullptr, row_ptr(h, r0),
                                      row_ptr(rinv, r0), coef.data_ptr(), has_shift, scale, kEps,
                                      r, d, row_ptr(dh, r0), stream()));
    }
    return dh;
  }
  // sample side (m <= d: the product is at most the input's size): gx = q z, in acc
  at::Tensor gx;
  if (h.scalar_type() == acc) {  // float32 / float64: one product, q z = (q diag(rinv)) h
    gx = at::mm(q * rinv.view({1, m}), h);
  } else {  // half: [qhi | qhi | qlo] @ [zhi; zlo; zhi], z from h rinv in fp32
    const kl::SplitLayout lz = kl::sample_z_layout(m, d);
    const kl::SplitLayout lq = kl::sample_q_layout(m);
    at::Tensor zs = at::empty({3 * m, d}, h.options());
    at::Tensor qs = at::empty({m, 3 * m}, h.options());
    C10_CUDA_CHECK(k::split_hi_lo(dt, h.data_ptr(), /*src_is_acc=*/false,
                                  rinv.data_ptr<float>(), m, d, zs.data_ptr(), lz, stream()));
    C10_CUDA_CHECK(k::split_hi_lo(dt, q.data_ptr(), /*src_is_acc=*/true, nullptr, m, m,
                                  qs.data_ptr(), lq, stream()));
    gx = mm_acc(qs, zs, acc);
  }
  gx = gx.contiguous();
  C10_CUDA_CHECK(k::grad_epilogue(dt, gx.data_ptr(), /*gx_ld=*/d, /*part2=*/0,
                                  /*row_scaled=*/false, has_v ? v.data_ptr() : nullptr,
                                  h.data_ptr(), rinv.data_ptr(), coef.data_ptr(), has_shift, scale,
                                  kEps, m, d, dh.data_ptr(), stream()));
  return dh;
}

}  // namespace

// Schemas: keep in sync with GRAM_SCHEMA / GRAD_SCHEMA in mmae_fast/ops/tcr/cuda.py (a GPU
// test compares them). FRAGMENT, so that the Python-defined ops of the mmae_fast namespace
// (Triton backend) coexist with these.
TORCH_LIBRARY_FRAGMENT(mmae_fast, m) {
  m.def("cuda_gram(Tensor h, bool feature) -> (Tensor, Tensor)");
  m.def("cuda_grad(Tensor coef, Tensor h, Tensor rinv, Tensor q, Tensor v, bool feature, "
        "float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmae_fast, CUDA, m) {
  m.impl("cuda_gram", &cuda_gram);
  m.impl("cuda_grad", &cuda_grad);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mmae_fast CUDA extension: registers torch.ops.mmae_fast.cuda_gram / cuda_grad";
  m.attr("has_mm_dtype") = static_cast<bool>(MMAE_FAST_HAS_MM_DTYPE);
  m.attr("eps") = kEps;
}
