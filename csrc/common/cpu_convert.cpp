// The out-of-line conversions of cpu_convert.h, one clone per instruction set.
#include "cpu_convert.h"
#include "macros.h"

namespace dqk {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
// through the compiler's _Float16 (vcvtph2ps / vcvtps2ph in the F16C clones)
DQK_CPU_CLONES void half_to_float(const Half* src, float* dst, int64_t n) {
  const _Float16* p = reinterpret_cast<const _Float16*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = float(p[j]);
}
DQK_CPU_CLONES void float_to_half(const float* src, Half* dst, int64_t n) {
  _Float16* p = reinterpret_cast<_Float16*>(dst);
  for (int64_t j = 0; j < n; ++j) p[j] = _Float16(src[j]);
}
#else
void half_to_float(const Half* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = to_float(src[j]);
}
void float_to_half(const float* src, Half* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = half_from_float(src[j]);
}
#endif

DQK_CPU_CLONES void bf16_to_float(const BFloat16* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = bits_f32(uint32_t(src[j].bits) << 16);
}

}  // namespace dqk
