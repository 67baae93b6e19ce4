// The "cpu" backend's native stages: stage 1 (gram), stage 3 (grad) and the exact estimator's
// small side on LAPACK's float64 inverse, as ATen ops of mmae_fast._cpu. What they compute is
// stated once, in mmae_fast/ops/tcr/stages.py (stages 1, 3) and mmae_fast/ops/tcr/small_side.py
// (stage 2); mmae_fast/ops/tcr/cpu_native.py says when they run. Here the row passes are single
// loops (no temporary per elementwise step) and the products and factorisations are ATen's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>

namespace {

using at::Tensor;

template <typename scalar_t>
using acc_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// rows per parallel chunk: at least ~32k numbers, as ATen's elementwise grain
int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)); }

void check_rows(const Tensor& h, const char* name) {
  TORCH_CHECK(h.dim() == 2, name, " must be 2-D (m, d), got ", h.dim(), "-D");
  TORCH_CHECK(h.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(at::isFloatingType(h.scalar_type()), name, " must be floating, got ",
              h.scalar_type());
}

// G = A Aᵀ for a symmetric product: one product below 512, else three of its 2×2 blocks
// (mmae_fast/ops/tcr/cpu.py: symmetric_product)
Tensor symmetric_gram(const Tensor& a) {
  const int64_t n = a.size(0);
  if (n < 512) return at::mm(a, a.t());
  const int64_t h = n / 2;
  Tensor out = at::empty({n, n}, a.options());
  Tensor top = a.narrow(0, 0, h), bottom = a.narrow(0, h, n - h);
  Tensor o11 = out.narrow(0, 0, h).narrow(1, 0, h);
  Tensor o21 = out.narrow(0, h, n - h).narrow(1, 0, h);
  Tensor o22 = out.narrow(0, h, n - h).narrow(1, h, n - h);
  at::mm_out(o11, top, top.t());
  at::mm_out(o21, bottom, top.t());
  at::mm_out(o22, bottom, bottom.t());
  out.narrow(0, 0, h).narrow(1, h, n - h).copy_(o21.t());
  return out;
}

// z_i = h_i·rinv_i, rinv_i = 1/max(||h_i||, eps); ||h_i|| scaled by the power of two of the
// row's largest |entry| first (mmae_fast/reference.py: row_norms)
template <typename scalar_t>
void normalise_rows(const scalar_t* h, int64_t m, int64_t d, double eps, acc_of<scalar_t>* z,
                    acc_of<scalar_t>* rinv) {
  using acc_t = acc_of<scalar_t>;
  const int lim = std::numeric_limits<acc_t>::max_exponent - 3;
  at::parallel_for(0, m, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* x = h + i * d;
      acc_t* zi = z + i * d;
      acc_t amax = 0;  // a NaN entry is lost here, but not in ss below
      for (int64_t j = 0; j < d; ++j) {
        const acc_t a = std::abs(static_cast<acc_t>(x[j]));
        amax = std::max(amax, a);
      }
      int k = 0;
      std::frexp(amax, &k);
      k = std::min(std::max(k, -lim), lim);
      const acc_t scale = std::ldexp(acc_t(1), -k);
      acc_t ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < d; ++j) {
        const acc_t s = static_cast<acc_t>(x[j]) * scale;
        ss += s * s;
      }
      const acc_t norm = std::sqrt(ss) / scale;
      const acc_t floored = std::isnan(norm) ? norm : std::max(norm, static_cast<acc_t>(eps));
      const acc_t r = acc_t(1) / floored;
      rinv[i] = r;
      for (int64_t j = 0; j < d; ++j) zi[j] = static_cast<acc_t>(x[j]) * r;
    }
  });
}

