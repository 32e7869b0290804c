// CPU kernels of the coupling ops. Work is split into fixed pieces of one row
// (b, i1, i2) of n3 elements, independent of the thread count, and logdet partial sums
// are added per batch element in a fixed order: results are deterministic.
//
// float32-accumulated mixtures with K <= kVecK evaluate each element with loops over the
// components that vectorise (`#pragma omp simd` with the branch-free math of
// csrc/common/cpu_vecmath.h), compiled for AVX-512, AVX2 and baseline x86-64 and picked
// at load time; float64 and larger K use the scalar math of coupling_math.h, which is
// also what the CUDA kernels run.
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/cpu_convert.h"
#include "../common/cpu_types.h"
#include "../common/cpu_vecmath.h"
#include "../common/macros.h"
#include "coupling.h"
#include "coupling_math.h"

namespace dqk {
namespace coupling {
namespace {

constexpr int kVecK = 128;
constexpr int kLanes = 16;  // components per vector step (kVecK is a multiple)

// A piece of work: elements [j0, j1) of row (b, i1, i2).
struct Piece {
  int64_t b, i1, i2, j0, j1;
};

struct Pieces {
  int64_t rows_per_b, per_row, chunk, count;
  const Args* a;
  Piece operator[](int64_t n) const {
    const int64_t row = n / per_row, c = n - row * per_row;
    const int64_t b = row / rows_per_b, r = row - b * rows_per_b;
    const int64_t i1 = r / a->n2, i2 = r - i1 * a->n2;
    const int64_t j0 = c * chunk;
    const int64_t j1 = j0 + chunk < a->n3 ? j0 + chunk : a->n3;
    return Piece{b, i1, i2, j0, j1};
  }
};

Pieces pieces(const Args& a, int64_t chunk) {
  Pieces p;
  p.a = &a;
  p.rows_per_b = a.n1 * a.n2;
  p.chunk = chunk;
  p.per_row = (a.n3 + chunk - 1) / chunk;
  p.count = a.B * p.rows_per_b * p.per_row;
  return p;
}

inline int64_t off(const T& t, const Piece& q, int64_t j) {
  return q.b * t.st[0] + q.i1 * t.st[1] + q.i2 * t.st[2] + j * t.st[3];
}

template <typename S>
S* ptr(const Args& a, int slot) {
  return static_cast<S*>(a.t[slot].p);
}

// logdet[b] = sum of the partials of b's pieces, in order
template <typename Acc>
void reduce_logdet(const Args& a, const Pieces& ps, const std::vector<Acc>& part) {
  Acc* ld = ptr<Acc>(a, kLogdet);
  const int64_t per_b = ps.count / a.B;
  for (int64_t b = 0; b < a.B; ++b) {
    Acc s = Acc(0);
    for (int64_t i = 0; i < per_b; ++i) s += part[b * per_b + i];
    ld[b * a.t[kLogdet].st[0]] = s;
  }
}

template <typename Acc>
Acc grad_logdet(const Args& a, int64_t b) {
  return ptr<Acc>(a, kGradLogdet)[b * a.t[kGradLogdet].st[0]];
}

// ----------------------------------------------------------------------------- affine

// Contiguous float rows: vectorised (one loop per direction: no control flow inside).
template <bool kInverse>
DQK_VM float affine_row_f32_dir(const float* x, const float* sh, const float* lo, float* y,
                                int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float v = lo[j] + 2.0f;
    const float e = vm::exp(-vm::absf(v));
    const float s = vm::sigmoid_from(v, e);
    sum += vm::minf(v, 0.0f) - vm::log1p(e);
    y[j] = kInverse ? x[j] / s - sh[j] : (x[j] + sh[j]) * s;
  }
  return kInverse ? -sum : sum;
}

DQK_CPU_CLONES float affine_row_f32(const float* x, const float* sh, const float* lo, float* y,
                                    int64_t n, bool inverse) {
  return inverse ? affine_row_f32_dir<true>(x, sh, lo, y, n)
                 : affine_row_f32_dir<false>(x, sh, lo, y, n);
}

// kBroadcast: grad_y has stride 0 along the row (e.g. the gradient of y.sum())
template <bool kInverse, bool kBroadcast>
DQK_VM void affine_row_backward_f32_dir(const float* x, const float* sh, const float* lo,
                                        const float* gyp, float gld, float* gx, float* gs,
                                        float* gl, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float g = kBroadcast ? gyp[0] : gyp[j];
    const float v = lo[j] + 2.0f;
    const float e = vm::exp(-vm::absf(v));
    const float inv = 1.0f / (1.0f + e);
    const float s = vm::sel(v >= 0.0f, inv, e * inv);
    const float oms = vm::sel(v >= 0.0f, e * inv, inv);
    if (kInverse) {
      gx[j] = g / s;
      gs[j] = -g;
      gl[j] = -(g * x[j] / s + gld) * oms;
    } else {
      gx[j] = g * s;
      gs[j] = g * s;
      gl[j] = (g * (x[j] + sh[j]) * s + gld) * oms;
    }
  }
}

DQK_CPU_CLONES void affine_row_backward_f32(const float* x, const float* sh, const float* lo,
                                            const float* gy, float gld, float* gx, float* gs,
                                            float* gl, int64_t n, bool inverse, bool broadcast) {
  if (broadcast) {
    if (inverse) affine_row_backward_f32_dir<true, true>(x, sh, lo, gy, gld, gx, gs, gl, n);
    else affine_row_backward_f32_dir<false, true>(x, sh, lo, gy, gld, gx, gs, gl, n);
  } else {
    if (inverse) affine_row_backward_f32_dir<true, false>(x, sh, lo, gy, gld, gx, gs, gl, n);
    else affine_row_backward_f32_dir<false, false>(x, sh, lo, gy, gld, gx, gs, gl, n);
  }
}

template <typename S>
bool contiguous_rows(const Args& a, std::initializer_list<int> slots) {
  if (std::is_same<S, double>::value) return false;
  for (int s : slots)
    if (a.t[s].st[3] != 1) return false;
  return true;
}

// fp16/bf16 rows go through float buffers of kConv elements and the float kernels
// (convert_run of common/cpu_convert.h: F16C for fp16 where the CPU has it)
constexpr int64_t kConv = 1024;

template <typename S>
void affine_forward(const Args& a, int nt) {
  using Acc = typename Scalar<S>::acc;
  const Pieces ps = pieces(a, 4096);
  std::vector<Acc> part(ps.count);
  const bool fast = contiguous_rows<S>(a, {0, 1, 2, kOut});
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < ps.count; ++n) {
    const Piece q = ps[n];
    const S* x = ptr<S>(a, 0);
    const S* sh = ptr<S>(a, 1);
    const S* lo = ptr<S>(a, 2);
    S* y = ptr<S>(a, kOut);
    if (fast && std::is_same<S, float>::value) {
      part[n] = Acc(affine_row_f32(reinterpret_cast<const float*>(x + off(a.t[0], q, q.j0)),
                                   reinterpret_cast<const float*>(sh + off(a.t[1], q, q.j0)),
                                   reinterpret_cast<const float*>(lo + off(a.t[2], q, q.j0)),
                                   reinterpret_cast<float*>(y + off(a.t[kOut], q, q.j0)),
                                   q.j1 - q.j0, a.inverse));
      continue;
    }
    if (fast) {
      alignas(64) float bx[kConv], bs[kConv], bl[kConv], by[kConv];
      Acc sum = Acc(0);
      for (int64_t j0 = q.j0; j0 < q.j1; j0 += kConv) {
        const int64_t m = q.j1 - j0 < kConv ? q.j1 - j0 : kConv;
        convert_run(x + off(a.t[0], q, j0), bx, m);
        convert_run(sh + off(a.t[1], q, j0), bs, m);
        convert_run(lo + off(a.t[2], q, j0), bl, m);
        sum += affine_row_f32(bx, bs, bl, by, m, a.inverse);
        convert_run(by, y + off(a.t[kOut], q, j0), m);
      }
      part[n] = sum;
      continue;
    }
    Acc sum = Acc(0);
    for (int64_t j = q.j0; j < q.j1; ++j) {
      const Acc xv = Scalar<S>::load(x + off(a.t[0], q, j));
      const Acc sv = Scalar<S>::load(sh + off(a.t[1], q, j));
      const AffineScale<Acc> sc = affine_scale(Acc(Scalar<S>::load(lo + off(a.t[2], q, j))));
      Scalar<S>::store(y + off(a.t[kOut], q, j), a.inverse ? xv / sc.s - sv : (xv + sv) * sc.s);
      sum += sc.log_s;
    }
    part[n] = a.inverse ? -sum : sum;
  }
  reduce_logdet(a, ps, part);
}

