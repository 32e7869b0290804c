// Branch-free float32 exp/log and friends for the CPU kernels. Written as plain scalar
// code without calls or branches so that `#pragma omp simd` loops over lanes vectorise
// (libm calls do not). Accuracy is about 1 ulp (Cephes polynomials); infinities, NaN,
// underflow to denormals and zero are handled as libm does.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define DQK_VM inline __attribute__((always_inline))
#else
#define DQK_VM inline
#endif

namespace dqk {
namespace vm {

DQK_VM float as_f(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
DQK_VM uint32_t as_u(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
DQK_VM float sel(bool c, float a, float b) { return c ? a : b; }
DQK_VM float maxf(float a, float b) { return a > b ? a : b; }  // NaN in a gives b
DQK_VM float minf(float a, float b) { return a < b ? a : b; }
DQK_VM float absf(float a) { return as_f(as_u(a) & 0x7fffffffu); }

constexpr float kInf = __builtin_huge_valf();

// exp(x)
DQK_VM float exp(float x) {
  const float hi = 88.72283935546875f, lo = -103.97208404541015625f;
  float xc = sel(x > hi, hi, x);
  xc = sel(xc < lo, lo, xc);        // NaN stays NaN
  const float magic = 12582912.0f;  // 1.5 * 2^23: round to nearest
  const float t = xc * 1.44269504088896341f + magic;
  const float n = t - magic;
  const int32_t ni = int32_t(as_u(t) - as_u(magic));  // n as an integer, no UB on NaN
  const float r = xc - n * 0.693359375f - n * -2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * z + r + 1.0f;
  // 2^n as two normal factors so that denormal results come out right
  const int32_t n1 = ni >> 1, n2 = ni - n1;
  const float s1 = as_f(uint32_t(n1 + 127) << 23), s2 = as_f(uint32_t(n2 + 127) << 23);
  float res = p * s1 * s2;
  res = sel(x > hi, kInf, res);
  res = sel(x < lo, 0.0f, res);
  return res;
}

// log(x)
DQK_VM float log(float x) {
  const bool sub = x < 1.17549435e-38f;  // denormal (or <= 0): scale up
  const float xs = sel(sub, x * 8388608.0f, x);
  const uint32_t u = as_u(xs);
  float e = float(int32_t((u >> 23) & 0xffu) - 126) - sel(sub, 23.0f, 0.0f);
  float m = as_f((u & 0x007fffffu) | 0x3f000000u);  // [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = e - sel(small, 1.0f, 0.0f);
  m = sel(small, m + m - 1.0f, m - 1.0f);
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  y = y + -2.12194440e-4f * e;
  y = y - 0.5f * z;
  float r = m + y + 0.693359375f * e;
  r = sel(x == 0.0f, -kInf, r);
  r = sel(x < 0.0f, __builtin_nanf(""), r);
  r = sel(x == kInf, kInf, r);
  r = sel(x != x, x, r);
  return r;
}

// log(1 + e) for e >= -1 (Goldberg's correction keeps full relative precision)
DQK_VM float log1p(float e) {
  const float u = 1.0f + e;
  const float d = u - 1.0f;
  return sel(d == 0.0f, e, log(u) * (e / sel(d == 0.0f, 1.0f, d)));
}

// sigmoid(v) given e = exp(-|v|)
DQK_VM float sigmoid_from(float v, float e) {
  const float inv = 1.0f / (1.0f + e);
  return sel(v >= 0.0f, inv, e * inv);
}

// expm1(x) for x in [-ln2, 0]: Taylor series to x^10 (relative error below 1e-8)
DQK_VM float expm1_small(float x) {
  float p = 2.755731922398589e-07f;    // 1/10!
  p = p * x + 2.755731922398589e-06f;  // 1/9!
  p = p * x + 2.48015873015873e-05f;   // 1/8!
  p = p * x + 1.984126984126984e-04f;  // 1/7!
  p = p * x + 1.388888888888889e-03f;  // 1/6!
  p = p * x + 8.333333333333333e-03f;  // 1/5!
  p = p * x + 4.166666666666667e-02f;  // 1/4!
  p = p * x + 1.666666666666667e-01f;  // 1/3!
  p = p * x + 0.5f;
  return (p * x) * x + x;
}

// 1 - exp(-delta) = -expm1(-delta) for delta >= 0, accurate also for tiny delta; also
// returns u = exp(-delta).
DQK_VM float one_minus_exp_neg(float delta, float* u_out) {
  const float u = exp(-delta);
  *u_out = u;
  const float ln2 = 0.693147180559945309f;
  return sel(delta > ln2, 1.0f - u, -expm1_small(-minf(delta, ln2)));
}

// tanh(r) = (1 - e^{-2|r|}) / (1 + e^{-2|r|}) with the sign of r, accurate near 0
DQK_VM float tanh(float r) {
  float u;
  const float om = one_minus_exp_neg(2.0f * absf(r), &u);
  const float t = om / (2.0f - om);
  return sel(r < 0.0f, -t, sel(r != r, r, t));
}

}  // namespace vm
}  // namespace dqk
