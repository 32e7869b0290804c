// pybind11 bindings exposing the csrc kernels as dqkernels._C. Tensors cross as
// TensorArg (python/binding.h; built by dqkernels/kernels/_cext.py: tensor_arg); each
// binding checks its tensors against each other and fills the kernel's Args from their own
// sizes (csrc/common/tensor.h), so neither this file nor csrc needs torch at build time.
// This file holds the module, the error mapping and the dmol kernels' bindings; the other op
// families bind themselves (python/bindings_*.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "../csrc/dmol/dmol.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

namespace dm = dmol;

// What every dmol entry point shares: params [B, M*(1 + J*C), H, W] (J = 3 for C = 3, 2 for
// C = 1) and the scalars.
dm::Args base_args(ArgCheck& c, const TensorArg& params, int64_t C, int64_t L, double mls) {
  c.floating("params", params, {kAny, kAny, kAny, kAny});
  c.require(C == 1 || C == 3, "the channel count C must be 1 or 3; got " + std::to_string(C));
  c.require(L >= 2, "num_levels must be >= 2; got " + std::to_string(L));
  dm::Args a;
  a.dtype = params.dtype;
  a.B = params.size(0);
  a.C = C;
  a.H = params.size(2);
  a.W = params.size(3);
  a.L = L;
  a.min_log_scale = mls;
  const int64_t P = params.size(1), per = C == 3 ? 10 : 3;
  c.require(P > 0 && P % per == 0,
            "params has " + std::to_string(P) + " channels, which fits no mixture count for C=" +
                std::to_string(C) + ": expected a positive multiple of " + std::to_string(per));
  a.M = P / per;
  c.require(a.B > 0 && a.H > 0 && a.W > 0,
            "the kernels take no empty tensors; got params of "
            "shape " +
                shape_str(params.sizes, 4));
  a.params = params.data;
  params.copy_strides(a.p_stride);
  return a;
}

// x [B, C, H, W] and params; C is x's
dm::Args nll_args(ArgCheck& c, const TensorArg& x, const TensorArg& params, int64_t L, double mls) {
  c.floating("x", x, {kAny, kAny, kAny, kAny});
  dm::Args a = base_args(c, params, x.size(1), L, mls);
  c.tensor("x", x, {a.B, a.C, a.H, a.W}, a.dtype);
  a.x = x.data;
  x.copy_strides(a.x_stride);
  return a;
}

// + out [B, H, W] in the accumulate dtype
dm::Args forward_args(ArgCheck& c, const TensorArg& x, const TensorArg& params,
                      const TensorArg& out, int64_t L, double mls) {
  dm::Args a = nll_args(c, x, params, L, mls);
  c.tensor("out", out, {a.B, a.H, a.W}, accumulate_dtype(a.dtype));
  a.out = out.data;
  out.copy_strides(a.out_stride);
  return a;
}

// grad_params: params' shape and dtype
void set_grad_params(ArgCheck& c, dm::Args& a, const TensorArg& params, const char* name,
                     const TensorArg& grad_params) {
  c.tensor(name, grad_params, {a.B, params.size(1), a.H, a.W}, a.dtype);
  a.grad_params = grad_params.data;
  grad_params.copy_strides(a.gp_stride);
}

dm::Args backward_args(ArgCheck& c, const TensorArg& x, const TensorArg& params,
                       const TensorArg& grad_out, const TensorArg& grad_params, int64_t L,
                       double mls) {
  dm::Args a = nll_args(c, x, params, L, mls);
  c.tensor("grad_out", grad_out, {a.B, a.H, a.W}, accumulate_dtype(a.dtype));
  a.grad_out = grad_out.data;
  grad_out.copy_strides(a.g_stride);
  set_grad_params(c, a, params, "grad_params", grad_params);
  return a;
}

// the forward's out and, for a unit upstream gradient, grad_unit (params' shape and dtype)
dm::Args forward_backward_args(ArgCheck& c, const TensorArg& x, const TensorArg& params,
                               const TensorArg& out, const TensorArg& grad_unit, int64_t L,
                               double mls) {
  dm::Args a = forward_args(c, x, params, out, L, mls);
  set_grad_params(c, a, params, "grad_unit", grad_unit);
  return a;
}