template <typename S>
void affine_backward(const Args& a, int nt) {
  using Acc = typename Scalar<S>::acc;
  const Pieces ps = pieces(a, 4096);
  const bool broadcast = a.t[kGradOut].st[3] == 0;
  const bool fast = contiguous_rows<S>(a, {0, 1, 2, kGrad0, kGrad0 + 1, kGrad0 + 2}) &&
                    (broadcast || a.t[kGradOut].st[3] == 1);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < ps.count; ++n) {
    const Piece q = ps[n];
    const S* x = ptr<S>(a, 0);
    const S* sh = ptr<S>(a, 1);
    const S* lo = ptr<S>(a, 2);
    const S* gy = ptr<S>(a, kGradOut);
    S* gx = ptr<S>(a, kGrad0);
    S* gs = ptr<S>(a, kGrad0 + 1);
    S* gl = ptr<S>(a, kGrad0 + 2);
    const Acc gld = grad_logdet<Acc>(a, q.b);
    if (fast && std::is_same<S, float>::value) {
      auto F = [&](const S* p, int slot) {
        return reinterpret_cast<const float*>(p + off(a.t[slot], q, q.j0));
      };
      auto O = [&](S* p, int slot) {
        return reinterpret_cast<float*>(p + off(a.t[slot], q, q.j0));
      };
      affine_row_backward_f32(F(x, 0), F(sh, 1), F(lo, 2), F(gy, kGradOut), float(gld),
                              O(gx, kGrad0), O(gs, kGrad0 + 1), O(gl, kGrad0 + 2), q.j1 - q.j0,
                              a.inverse, broadcast);
      continue;
    }
    if (fast) {
      alignas(64) float bx[kConv], bs[kConv], bl[kConv], bg[kConv], o1[kConv], o2[kConv], o3[kConv];
      for (int64_t j0 = q.j0; j0 < q.j1; j0 += kConv) {
        const int64_t m = q.j1 - j0 < kConv ? q.j1 - j0 : kConv;
        convert_run(x + off(a.t[0], q, j0), bx, m);
        convert_run(sh + off(a.t[1], q, j0), bs, m);
        convert_run(lo + off(a.t[2], q, j0), bl, m);
        convert_run(gy + off(a.t[kGradOut], q, j0), bg, broadcast ? 1 : m);
        affine_row_backward_f32(bx, bs, bl, bg, float(gld), o1, o2, o3, m, a.inverse, broadcast);
        convert_run(o1, gx + off(a.t[kGrad0], q, j0), m);
        convert_run(o2, gs + off(a.t[kGrad0 + 1], q, j0), m);
        convert_run(o3, gl + off(a.t[kGrad0 + 2], q, j0), m);
      }
      continue;
    }
    for (int64_t j = q.j0; j < q.j1; ++j) {
      const Acc xv = Scalar<S>::load(x + off(a.t[0], q, j));
      const Acc sv = Scalar<S>::load(sh + off(a.t[1], q, j));
      const Acc g = Scalar<S>::load(gy + off(a.t[kGradOut], q, j));
      const AffineScale<Acc> sc = affine_scale(Acc(Scalar<S>::load(lo + off(a.t[2], q, j))));
      Acc dx, ds, dl;
      if (a.inverse) {
        dx = g / sc.s;
        ds = -g;
        dl = -(g * xv / sc.s + gld) * sc.one_minus_s;
      } else {
        dx = g * sc.s;
        ds = g * sc.s;
        dl = (g * (xv + sv) * sc.s + gld) * sc.one_minus_s;
      }
      Scalar<S>::store(gx + off(a.t[kGrad0], q, j), dx);
      Scalar<S>::store(gs + off(a.t[kGrad0 + 1], q, j), ds);
      Scalar<S>::store(gl + off(a.t[kGrad0 + 2], q, j), dl);
    }
  }
}

