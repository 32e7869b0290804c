// CPU kernels of the dmol ops: one OpenMP loop over pixels, each pixel evaluated by the
// shared math in dmol_math.h.
#include <stdexcept>
#include <string>

#include "../common/cpu_types.h"
#include "dmol.h"
#include "dmol_math.h"

namespace dqk {
namespace dmol {
namespace {

struct Pixel {
  int64_t b, h, w;
};

inline Pixel pixel_of(const Args& a, int64_t n) {
  const int64_t hw = a.H * a.W;
  const int64_t b = n / hw, r = n - b * hw;
  const int64_t h = r / a.W;
  return Pixel{b, h, r - h * a.W};
}

template <typename S>
void forward(const Args& a, int nt) {
  using Acc = typename Scalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* x = static_cast<const S*>(a.x);
  const S* p = static_cast<const S*>(a.params);
  Acc* out = static_cast<Acc*>(a.out);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const Pixel px = pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const S* xp = x + px.b * a.x_stride[0] + px.h * a.x_stride[2] + px.w * a.x_stride[3];
    auto P = [&](int64_t i) { return Acc(Scalar<S>::load(pp + i * a.p_stride[1])); };
    auto X = [&](int64_t c) { return Acc(Scalar<S>::load(xp + c * a.x_stride[1])); };
    out[px.b * a.out_stride[0] + px.h * a.out_stride[1] + px.w * a.out_stride[2]] =
        pixel_nll<Acc>(g, P, X, mls);
  }
}

template <typename S>
void backward(const Args& a, int nt) {
  using Acc = typename Scalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* x = static_cast<const S*>(a.x);
  const S* p = static_cast<const S*>(a.params);
  const Acc* go = static_cast<const Acc*>(a.grad_out);
  S* gp = static_cast<S*>(a.grad_params);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const Pixel px = pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const S* xp = x + px.b * a.x_stride[0] + px.h * a.x_stride[2] + px.w * a.x_stride[3];
    S* gpp = gp + px.b * a.gp_stride[0] + px.h * a.gp_stride[2] + px.w * a.gp_stride[3];
    auto P = [&](int64_t i) { return Acc(Scalar<S>::load(pp + i * a.p_stride[1])); };
    auto X = [&](int64_t c) { return Acc(Scalar<S>::load(xp + c * a.x_stride[1])); };
    auto G = [&](int64_t i, Acc v) { Scalar<S>::store(gpp + i * a.gp_stride[1], v); };
    const Acc gout = go[px.b * a.g_stride[0] + px.h * a.g_stride[1] + px.w * a.g_stride[2]];
    pixel_nll_backward<Acc, true>(g, P, X, gout, mls, G);
  }
}

template <typename S>
void sample(const Args& a, int nt) {
  using Acc = typename Scalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* p = static_cast<const S*>(a.params);
  const Acc* u = static_cast<const Acc*>(a.u);
  S* out = static_cast<S*>(a.out);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    const Pixel px = pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const Acc* up = u + px.b * a.u_stride[0] + px.h * a.u_stride[2] + px.w * a.u_stride[3];
    S* op = out + px.b * a.out_stride[0] + px.h * a.out_stride[2] + px.w * a.out_stride[3];
    auto P = [&](int64_t i) { return Acc(Scalar<S>::load(pp + i * a.p_stride[1])); };
    auto U = [&](int64_t i) { return up[i * a.u_stride[1]]; };
    auto St = [&](int64_t c, Acc v) { Scalar<S>::store(op + c * a.out_stride[1], v); };
    pixel_sample<Acc>(g, P, U, mls, St);
  }
}

template <template <typename> class F>
void dispatch(const Args& a, int nt) {
  switch (a.dtype) {
    case DType::kFloat32: F<float>::run(a, nt); return;
    case DType::kFloat64: F<double>::run(a, nt); return;
    case DType::kFloat16: F<Half>::run(a, nt); return;
    case DType::kBFloat16: F<BFloat16>::run(a, nt); return;
  }
  throw std::invalid_argument("dmol cpu kernels: unsupported dtype code " +
                              std::to_string(int(a.dtype)));
}

template <typename S> struct Fwd { static void run(const Args& a, int nt) { forward<S>(a, nt); } };
template <typename S> struct Bwd { static void run(const Args& a, int nt) { backward<S>(a, nt); } };
template <typename S> struct Smp { static void run(const Args& a, int nt) { sample<S>(a, nt); } };

}  // namespace

void nll_forward_cpu(const Args& a, int nt) { dispatch<Fwd>(a, nt > 0 ? nt : 1); }
void nll_backward_cpu(const Args& a, int nt) { dispatch<Bwd>(a, nt > 0 ? nt : 1); }
void sample_cpu(const Args& a, int nt) { dispatch<Smp>(a, nt > 0 ? nt : 1); }

}  // namespace dmol
}  // namespace dqk
