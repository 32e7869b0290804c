// CPU kernels of bernoulli_flip_loglik (bernoulli_flip.h). Not a GEMM with an epilogue: the
// nonlinearity sits inside the reduction over D (one exp and one log1p per (b, h, d)), so
// the cost is B H D transcendental evaluations and the kernels are vector loops over h with
// the branch-free math of common/cpu_vecmath.h (float; libm for double), compiled per
// instruction set (DQK_CPU_CLONES).
//
// Inputs are first packed, in the accumulate type A (float, double for float64), from any
// strides and dtype: x, 1 - x (or x - 1) and logits as [B][D], the weight as [D][Hp] and
// s = 1 - 2z as [B][Hp], with H padded to Hp (a multiple of kNW) by zeros (a padded
// column has s = w = g = 0: finite, and contributes nothing). Extra memory
// O(B D + B H + D H): never [B, H, D].
//
// Forward: work items are tiles of kMR rows of b by kNW columns of h; each keeps its
// kMR x kNW sums in registers over d = 0..D-1 (per d: one weight row segment, kMR
// broadcasts of logits[b, d] and x[b, d]). In float the log1p(e) terms are summed as
// log(prod (1 + e)) over chunks of kChunk features: one logarithm per kChunk elements. Each out
// element is summed by one thread in d order: results do not depend on the thread count.
//
// Backward (one sweep for the three gradients): work items are tiles of kDT features d.
// For each b and d of the tile, a vector loop over h forms r = x - sigmoid(t) and
// accumulates grad_logits[b, d] = sum_h g r and grad_x's sum_h g s w (reductions over the
// lanes) and grad_weight[d, h] += g s r into the tile's [kDT][Hp] rows (L1-resident), in
// b order. So every gradient element is again summed by one thread in a fixed order.
#include <math.h>
#include <string.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "../common/cpu_convert.h"
#include "../common/cpu_types.h"
#include "../common/cpu_vecmath.h"
#include "bernoulli_flip.h"

namespace dqk {
namespace bernoulli_flip {
namespace {

constexpr int kMR = 4;          // forward tile: rows of b
constexpr int64_t kNW = 32;     // forward tile: columns of h (H is padded to a multiple)
constexpr int kDT = 4;          // backward tile: features d
constexpr int64_t kChunk = 32;  // float forward: features per product of (1 + e)
// below this many (b, h, d) elements a call runs on one thread: starting the OpenMP team
// costs more than the work (and, on a loaded machine, a scheduler time slice per region)
constexpr int64_t kSerialWork = int64_t(1) << 18;

int threads_for(const Args& a, int nt) { return a.B * a.H * a.D < kSerialWork ? 1 : nt; }

template <typename A>
struct Math;
template <>
struct Math<float> {
  static DQK_VM float exp(float v) { return vm::exp(v); }
  static DQK_VM float log1p(float v) { return log1p_unit(v); }  // v in [0, 1]
  static DQK_VM float abs(float v) { return vm::absf(v); }
};
template <>
struct Math<double> {
  static DQK_VM double exp(double v) { return ::exp(v); }
  static DQK_VM double log1p(double v) { return ::log1p(v); }  // exact in float64
  static DQK_VM double abs(double v) { return ::fabs(v); }
};

template <typename A>
struct Packed {
  int64_t B = 0, D = 0, H = 0, Hp = 0;
  std::vector<A> x, xo, lg;  // [B][D]: x, (1 - x) forward or (x - 1) backward, logits
  std::vector<A> w;          // [D][Hp]
  std::vector<A> s;          // [B][Hp]: 1 - 2z
};

template <typename S, typename A>
A load(const Mat& m, int64_t i, int64_t j) {
  return A(Scalar<S>::load(static_cast<const S*>(m.p) + i * m.s0 + j * m.s1));
}

template <typename S, typename A>
Packed<A> pack(const Args& a, bool backward, int nt) {
  Packed<A> p;
  p.B = a.B, p.D = a.D, p.H = a.H;
  p.Hp = (a.H + kNW - 1) / kNW * kNW;
  const int64_t B = a.B, D = a.D, H = a.H, Hp = p.Hp;
  p.x.resize(B * D), p.xo.resize(B * D), p.lg.resize(B * D);
  p.w.assign(D * Hp, A(0));
  p.s.assign(B * Hp, A(0));
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const A xv = load<S, A>(a.x, b, d);
      p.x[b * D + d] = xv;
      p.xo[b * D + d] = backward ? xv - A(1) : A(1) - xv;
      p.lg[b * D + d] = load<S, A>(a.logits, b, d);
    }
    for (int64_t h = 0; h < H; ++h) p.s[b * Hp + h] = A(1) - A(2) * load<S, A>(a.z, b, h);
  }
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t d = 0; d < D; ++d)
    for (int64_t h = 0; h < H; ++h) p.w[d * Hp + h] = load<S, A>(a.w, d, h);
  return p;
}

// ----------------------------------------------------------------------------- forward