// ----------------------------------------------------------------------------- mixture

// One element's components in float, with scratch for the vectorised sweeps.
// Every array starts on a 64-byte boundary, so the vectorised loops need no peeling.
struct alignas(64) MixBuf {
  alignas(64) float lg[kVecK];
  alignas(64) float mu[kVecK];
  alignas(64) float ls[kVecK];
  alignas(64) float inv_s[kVecK];
  alignas(64) float z[kVecK];
  alignas(64) float e[kVecK];
  alignas(64) float u1[kVecK];
  alignas(64) float u2[kVecK];
  alignas(64) float u3[kVecK];
  alignas(64) float x1[kVecK];
  alignas(64) float x2[kVecK];
  alignas(64) float x3[kVecK];
  int K;   // components
  int Kp;  // K rounded up to kLanes; lanes K..Kp-1 hold a component of weight zero
  float N;
  explicit MixBuf(int64_t k) : K(int(k)), Kp(int((k + kLanes - 1) / kLanes * kLanes)) {}
};

// Reductions over components keep kLanes partial results in a vector and combine them
// once at the end (OpenMP simd reductions go through the stack on every call, which
// costs more than the math for K = 32).

DQK_VM float lanes_max(const float* acc) {
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = vm::maxf(m, acc[l]);
  return m;
}
DQK_VM float lanes_min(const float* acc) {
  float m = acc[0];
  for (int l = 1; l < kLanes; ++l) m = vm::minf(m, acc[l]);
  return m;
}
DQK_VM float lanes_sum(const float* acc) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

