// pybind11 bindings of the masked_conv2d kernels (csrc/masked/masked_conv2d*.{h,cpp,cu}).
// Tensors arrive as TensorArg (python/binding.h), each with its own strides:
// x [B, Cin, H, W], weight [Cout, Cin, k, k] (k odd), bias [Cout] or None, y [B, Cout, H, W];
// the backward's grad_y [B, Cout, H, W] and outputs grad_x, grad_weight, grad_bias (None: not
// wanted).
#include <pybind11/pybind11.h>

#include <string>

#include "../csrc/masked/masked_conv2d.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

namespace mc = masked_conv2d;

mc::Args base_args(ArgCheck& c, const TensorArg& x, const TensorArg& weight, bool type_b,
                   int64_t groups) {
  c.floating("x", x, {kAny, kAny, kAny, kAny});
  mc::Args a;
  a.dtype = x.dtype;
  a.B = x.size(0);
  a.Cin = x.size(1);
  a.H = x.size(2);
  a.W = x.size(3);
  c.tensor("weight", weight, {kAny, a.Cin, kAny, kAny}, a.dtype);
  a.Cout = weight.size(0);
  a.k = weight.size(2);
  c.require(weight.size(3) == a.k, "weight must have a square kernel [Cout, Cin, k, k]; got " +
                                       shape_str(weight.sizes, 4));
  c.require(a.B > 0 && a.Cin > 0 && a.Cout > 0 && a.H > 0 && a.W > 0,
            "the kernels take no empty tensors; got x " + shape_str(x.sizes, 4) + " and weight " +
                shape_str(weight.sizes, 4));
  c.require(a.k % 2 == 1, "the kernel size k must be odd; got " + std::to_string(a.k));
  c.require(groups >= 1 && groups <= a.Cin && groups <= a.Cout,
            "groups must be in [1, min(Cin, Cout)] = [1, " +
                std::to_string(a.Cin < a.Cout ? a.Cin : a.Cout) + "]; got " +
                std::to_string(groups));
  a.type_b = type_b;
  a.groups = groups;
  a.x = x.data;
  x.copy_strides(a.x_st);
  a.w = weight.data;
  weight.copy_strides(a.w_st);
  return a;
}

// a 1-D [Cout] tensor in x's dtype, or None: (address, stride)
void* vector(ArgCheck& c, const mc::Args& a, const char* name, const TensorArg& t,
             int64_t& stride) {
  if (!c.optional(name, t, {a.Cout}, a.dtype)) return nullptr;
  stride = t.stride(0);
  return t.data;
}

mc::Args forward_args(ArgCheck& c, const TensorArg& x, const TensorArg& weight,
                      const TensorArg& bias, const TensorArg& y, bool type_b, int64_t groups) {
  mc::Args a = base_args(c, x, weight, type_b, groups);
  a.bias = vector(c, a, "bias", bias, a.bias_st);
  c.tensor("y", y, {a.B, a.Cout, a.H, a.W}, a.dtype);
  a.y = y.data;
  y.copy_strides(a.y_st);
  return a;
}

mc::Args backward_args(ArgCheck& c, const TensorArg& x, const TensorArg& weight,
                       const TensorArg& grad_y, const TensorArg& grad_x,
                       const TensorArg& grad_weight, const TensorArg& grad_bias, bool type_b,
                       int64_t groups) {
  mc::Args a = base_args(c, x, weight, type_b, groups);
  c.tensor("grad_y", grad_y, {a.B, a.Cout, a.H, a.W}, a.dtype);
  a.gy = grad_y.data;
  grad_y.copy_strides(a.gy_st);
  if (c.optional("grad_x", grad_x, {a.B, a.Cin, a.H, a.W}, a.dtype)) {
    a.gx = grad_x.data;
    grad_x.copy_strides(a.gx_st);
  }
  if (c.optional("grad_weight", grad_weight, {a.Cout, a.Cin, a.k, a.k}, a.dtype)) {
    a.gw = grad_weight.data;
    grad_weight.copy_strides(a.gw_st);
  }
  a.gb = vector(c, a, "grad_bias", grad_bias, a.gb_st);
  return a;
}

#ifdef DQK_WITH_CUDA
int64_t workspace(ArgCheck&, const mc::Args& a) { return mc::backward_cuda_workspace(a); }

// work: a uint8 tensor of at least masked_conv2d_backward_cuda_workspace(...) bytes
void backward_cuda(ArgCheck& c, mc::Args a, const TensorArg& work, uintptr_t stream) {
  const int64_t bytes = mc::backward_cuda_workspace(a);
  if (bytes > 0) {
    c.tensor("work", work, {kAny}, DType::kUInt8);
    c.contiguous("work", work);
    c.require(work.size(0) >= bytes, "work must hold at least " + std::to_string(bytes) +
                                         " bytes; got " + std::to_string(work.size(0)));
    a.work = work.data;
  }
  mc::backward_cuda(a, cuda_stream(stream));
}
#endif

}  // namespace

void bind_masked_conv2d(py::module_& m) {
  auto fwd = entry(m, "masked_conv2d_forward", forward_args,
                   "x, weight, bias (None: no bias), y, type_b, groups");
  fwd.cpu<int>(cpu_launch<mc::Args, mc::forward_cpu>, "num_threads");
  const char* bwd_params =
      "x, weight, grad_y, grad_x, grad_weight, grad_bias (each None: not wanted), type_b, "
      "groups";
  auto bwd = entry(m, "masked_conv2d_backward", backward_args, bwd_params);
  bwd.cpu<int>(cpu_launch<mc::Args, mc::backward_cpu>, "num_threads");
#ifdef DQK_WITH_CUDA
  fwd.cuda<uintptr_t>(cuda_launch<mc::Args, mc::forward_cuda>, "stream");
  bwd.cuda<const TensorArg&, uintptr_t>(backward_cuda, "work, stream");
  // masked_conv2d_backward_workspace_cuda(...): the bytes of work that
  // masked_conv2d_backward_cuda needs (split-K partial sums of grad_weight and grad_bias)
  entry(m, "masked_conv2d_backward_workspace", backward_args, bwd_params).cuda<>(workspace, "");
#endif
}

}  // namespace dqk