// out rows b0 .. b0 + mr - 1, columns h0 .. h0 + nw - 1 (mr <= kMR, nw <= kNW)
template <typename A>
DQK_VM void forward_tile(const Packed<A>& p, int64_t b0, int mr, int64_t h0, int64_t nw, A* out) {
  using M = Math<A>;
  const int64_t D = p.D, Hp = p.Hp;
  A acc[kMR][kNW];
  A sv[kMR][kNW];
  const A* lg[kMR];
  const A* xs[kMR];
  const A* xc[kMR];
  for (int r = 0; r < kMR; ++r) {
    const int64_t b = b0 + std::min(r, mr - 1);  // rows past the end repeat the last one
    lg[r] = &p.lg[b * D];
    xs[r] = &p.x[b * D];
    xc[r] = &p.xo[b * D];
    for (int64_t j = 0; j < kNW; ++j) {
      acc[r][j] = A(0);
      sv[r][j] = p.s[b * Hp + h0 + j];
    }
  }
  if constexpr (std::is_same<A, float>::value) {
    // sum_d log1p(e_d) as log(prod_d (1 + e_d)) per chunk of kChunk features (the product
    // stays in [1, 2^kChunk]): one logarithm per kChunk elements instead of one each
    for (int64_t c0 = 0; c0 < D; c0 += kChunk) {
      const int64_t c1 = std::min(D, c0 + kChunk);
      A prod[kMR][kNW];
      for (int r = 0; r < kMR; ++r)
        for (int64_t j = 0; j < kNW; ++j) prod[r][j] = A(1);
      for (int64_t d = c0; d < c1; ++d) {
        const A* wr = &p.w[d * Hp + h0];
        for (int r = 0; r < kMR; ++r) {
          const A l = lg[r][d], xv = xs[r][d], xcv = xc[r][d];
#pragma omp simd
          for (int64_t j = 0; j < kNW; ++j) {
            const A t = l + sv[r][j] * wr[j];
            const A e = M::exp(-M::abs(t));
            acc[r][j] += flip_term(xv, xcv, t, A(0));
            prod[r][j] *= A(1) + e;
          }
        }
      }
      for (int r = 0; r < kMR; ++r)
#pragma omp simd
        for (int64_t j = 0; j < kNW; ++j) acc[r][j] -= vm::log(prod[r][j]);
    }
  } else {
    for (int64_t d = 0; d < D; ++d) {
      const A* wr = &p.w[d * Hp + h0];
      for (int r = 0; r < kMR; ++r) {
        const A l = lg[r][d], xv = xs[r][d], xcv = xc[r][d];
#pragma omp simd
        for (int64_t j = 0; j < kNW; ++j) {
          const A t = l + sv[r][j] * wr[j];
          const A e = M::exp(-M::abs(t));
          acc[r][j] += flip_term(xv, xcv, t, M::log1p(e));
        }
      }
    }
  }
  for (int r = 0; r < mr; ++r)
    for (int64_t j = 0; j < nw; ++j) out[(b0 + r) * p.H + h0 + j] = acc[r][j];
}

template <typename A>
DQK_VM void forward_items(const Packed<A>& p, int64_t i0, int64_t i1, A* out) {
  const int64_t nh = p.Hp / kNW;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b0 = (i / nh) * kMR, h0 = (i % nh) * kNW;
    forward_tile(p, b0, int(std::min<int64_t>(kMR, p.B - b0)), h0, std::min<int64_t>(kNW, p.H - h0),
                 out);
  }
}

DQK_CPU_CLONES void forward_items_f32(const Packed<float>& p, int64_t i0, int64_t i1, float* out) {
  forward_items(p, i0, i1, out);
}
DQK_CPU_CLONES void forward_items_f64(const Packed<double>& p, int64_t i0, int64_t i1,
                                      double* out) {
  forward_items(p, i0, i1, out);
}

template <typename A>
void forward_items_isa(const Packed<A>& p, int64_t i0, int64_t i1, A* out) {
  if constexpr (std::is_same<A, float>::value) forward_items_f32(p, i0, i1, out);
  else forward_items_f64(p, i0, i1, out);
}

template <typename S>
void forward(const Args& a, int nt) {
  using A = typename Scalar<S>::acc;
  nt = threads_for(a, nt);
  const Packed<A> p = pack<S, A>(a, false, nt);
  A* out = static_cast<A*>(a.out);
  const int64_t items = (a.B + kMR - 1) / kMR * (p.Hp / kNW);
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int64_t i = 0; i < items; ++i) forward_items_isa(p, i, i + 1, out);
}

// ----------------------------------------------------------------------------- backward

