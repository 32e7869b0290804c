// Per-pixel math of the discretized logistic mixture (PixelCNN++ likelihood), shared by
// the CPU and CUDA kernels. The definition is dqkernels/reference/dmol.py; the gradient
// formulas are in docs/INTERNALS.md.
//
// A pixel is seen through two accessors: `P(i)` returns params channel i and `X(c)` input
// channel c, both already converted to the accumulate type `Acc` (float or double).
#pragma once

#include "../common/macros.h"

namespace dqk {
namespace dmol {

struct Geometry {
  int64_t C;  // 1 or 3
  int64_t M;  // mixture components
  int64_t L;  // number of levels
  int64_t J;  // params per channel and component: 3 if C == 3 else 2
};

DQK_HD Geometry make_geometry(int64_t C, int64_t M, int64_t L) {
  return Geometry{C, M, L, C == 3 ? 3 : 2};
}

// Channel indices inside params (PixelCNN++ layout).
DQK_HD int64_t mean_ch(const Geometry& g, int64_t c, int64_t m) { return g.M + c * g.J * g.M + m; }
DQK_HD int64_t logs_ch(const Geometry& g, int64_t c, int64_t m) { return mean_ch(g, c, m) + g.M; }
DQK_HD int64_t coef_ch(const Geometry& g, int64_t c, int64_t m) {
  return mean_ch(g, c, m) + 2 * g.M;
}

// Snap x to the grid 2k/(L-1) - 1: level k (round half to even) and its exact value.
// NaN stays NaN (level 0, value NaN) so that it propagates to the result.
template <typename Acc>
DQK_HD void snap(Acc x, int64_t L, int64_t* k, Acc* xs) {
  const Acc half = Acc(L - 1) * Acc(0.5);
  Acc t = (x + Acc(1)) * half;
  if (m_isnan(t)) {
    *k = 0;
    *xs = t;
    return;
  }
  t = m_rint(m_min(m_max(t, Acc(0)), Acc(L - 1)));
  *k = int64_t(t);
  *xs = t / half - Acc(1);
}

// log(1 - exp(-delta)) for delta > 0; log_delta = log(delta) covers underflowed delta.
template <typename Acc>
DQK_HD Acc log1mexp(Acc delta, Acc log_delta) {
  const Acc ln2 = Acc(0.69314718055994530942);
  if (delta > ln2) return m_log1p(-m_exp(-delta));
  if (delta > Acc(1e-30)) return m_log(-m_expm1(-delta));
  return log_delta;
}

template <typename Acc>
struct Bin {
  Acc lp;     // log mass of the bin
  Acc dmean;  // d lp / d mean
  Acc dlogs;  // d lp / d log_scale (clamped value)
};

// Log mass of level k (value xs) under logistic(mean, exp(log_s)), log_s already clamped.
template <typename Acc, bool kGrad>
DQK_HD Bin<Acc> bin(int64_t k, int64_t L, Acc xs, Acc mean, Acc log_s) {
  const Acc d = Acc(1) / Acc(L - 1);
  const Acc inv_s = m_exp(-log_s);
  const Acc c = xs - mean;
  const Acc a = (c + d) * inv_s;
  const Acc b = (c - d) * inv_s;
  Bin<Acc> r{Acc(0), Acc(0), Acc(0)};
  if (k == 0) {
    r.lp = -softplus(-a);
    if (kGrad) {
      Acc sa = sigmoid(-a);
      r.dmean = -sa * inv_s;
      r.dlogs = -a * sa;
    }
  } else if (k == L - 1) {
    r.lp = -softplus(b);
    if (kGrad) {
      Acc sb = sigmoid(b);
      r.dmean = sb * inv_s;
      r.dlogs = b * sb;
    }
  } else {
    const Acc delta = Acc(2) * d * inv_s;             // a - b
    const Acc log_delta = m_log(Acc(2) * d) - log_s;  // used only where delta underflows
    r.lp = -softplus(-a) - softplus(b) + log1mexp(delta, log_delta);
    if (kGrad) {
      Acc sa = sigmoid(-a), sb = sigmoid(b);
      // delta / expm1(delta): 1 at delta -> 0, 0 once expm1 overflows
      Acc ratio = delta > Acc(0) ? (m_isinf(delta) ? Acc(0) : delta / m_expm1(delta)) : Acc(1);
      r.dmean = (sb - sa) * inv_s;
      r.dlogs = -a * sa + b * sb - ratio;
    }
  }
  return r;
}

// Everything about one pixel that does not depend on the mixture component.
template <typename Acc>
struct PixelState {
  int64_t k[3];
  Acc xs[3];
  Acc lmax;      // max logit
  Acc log_z_pi;  // log sum_m exp(logit_m - lmax)
};

template <typename Acc, typename PLoad, typename XLoad>
DQK_HD PixelState<Acc> pixel_state(const Geometry& g, PLoad P, XLoad X) {
  PixelState<Acc> s;
  for (int64_t c = 0; c < g.C; ++c) snap<Acc>(X(c), g.L, &s.k[c], &s.xs[c]);
  Acc lmax = P(0);
  for (int64_t m = 1; m < g.M; ++m) lmax = m_max(lmax, P(m));
  Acc z = Acc(0);
  for (int64_t m = 0; m < g.M; ++m) z += m_exp(P(m) - lmax);
  s.lmax = lmax;
  s.log_z_pi = m_log(z);
  return s;
}

// Per-component values of one pixel: log prob of its channels and, with kGrad, the
// partials and coupling factors the backward needs.
template <typename Acc, bool kGrad>
struct Component {
  Acc lp;
  Acc dmean[3], dlogs[3];
  bool logs_pass[3];  // clamp lets the gradient through
  Acc tanh_r[3];
};

template <typename Acc, bool kGrad, typename PLoad>
DQK_HD Component<Acc, kGrad> component(const Geometry& g, const PixelState<Acc>& s, PLoad P,
                                       int64_t m, Acc min_log_scale) {
  Component<Acc, kGrad> out;
  out.lp = Acc(0);
  if (g.C == 3) {
    for (int64_t c = 0; c < 3; ++c) out.tanh_r[c] = m_tanh(P(coef_ch(g, c, m)));
  }
  for (int64_t c = 0; c < g.C; ++c) {
    Acc mean = P(mean_ch(g, c, m));
    if (g.C == 3) {
      if (c == 1) mean += out.tanh_r[0] * s.xs[0];
      if (c == 2) mean += out.tanh_r[1] * s.xs[0] + out.tanh_r[2] * s.xs[1];
    }
    const Acc raw = P(logs_ch(g, c, m));
    const Acc log_s = m_max(raw, min_log_scale);
    Bin<Acc> r = bin<Acc, kGrad>(s.k[c], g.L, s.xs[c], mean, log_s);
    out.lp += r.lp;
    if (kGrad) {
      out.dmean[c] = r.dmean;
      out.dlogs[c] = r.dlogs;
      out.logs_pass[c] = raw >= min_log_scale;
    }
  }
  return out;
}

// Online logsumexp of v_m = (logit_m - lmax) + lp_m: the sum is vmax + log(vsum).
template <typename Acc>
struct Lse {
  Acc vmax, vsum;
  DQK_HD void add(Acc v) {
    if (v == -Acc(INFINITY)) return;  // a component with -inf logit adds nothing
    if (v > vmax) {
      vsum = vsum * m_exp(vmax - v) + Acc(1);
      vmax = v;
    } else {
      vsum += m_exp(v - vmax);  // NaN propagates through here
    }
  }
  DQK_HD Acc value() const { return vmax + m_log(vsum); }
  // exp(v - logsumexp) computed as exp(v - vmax) / vsum: exact for the dominant
  // component even when |v| is in the thousands (a far-off mean at a tiny scale)
  DQK_HD Acc weight(Acc v) const { return m_exp(v - vmax) / vsum; }
};

template <typename Acc, typename PLoad>
DQK_HD Lse<Acc> log_joint(const Geometry& g, const PixelState<Acc>& s, PLoad P, Acc min_log_scale) {
  Lse<Acc> lse{-Acc(INFINITY), Acc(0)};
  for (int64_t m = 0; m < g.M; ++m)
    lse.add((P(m) - s.lmax) + component<Acc, false>(g, s, P, m, min_log_scale).lp);
  return lse;
}

// NLL of one pixel in nats.
template <typename Acc, typename PLoad, typename XLoad>
DQK_HD Acc pixel_nll(const Geometry& g, PLoad P, XLoad X, Acc min_log_scale) {
  PixelState<Acc> s = pixel_state<Acc>(g, P, X);
  return s.log_z_pi - log_joint<Acc>(g, s, P, min_log_scale).value();
}

// Gradient of grad_out * NLL with respect to every params channel of one pixel, written
// through `G(i, value)`. With kCache (and M <= kMaxCached) the per-component values of the
// logsumexp pass are kept in a local array instead of being computed twice: the CPU
// kernels use it; on GPUs the recomputation from cache is cheaper than local memory.
constexpr int64_t kMaxCached = 64;

template <typename Acc, typename GStore>
DQK_HD void write_component_grad(const Geometry& g, const PixelState<Acc>& s,
                                 const Component<Acc, true>& q, Acc l, int64_t m,
                                 const Lse<Acc>& lse, Acc grad_out, GStore& G) {
  const Acc pi = m_exp(l - s.log_z_pi);
  const Acc w = lse.weight(l + q.lp);  // posterior of component m
  G(m, grad_out * (pi - w));
  const Acc coef = -grad_out * w;
  Acc gmean[3];
  for (int64_t c = 0; c < g.C; ++c) {
    gmean[c] = coef * q.dmean[c];
    G(mean_ch(g, c, m), gmean[c]);
    G(logs_ch(g, c, m), q.logs_pass[c] ? coef * q.dlogs[c] : Acc(0));
  }
  if (g.C == 3) {
    const Acc t0 = q.tanh_r[0], t1 = q.tanh_r[1], t2 = q.tanh_r[2];
    G(coef_ch(g, 0, m), gmean[1] * (Acc(1) - t0 * t0) * s.xs[0]);
    G(coef_ch(g, 1, m), gmean[2] * (Acc(1) - t1 * t1) * s.xs[0]);
    G(coef_ch(g, 2, m), gmean[2] * (Acc(1) - t2 * t2) * s.xs[1]);
  }
}

template <typename Acc, bool kCache, typename PLoad, typename XLoad, typename GStore>
DQK_HD void pixel_nll_backward(const Geometry& g, PLoad P, XLoad X, Acc grad_out, Acc min_log_scale,
                               GStore G) {
  PixelState<Acc> s = pixel_state<Acc>(g, P, X);
  if (kCache && g.M <= kMaxCached) {
    Component<Acc, true> cache[kMaxCached];
    Lse<Acc> lse{-Acc(INFINITY), Acc(0)};
    for (int64_t m = 0; m < g.M; ++m) {
      cache[m] = component<Acc, true>(g, s, P, m, min_log_scale);
      lse.add((P(m) - s.lmax) + cache[m].lp);
    }
    for (int64_t m = 0; m < g.M; ++m)
      write_component_grad<Acc>(g, s, cache[m], P(m) - s.lmax, m, lse, grad_out, G);
    return;
  }
  const Lse<Acc> lse = log_joint<Acc>(g, s, P, min_log_scale);
  for (int64_t m = 0; m < g.M; ++m) {
    write_component_grad<Acc>(g, s, component<Acc, true>(g, s, P, m, min_log_scale), P(m) - s.lmax,
                              m, lse, grad_out, G);
  }
}

// One draw for one pixel from uniforms U(0) (component) and U(1 + c) (channel c), written
// as grid values through `S(c, value)`.
template <typename Acc, typename PLoad, typename ULoad, typename SStore>
DQK_HD void pixel_sample(const Geometry& g, PLoad P, ULoad U, Acc min_log_scale, SStore S) {
  Acc lmax = P(0);
  for (int64_t m = 1; m < g.M; ++m) lmax = m_max(lmax, P(m));
  Acc total = Acc(0);
  for (int64_t m = 0; m < g.M; ++m) total += m_exp(P(m) - lmax);
  const Acc target = U(0) * total;
  int64_t sel = g.M - 1;
  Acc cum = Acc(0);
  for (int64_t m = 0; m < g.M; ++m) {
    cum += m_exp(P(m) - lmax);
    if (cum > target) {
      sel = m;
      break;
    }
  }
  const Acc half = Acc(g.L - 1) * Acc(0.5);
  Acc xs[3];
  for (int64_t c = 0; c < g.C; ++c) {
    Acc mean = P(mean_ch(g, c, sel));
    if (g.C == 3 && c >= 1) {
      if (c == 1) mean += m_tanh(P(coef_ch(g, 0, sel))) * xs[0];
      if (c == 2)
        mean += m_tanh(P(coef_ch(g, 1, sel))) * xs[0] + m_tanh(P(coef_ch(g, 2, sel))) * xs[1];
    }
    const Acc log_s = m_max(P(logs_ch(g, c, sel)), min_log_scale);
    const Acc u = U(1 + c);
    const Acc y = mean + m_exp(log_s) * (m_log(u) - m_log1p(-u));
    Acc t = (y + Acc(1)) * half;
    if (!m_isnan(t)) t = m_rint(m_min(m_max(t, Acc(0)), Acc(g.L - 1)));
    xs[c] = t / half - Acc(1);
    S(c, xs[c]);
  }
}

}  // namespace dmol
}  // namespace dqk
