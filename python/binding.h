// How the bindings receive tensors from Python and define their entry points.
//
// Tensors: every entry point takes its tensors as dqk::TensorArg (csrc/common/tensor.h). On
// the Python side dqkernels/kernels/_cext.py (tensor_arg) turns a torch tensor into the
// tuple (data address, dtype code, device, sizes, element strides, the tensor itself: it
// keeps the memory alive while the call runs), or passes None for an absent tensor; the
// caster below reads that tuple, copying only the numbers. A malformed
// argument is a TypeError (pybind11's "incompatible function arguments"); everything about
// the tensors themselves is checked by the binding (dqk::ArgCheck).
//
// Entry points: dqk::entry binds one kernel entry point as `<name>_cpu` and `<name>_cuda`
// from one function that checks the tensors and fills the kernel's Args:
//
//   Args build(dqk::ArgCheck& c, const TensorArg& x, ..., double scalar, ...);
//   auto e = dqk::entry(m, "op_forward", build, "x, ..., scalar");
//   e.cpu<int>([](dqk::ArgCheck&, const Args& a, int nt) { op::forward_cpu(a, nt); },
//              "num_threads");
//   e.cuda<uintptr_t>(dqk::cuda_launch<Args, op::forward_cuda>, "stream");  // #ifdef CUDA
//
// `<name>_cpu(x, ..., scalar, num_threads)` then runs build with an ArgCheck named after
// the entry point that takes CPU tensors only (`_cuda`: tensors on one CUDA device), and
// hands its Args to the launcher with the launch arguments (returning what it returns). The
// GIL is released throughout.
#pragma once

#include <pybind11/pybind11.h>

#include <string>
#include <utility>

#include "../csrc/common/tensor.h"

namespace pybind11 {
namespace detail {

template <>
struct type_caster<dqk::TensorArg> {
  PYBIND11_TYPE_CASTER(dqk::TensorArg, const_name("TensorArg"));

  bool load(handle src, bool /*convert*/) {
    value = dqk::TensorArg{};
    if (src.is_none()) return true;
    PyObject* t = src.ptr();
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 6) return false;
    PyObject* sizes = PyTuple_GET_ITEM(t, 3);
    PyObject* strides = PyTuple_GET_ITEM(t, 4);
    if (!PyTuple_Check(sizes) || !PyTuple_Check(strides)) return false;
    const Py_ssize_t n = PyTuple_GET_SIZE(sizes);
    if (PyTuple_GET_SIZE(strides) != n) return false;
    value.data = PyLong_AsVoidPtr(PyTuple_GET_ITEM(t, 0));
    value.dtype = dqk::dtype_of_code(PyLong_AsLong(PyTuple_GET_ITEM(t, 1)));
    value.device = static_cast<int>(PyLong_AsLong(PyTuple_GET_ITEM(t, 2)));
    value.ndim = static_cast<int>(n);
    for (Py_ssize_t d = 0; d < n && d < dqk::kMaxDims; ++d) {
      value.sizes[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(sizes, d));
      value.strides[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, d));
    }
    if (PyErr_Occurred()) {  // a field that is not an int
      PyErr_Clear();
      return false;
    }
    return true;
  }
};

}  // namespace detail
}  // namespace pybind11

namespace dqk {

// A cudaStream_t handed over from Python as an integer (torch's current stream).
inline void* cuda_stream(uintptr_t handle) { return reinterpret_cast<void*>(handle); }

// One kernel entry point, bound for the CPU and for CUDA (see the top of this file).
template <typename A, typename... In>
class Entry {
 public:
  using Build = A (*)(ArgCheck&, In...);

  Entry(pybind11::module_& m, std::string name, Build build, std::string params)
      : m_(m), name_(std::move(name)), build_(build), params_(std::move(params)) {}

  // `<name>_cpu(inputs..., launch...)`; run(ArgCheck&, A, Launch...) launches
  template <typename... Launch, typename Run>
  const Entry& cpu(Run run, const char* launch_params) const {
    def<Launch...>(Exec::kCpu, "_cpu", run, launch_params);
    return *this;
  }
  // `<name>_cuda(inputs..., launch...)`
  template <typename... Launch, typename Run>
  const Entry& cuda(Run run, const char* launch_params) const {
    def<Launch...>(Exec::kCuda, "_cuda", run, launch_params);
    return *this;
  }

 private:
  template <typename... Launch, typename Run>
  void def(Exec exec, const char* suffix, Run run, const char* launch_params) const {
    const std::string name = name_ + suffix;
    const Build build = build_;
    m_.def(
        name.c_str(),
        [name, build, run, exec](In... in, Launch... launch) {
          ArgCheck c(name.c_str(), exec);
          return run(c, build(c, in...), launch...);
        },
        ("(" + params_ + (*launch_params ? ", " : "") + launch_params + ")").c_str(),
        pybind11::call_guard<pybind11::gil_scoped_release>());
  }

  pybind11::module_& m_;
  std::string name_;
  Build build_;
  std::string params_;
};

// Launchers for the common kernel signatures kernel(args, num_threads) and
// kernel(args, stream): e.cpu<int>(cpu_launch<Args, op::forward_cpu>, "num_threads").
template <typename A, void (*Kernel)(const A&, int)>
void cpu_launch(ArgCheck&, const A& a, int num_threads) {
  Kernel(a, num_threads);
}
template <typename A, void (*Kernel)(const A&, void*)>
void cuda_launch(ArgCheck&, const A& a, uintptr_t stream) {
  Kernel(a, cuda_stream(stream));
}

template <typename A, typename... In>
Entry<A, In...> entry(pybind11::module_& m, std::string name, A (*build)(ArgCheck&, In...),
                      std::string params) {
  return Entry<A, In...>(m, std::move(name), build, std::move(params));
}

}  // namespace dqk
