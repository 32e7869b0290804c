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

// half_to_float_SFX and float_to_half_SFX for one instruction set: W values per F16C
// instruction, the tail one by one (the same instruction, so the same rounding)
#define DQK_F16C_RUNS(SFX, ARCH, W, HV, LOADH, STOREH, LOADF, STOREF, TOF, TOH)                    \
  __attribute__((target(ARCH))) void half_to_float_##SFX(const Half* src, float* dst, int64_t n) { \
    int64_t i = 0;                                                                                 \
    for (; i + W <= n; i += W) STOREF(dst + i, TOF(LOADH((const HV*)(src + i))));                  \
    for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i].bits);                                            \
  }                                                                                                \
  __attribute__((target(ARCH))) void float_to_half_##SFX(const float* src, Half* dst, int64_t n) { \
    int64_t i = 0;                                                                                 \
    for (; i + W <= n; i += W) STOREH((HV*)(dst + i), TOH(LOADF(src + i), kRne));                  \
    for (; i < n; ++i) dst[i].bits = _cvtss_sh(src[i], kRne);                                      \
  }

// (maskz: the unmasked forms' undefined pass-through values trip -Wmaybe-uninitialized)
#define DQK_CVTPH_PS_512(h) _mm512_maskz_cvtph_ps(__mmask16(0xffff), h)
#define DQK_CVTPS_PH_512(f, r) _mm512_maskz_cvtps_ph(__mmask16(0xffff), f, r)
DQK_F16C_RUNS(v4, "arch=x86-64-v4", 16, __m256i, _mm256_loadu_si256, _mm256_storeu_si256,
              _mm512_loadu_ps, _mm512_storeu_ps, DQK_CVTPH_PS_512, DQK_CVTPS_PH_512)
DQK_F16C_RUNS(v3, "arch=x86-64-v3", 8, __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm256_loadu_ps,
              _mm256_storeu_ps, _mm256_cvtph_ps, _mm256_cvtps_ph)
#endif

// without F16C: the compiler's _Float16 (its runtime's conversions), else Scalar<Half>
#if defined(DQK_CONVERT_F16C) && __GNUC__ >= 12
void half_to_float_sw(const Half* src, float* dst, int64_t n) {
  const _Float16* p = reinterpret_cast<const _Float16*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = float(p[j]);
}
void float_to_half_sw(const float* src, Half* dst, int64_t n) {
  _Float16* p = reinterpret_cast<_Float16*>(dst);
  for (int64_t j = 0; j < n; ++j) p[j] = _Float16(src[j]);
}
#else
void half_to_float_sw(const Half* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_float(src[j]);
}
void float_to_half_sw(const float* src, Half* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = half_from_float(src[j]);
}
#endif

// the fp16 paths of this CPU, picked on the first call
struct HalfRuns {
  void (*to_float)(const Half*, float*, int64_t);
  void (*from_float)(const float*, Half*, int64_t);
};
const HalfRuns& half_runs() {
  static const HalfRuns runs = [] {
#ifdef DQK_CONVERT_F16C
    const int bits = supported_cpu_isas();
    if (bits & (1 << kIsaAvx512)) return HalfRuns{half_to_float_v4, float_to_half_v4};
    if (bits & (1 << kIsaAvx2)) return HalfRuns{half_to_float_v3, float_to_half_v3};
#endif
    return HalfRuns{half_to_float_sw, float_to_half_sw};
  }();
  return runs;
}

}  // namespace

void half_to_float(const Half* src, float* dst, int64_t n) { half_runs().to_float(src, dst, n); }
void float_to_half(const float* src, Half* dst, int64_t n) { half_runs().from_float(src, dst, n); }

DQK_CPU_CLONES void bf16_to_float(const BFloat16* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = bits_f32(uint32_t(src[j].bits) << 16);
}

}  // namespace dqk
