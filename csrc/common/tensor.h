// The one form in which tensors reach the kernels' entry points from Python, and the
// checks every binding runs on them before it fills a kernel's Args.
//
// dqkernels/kernels/_cext.py (tensor_arg) turns a torch tensor into (data address, dtype
// code, device, sizes, element strides); python/tensor_arg.h receives that as a TensorArg.
// A binding then checks its tensors against each other with an ArgCheck (presence, number
// of dimensions, sizes, dtypes, device, contiguity) and fills the kernel's Args from the
// tensors' own sizes, so a kernel never runs on sizes that its tensors do not have.
// Nothing here knows about Python or torch.
#pragma once

#include <stdint.h>

#include <initializer_list>
#include <stdexcept>
#include <string>

#include "dtype.h"

namespace dqk {

// A wrong dtype: the bindings raise it as Python's TypeError (every other failed check is a
// std::invalid_argument, raised as ValueError).
struct TypeError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

constexpr int kMaxDims = 8;
// device codes: CUDA tensors carry their device index (>= 0)
constexpr int kCpuDevice = -1;
constexpr int kOtherDevice = -2;  // neither CPU nor CUDA (never valid for a kernel)
// a size in an ArgCheck shape that may be anything
constexpr int64_t kAny = -1;

struct TensorArg {
  void* data = nullptr;
  DType dtype = DType::kUnknown;
  int device = kCpuDevice;
  int ndim = -1;                   // -1: absent (None); may exceed kMaxDims
  int64_t sizes[kMaxDims] = {};    // the first min(ndim, kMaxDims) are set
  int64_t strides[kMaxDims] = {};  // in elements

  bool defined() const { return ndim >= 0; }
  int64_t size(int d) const { return sizes[d]; }
  int64_t stride(int d) const { return strides[d]; }
  template <typename T = void>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  // copies the ndim element strides into `to` (which has room for them)
  void copy_strides(int64_t* to) const {
    for (int d = 0; d < ndim && d < kMaxDims; ++d) to[d] = strides[d];
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int d = 0; d < ndim && d < kMaxDims; ++d) n *= sizes[d];
    return n;
  }
  // row-major dense (size-1 dimensions may have any stride)
  bool is_contiguous() const {
    int64_t expected = 1;
    for (int d = (ndim < kMaxDims ? ndim : kMaxDims) - 1; d >= 0; --d) {
      if (sizes[d] == 1) continue;
      if (strides[d] != expected) return false;
      expected *= sizes[d];
    }
    return true;
  }
};

inline std::string device_name(int device) {
  if (device == kCpuDevice) return "cpu";
  if (device >= 0) return "cuda:" + std::to_string(device);
  return "a device that is neither cpu nor cuda";
}

// "(2, 3)", "(5,)", "()"; kAny shows as "*"
inline std::string shape_str(const int64_t* sizes, int n) {
  std::string s = "(";
  for (int d = 0; d < n; ++d) {
    if (d) s += ", ";
    s += sizes[d] == kAny ? std::string("*") : std::to_string(sizes[d]);
  }
  return s + (n == 1 ? ",)" : ")");
}

enum class Exec { kCpu, kCuda };

// Checks the tensor arguments of one entry point; every failure names the entry point and
// the argument. The tensors of a CPU entry point must be on the CPU, those of a CUDA entry
// point on one CUDA device (the first tensor checked fixes which).
class ArgCheck {
 public:
  ArgCheck(const char* where, Exec exec)
      : where_(where), exec_(exec), device_(exec == Exec::kCpu ? kCpuDevice : kUnset) {}

  // `t` is present, on this entry point's device, with shape.size() dimensions of the given
  // sizes (kAny: any) and dtype `dtype`; returns it.
  const TensorArg& tensor(const char* name, const TensorArg& t,
                          std::initializer_list<int64_t> shape, DType dtype) {
    check_shape(name, t, shape);
    if (t.dtype != dtype)
      throw TypeError(prefix(name) + "must have dtype " + dtype_name(dtype) + "; got " +
                      dtype_name(t.dtype));
    return t;
  }
  // ... with any floating dtype (float16, bfloat16, float32 or float64)
  const TensorArg& floating(const char* name, const TensorArg& t,
                            std::initializer_list<int64_t> shape) {
    check_shape(name, t, shape);
    if (!is_floating(t.dtype))
      throw TypeError(prefix(name) +
                      "must be a floating tensor (float16, bfloat16, float32 "
                      "or float64); got " +
                      dtype_name(t.dtype));
    return t;
  }
  // As tensor(), or absent (None): returns whether it is present.
  bool optional(const char* name, const TensorArg& t, std::initializer_list<int64_t> shape,
                DType dtype) {
    if (!t.defined()) return false;
    tensor(name, t, shape, dtype);
    return true;
  }
  void contiguous(const char* name, const TensorArg& t) const {
    if (t.defined() && !t.is_contiguous())
      fail(std::string(name) + " must be contiguous; got strides " + shape_str(t.strides, t.ndim) +
           " for shape " + shape_str(t.sizes, t.ndim));
  }
  // ValueError "<where>: <what>" unless ok
  void require(bool ok, const std::string& what) const {
    if (!ok) fail(what);
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(std::string(where_) + ": " + what);
  }
  // TypeError "<where>: <what>"
  [[noreturn]] void type_fail(const std::string& what) const {
    throw TypeError(std::string(where_) + ": " + what);
  }
  // the CUDA device index of the tensors (kCpuDevice on the CPU)
  int device() const { return device_; }

 private:
  static constexpr int kUnset = -3;

  std::string prefix(const char* name) const { return std::string(where_) + ": " + name + " "; }

  void check_shape(const char* name, const TensorArg& t, std::initializer_list<int64_t> shape) {
    if (!t.defined()) fail(std::string(name) + " is required; got None");
    place(name, t);
    const int n = static_cast<int>(shape.size());
    if (t.ndim != n)
      fail(std::string(name) + " must have " + std::to_string(n) + " dimensions; got " +
           std::to_string(t.ndim));
    int d = 0;
    for (int64_t want : shape) {
      if (want != kAny && t.sizes[d] != want)
        fail(std::string(name) + " must have shape " + shape_str(shape.begin(), n) + "; got " +
             shape_str(t.sizes, n));
      ++d;
    }
  }

  void place(const char* name, const TensorArg& t) {
    if (exec_ == Exec::kCpu) {
      if (t.device != kCpuDevice)
        fail(std::string(name) + " is on " + device_name(t.device) +
             "; this entry point takes CPU tensors");
      return;
    }
    if (t.device < 0)
      fail(std::string(name) + " is on " + device_name(t.device) +
           "; this entry point takes CUDA tensors");
    if (device_ == kUnset) {
      device_ = t.device;
      first_ = name;
    } else if (t.device != device_) {
      fail(std::string(name) + " is on " + device_name(t.device) + " but " + first_ + " is on " +
           device_name(device_) + "; all tensors must be on one device");
    }
  }

  const char* where_;
  Exec exec_;
  int device_;
  const char* first_ = "";
};

}  // namespace dqk