struct VLse {
  float m, s;
  float value() const { return m + vm::log(s); }
};

// max-shifted log-sum-exp of u[0..Kp), keeping the shifted exps in ex
DQK_VM VLse vlse(const float* u, float* ex, int Kp) {
  alignas(64) float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -vm::kInf;
  for (int k0 = 0; k0 < Kp; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) acc[l] = vm::maxf(acc[l], u[k0 + l]);
  }
  const float m = lanes_max(acc);
  for (int l = 0; l < kLanes; ++l) acc[l] = 0.0f;
  for (int k0 = 0; k0 < Kp; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float v = vm::exp(u[k0 + l] - m);
      ex[k0 + l] = v;
      acc[l] += v;
    }
  }
  return VLse{m, lanes_sum(acc)};
}

// z, e and the three log-sum-exps at x (raw logits).
//
// Per component the larger of the two log-sigmoids is -log1p(e) and the smaller is that
// minus |z|, and log sigmoid(z) + log sigmoid(-z) - log_scale is the smaller one minus
// log1p(e) + log_scale. So with ub_k = logit_k - log1p(e_k) and one shift M = max ub,
// a single exp(ub_k - M) gives the terms of all three sums (times e_k, 1/(1+e_k) and
// 1/scale_k). When a sum comes out below kTiny relative to M (far in a tail, where its
// terms underflowed), the three are recomputed with a shift of their own.
constexpr float kTiny = 1e-30f;

