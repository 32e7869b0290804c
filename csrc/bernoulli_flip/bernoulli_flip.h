// C++ entry points of the flipped-bit Bernoulli log-likelihood (Tokui-Sato, LEG): raw
// pointers, sizes, element strides and (for CUDA) a stream. Shapes, dtypes and devices are
// validated by the caller (python/bindings_bernoulli_flip.cpp); empty sizes never arrive.
//
//   t[b, h, d]      = logits[b, d] + s[b, h] weight[d, h],      s = 1 - 2 z
//   out[b, h]       = sum_d x log sigmoid(t) + (1 - x) log sigmoid(-t)
//   r[b, h, d]      = x[b, d] - sigmoid(t)                       (d out / d t)
//   grad_logits     = sum_h g[b, h] r
//   grad_weight     = sum_b g[b, h] s[b, h] r
//   grad_x          = logits[b, d] sum_h g[b, h] + sum_h g[b, h] s[b, h] weight[d, h]
//
// x, logits [B, D], weight [D, H], z [B, H] share one floating dtype and may have any
// strides (0 included); out and grad_out [B, H] are in the accumulate dtype (float32,
// float64 for float64 inputs), out contiguous, grad_out any strides; the gradients have
// their input's shape and dtype, contiguous, and are written (never accumulated into).
#pragma once

#include <stdint.h>

#include "../common/dtype.h"
#include "../common/macros.h"

namespace dqk {
namespace bernoulli_flip {

struct Mat {
  const void* p = nullptr;
  int64_t s0 = 0, s1 = 0;  // element strides of [rows, cols]
};

struct Args {
  DType dtype = DType::kFloat32;  // of x, logits, weight, z
  int64_t B = 0, D = 0, H = 0;
  Mat x, logits;        // [B, D]
  Mat w;                // [D, H]
  Mat z;                // [B, H]
  Mat gout;             // [B, H], accumulate dtype (backward)
  void* out = nullptr;  // [B, H], accumulate dtype (forward)
  void* gx = nullptr;   // [B, D] (backward; null: not wanted)
  void* gl = nullptr;   // [B, D] (backward; null: not wanted)
  void* gw = nullptr;   // [D, H] (backward; null: not wanted)
};

// One element of the sum: x log sigmoid(t) + (1 - x) log sigmoid(-t) from e = exp(-|t|),
// as x min(t, 0) - (1 - x) max(t, 0) - log1p(e) (xc = 1 - x): exact for binary x, and no
// cancellation between the two terms for probabilities.
template <typename T>
DQK_HD T flip_term(T x, T xc, T t, T log1p_e) {
  return x * m_min(t, T(0)) - xc * m_max(t, T(0)) - log1p_e;
}

// log(1 + e) for e in [0, 1] (e = exp(-|t|)): 2 atanh(w), w = e / (2 + e) in [0, 1/3], by
// its odd series cut after w^15 (truncation below 2e-9 relative; the CUDA float log1p,
// as in the Triton kernels: one division and 8 FMAs, no logarithm).
template <typename T>
DQK_HD T log1p_unit(T e) {
  const T w = e / (T(2) + e);
  const T w2 = w * w;
  T p = T(1) / T(15);
  p = p * w2 + T(1) / T(13);
  p = p * w2 + T(1) / T(11);
  p = p * w2 + T(1) / T(9);
  p = p * w2 + T(1) / T(7);
  p = p * w2 + T(1) / T(5);
  p = p * w2 + T(1) / T(3);
  p = p * w2 + T(1);
  return T(2) * w * p;
}

// x - sigmoid(t) from e = exp(-|t|) (xm1 = x - 1): sigmoid(t) = 1 - q for t >= 0 and q
// below, q = e / (1 + e), so the difference keeps its relative precision far in the tails.
template <typename T>
DQK_HD T flip_resid(T x, T xm1, T t, T e) {
  const T q = e / (T(1) + e);
  return t >= T(0) ? xm1 + q : x - q;
}

void forward_cpu(const Args& a, int num_threads);
void backward_cpu(const Args& a, int num_threads);

#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error.
void forward_cuda(const Args& a, void* stream);
void backward_cuda(const Args& a, void* stream);
#endif

}  // namespace bernoulli_flip
}  // namespace dqk
