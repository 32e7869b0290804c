// pybind11 bindings of the masked_linear kernels (csrc/masked/masked_linear*.{h,cpp,cu}).
// Tensors cross as addresses (0 = absent) and element strides;
// dqkernels/kernels/cpp_masked_linear.py builds them from torch tensors.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/masked/masked_linear.h"

namespace py = pybind11;

namespace {

namespace ml = dqk::masked_linear;
using Strides = std::vector<int64_t>;

ml::Mat mat(const char* name, uintptr_t p, const Strides& s) {
  if (p == 0) return ml::Mat{};
  if (s.size() != 2)
    throw std::invalid_argument(std::string(name) + ": expected 2 strides, got " +
                                std::to_string(s.size()));
  return ml::Mat{reinterpret_cast<const void*>(p), s[0], s[1]};
}

// sizes = (rows, in, out); degrees: contiguous int64 addresses
ml::Args make_args(int dtype, const Strides& sizes, bool strict, uintptr_t in_deg,
                   uintptr_t out_deg) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("dtype code must be 0..3");
  if (sizes.size() != 3) throw std::invalid_argument("sizes must be (rows, in, out)");
  ml::Args a;
  a.dtype = static_cast<dqk::DType>(dtype);
  a.rows = sizes[0];
  a.in = sizes[1];
  a.out = sizes[2];
  if (a.rows < 1 || a.in < 1 || a.out < 1)
    throw std::invalid_argument("masked_linear kernels need positive sizes");
  if (in_deg == 0 || out_deg == 0) throw std::invalid_argument("degrees are required");
  a.strict = strict;
  a.in_deg = reinterpret_cast<const int64_t*>(in_deg);
  a.out_deg = reinterpret_cast<const int64_t*>(out_deg);
  return a;
}

ml::Args forward_args(int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg,
                      uintptr_t x, const Strides& xs, uintptr_t w, const Strides& ws,
                      uintptr_t bias, int64_t bias_stride, uintptr_t y) {
  ml::Args a = make_args(dt, sz, strict, ideg, odeg);
  a.x = mat("x", x, xs);
  a.w = mat("weight", w, ws);
  if (!a.x.p || !a.w.p || !y) throw std::invalid_argument("x, weight and y are required");
  a.bias = reinterpret_cast<const void*>(bias);
  a.bias_stride = bias_stride;
  a.y = reinterpret_cast<void*>(y);
  return a;
}

ml::Args backward_args(int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg,
                       uintptr_t x, const Strides& xs, uintptr_t w, const Strides& ws,
                       uintptr_t gy, const Strides& gys, uintptr_t gx, uintptr_t gw,
                       uintptr_t gb) {
  ml::Args a = make_args(dt, sz, strict, ideg, odeg);
  a.x = mat("x", x, xs);
  a.w = mat("weight", w, ws);
  a.gy = mat("grad_y", gy, gys);
  if (!a.gy.p) throw std::invalid_argument("grad_y is required");
  if (gx && !a.w.p) throw std::invalid_argument("grad_x needs weight");
  if (gw && !a.x.p) throw std::invalid_argument("grad_weight needs x");
  a.gx = reinterpret_cast<void*>(gx);
  a.gw = reinterpret_cast<void*>(gw);
  a.gb = reinterpret_cast<void*>(gb);
  return a;
}

}  // namespace

void bind_masked_linear(py::module_& m) {
  auto gil = py::call_guard<py::gil_scoped_release>();
  m.def("masked_linear_cpu_isas", &ml::cpu_isas,
        "bit set of the CPU GEMM paths that run here (1: generic, 2: AVX2, 3: AVX-512, 4: "
        "AVX-512 with AVX512-BF16 for bf16 inputs)");
  m.def("masked_linear_forward_cpu",
        [](int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg, uintptr_t x,
           const Strides& xs, uintptr_t w, const Strides& ws, uintptr_t bias, int64_t bs,
           uintptr_t y, int nt, int isa) {
          ml::forward_cpu(forward_args(dt, sz, strict, ideg, odeg, x, xs, w, ws, bias, bs, y),
                          nt, isa);
        },
        "(dtype, sizes=(rows,in,out), strict, in_deg, out_deg, x, x_strides, weight, "
        "weight_strides, bias (0: none), bias_stride, y, num_threads, isa)",
        gil);
  m.def("masked_linear_backward_cpu",
        [](int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg, uintptr_t x,
           const Strides& xs, uintptr_t w, const Strides& ws, uintptr_t gy, const Strides& gys,
           uintptr_t gx, uintptr_t gw, uintptr_t gb, int nt, int isa) {
          ml::backward_cpu(
              backward_args(dt, sz, strict, ideg, odeg, x, xs, w, ws, gy, gys, gx, gw, gb), nt,
              isa);
        },
        "(dtype, sizes=(rows,in,out), strict, in_deg, out_deg, x, x_strides, weight, "
        "weight_strides, grad_y, grad_y_strides, grad_x, grad_weight, grad_bias (0: not "
        "wanted), num_threads, isa)",
        gil);
#ifdef DQK_WITH_CUDA
  m.def("masked_linear_forward_cuda",
        [](int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg, uintptr_t x,
           const Strides& xs, uintptr_t w, const Strides& ws, uintptr_t bias, int64_t bs,
           uintptr_t y, uintptr_t stream) {
          ml::forward_cuda(forward_args(dt, sz, strict, ideg, odeg, x, xs, w, ws, bias, bs, y),
                           reinterpret_cast<void*>(stream));
        },
        "(dtype, sizes=(rows,in,out), strict, in_deg, out_deg, x, x_strides, weight, "
        "weight_strides, bias (0: none), bias_stride, y, stream)",
        gil);
  m.def("masked_linear_backward_cuda",
        [](int dt, const Strides& sz, bool strict, uintptr_t ideg, uintptr_t odeg, uintptr_t x,
           const Strides& xs, uintptr_t w, const Strides& ws, uintptr_t gy, const Strides& gys,
           uintptr_t gx, uintptr_t gw, uintptr_t gb, uintptr_t stream) {
          ml::backward_cuda(
              backward_args(dt, sz, strict, ideg, odeg, x, xs, w, ws, gy, gys, gx, gw, gb),
              reinterpret_cast<void*>(stream));
        },
        "(dtype, sizes=(rows,in,out), strict, in_deg, out_deg, x, x_strides, weight, "
        "weight_strides, grad_y, grad_y_strides, grad_x, grad_weight, grad_bias (0: not "
        "wanted), stream)",
        gil);
#endif
}
