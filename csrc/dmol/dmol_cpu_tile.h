// Vectorised CPU path of the dmol ops for float32 accumulation (fp32/fp16/bf16 storage).
// A tile is kLanes neighbouring pixels along the innermost spatial dimension; every inner
// loop runs over the lanes (`#pragma omp simd`) with the branch-free math of
// cpu_vecmath.h, so one component-channel of 16 pixels is evaluated per vector sweep.
// Math as in dmol_math.h / the reference; the backward keeps per-component partials in a
// per-thread workspace instead of recomputing them.
#pragma once

#include <vector>

#include "../common/cpu_types.h"
#include "../common/cpu_vecmath.h"
#include "dmol_math.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DQK_ALWAYS_INLINE inline
#endif

namespace dqk {
namespace dmol {
namespace tile {

constexpr int kLanes = 16;
constexpr int64_t kMaxM = kMaxCached;

// One strided tensor seen from a tile: channel i of lane j lives at base[i*sc + j*sl].
template <typename S>
struct In {
  const S* base;
  int64_t sc, sl;
  int n;
  DQK_ALWAYS_INLINE void load(int64_t i, float* out) const {
    const S* p = base + i * sc;
    if (sl == 1) {
      for (int j = 0; j < n; ++j) out[j] = Scalar<S>::load(p + j);
    } else {
      for (int j = 0; j < n; ++j) out[j] = Scalar<S>::load(p + j * sl);
    }
    for (int j = n; j < kLanes; ++j) out[j] = 0.0f;
  }
};

template <typename S>
struct Out {
  S* base;
  int64_t sc, sl;
  int n;
  DQK_ALWAYS_INLINE void store(int64_t i, const float* v) const {
    S* p = base + i * sc;
    if (sl == 1) {
      for (int j = 0; j < n; ++j) Scalar<S>::store(p + j, v[j]);
    } else {
      for (int j = 0; j < n; ++j) Scalar<S>::store(p + j * sl, v[j]);
    }
  }
};

// Per-thread scratch: logits and per-component log-joint values, and (backward) the
// partials of every component and channel.
struct Work {
  std::vector<float> mem;
  float *logit, *el, *v, *dmean, *dlogs, *pass, *tanh_r;
  explicit Work(int64_t M) : mem(size_t(M) * kLanes * 15) {
    float* p = mem.data();
    logit = p;
    p += M * kLanes;
    el = p;
    p += M * kLanes;
    v = p;
    p += M * kLanes;
    dmean = p;
    p += M * 3 * kLanes;
    dlogs = p;
    p += M * 3 * kLanes;
    pass = p;
    p += M * 3 * kLanes;
    tanh_r = p;
  }
};

struct TileState {
  float xs[3][kLanes];
  float low[3][kLanes], high[3][kLanes];  // 1.0 where the level is the lowest / highest
  float lmax[kLanes], logz[kLanes];
  float inv_z[kLanes];  // 1 / sum_m exp(logit_m - lmax)
};

template <typename S>
DQK_ALWAYS_INLINE void tile_state(const Geometry& g, const In<S>& P, const In<S>& X, Work& w,
                                  TileState& st) {
  const float half = float(g.L - 1) * 0.5f, top = float(g.L - 1);
  float tmp[kLanes];
  for (int64_t c = 0; c < g.C; ++c) {
    X.load(c, tmp);
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      float t = (tmp[j] + 1.0f) * half;
      t = vm::sel(t < 0.0f, 0.0f, vm::sel(t > top, top, t));
      t = (t + 8388608.0f) - 8388608.0f;  // round half to even (t < 2^23)
      st.xs[c][j] = t / half - 1.0f;      // NaN stays NaN
      st.low[c][j] = vm::sel(t == 0.0f, 1.0f, 0.0f);
      st.high[c][j] = vm::sel(t == top, 1.0f, 0.0f);
    }
  }
  float* lmax = st.lmax;
  for (int j = 0; j < kLanes; ++j) lmax[j] = -vm::kInf;
  for (int64_t m = 0; m < g.M; ++m) {
    float* l = w.logit + m * kLanes;
    P.load(m, l);
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) lmax[j] = vm::sel(l[j] > lmax[j], l[j], lmax[j]);
  }
  float z[kLanes] = {0};
  for (int64_t m = 0; m < g.M; ++m) {
    const float* l = w.logit + m * kLanes;
    float* el = w.el + m * kLanes;  // exp(logit - lmax), kept for the mixture weights
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      el[j] = vm::exp(l[j] - lmax[j]);
      z[j] += el[j];
    }
  }
#pragma omp simd
  for (int j = 0; j < kLanes; ++j) {
    st.logz[j] = vm::log(z[j]);
    st.inv_z[j] = 1.0f / z[j];
  }
}