DQK_VM void vlogs(MixBuf& B, float x, VLse* f, VLse* f1, VLse* fd) {
  const int K = B.Kp;
  alignas(64) float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -vm::kInf;
  for (int k0 = 0; k0 < K; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const float z = (x - B.mu[k]) * B.inv_s[k];
      const float e = vm::exp(-vm::absf(z));
      const float l1 = vm::log1p(e);
      const float ub = B.lg[k] - l1;
      B.z[k] = z;
      B.e[k] = e;
      B.u1[k] = ub;
      B.u2[k] = l1;
      acc[l] = vm::maxf(acc[l], ub);
    }
  }
  const float M = lanes_max(acc);
  alignas(64) float a1[kLanes], a2[kLanes], a3[kLanes];
  for (int l = 0; l < kLanes; ++l) a1[l] = a2[l] = a3[l] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const float E = vm::exp(B.u1[k] - M);
      const float e = B.e[k];
      const float Ee = E * e;
      const bool pos = B.z[k] >= 0.0f;
      const float t1 = vm::sel(pos, E, Ee), t2 = vm::sel(pos, Ee, E);
      const float t3 = Ee * B.inv_s[k] / (1.0f + e);
      B.x1[k] = t1;
      B.x2[k] = t2;
      B.x3[k] = t3;
      a1[l] += t1;
      a2[l] += t2;
      a3[l] += t3;
    }
  }
  const float S1 = lanes_sum(a1), S2 = lanes_sum(a2), S3 = lanes_sum(a3);
  if (S1 > kTiny && S2 > kTiny && S3 > kTiny) {
    *f = VLse{M, S1};
    *f1 = VLse{M, S2};
    *fd = VLse{M, S3};
    return;
  }
  if (!(S1 == S1 && S2 == S2 && S3 == S3)) {  // NaN: propagate
    *f = VLse{M, S1};
    *f1 = VLse{M, S2};
    *fd = VLse{M, S3};
    return;
  }
#pragma omp simd
  for (int k = 0; k < K; ++k) {
    const float z = B.z[k], l1 = B.u2[k];
    B.u1[k] = B.lg[k] + vm::minf(z, 0.0f) - l1;
    B.u2[k] = B.lg[k] + vm::minf(-z, 0.0f) - l1;
  }
  *f = vlse(B.u1, B.x1, K);
  *f1 = vlse(B.u2, B.x2, K);
  // log F' on the shift of the larger of F and 1 - F: its terms are that side's terms
  // times sigmoid(-+z)/scale, so log F' - log(larger) carries no cancellation of |z|
  const bool upper = f->value() >= f1->value();
  const float* xs = upper ? B.x2 : B.x1;
  alignas(64) float acc3[kLanes];
  for (int l = 0; l < kLanes; ++l) acc3[l] = 0.0f;
  for (int k0 = 0; k0 < K; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const float e = B.e[k];
      const float inv = 1.0f / (1.0f + e);
      const float sz = vm::sel(B.z[k] >= 0.0f, inv, e * inv);
      const float snz = vm::sel(B.z[k] >= 0.0f, e * inv, inv);
      const float t3 = xs[k] * (upper ? sz : snz) * B.inv_s[k];
      B.x3[k] = t3;
      acc3[l] += t3;
    }
  }
  *fd = VLse{upper ? f1->m : f->m, lanes_sum(acc3)};
}

// l = log F' - log F - log(1 - F) + N from the three sums. log F' shares its shift with
// one of the others (always, see vlogs), so their difference is formed without it.
DQK_VM float vell(const VLse& f, const VLse& f1, const VLse& fd, float N) {
  if (fd.m == f1.m) return (vm::log(fd.s) - vm::log(f1.s)) - f.value() + N;
  return (vm::log(fd.s) - vm::log(f.s)) - f1.value() + N;
}

template <typename S>
DQK_VM void vload(MixBuf& B, const Args& a, const Piece& q, int64_t j) {
  const int K = B.K;
  const S* lg = ptr<S>(a, 1) + off(a.t[1], q, j);
  const S* mu = ptr<S>(a, 2) + off(a.t[2], q, j);
  const S* ls = ptr<S>(a, 3) + off(a.t[3], q, j);
  const int64_t s1 = a.t[1].st[4], s2 = a.t[2].st[4], s3 = a.t[3].st[4];
  for (int k = 0; k < K; ++k) {
    B.lg[k] = Scalar<S>::load(lg + k * s1);
    B.mu[k] = Scalar<S>::load(mu + k * s2);
    B.ls[k] = Scalar<S>::load(ls + k * s3);
  }
  for (int k = K; k < B.Kp; ++k) {  // weight zero: exp(-inf) = 0 in every sum
    B.lg[k] = -vm::kInf;
    B.mu[k] = 0.0f;
    B.ls[k] = 0.0f;
  }
}