// params, u [B, 1 + C, H, W] in the accumulate dtype, out [B, C, H, W] in params' dtype
dm::Args sample_args(ArgCheck& c, const TensorArg& params, const TensorArg& u, const TensorArg& out,
                     int64_t L, double mls) {
  c.floating("out", out, {kAny, kAny, kAny, kAny});
  dm::Args a = base_args(c, params, out.size(1), L, mls);
  c.tensor("out", out, {a.B, a.C, a.H, a.W}, a.dtype);
  c.tensor("u", u, {a.B, 1 + a.C, a.H, a.W}, accumulate_dtype(a.dtype));
  a.u = u.data;
  u.copy_strides(a.u_stride);
  a.out = out.data;
  out.copy_strides(a.out_stride);
  return a;
}

}  // namespace

void bind_dmol(py::module_& m) {
  const char* nll = "x, params, out, num_levels, min_log_scale";
  auto forward = entry(m, "dmol_nll_forward", forward_args, nll);
  forward.cpu<int>(cpu_launch<dm::Args, dm::nll_forward_cpu>, "num_threads");
  auto backward = entry(m, "dmol_nll_backward", backward_args,
                        "x, params, grad_out, grad_params, num_levels, min_log_scale");
  backward.cpu<int>(cpu_launch<dm::Args, dm::nll_backward_cpu>, "num_threads");
  entry(m, "dmol_nll_forward_backward", forward_backward_args,
        "x, params, out, grad_unit, num_levels, min_log_scale")
      .cpu<int>(cpu_launch<dm::Args, dm::nll_forward_backward_cpu>, "num_threads");
  auto sample = entry(m, "dmol_sample", sample_args, "params, u, out, num_levels, min_log_scale");
  sample.cpu<int>(cpu_launch<dm::Args, dm::sample_cpu>, "num_threads");
#ifdef DQK_WITH_CUDA
  forward.cuda<uintptr_t>(cuda_launch<dm::Args, dm::nll_forward_cuda>, "stream");
  backward.cuda<uintptr_t>(cuda_launch<dm::Args, dm::nll_backward_cuda>, "stream");
  sample.cuda<uintptr_t>(cuda_launch<dm::Args, dm::sample_cuda>, "stream");
#endif
}

// the other op families bind themselves (python/bindings_*.cpp)
void bind_coupling(py::module_& m);
void bind_bernoulli_flip(py::module_& m);
void bind_masked_linear(py::module_& m);
void bind_masked_conv2d(py::module_& m);
void bind_vq(py::module_& m);

}  // namespace dqk

PYBIND11_MODULE(_C, m) {
  m.doc() = "dqkernels compiled kernels (C++/OpenMP on CPU, CUDA on NVIDIA GPUs)";

  // dqk::TypeError (a tensor of the wrong dtype) is Python's TypeError; std::invalid_argument
  // is ValueError (pybind11's own mapping)
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const dqk::TypeError& e) { PyErr_SetString(PyExc_TypeError, e.what()); }
  });

  m.def("built_with_cuda", []() {
#ifdef DQK_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("build_info", []() {
    py::dict d;
#ifdef DQK_WITH_CUDA
    d["cuda"] = true;
    d["cuda_archs"] = std::string(DQK_CUDA_ARCHS);
    d["cuda_version"] = std::string(DQK_CUDA_VERSION);
#else
    d["cuda"] = false;
#endif
#ifdef _OPENMP
    d["openmp"] = true;
#else
    d["openmp"] = false;
#endif
    d["compiler"] = std::string(DQK_CXX_COMPILER);
#ifdef DQK_SANITIZE
    d["sanitize"] = std::string(DQK_SANITIZE);
#endif
    return d;
  });
  m.def(
      "dtype_codes",
      []() {
        py::dict d;
        for (dqk::DType t : dqk::kDTypes) d[dqk::dtype_name(t)] = static_cast<int>(t);
        return d;
      },
      "torch dtype name -> the code tensors of that dtype carry (csrc/common/dtype.h)");

  dqk::bind_dmol(m);
  dqk::bind_coupling(m);
  dqk::bind_masked_linear(m);
  dqk::bind_masked_conv2d(m);
  dqk::bind_vq(m);
  dqk::bind_bernoulli_flip(m);
}