// v[m] = (logit_m - lmax) + sum_c log P(x_c | m) for all lanes; with kGrad also the
// partials d lp / d mean, d lp / d log_scale, the clamp pass mask and tanh(r).
template <bool kGrad, typename S>
DQK_ALWAYS_INLINE void tile_component(const Geometry& g, const In<S>& P, const TileState& st,
                                      float mls, int64_t m, Work& w) {
  const float d = 1.0f / float(g.L - 1);
  const float two_d = 2.0f * d;
  const float log_two_d = logf(two_d);
  float* v = w.v + m * kLanes;
  const float* l = w.logit + m * kLanes;
  for (int j = 0; j < kLanes; ++j) v[j] = l[j] - st.lmax[j];
  float tr[3][kLanes];
  if (g.C == 3) {
    float raw[kLanes];
    for (int64_t c = 0; c < 3; ++c) {
      P.load(coef_ch(g, c, m), raw);
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) tr[c][j] = vm::tanh(raw[j]);
    }
  }
  for (int64_t c = 0; c < g.C; ++c) {
    float mean[kLanes], raw[kLanes];
    P.load(mean_ch(g, c, m), mean);
    P.load(logs_ch(g, c, m), raw);
    const float* xs = st.xs[c];
    const float* low = st.low[c];
    const float* high = st.high[c];
    float* dmean = w.dmean + (m * 3 + c) * kLanes;
    float* dlogs = w.dlogs + (m * 3 + c) * kLanes;
    float* pass = w.pass + (m * 3 + c) * kLanes;
    if (g.C == 3 && c == 1) {
      for (int j = 0; j < kLanes; ++j) mean[j] += tr[0][j] * st.xs[0][j];
    } else if (g.C == 3 && c == 2) {
      for (int j = 0; j < kLanes; ++j) mean[j] += tr[1][j] * st.xs[0][j] + tr[2][j] * st.xs[1][j];
    }
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const float mu = mean[j];
      const float ls = vm::sel(raw[j] < mls, mls, raw[j]);
      const float inv_s = vm::exp(-ls);
      const float cc = xs[j] - mu;
      const float a = (cc + d) * inv_s;
      const float b = (cc - d) * inv_s;
      // softplus(-a) = max(-a, 0) + log1p(ea), softplus(b) = max(b, 0) + log1p(eb); the
      // interior needs their sum, whose log1p terms merge into log1p(ea + eb + ea*eb):
      // one log serves every bin kind
      const float ea = vm::exp(-vm::absf(a)), eb = vm::exp(-vm::absf(b));
      const float la = vm::maxf(-a, 0.0f), lb = vm::maxf(b, 0.0f);
      const bool lo = low[j] != 0.0f, hi = high[j] != 0.0f;
      const float arg = vm::sel(lo, ea, vm::sel(hi, eb, ea + eb + ea * eb));
      const float lin = vm::sel(lo, la, vm::sel(hi, lb, la + lb));
      const float delta = two_d * inv_s;
      float u;
      const float om = vm::one_minus_exp_neg(delta, &u);
      const float l1me = vm::sel(delta < 1e-30f, log_two_d - ls, vm::log(om));
      const float lp = -(lin + vm::log1p(arg)) + vm::sel(lo || hi, 0.0f, l1me);
      v[j] += lp;
      if (kGrad) {
        const float sa = vm::sigmoid_from(-a, ea);  // exp(-|-a|) == ea
        const float sb = vm::sigmoid_from(b, eb);
        const float ratio = vm::sel(delta > 0.0f, delta * u / vm::sel(om > 0.0f, om, 1.0f), 1.0f);
        dmean[j] = vm::sel(lo, -sa, vm::sel(hi, sb, sb - sa)) * inv_s;
        dlogs[j] = vm::sel(lo, -a * sa, vm::sel(hi, b * sb, -a * sa + b * sb - ratio));
        pass[j] = vm::sel(raw[j] >= mls, 1.0f, 0.0f);
      }
    }
  }
  if (kGrad && g.C == 3) {
    for (int64_t c = 0; c < 3; ++c)
      for (int j = 0; j < kLanes; ++j) w.tanh_r[(m * 3 + c) * kLanes + j] = tr[c][j];
  }
}