// 1/scale and the logits' log-sum-exp, inside each vectorised entry point
DQK_VM void vprepare(MixBuf& B) {
  const int K = B.Kp;
#pragma omp simd
  for (int k = 0; k < K; ++k) B.inv_s[k] = vm::exp(-B.ls[k]);
  B.N = vlse(B.lg, B.x1, K).value();  // x1 is scratch here
}

// forward of one element: y, and returns l + a
DQK_CPU_CLONES float vmix_forward(MixBuf& B, float x, float a, float b, float* y) {
  vprepare(B);
  VLse f, f1, fd;
  vlogs(B, x, &f, &f1, &fd);
  *y = (f.value() - f1.value()) * vm::exp(a) + b;
  return vell(f, f1, fd, B.N) + a;
}

DQK_CPU_CLONES float vmix_inverse(MixBuf& B, float y, float a, float b, float* x_out) {
  vprepare(B);
  const int K = B.K;
  const float t = (y - b) * vm::exp(-a);
  alignas(64) float lo_acc[kLanes], hi_acc[kLanes], s_acc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    lo_acc[l] = vm::kInf;
    hi_acc[l] = -vm::kInf;
    s_acc[l] = 0.0f;
  }
  for (int k0 = 0; k0 < B.Kp; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const float xk = B.mu[k] + vm::exp(B.ls[k]) * t;
      const bool real = k < K;  // padded lanes stay out of the bracket
      lo_acc[l] = vm::minf(lo_acc[l], vm::sel(real, xk, vm::kInf));
      hi_acc[l] = vm::maxf(hi_acc[l], vm::sel(real, xk, -vm::kInf));
      s_acc[l] += vm::exp(B.lg[k] - B.N) * xk;
    }
  }
  const float lo = lanes_min(lo_acc), hi = lanes_max(hi_acc), s = lanes_sum(s_acc);
  const float x0 = vm::minf(vm::maxf(s, lo), hi);
  // always_inline: the lambda must be compiled inside each target clone, not as one
  // baseline function
  auto eval = [&](float x, float* g, float* gx, float* scale) DQK_LAMBDA_INLINE {
    VLse f, f1, fd;
    vlogs(B, x, &f, &f1, &fd);
    const float lF = f.value(), l1F = f1.value();
    *g = lF - l1F;
    *gx = vm::exp(vell(f, f1, fd, B.N));
    *scale = vm::absf(lF) + vm::absf(l1F);
  };
  const float x = solve_root(t, lo, hi, x0, eval, kMaxIter);
  *x_out = x;
  VLse f, f1, fd;
  vlogs(B, x, &f, &f1, &fd);
  return -(vell(f, f1, fd, B.N) + a);
}

// backward of one element into B.x1 (d logits), B.x2 (d means), B.x3 (d log-scales)
DQK_CPU_CLONES ElemGrad<float> vmix_backward(MixBuf& B, float x, float a, float gout, float gld,
                                             bool inverse) {
  vprepare(B);
  const int K = B.K;
  VLse f, f1, fd;
  vlogs(B, x, &f, &f1, &fd);
  const float g = f.value() - f1.value();
  const float g_x = vm::exp(vell(f, f1, fd, B.N));
  const float ea = vm::exp(a);
  const float is1 = 1.0f / f.s, is2 = 1.0f / f1.s, is3 = 1.0f / fd.s;
  // p, q, r into x1..x3; A into u1, B_k into u2; w into u3
  alignas(64) float lx_acc[kLanes];
  for (int l = 0; l < kLanes; ++l) lx_acc[l] = 0.0f;
  for (int k0 = 0; k0 < B.Kp; k0 += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const float p = B.x1[k] * is1, q = B.x2[k] * is2, r = B.x3[k] * is3;
      const float z = B.z[k], e = B.e[k];
      const float inv = 1.0f / (1.0f + e);
      const float sz = vm::sel(z >= 0.0f, inv, e * inv);
      const float snz = vm::sel(z >= 0.0f, e * inv, inv);
      const float A = p * snz + q * sz;
      const float Bk = r * (snz - sz) - p * snz + q * sz;
      B.x1[k] = p;
      B.x2[k] = q;
      B.x3[k] = r;
      B.u1[k] = A;
      B.u2[k] = Bk;
      B.u3[k] = vm::exp(B.lg[k] - B.N);
      lx_acc[l] += Bk * B.inv_s[k];
    }
  }
  const float lx = lanes_sum(lx_acc);
  ElemGrad<float> e = elem_grad(inverse, gout, gld, lx, g, g_x, ea);
  if (!inverse) e.d_in = e.Gg * g_x + e.Gl * lx;
  const float Gg = e.Gg, Gl = e.Gl;
