// Host-side 16-bit float storage types and their conversions to and from float
// (IEEE binary16 and bfloat16, round to nearest even), with no compiler extensions.
#pragma once

#include <stdint.h>
#include <string.h>

namespace dqk {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

inline float to_float(BFloat16 h) { return bits_f32(uint32_t(h.bits) << 16); }

inline BFloat16 bf16_from_float(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{uint16_t(u >> 16)};
}

inline float to_float(Half h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1fu) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    if (man == 0) return bits_f32(sign);
    // subnormal: value = man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

inline Half half_from_float(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return Half{uint16_t(sign | 0x7e00u)};   // NaN
  if (a >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};  // overflow -> inf
  if (a < 0x38800000u) {                                        // subnormal or 0
    // round(|f| * 2^24) to nearest even, as an integer mantissa
    float v = bits_f32(a) * 16777216.0f;
    uint32_t m = uint32_t(v);
    float rem = v - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return Half{uint16_t(sign | m)};
  }
  uint32_t exp = (a >> 23) - 112u;
  uint32_t man = a & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
  return Half{uint16_t(sign | h)};
}

// load/store between a storage type and its accumulate type
template <typename S>
struct Scalar;
template <>
struct Scalar<float> {
  using acc = float;
  static float load(const float* p) { return *p; }
  static void store(float* p, float v) { *p = v; }
};
template <>
struct Scalar<double> {
  using acc = double;
  static double load(const double* p) { return *p; }
  static void store(double* p, double v) { *p = v; }
};
template <>
struct Scalar<Half> {
  using acc = float;
  static float load(const Half* p) { return to_float(*p); }
  static void store(Half* p, float v) { *p = half_from_float(v); }
};
template <>
struct Scalar<BFloat16> {
  using acc = float;
  static float load(const BFloat16* p) { return to_float(*p); }
  static void store(BFloat16* p, float v) { *p = bf16_from_float(v); }
};

}  // namespace dqk
