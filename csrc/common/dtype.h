// Element types of the tensors the kernels read and write, as the bindings name them.
// The codes are the ones dqkernels/kernels/_cext.py sends (it reads them from
// dqkernels._C.dtype_codes(), which lists kDTypes).
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>

namespace dqk {

// Codes 0-3: the floating types the kernels compute on; 4-9: integer and bool tensors
// (indices, degrees, scratch); kUnknown: any other torch dtype (complex, float8, ...).
enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
  kInt64 = 4,
  kInt32 = 5,
  kInt16 = 6,
  kInt8 = 7,
  kUInt8 = 8,
  kBool = 9,
  kUnknown = -1,
};

constexpr DType kDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat64,
                             DType::kInt64,   DType::kInt32,   DType::kInt16,    DType::kInt8,
                             DType::kUInt8,   DType::kBool};

// The dtype of a code, kUnknown for a code that names none.
inline DType dtype_of_code(long code) {
  return code >= 0 && code <= static_cast<long>(DType::kBool) ? static_cast<DType>(code)
                                                              : DType::kUnknown;
}

// torch's name of each dtype (dtype_name(kUnknown) says so)
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat64: return "float64";
    case DType::kInt64: return "int64";
    case DType::kInt32: return "int32";
    case DType::kInt16: return "int16";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kBool: return "bool";
    case DType::kUnknown: break;
  }
  return "a dtype the kernels do not take";
}

inline bool is_floating(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16 ||
         t == DType::kFloat64;
}

// The dtype kernels accumulate in (and write losses, distances and logdets in) for inputs
// of dtype t: float64 for float64, float32 otherwise.
inline DType accumulate_dtype(DType t) {
  return t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
}

// Calls f(T{}) with T the element type of floating dtype t: float, double, or the caller's
// 16-bit types Half16 / BF16 (dqk::Half / dqk::BFloat16 on the CPU, __half /
// __nv_bfloat16 in CUDA code). Any other dtype throws std::invalid_argument
// "<who>: unsupported dtype code N".
template <typename Half16, typename BF16, typename F>
void visit_dtype(DType t, const char* who, F&& f) {
  switch (t) {
    case DType::kFloat32: f(float()); return;
    case DType::kFloat64: f(double()); return;
    case DType::kFloat16: f(Half16()); return;
    case DType::kBFloat16: f(BF16()); return;
    default: break;
  }
  throw std::invalid_argument(std::string(who) + ": unsupported dtype code " +
                              std::to_string(int(t)));
}

}  // namespace dqk
