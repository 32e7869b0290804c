// pybind11 bindings of the masked_conv2d kernels (csrc/masked/masked_conv2d*.{h,cpp,cu}).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_masked_conv2d(py::module_& m) {
  (void)m;  // TODO(issue 4): bind the masked_conv2d kernels
}
