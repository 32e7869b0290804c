// pybind11 bindings of the bernoulli_flip_loglik kernels (csrc/bernoulli_flip/). Tensors
// arrive as TensorArg (python/binding.h); x, logits [B, D], weight [D, H], z [B, H] and
// grad_out [B, H] may have any strides, the outputs are contiguous
// (csrc/bernoulli_flip/bernoulli_flip.h).
#include <pybind11/pybind11.h>

#include "../csrc/bernoulli_flip/bernoulli_flip.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

namespace bf = bernoulli_flip;

bf::Mat mat(const TensorArg& t) { return bf::Mat{t.data, t.stride(0), t.stride(1)}; }

DType accumulate(DType t) { return t == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32; }

// x, logits, weight and z: sizes and dtype
bf::Args base_args(ArgCheck& c, const TensorArg& x, const TensorArg& logits,
                   const TensorArg& weight, const TensorArg& z) {
  c.floating("x", x, {kAny, kAny});
  bf::Args a;
  a.dtype = x.dtype;
  a.B = x.size(0);
  a.D = x.size(1);
  c.tensor("logits", logits, {a.B, a.D}, a.dtype);
  c.tensor("weight", weight, {a.D, kAny}, a.dtype);
  a.H = weight.size(1);
  c.tensor("z", z, {a.B, a.H}, a.dtype);
  c.require(a.B > 0 && a.D > 0 && a.H > 0, "the kernels take no empty tensors; got (B, D, H) = (" +
                                               std::to_string(a.B) + ", " + std::to_string(a.D) +
                                               ", " + std::to_string(a.H) + ")");
  a.x = mat(x);
  a.logits = mat(logits);
  a.w = mat(weight);
  a.z = mat(z);
  return a;
}

void* output(ArgCheck& c, const char* name, const TensorArg& t,
             std::initializer_list<int64_t> shape, DType dtype, bool optional) {
  if (optional && !t.defined()) return nullptr;
  c.tensor(name, t, shape, dtype);
  c.contiguous(name, t);
  return t.data;
}

bf::Args forward_args(ArgCheck& c, const TensorArg& x, const TensorArg& logits,
                      const TensorArg& weight, const TensorArg& z, const TensorArg& out) {
  bf::Args a = base_args(c, x, logits, weight, z);
  a.out = output(c, "out", out, {a.B, a.H}, accumulate(a.dtype), false);
  return a;
}

bf::Args backward_args(ArgCheck& c, const TensorArg& x, const TensorArg& logits,
                       const TensorArg& weight, const TensorArg& z, const TensorArg& grad_out,
                       const TensorArg& grad_x, const TensorArg& grad_logits,
                       const TensorArg& grad_weight) {
  bf::Args a = base_args(c, x, logits, weight, z);
  c.tensor("grad_out", grad_out, {a.B, a.H}, accumulate(a.dtype));
  a.gout = mat(grad_out);
  a.gx = output(c, "grad_x", grad_x, {a.B, a.D}, a.dtype, true);
  a.gl = output(c, "grad_logits", grad_logits, {a.B, a.D}, a.dtype, true);
  a.gw = output(c, "grad_weight", grad_weight, {a.D, a.H}, a.dtype, true);
  return a;
}

}  // namespace

void bind_bernoulli_flip(py::module_& m) {
  auto fwd = entry(m, "bernoulli_flip_forward", forward_args, "x, logits, weight, z, out");
  fwd.cpu<int>(cpu_launch<bf::Args, bf::forward_cpu>, "num_threads");
  auto bwd = entry(m, "bernoulli_flip_backward", backward_args,
                   "x, logits, weight, z, grad_out, grad_x, grad_logits, grad_weight (each "
                   "None: not wanted)");
  bwd.cpu<int>(cpu_launch<bf::Args, bf::backward_cpu>, "num_threads");
#ifdef DQK_WITH_CUDA
  fwd.cuda<uintptr_t>(cuda_launch<bf::Args, bf::forward_cuda>, "stream");
  bwd.cuda<uintptr_t>(cuda_launch<bf::Args, bf::backward_cuda>, "stream");
#endif
}

}  // namespace dqk