// max and sum of exp over the components' v, lane-wise; v is overwritten by exp(v - vmax)
DQK_ALWAYS_INLINE void tile_lse(const Geometry& g, Work& w, float* vmax, float* vsum) {
  for (int j = 0; j < kLanes; ++j) {
    vmax[j] = -vm::kInf;
    vsum[j] = 0.0f;
  }
  for (int64_t m = 0; m < g.M; ++m) {
    const float* v = w.v + m * kLanes;
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) vmax[j] = vm::sel(v[j] > vmax[j], v[j], vmax[j]);
  }
  for (int64_t m = 0; m < g.M; ++m) {
    float* v = w.v + m * kLanes;
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      v[j] = vm::exp(v[j] - vmax[j]);
      vsum[j] += v[j];
    }
  }
}

template <typename S>
DQK_ALWAYS_INLINE void tile_forward(const Geometry& g, const In<S>& P, const In<S>& X, float mls,
                                    Work& w, float* nll) {
  TileState st;
  tile_state(g, P, X, w, st);
  for (int64_t m = 0; m < g.M; ++m) tile_component<false>(g, P, st, mls, m, w);
  float vmax[kLanes], vsum[kLanes];
  tile_lse(g, w, vmax, vsum);
#pragma omp simd
  for (int j = 0; j < kLanes; ++j) nll[j] = st.logz[j] - (vmax[j] + vm::log(vsum[j]));
}

template <typename S>
DQK_ALWAYS_INLINE void tile_backward(const Geometry& g, const In<S>& P, const In<S>& X,
                                     const float* gout, float mls, Work& w, const Out<S>& G,
                                     float* nll /* nullable: also write the NLL */) {
  TileState st;
  tile_state(g, P, X, w, st);
  for (int64_t m = 0; m < g.M; ++m) tile_component<true>(g, P, st, mls, m, w);
  float vmax[kLanes], vsum[kLanes];
  tile_lse(g, w, vmax, vsum);
  if (nll != nullptr) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) nll[j] = st.logz[j] - (vmax[j] + vm::log(vsum[j]));
  }
  float out[kLanes], coef[kLanes], gmean[3][kLanes], inv_vsum[kLanes];
  for (int j = 0; j < kLanes; ++j) inv_vsum[j] = 1.0f / vsum[j];
  for (int64_t m = 0; m < g.M; ++m) {
    const float* el = w.el + m * kLanes;
    const float* ev = w.v + m * kLanes;  // exp(v - vmax) after tile_lse
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) {
      const float pi = el[j] * st.inv_z[j];
      const float wt = ev[j] * inv_vsum[j];  // posterior of component m
      out[j] = gout[j] * (pi - wt);
      coef[j] = -gout[j] * wt;
    }
    G.store(m, out);
    for (int64_t c = 0; c < g.C; ++c) {
      const float* dm = w.dmean + (m * 3 + c) * kLanes;
      const float* dl = w.dlogs + (m * 3 + c) * kLanes;
      const float* ps = w.pass + (m * 3 + c) * kLanes;
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) {
        gmean[c][j] = coef[j] * dm[j];
        out[j] = vm::sel(ps[j] != 0.0f, coef[j] * dl[j], 0.0f);
      }
      G.store(mean_ch(g, c, m), gmean[c]);
      G.store(logs_ch(g, c, m), out);
    }
    if (g.C == 3) {
      const float* t = w.tanh_r + m * 3 * kLanes;
      const float* x0 = st.xs[0];
      const float* x1 = st.xs[1];
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) out[j] = gmean[1][j] * (1.0f - t[j] * t[j]) * x0[j];
      G.store(coef_ch(g, 0, m), out);
#pragma omp simd
      for (int j = 0; j < kLanes; ++j)
        out[j] = gmean[2][j] * (1.0f - t[kLanes + j] * t[kLanes + j]) * x0[j];
      G.store(coef_ch(g, 1, m), out);
#pragma omp simd
      for (int j = 0; j < kLanes; ++j)
        out[j] = gmean[2][j] * (1.0f - t[2 * kLanes + j] * t[2 * kLanes + j]) * x1[j];
      G.store(coef_ch(g, 2, m), out);
    }
  }
}

}  // namespace tile
}  // namespace dmol
}  // namespace dqk
