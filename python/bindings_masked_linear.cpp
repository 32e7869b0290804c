// pybind11 bindings of the masked_linear kernels (csrc/masked/masked_linear*.{h,cpp,cu}).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_masked_linear(py::module_& m) {
  (void)m;  // TODO(issue 4): bind the masked_linear kernels
}
