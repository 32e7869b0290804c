// Portable qualifiers and math wrappers shared by the CPU (g++) and CUDA (nvcc) builds.
// Nothing here knows about Python or torch.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define DQK_HD __host__ __device__ __forceinline__
#else
#define DQK_HD inline
#endif

// A CPU function compiled once per instruction set (AVX-512, AVX2, baseline), the clone
// picked when the module loads (GCC on x86-64; elsewhere one plain function)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DQK_CPU_CLONES
#endif

// for lambdas the CPU kernels want inlined: [&](int64_t k) DQK_LAMBDA_INLINE { ... }
#if defined(__GNUC__)
#define DQK_LAMBDA_INLINE __attribute__((always_inline))
#else
#define DQK_LAMBDA_INLINE
#endif

namespace dqk {

// Overloads pick the float or double libm/CUDA function for the accumulate type.
DQK_HD float m_exp(float v) { return expf(v); }
DQK_HD double m_exp(double v) { return exp(v); }
DQK_HD float m_log(float v) { return logf(v); }
DQK_HD double m_log(double v) { return log(v); }
DQK_HD float m_log1p(float v) { return log1pf(v); }
DQK_HD double m_log1p(double v) { return log1p(v); }
DQK_HD float m_expm1(float v) { return expm1f(v); }
DQK_HD double m_expm1(double v) { return expm1(v); }
DQK_HD float m_tanh(float v) { return tanhf(v); }
DQK_HD double m_tanh(double v) { return tanh(v); }
DQK_HD float m_rint(float v) { return rintf(v); }  // round half to even, like torch.round
DQK_HD double m_rint(double v) { return rint(v); }
DQK_HD float m_abs(float v) { return fabsf(v); }
DQK_HD double m_abs(double v) { return fabs(v); }
template <typename T>
DQK_HD T m_max(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
DQK_HD T m_min(T a, T b) {
  return a < b ? a : b;
}
template <typename T>
DQK_HD bool m_isnan(T v) {
  return v != v;
}
template <typename T>
DQK_HD bool m_isinf(T v) {
  return v - v != v - v && v == v;
}

// log(1 + exp(v)) without overflow.
template <typename T>
DQK_HD T softplus(T v) {
  return m_max(v, T(0)) + m_log1p(m_exp(-m_abs(v)));
}

// 1 / (1 + exp(-v)); exact 0 and 1 in the tails.
template <typename T>
DQK_HD T sigmoid(T v) {
  return T(1) / (T(1) + m_exp(-v));
}

}  // namespace dqk
