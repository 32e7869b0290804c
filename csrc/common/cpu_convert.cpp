// The out-of-line conversions of cpu_convert.h. fp16 goes through F16C (vcvtph2ps /
// vcvtps2ph, round to nearest even) 16 or 8 at a time where the CPU has it (the path is
// picked once, from the cached CPU query); bf16 is a shift, one clone per instruction set.
#include "cpu_convert.h"

#include "cpu_isa.h"
#include "macros.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_CONVERT_F16C 1
#include <immintrin.h>
#endif

namespace dqk {

namespace {

#ifdef DQK_CONVERT_F16C
constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

__attribute__((target("arch=x86-64-v4"))) void half_to_float_v4(const Half* src, float* dst,
                                                                  int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].bits);
}
__attribute__((target("arch=x86-64-v3"))) void half_to_float_v3(const Half* src, float* dst,
                                                                  int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].bits);
}
__attribute__((target("arch=x86-64-v4"))) void float_to_half_v4(const float* src, Half* dst,
                                                                  int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256((__m256i*)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), kRne));
  for (; i < n; ++i) dst[i].bits = _cvtss_sh(src[i], kRne);
}
__attribute__((target("arch=x86-64-v3"))) void float_to_half_v3(const float* src, Half* dst,
                                                                  int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i*)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRne));
  for (; i < n; ++i) dst[i].bits = _cvtss_sh(src[i], kRne);
}
#endif

void half_to_float_sw(const Half* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_float(src[j]);
}
void float_to_half_sw(const float* src, Half* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = half_from_float(src[j]);
}

template <typename F>
F pick(F v4, F v3, F sw) {
  const int bits = supported_cpu_isas();
  return bits & (1 << kIsaAvx512) ? v4 : (bits & (1 << kIsaAvx2) ? v3 : sw);
}

}  // namespace

void half_to_float(const Half* src, float* dst, int64_t n) {
#ifdef DQK_CONVERT_F16C
  static const auto f = pick(half_to_float_v4, half_to_float_v3, half_to_float_sw);
  f(src, dst, n);
#else
  half_to_float_sw(src, dst, n);
#endif
}

void float_to_half(const float* src, Half* dst, int64_t n) {
#ifdef DQK_CONVERT_F16C
  static const auto f = pick(float_to_half_v4, float_to_half_v3, float_to_half_sw);
  f(src, dst, n);
#else
  float_to_half_sw(src, dst, n);
#endif
}

DQK_CPU_CLONES void bf16_to_float(const BFloat16* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = bits_f32(uint32_t(src[j].bits) << 16);
}

}  // namespace dqk