#pragma omp simd
  for (int k = 0; k < K; ++k) {
    const float p = B.x1[k], q = B.x2[k], r = B.x3[k];
    const float dz = Gg * B.u1[k] + Gl * B.u2[k];
    B.x1[k] = Gg * (p - q) + Gl * (r - p - q + B.u3[k]);
    B.x2[k] = -dz * B.inv_s[k];
    B.x3[k] = -dz * B.z[k] - Gl * r;
  }
  return e;
}

template <typename S>
bool use_vec(const Args& a) {
  return !std::is_same<typename Scalar<S>::acc, double>::value && a.K <= kVecK;
}

// Per-element scalar access to the components of element (q, j).
template <typename S>
struct CompLoad {
  const S *lg, *mu, *ls;
  int64_t s1, s2, s3;
  CompLoad(const Args& a, const Piece& q, int64_t j)
      : lg(ptr<S>(a, 1) + off(a.t[1], q, j)),
        mu(ptr<S>(a, 2) + off(a.t[2], q, j)),
        ls(ptr<S>(a, 3) + off(a.t[3], q, j)),
        s1(a.t[1].st[4]),
        s2(a.t[2].st[4]),
        s3(a.t[3].st[4]) {}
  template <typename Acc>
  void operator()(int64_t k, Acc* l, Acc* m, Acc* s) const {
    *l = Scalar<S>::load(lg + k * s1);
    *m = Scalar<S>::load(mu + k * s2);
    *s = Scalar<S>::load(ls + k * s3);
  }
};

// Runs f(n, ps[n], buf) for every piece n on nt threads, each thread with its own buffers.
template <typename F>
void for_each_piece(const Pieces& ps, int64_t K, int nt, const F& f) {
#pragma omp parallel num_threads(nt)
  {
    MixBuf buf(K);
#pragma omp for schedule(dynamic, 4)
    for (int64_t n = 0; n < ps.count; ++n) f(n, ps[n], buf);
  }
}

template <typename S>
void mix_forward_or_inverse(const Args& a, int nt, bool inverse, bool scalar_only) {
  using Acc = typename Scalar<S>::acc;
  const Pieces ps = pieces(a, 16);
  std::vector<Acc> part(ps.count);
  const bool vec = use_vec<S>(a) && !scalar_only;
  for_each_piece(ps, a.K, nt, [&](int64_t n, const Piece& q, MixBuf& buf) {
    Acc sum = Acc(0);
    for (int64_t j = q.j0; j < q.j1; ++j) {
      const Acc in = Scalar<S>::load(ptr<S>(a, 0) + off(a.t[0], q, j));
      const Acc av = Scalar<S>::load(ptr<S>(a, 4) + off(a.t[4], q, j));
      const Acc bv = Scalar<S>::load(ptr<S>(a, 5) + off(a.t[5], q, j));
      Acc out, ld;
      if (vec) {
        vload<S>(buf, a, q, j);
        float o;
        ld = inverse ? vmix_inverse(buf, float(in), float(av), float(bv), &o)
                     : vmix_forward(buf, float(in), float(av), float(bv), &o);
        out = o;
      } else {
        const CompLoad<S> load(a, q, j);
        ld = inverse ? mix_inverse<Acc>(in, av, bv, a.K, load, &out)
                     : mix_forward<Acc>(in, av, bv, a.K, load, &out);
      }
      Scalar<S>::store(ptr<S>(a, kOut) + off(a.t[kOut], q, j), out);
      sum += ld;
    }
    part[n] = sum;
  });
  reduce_logdet(a, ps, part);
}

