// pybind11 bindings of the masked_conv2d kernels (csrc/masked/masked_conv2d*.{h,cpp,cu}).
// Tensors cross as 8 (address, element strides) slots, address 0 = absent:
//   0 x, 1 weight, 2 bias, 3 y, 4 grad_y, 5 grad_x, 6 grad_weight, 7 grad_bias
// (4 strides each; bias and grad_bias 1). sizes = (B, Cin, Cout, H, W, k).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../csrc/masked/masked_conv2d.h"

namespace py = pybind11;

namespace {

using Strides = std::vector<int64_t>;
namespace mc = dqk::masked_conv2d;

constexpr int kSlots = 8;

template <size_t N>
void put_strides(const Strides& from, int64_t (&to)[N], int slot) {
  if (from.size() != N)
    throw std::invalid_argument("masked_conv2d: slot " + std::to_string(slot) + " needs " +
                                std::to_string(N) + " strides, got " +
                                std::to_string(from.size()));
  for (size_t i = 0; i < N; ++i) to[i] = from[i];
}

mc::Args make_args(int dtype, const Strides& sizes, bool type_b, int64_t groups,
                   const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& strides) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("dtype code must be 0..3");
  if (sizes.size() != 6) throw std::invalid_argument("sizes must be (B, Cin, Cout, H, W, k)");
  if (ptrs.size() != kSlots || strides.size() != kSlots)
    throw std::invalid_argument("masked_conv2d kernels take 8 (address, strides) slots");
  mc::Args a;
  a.dtype = static_cast<dqk::DType>(dtype);
  a.B = sizes[0]; a.Cin = sizes[1]; a.Cout = sizes[2]; a.H = sizes[3]; a.W = sizes[4];
  a.k = sizes[5];
  if (a.B < 1 || a.Cin < 1 || a.Cout < 1 || a.H < 1 || a.W < 1)
    throw std::invalid_argument("masked_conv2d kernels need positive sizes");
  if (a.k < 1 || a.k % 2 == 0) throw std::invalid_argument("masked_conv2d: k must be odd");
  if (groups < 1 || groups > a.Cin || groups > a.Cout)
    throw std::invalid_argument("masked_conv2d: need 1 <= groups <= min(Cin, Cout)");
  a.type_b = type_b;
  a.groups = groups;
  auto p = [&](int s) { return reinterpret_cast<void*>(ptrs[s]); };
  a.x = p(0); if (a.x) put_strides(strides[0], a.x_st, 0);
  a.w = p(1); if (a.w) put_strides(strides[1], a.w_st, 1);
  a.bias = p(2);
  if (a.bias) { int64_t s[1]; put_strides(strides[2], s, 2); a.bias_st = s[0]; }
  a.y = p(3); if (a.y) put_strides(strides[3], a.y_st, 3);
  a.gy = p(4); if (a.gy) put_strides(strides[4], a.gy_st, 4);
  a.gx = p(5); if (a.gx) put_strides(strides[5], a.gx_st, 5);
  a.gw = p(6); if (a.gw) put_strides(strides[6], a.gw_st, 6);
  a.gb = p(7);
  if (a.gb) { int64_t s[1]; put_strides(strides[7], s, 7); a.gb_st = s[0]; }
  if (!a.x || !a.w) throw std::invalid_argument("masked_conv2d: x and weight are required");
  return a;
}

void need_forward(const mc::Args& a) {
  if (!a.y) throw std::invalid_argument("masked_conv2d forward: y is required");
}

void need_backward(const mc::Args& a) {
  if (!a.gy) throw std::invalid_argument("masked_conv2d backward: grad_y is required");
}

}  // namespace

void bind_masked_conv2d(py::module_& m) {
  auto gil = py::call_guard<py::gil_scoped_release>();
  const char* sig = "(dtype, sizes=(B,Cin,Cout,H,W,k), type_b, groups, ptrs[8], strides[8], ";
  m.def("masked_conv2d_forward_cpu",
        [](int dt, const Strides& sz, bool type_b, int64_t groups,
           const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& st, int nt) {
          auto a = make_args(dt, sz, type_b, groups, ptrs, st);
          need_forward(a);
          mc::forward_cpu(a, nt);
        },
        (std::string(sig) + "num_threads)").c_str(), gil);
  m.def("masked_conv2d_backward_cpu",
        [](int dt, const Strides& sz, bool type_b, int64_t groups,
           const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& st, int nt) {
          auto a = make_args(dt, sz, type_b, groups, ptrs, st);
          need_backward(a);
          mc::backward_cpu(a, nt);
        },
        (std::string(sig) + "num_threads)").c_str(), gil);
#ifdef DQK_WITH_CUDA
  m.def("masked_conv2d_forward_cuda",
        [](int dt, const Strides& sz, bool type_b, int64_t groups,
           const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& st,
           uintptr_t stream) {
          auto a = make_args(dt, sz, type_b, groups, ptrs, st);
          need_forward(a);
          mc::forward_cuda(a, reinterpret_cast<void*>(stream));
        },
        (std::string(sig) + "stream)").c_str(), gil);
  m.def("masked_conv2d_backward_cuda_workspace",
        [](int dt, const Strides& sz, bool type_b, int64_t groups,
           const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& st) {
          return mc::backward_cuda_workspace(make_args(dt, sz, type_b, groups, ptrs, st));
        },
        (std::string(sig) + ") -> bytes of scratch for masked_conv2d_backward_cuda").c_str());
  m.def("masked_conv2d_backward_cuda",
        [](int dt, const Strides& sz, bool type_b, int64_t groups,
           const std::vector<uintptr_t>& ptrs, const std::vector<Strides>& st, uintptr_t work,
           uintptr_t stream) {
          auto a = make_args(dt, sz, type_b, groups, ptrs, st);
          need_backward(a);
          a.work = reinterpret_cast<void*>(work);
          mc::backward_cuda(a, reinterpret_cast<void*>(stream));
        },
        (std::string(sig) + "work, stream)").c_str(), gil);
#endif
}
