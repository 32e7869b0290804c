// Runs of 16-bit floats to and from float on the CPU, shared by the kernels that convert
// fp16/bf16 rows into float buffers (masked_linear, vq, coupling, masked_conv2d).
//
// half_to_float and float_to_half use F16C (16 or 8 at a time) where the CPU has it, the
// path picked once from the cached CPU query; bf16_to_float is compiled per instruction
// set (target_clones), the clone picked when the module loads. Conversions to float are
// exact; float_to_half rounds to nearest even, as Scalar<Half>::store does.
#pragma once

#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "cpu_types.h"

namespace dqk {

void half_to_float(const Half* src, float* dst, int64_t n);
void float_to_half(const float* src, Half* dst, int64_t n);
void bf16_to_float(const BFloat16* src, float* dst, int64_t n);

// n contiguous values of type F to type T (float, double, Half, BFloat16; fp16/bf16 go
// to and from their accumulate type float)
template <typename F, typename T>
inline void convert_run(const F* src, T* dst, int64_t n) {
  constexpr bool to16 = std::is_same<T, Half>::value || std::is_same<T, BFloat16>::value;
  if constexpr (std::is_same<F, T>::value) {
    memcpy(dst, src, size_t(n) * sizeof(T));
  } else if constexpr (std::is_same<F, Half>::value && std::is_same<T, float>::value) {
    half_to_float(src, dst, n);
  } else if constexpr (std::is_same<F, float>::value && std::is_same<T, Half>::value) {
    float_to_half(src, dst, n);
  } else if constexpr (std::is_same<F, BFloat16>::value && std::is_same<T, float>::value) {
    bf16_to_float(src, dst, n);
  } else if constexpr (to16) {
    for (int64_t j = 0; j < n; ++j) Scalar<T>::store(dst + j, src[j]);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = T(Scalar<F>::load(src + j));
  }
}

}  // namespace dqk