template <typename S>
void mix_backward_cpu(const Args& a, int nt, bool scalar_only) {
  using Acc = typename Scalar<S>::acc;
  const Pieces ps = pieces(a, 16);
  const bool vec = use_vec<S>(a) && !scalar_only;
  for_each_piece(ps, a.K, nt, [&](int64_t n, const Piece& q, MixBuf& buf) {
    const Acc gld = grad_logdet<Acc>(a, q.b);
    for (int64_t j = q.j0; j < q.j1; ++j) {
      const Acc xv = Scalar<S>::load(ptr<S>(a, 0) + off(a.t[0], q, j));
      const Acc av = Scalar<S>::load(ptr<S>(a, 4) + off(a.t[4], q, j));
      const Acc go = Scalar<S>::load(ptr<S>(a, kGradOut) + off(a.t[kGradOut], q, j));
      S* gl = ptr<S>(a, kGrad0 + 1) + off(a.t[kGrad0 + 1], q, j);
      S* gm = ptr<S>(a, kGrad0 + 2) + off(a.t[kGrad0 + 2], q, j);
      S* gs = ptr<S>(a, kGrad0 + 3) + off(a.t[kGrad0 + 3], q, j);
      const int64_t s1 = a.t[kGrad0 + 1].st[4], s2 = a.t[kGrad0 + 2].st[4],
                    s3 = a.t[kGrad0 + 3].st[4];
      ElemGrad<Acc> e;
      if (vec) {
        vload<S>(buf, a, q, j);
        const ElemGrad<float> ef =
            vmix_backward(buf, float(xv), float(av), float(go), float(gld), a.inverse);
        e = ElemGrad<Acc>{ef.Gg, ef.Gl, ef.d_in, ef.d_a, ef.d_b};
        for (int k = 0; k < buf.K; ++k) {
          Scalar<S>::store(gl + k * s1, buf.x1[k]);
          Scalar<S>::store(gm + k * s2, buf.x2[k]);
          Scalar<S>::store(gs + k * s3, buf.x3[k]);
        }
      } else {
        const CompLoad<S> load(a, q, j);
        auto store = [&](int64_t k, Acc dl, Acc dm, Acc ds) {
          Scalar<S>::store(gl + k * s1, dl);
          Scalar<S>::store(gm + k * s2, dm);
          Scalar<S>::store(gs + k * s3, ds);
        };
        e = coupling::mix_backward<Acc>(xv, av, a.K, load, go, gld, a.inverse, store);
      }
      Scalar<S>::store(ptr<S>(a, kGrad0) + off(a.t[kGrad0], q, j), e.d_in);
      Scalar<S>::store(ptr<S>(a, kGrad0 + 4) + off(a.t[kGrad0 + 4], q, j), e.d_a);
      Scalar<S>::store(ptr<S>(a, kGrad0 + 5) + off(a.t[kGrad0 + 5], q, j), e.d_b);
    }
  });
}

template <typename S>
void dispatch(Kind kind, const Args& a, int nt, bool scalar_only) {
  switch (kind) {
    case kAffineForward: affine_forward<S>(a, nt); return;
    case kAffineBackward: affine_backward<S>(a, nt); return;
    case kMixForward: mix_forward_or_inverse<S>(a, nt, false, scalar_only); return;
    case kMixInverse: mix_forward_or_inverse<S>(a, nt, true, scalar_only); return;
    case kMixBackward: mix_backward_cpu<S>(a, nt, scalar_only); return;
  }
  throw std::invalid_argument("coupling cpu kernels: unknown kind " + std::to_string(int(kind)));
}

}  // namespace

void run_cpu(Kind kind, const Args& a, int num_threads, bool scalar_only) {
  const int nt = num_threads > 0 ? num_threads : 1;
  visit_dtype<Half, BFloat16>(a.dtype, "coupling cpu kernels",
                              [&](auto t) { dispatch<decltype(t)>(kind, a, nt, scalar_only); });
}

}  // namespace coupling
}  // namespace dqk