std::tuple<Tensor, Tensor> cpu_gram(const Tensor& h_in, bool feature, double eps) {
  check_rows(h_in, "h");
  const Tensor h = h_in.contiguous();
  const int64_t m = h.size(0), d = h.size(1);
  const auto acc = h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor z = at::empty({m, d}, h.options().dtype(acc));
  Tensor rinv = at::empty({m}, h.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "cpu_gram", [&] {
    using acc_t = acc_of<scalar_t>;
    normalise_rows<scalar_t>(h.data_ptr<scalar_t>(), m, d, eps, z.data_ptr<acc_t>(),
                             rinv.data_ptr<acc_t>());
  });
  return {symmetric_gram(feature ? z.t() : z), rinv};
}

// dh_i = r_i·u_i - x_i·z_i, r = rinv·s, x_i = r_i<z_i, u_i> (rinv_i < 1/eps) or rinv_i·t
// (floor rows), u = Z q - 1vᵀ or q Z - 1vᵀ (mmae_fast/ops/tcr/cpu.py: grad)
Tensor cpu_grad(const Tensor& coef_in, const Tensor& h_in, const Tensor& rinv_in,
                const Tensor& q_in, const Tensor& v_in, bool feature, double scale, double eps) {
  check_rows(h_in, "h");
  const auto acc = rinv_in.scalar_type();
  TORCH_CHECK(acc == at::kFloat || acc == at::kDouble, "rinv must be float32 or float64");
  const Tensor h = h_in.contiguous(), rinv = rinv_in.contiguous();
  const Tensor coef = coef_in.to(at::kDouble).reshape({-1}).contiguous();
  const int64_t m = h.size(0), d = h.size(1);
  TORCH_CHECK(rinv.numel() == m, "rinv must have one entry per row of h");
  const double s = coef.data_ptr<double>()[0] * scale;
  const double t = coef.numel() == 2 ? coef.data_ptr<double>()[1] * scale : 0.0;
  Tensor out = at::empty({m, d}, h.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "cpu_grad", [&] {
    using acc_t = acc_of<scalar_t>;
    TORCH_CHECK(rinv.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "rinv must be float64 for float64 h, else float32");
    const scalar_t* hp = h.data_ptr<scalar_t>();
    const acc_t* rp = rinv.data_ptr<acc_t>();
    Tensor z = at::empty({m, d}, h.options().dtype(acc));
    acc_t* zp = z.data_ptr<acc_t>();
    at::parallel_for(0, m, row_grain(d), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t j = 0; j < d; ++j) zp[i * d + j] = static_cast<acc_t>(hp[i * d + j]) * rp[i];
    });
    const Tensor q = q_in.to(acc);
    Tensor u = (feature ? at::mm(z, q) : at::mm(q, z)).contiguous();
    const Tensor v = v_in.numel() ? v_in.to(acc).contiguous() : v_in;
    const acc_t* vp = v_in.numel() ? v.data_ptr<acc_t>() : nullptr;
    acc_t* up = u.data_ptr<acc_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const acc_t floor_rinv = acc_t(1) / static_cast<acc_t>(eps);
    const acc_t s_acc = static_cast<acc_t>(s), t_acc = static_cast<acc_t>(t);
    at::parallel_for(0, m, row_grain(d), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        acc_t* ui = up + i * d;
        const acc_t* zi = zp + i * d;
        if (vp != nullptr)
          for (int64_t j = 0; j < d; ++j) ui[j] -= vp[j];
        const acc_t r = rp[i] * s_acc;
        acc_t x;
        if (rp[i] < floor_rinv) {
          acc_t dot = 0;
          _Pragma("omp simd reduction(+ : dot)")  // (a #pragma cannot stand in a macro argument)
          for (int64_t j = 0; j < d; ++j) dot += zi[j] * ui[j];
          x = r * dot;
        } else {
          x = rp[i] * t_acc;
        }
        scalar_t* oi = op + i * d;
        for (int64_t j = 0; j < d; ++j) oi[j] = static_cast<scalar_t>(ui[j] * r - zi[j] * x);
      }
    });
  });
  return out;
}

