// Per-element math of the coupling ops, shared by the CPU (g++) and CUDA (nvcc) builds.
// docs/INTERNALS.md ("Coupling kernels") states every formula used here.
#pragma once

#include <float.h>

#include "../common/macros.h"

// Force inlining on the host too: the CPU's vectorised callers are compiled once per
// target (AVX-512, AVX2, baseline), and an out-of-line copy would be baseline code.
#if defined(__CUDACC__)
#define DQK_HDI __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define DQK_HDI inline __attribute__((always_inline))
#else
#define DQK_HDI inline
#endif

namespace dqk {
namespace coupling {

template <typename Acc>
struct Limits;
template <>
struct Limits<float> {
  static DQK_HD float eps() { return FLT_EPSILON; }
  static DQK_HD float inf() { return INFINITY; }
};
template <>
struct Limits<double> {
  static DQK_HD double eps() { return DBL_EPSILON; }
  static DQK_HD double inf() { return double(INFINITY); }
};

// ----------------------------------------------------------------------------- affine

constexpr double kScaleOffset = 2.0;

// log sigmoid(v), sigmoid(v) and sigmoid(-v) for v = scale_logit + 2
template <typename Acc>
struct AffineScale {
  Acc log_s, s, one_minus_s;
};
template <typename Acc>
DQK_HD AffineScale<Acc> affine_scale(Acc logit) {
  const Acc v = logit + Acc(kScaleOffset);
  const Acc e = m_exp(-m_abs(v));
  const Acc inv = Acc(1) / (Acc(1) + e);
  AffineScale<Acc> r;
  r.log_s = m_min(v, Acc(0)) - m_log1p(e);
  r.s = v >= Acc(0) ? inv : e * inv;
  r.one_minus_s = v >= Acc(0) ? e * inv : inv;
  return r;
}

// ----------------------------------------------------------------------------- mixture

// Online log-sum-exp: one exp per term; -inf terms are skipped, NaN propagates.
template <typename Acc>
struct Lse {
  Acc m = -Limits<Acc>::inf(), s = Acc(0);
  DQK_HD void add(Acc v) {
    if (v > m) {
      s = s * m_exp(m - v) + Acc(1);
      m = v;
    } else if (v > -Limits<Acc>::inf()) {
      s += m_exp(v - m);
    } else if (v != v) {
      s = v;
    }
  }
  DQK_HD Acc value() const { return m + m_log(s); }
};

// One component at x: z, 1/scale, e = exp(-|z|) and the two log-sigmoids.
template <typename Acc>
struct Comp {
  Acc z, inv_s, e, lsz, lsnz;
};
template <typename Acc>
DQK_HD Comp<Acc> component(Acc x, Acc mean, Acc log_scale) {
  Comp<Acc> c;
  c.inv_s = m_exp(-log_scale);
  c.z = (x - mean) * c.inv_s;
  c.e = m_exp(-m_abs(c.z));
  const Acc l1 = m_log1p(c.e);
  c.lsz = m_min(c.z, Acc(0)) - l1;
  c.lsnz = m_min(-c.z, Acc(0)) - l1;
  return c;
}

// Online log-sum-exp of v_k together with sum_k w_k exp(v_k) on the same running shift.
template <typename Acc>
struct Lse2 {
  Acc m = -Limits<Acc>::inf(), s = Acc(0), t = Acc(0);
  DQK_HD void add(Acc v, Acc w) {
    if (v > m) {
      const Acc c = m_exp(m - v);
      s = s * c + Acc(1);
      t = t * c + w;
      m = v;
    } else if (v > -Limits<Acc>::inf()) {
      const Acc ev = m_exp(v - m);
      s += ev;
      t += w * ev;
    } else if (v != v) {
      s = v;
      t = v;
    }
  }
  DQK_HD Acc value() const { return m + m_log(s); }
};

// The log-sum-exps at x (raw logits: each carries + N, N = logsumexp(logits)):
// lF = log F + N, l1F = log(1 - F) + N, and dl = log F' - log F - log(1 - F) - N, so
// that l = dl + N. F' = sum_k w_k sigmoid(z_k) sigmoid(-z_k) / scale_k is formed on the
// side of the larger of F and 1 - F, as that side's sum weighted by sigmoid(-+z)/scale:
// log F' - log(larger) then carries no cancellation of |z| far in the tails.
template <typename Acc>
struct MixLogs {
  Acc lF, l1F, dl;
  DQK_HD Acc ldF() const { return dl + lF + l1F; }  // log F' + N (for posteriors)
};

// load(k, &logit, &mean, &log_scale)
template <typename Acc, typename Load>
DQK_HD MixLogs<Acc> mix_logs(Acc x, int64_t K, Load load) {
  Lse2<Acc> f, f1;
  for (int64_t k = 0; k < K; ++k) {
    Acc lg, mu, ls;
    load(k, &lg, &mu, &ls);
    const Comp<Acc> c = component(x, mu, ls);
    const Acc inv = Acc(1) / (Acc(1) + c.e);
    const Acc sz = c.z >= Acc(0) ? inv : c.e * inv;
    const Acc snz = c.z >= Acc(0) ? c.e * inv : inv;
    f.add(lg + c.lsz, snz * c.inv_s);
    f1.add(lg + c.lsnz, sz * c.inv_s);
  }
  MixLogs<Acc> L;
  L.lF = f.value();
  L.l1F = f1.value();
  L.dl = L.lF >= L.l1F ? m_log(f1.t / f1.s) - L.lF : m_log(f.t / f.s) - L.l1F;
  return L;
}

template <typename Acc, typename Load>
DQK_HD Acc logits_lse(int64_t K, Load load) {
  Lse<Acc> n;
  for (int64_t k = 0; k < K; ++k) {
    Acc lg, mu, ls;
    load(k, &lg, &mu, &ls);
    n.add(lg);
  }
  return n.value();
}

// Safeguarded Newton for g(x) = t inside [lo, hi] from x. eval(x, &g, &g_x, &scale)
// gives g = logit F(x), its derivative and the magnitude of the terms g was formed from
// (its rounding level is eps * scale). Stops when the residual is at rounding level, or
// the step or the bracket is below 16 ulps of x; bisects whenever a Newton step leaves
// the bracket (or is not finite). Always terminates within max_iter evaluations.
template <typename Acc, typename Eval>
DQK_HDI Acc solve_root(Acc t, Acc lo, Acc hi, Acc x, Eval eval, int max_iter) {
  const Acc eps = Limits<Acc>::eps();
  for (int it = 0; it < max_iter; ++it) {
    Acc g, gx, scale;
    eval(x, &g, &gx, &scale);
    const Acc f = g - t;
    if (f != f) return f;
    if (m_abs(f) <= Acc(4) * eps * (Acc(1) + scale)) return x;
    if (f < Acc(0)) lo = x;
    else hi = x;
    Acc xn = x - f / gx;
    if (!(xn > lo && xn < hi)) xn = lo + Acc(0.5) * (hi - lo);
    const Acc tol = Acc(16) * eps * (Acc(1) + m_abs(x));
    if (m_abs(xn - x) <= tol || hi - lo <= tol) return xn;
    x = xn;
  }
  return x;
}

constexpr int kMaxIter = 100;

// Bracket [lo, hi] and start (weighted mean of the per-component roots) for t.
template <typename Acc, typename Load>
DQK_HD void bracket(Acc t, Acc N, int64_t K, Load load, Acc* lo, Acc* hi, Acc* start) {
  Acc l = Limits<Acc>::inf(), h = -Limits<Acc>::inf(), s = Acc(0);
  for (int64_t k = 0; k < K; ++k) {
    Acc lg, mu, ls;
    load(k, &lg, &mu, &ls);
    const Acc xk = mu + m_exp(ls) * t;
    l = m_min(l, xk);
    h = m_max(h, xk);
    s += m_exp(lg - N) * xk;
  }
  *lo = l;
  *hi = h;
  *start = m_min(m_max(s, l), h);
}

// Scalar (online) element kernels, used by CUDA and by the CPU for float64 and large K.

// forward: writes y, returns the element's log dy/dx (l + a)
template <typename Acc, typename Load>
DQK_HD Acc mix_forward(Acc x, Acc a, Acc b, int64_t K, Load load, Acc* y) {
  const MixLogs<Acc> L = mix_logs(x, K, load);
  const Acc N = logits_lse<Acc>(K, load);
  *y = (L.lF - L.l1F) * m_exp(a) + b;
  return L.dl + N + a;
}

// inverse: writes x, returns the inverse's log dx/dy at it (-(l + a))
template <typename Acc, typename Load>
DQK_HD Acc mix_inverse(Acc y, Acc a, Acc b, int64_t K, Load load, Acc* x_out) {
  const Acc N = logits_lse<Acc>(K, load);
  const Acc t = (y - b) * m_exp(-a);
  Acc lo, hi, x0;
  bracket(t, N, K, load, &lo, &hi, &x0);
  auto eval = [&](Acc x, Acc* g, Acc* gx, Acc* scale) {
    const MixLogs<Acc> L = mix_logs(x, K, load);
    *g = L.lF - L.l1F;
    *gx = m_exp(L.dl + N);
    *scale = m_abs(L.lF) + m_abs(L.l1F);
  };
  const Acc x = solve_root(t, lo, hi, x0, eval, kMaxIter);
  *x_out = x;
  const MixLogs<Acc> L = mix_logs(x, K, load);
  return -(L.dl + N + a);
}

// Per-component backward quantities at x given the log-sum-exps (INTERNALS.md).
template <typename Acc>
struct CompGrad {
  Acc z, inv_s, p, q, r, w, A, Bk;
};
template <typename Acc>
DQK_HD CompGrad<Acc> comp_grad(Acc x, Acc lg, Acc mu, Acc ls, const MixLogs<Acc>& L, Acc N) {
  const Comp<Acc> c = component(x, mu, ls);
  CompGrad<Acc> r;
  r.z = c.z;
  r.inv_s = c.inv_s;
  r.p = m_exp(lg + c.lsz - L.lF);
  r.q = m_exp(lg + c.lsnz - L.l1F);
  r.r = m_exp(lg + c.lsz + c.lsnz - ls - L.ldF());
  r.w = m_exp(lg - N);
  const Acc inv = Acc(1) / (Acc(1) + c.e);
  const Acc sz = c.z >= Acc(0) ? inv : c.e * inv;
  const Acc snz = c.z >= Acc(0) ? c.e * inv : inv;
  r.A = r.p * snz + r.q * sz;
  r.Bk = r.r * (snz - sz) - r.p * snz + r.q * sz;
  return r;
}

// Upstreams (Gg of g, Gl of l) and the element gradients of the backward.
template <typename Acc>
struct ElemGrad {
  Acc Gg, Gl, d_in, d_a, d_b;
};

// The upstreams of g and l and the element gradients (INTERNALS.md), given l_x for the
// inverse. For the forward, d_in = Gg g_x + Gl l_x is left to the caller, whose sweep
// over the components forms l_x together with the component gradients.
template <typename Acc>
DQK_HDI ElemGrad<Acc> elem_grad(bool inverse, Acc gout, Acc gld, Acc lx, Acc g, Acc g_x, Acc ea) {
  ElemGrad<Acc> e;
  if (inverse) {
    const Acc total = gout - gld * lx;
    e.Gg = -total / g_x;
    e.Gl = -gld;
    e.d_in = -e.Gg / ea;
    e.d_b = e.Gg / ea;
  } else {
    e.Gg = gout * ea;
    e.Gl = gld;
    e.d_in = Acc(0);
    e.d_b = gout;
  }
  e.d_a = e.Gg * g + e.Gl;
  return e;
}

// Scalar backward of one element. gout: upstream of the output (y, or the root x for
// the inverse); gld: upstream of the logdet of this element's batch row.
// store(k, d_logit, d_mean, d_log_scale) writes component k's gradients.
template <typename Acc, typename Load, typename Store>
DQK_HD ElemGrad<Acc> mix_backward(Acc x, Acc a, int64_t K, Load load, Acc gout, Acc gld,
                                  bool inverse, Store store) {
  const MixLogs<Acc> L = mix_logs(x, K, load);
  const Acc N = logits_lse<Acc>(K, load);
  const Acc g = L.lF - L.l1F;
  const Acc g_x = m_exp(L.dl + N);
  const Acc ea = m_exp(a);
  Acc lx = Acc(0);
  if (inverse) {  // the upstream of g needs l_x first: one more sweep over k
    for (int64_t k = 0; k < K; ++k) {
      Acc lg, mu, ls;
      load(k, &lg, &mu, &ls);
      const CompGrad<Acc> c = comp_grad(x, lg, mu, ls, L, N);
      lx += c.Bk * c.inv_s;
    }
  }
  ElemGrad<Acc> e = elem_grad(inverse, gout, gld, lx, g, g_x, ea);
  Acc lx_fwd = Acc(0);
  for (int64_t k = 0; k < K; ++k) {
    Acc lg, mu, ls;
    load(k, &lg, &mu, &ls);
    const CompGrad<Acc> c = comp_grad(x, lg, mu, ls, L, N);
    lx_fwd += c.Bk * c.inv_s;
    const Acc dz = e.Gg * c.A + e.Gl * c.Bk;
    store(k, e.Gg * (c.p - c.q) + e.Gl * (c.r - c.p - c.q + c.w), -dz * c.inv_s,
          -dz * c.z - e.Gl * c.r);
  }
  if (!inverse) e.d_in = e.Gg * g_x + e.Gl * lx_fwd;
  return e;
}

}  // namespace coupling
}  // namespace dqk
