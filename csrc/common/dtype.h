// Element types of the tensors the kernels read and write, as the bindings name them.
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>

namespace dqk {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
  }
  return "unknown";
}

// Calls f(T{}) with T the element type of dtype code t: float, double, or the caller's
// 16-bit types Half16 / BF16 (dqk::Half / dqk::BFloat16 on the CPU, __half /
// __nv_bfloat16 in CUDA code). An unknown code throws std::invalid_argument
// "<who>: unsupported dtype code N".
template <typename Half16, typename BF16, typename F>
void visit_dtype(DType t, const char* who, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float()); return;
    case DType::kFloat64: f(double()); return;
    case DType::kFloat16: f(Half16()); return;
    case DType::kBFloat16: f(BF16()); return;
  }
  throw std::invalid_argument(std::string(who) + ": unsupported dtype code " +
                              std::to_string(int(t)));
}

}  // namespace dqk