// Stage 2 of the exact estimator, without centring and without a group, on LAPACK's float64
// inverse (mmae_fast/ops/tcr/small_side.py: small_side, _logdet_and_derivative and
// _shift_and_scale with a dense q):
//   A = I + c·G (float64), L Lᵀ = A, R = -2 Σ log L_ii (NaN if the factorisation fails)
//   q = -2c·A⁻¹, alpha = -tr(q)/n, qscale = max(max|q + alpha·I|, tiny_f32),
//   Q = (q + alpha·I)/qscale (n, n) row-major, qinfo = [qscale, alpha]; R, Q, qinfo in g's dtype
std::tuple<Tensor, Tensor, Tensor> cpu_exact_side(const Tensor& g, double c, bool need_grad) {
  TORCH_CHECK(g.dim() == 2 && g.size(0) == g.size(1), "g must be square (n, n)");
  TORCH_CHECK(g.device().is_cpu(), "g must be a CPU tensor");
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble,
              "g must be float32 or float64");
  const int64_t n = g.size(0);
  Tensor y = g.to(at::kDouble, /*non_blocking=*/false, /*copy=*/true).contiguous();
  {
    double* yp = y.data_ptr<double>();
    for (int64_t i = 0; i < n * n; ++i) yp[i] *= c;
    for (int64_t i = 0; i < n; ++i) yp[i * n + i] += 1.0;
  }
  auto [chol, info] = at::linalg_cholesky_ex(y);
  double logdet = std::numeric_limits<double>::quiet_NaN();
  if (info.item<int>() == 0) {
    const Tensor diag = chol.diagonal();
    const double* dp = diag.data_ptr<double>();
    const int64_t stride = diag.stride(0);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::log(dp[i * stride]);
    logdet = 2.0 * sum;
  }
  const auto out = g.options();
  Tensor value = at::full({}, -logdet, out.dtype(at::kDouble)).to(g.scalar_type());
  Tensor qinfo = at::zeros({2}, out);
  if (!need_grad) {
    qinfo.narrow(0, 0, 1).fill_(1.0);
    return {value, at::empty({0, 0}, out), qinfo};
  }
  const Tensor inv = at::cholesky_inverse(chol);
  const double* ip = inv.data_ptr<double>();
  const int64_t s0 = inv.stride(0), s1 = inv.stride(1);
  const double f = -2.0 * c;
  double trace = 0;
  for (int64_t i = 0; i < n; ++i) trace += ip[i * s0 + i * s1] * f;
  const double alpha = trace / -static_cast<double>(n);
  double qmax = 0;
  bool nan = false;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const double a = std::abs(ip[i * s0 + j * s1] * f + (i == j ? alpha : 0.0));
      nan |= std::isnan(a);
      qmax = std::max(qmax, a);
    }
  double qscale = nan ? std::numeric_limits<double>::quiet_NaN()
                      : std::max(qmax, static_cast<double>(std::numeric_limits<float>::min()));
  Tensor q = at::empty({n, n}, out);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cpu_exact_side", [&] {
    scalar_t* qp = q.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j)
        qp[i * n + j] = static_cast<scalar_t>((ip[i * s0 + j * s1] * f + (i == j ? alpha : 0.0))
                                              / qscale);
    qinfo.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(qscale);
    qinfo.data_ptr<scalar_t>()[1] = static_cast<scalar_t>(alpha);
  });
  return {value, q, qinfo};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mmae_fast, m) {
  m.def("cpu_gram(Tensor h, bool feature, float eps) -> (Tensor, Tensor)");
  m.def("cpu_grad(Tensor coef, Tensor h, Tensor rinv, Tensor q, Tensor v, bool feature, "
        "float scale, float eps) -> Tensor");
  m.def("cpu_exact_side(Tensor g, float c, bool need_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mmae_fast, CPU, m) {
  m.impl("cpu_gram", &cpu_gram);
  m.impl("cpu_grad", &cpu_grad);
  m.impl("cpu_exact_side", &cpu_exact_side);
}

// importable as the Python module mmae_fast._cpu (importing it registers the ops above)
extern "C" PyObject* PyInit__cpu(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