// features d0 .. d0 + dt - 1: gl, gx [B][D] (accumulate type; rows of the tile written),
// gw_rows [kDT][Hp] (this tile's sums; written, not accumulated into)
template <typename A>
DQK_VM void backward_tile(const Packed<A>& p, const A* g, const A* gs, const A* gsum, int64_t d0,
                          int dt, A* gl, A* gx, A* gw_rows) {
  using M = Math<A>;
  const int64_t B = p.B, D = p.D, Hp = p.Hp;
  for (int64_t i = 0; i < int64_t(kDT) * Hp; ++i) gw_rows[i] = A(0);
  for (int64_t b = 0; b < B; ++b) {
    const A* sr = &p.s[b * Hp];
    const A* gr = &g[b * Hp];
    const A* gsr = &gs[b * Hp];
    for (int k = 0; k < dt; ++k) {
      const int64_t d = d0 + k;
      const A* wr = &p.w[d * Hp];
      A* gwr = gw_rows + k * Hp;
      const A l = p.lg[b * D + d], xv = p.x[b * D + d], xm1 = p.xo[b * D + d];
      A sum_l = A(0), sum_x = A(0);
#pragma omp simd reduction(+ : sum_l, sum_x)
      for (int64_t h = 0; h < Hp; ++h) {
        const A t = l + sr[h] * wr[h];
        const A e = M::exp(-M::abs(t));
        const A r = flip_resid(xv, xm1, t, e);
        sum_l += gr[h] * r;
        gwr[h] += gsr[h] * r;
        sum_x += gsr[h] * wr[h];
      }
      gl[b * D + d] = sum_l;
      gx[b * D + d] = l * gsum[b] + sum_x;
    }
  }
}

DQK_CPU_CLONES void backward_tile_f32(const Packed<float>& p, const float* g, const float* gs,
                                      const float* gsum, int64_t d0, int dt, float* gl, float* gx,
                                      float* gw_rows) {
  backward_tile(p, g, gs, gsum, d0, dt, gl, gx, gw_rows);
}
DQK_CPU_CLONES void backward_tile_f64(const Packed<double>& p, const double* g, const double* gs,
                                      const double* gsum, int64_t d0, int dt, double* gl,
                                      double* gx, double* gw_rows) {
  backward_tile(p, g, gs, gsum, d0, dt, gl, gx, gw_rows);
}

// n values of type A into the output of type S
template <typename A, typename S>
void store_run(const A* src, void* dst, int64_t offset, int64_t n) {
  convert_run<A, S>(src, static_cast<S*>(dst) + offset, n);
}

template <typename S>
void backward(const Args& a, int nt) {
  using A = typename Scalar<S>::acc;
  nt = threads_for(a, nt);
  const Packed<A> p = pack<S, A>(a, true, nt);
  const int64_t B = a.B, D = a.D, H = a.H, Hp = p.Hp;
  // upstream g, g s and sum_h g per row, in fixed order
  std::vector<A> g(B * Hp, A(0)), gs(B * Hp, A(0)), gsum(B, A(0));
  for (int64_t b = 0; b < B; ++b) {
    A sum = A(0);
    for (int64_t h = 0; h < H; ++h) {
      const A v = static_cast<const A*>(a.gout.p)[b * a.gout.s0 + h * a.gout.s1];
      g[b * Hp + h] = v;
      gs[b * Hp + h] = v * p.s[b * Hp + h];
      sum += v;
    }
    gsum[b] = sum;
  }
  // gradients of [B, D] in A: straight into the outputs when S is A, else into buffers
  constexpr bool direct = std::is_same<S, A>::value;
  std::vector<A> gl_buf(direct && a.gl ? 0 : B * D), gx_buf(direct && a.gx ? 0 : B * D);
  A* gl = direct && a.gl ? static_cast<A*>(a.gl) : gl_buf.data();
  A* gx = direct && a.gx ? static_cast<A*>(a.gx) : gx_buf.data();
  const int64_t tiles = (D + kDT - 1) / kDT;
#pragma omp parallel num_threads(nt)
  {
    std::vector<A> rows(int64_t(kDT) * Hp);
#pragma omp for schedule(static, 1)
    for (int64_t i = 0; i < tiles; ++i) {
      const int64_t d0 = i * kDT;
      const int dt = int(std::min<int64_t>(kDT, D - d0));
      if constexpr (std::is_same<A, float>::value)
        backward_tile_f32(p, g.data(), gs.data(), gsum.data(), d0, dt, gl, gx, rows.data());
      else backward_tile_f64(p, g.data(), gs.data(), gsum.data(), d0, dt, gl, gx, rows.data());
      if (a.gw)
        for (int k = 0; k < dt; ++k) store_run<A, S>(&rows[k * Hp], a.gw, (d0 + k) * H, H);
    }
  }
  if (!direct) {
    if (a.gl) store_run<A, S>(gl, a.gl, 0, B * D);
    if (a.gx) store_run<A, S>(gx, a.gx, 0, B * D);
  }
}

}  // namespace

void forward_cpu(const Args& a, int num_threads) {
  visit_dtype<Half, BFloat16>(a.dtype, "bernoulli_flip cpu kernels",
                              [&](auto t) { forward<decltype(t)>(a, num_threads); });
}
void backward_cpu(const Args& a, int num_threads) {
  visit_dtype<Half, BFloat16>(a.dtype, "bernoulli_flip cpu kernels",
                              [&](auto t) { backward<decltype(t)>(a, num_threads); });
}

}  // namespace bernoulli_flip
}  // namespace dqk
