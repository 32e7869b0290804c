// pybind11 bindings of the masked_linear kernels (csrc/masked/masked_linear*.{h,cpp,cu}).
// Tensors arrive as TensorArg (python/binding.h); x [rows, in], weight [out, in] and
// grad_y [rows, out] may have any strides, the degrees are contiguous int64 and the outputs
// contiguous (csrc/masked/masked_linear.h).
#include <pybind11/pybind11.h>

#include "../csrc/masked/masked_linear.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

namespace ml = masked_linear;

ml::Mat mat(const TensorArg& t) { return ml::Mat{t.data, t.stride(0), t.stride(1)}; }

// x, weight and the degrees: sizes, dtype and the strict flag
ml::Args base_args(ArgCheck& c, const TensorArg& x, const TensorArg& weight,
                   const TensorArg& in_deg, const TensorArg& out_deg, bool strict) {
  c.floating("x", x, {kAny, kAny});
  ml::Args a;
  a.dtype = x.dtype;
  a.rows = x.size(0);
  a.in = x.size(1);
  c.tensor("weight", weight, {kAny, a.in}, a.dtype);
  a.out = weight.size(0);
  c.require(a.rows > 0 && a.in > 0 && a.out > 0,
            "the kernels take no empty tensors; got (rows, in, out) = (" + std::to_string(a.rows) +
                ", " + std::to_string(a.in) + ", " + std::to_string(a.out) + ")");
  c.tensor("in_degrees", in_deg, {a.in}, DType::kInt64);
  c.contiguous("in_degrees", in_deg);
  c.tensor("out_degrees", out_deg, {a.out}, DType::kInt64);
  c.contiguous("out_degrees", out_deg);
  a.strict = strict;
  a.in_deg = in_deg.ptr<const int64_t>();
  a.out_deg = out_deg.ptr<const int64_t>();
  a.x = mat(x);
  a.w = mat(weight);
  return a;
}

// an output of the given shape, x's dtype, contiguous; absent (None) allowed when optional
void* output(ArgCheck& c, const ml::Args& a, const char* name, const TensorArg& t,
             std::initializer_list<int64_t> shape, bool optional) {
  if (optional && !t.defined()) return nullptr;
  c.tensor(name, t, shape, a.dtype);
  c.contiguous(name, t);
  return t.data;
}

ml::Args forward_args(ArgCheck& c, const TensorArg& x, const TensorArg& weight,
                      const TensorArg& bias, const TensorArg& in_deg, const TensorArg& out_deg,
                      const TensorArg& y, bool strict) {
  ml::Args a = base_args(c, x, weight, in_deg, out_deg, strict);
  if (c.optional("bias", bias, {a.out}, a.dtype)) {
    a.bias = bias.data;
    a.bias_stride = bias.stride(0);
  }
  a.y = output(c, a, "y", y, {a.rows, a.out}, false);
  return a;
}

ml::Args backward_args(ArgCheck& c, const TensorArg& grad_y, const TensorArg& x,
                       const TensorArg& weight, const TensorArg& in_deg, const TensorArg& out_deg,
                       const TensorArg& grad_x, const TensorArg& grad_weight,
                       const TensorArg& grad_bias, bool strict) {
  ml::Args a = base_args(c, x, weight, in_deg, out_deg, strict);
  c.tensor("grad_y", grad_y, {a.rows, a.out}, a.dtype);
  a.gy = mat(grad_y);
  a.gx = output(c, a, "grad_x", grad_x, {a.rows, a.in}, true);
  a.gw = output(c, a, "grad_weight", grad_weight, {a.out, a.in}, true);
  a.gb = output(c, a, "grad_bias", grad_bias, {a.out}, true);
  return a;
}

template <void (*Kernel)(const ml::Args&, int, int)>
void run_cpu(ArgCheck&, const ml::Args& a, int nt, int isa) {
  Kernel(a, nt, isa);
}

}  // namespace

void bind_masked_linear(py::module_& m) {
  m.def("masked_linear_cpu_isas", &ml::cpu_isas,
        "bit set of the CPU GEMM paths that run here (1: generic, 2: AVX2, 3: AVX-512, 4: "
        "AVX-512 with AVX512-BF16 for bf16 inputs)");
  // isa: the CPU GEMM path (0: the best this CPU runs); absent outputs (None) of the
  // backward are not wanted
  auto fwd = entry(m, "masked_linear_forward", forward_args,
                   "x, weight, bias (None: no bias), in_degrees, out_degrees, y, strict");
  fwd.cpu<int, int>(run_cpu<ml::forward_cpu>, "num_threads, isa");
  auto bwd = entry(m, "masked_linear_backward", backward_args,
                   "grad_y, x, weight, in_degrees, out_degrees, grad_x, grad_weight, "
                   "grad_bias (each None: not wanted), strict");
  bwd.cpu<int, int>(run_cpu<ml::backward_cpu>, "num_threads, isa");
#ifdef DQK_WITH_CUDA
  fwd.cuda<uintptr_t>(cuda_launch<ml::Args, ml::forward_cuda>, "stream");
  bwd.cuda<uintptr_t>(cuda_launch<ml::Args, ml::backward_cuda>, "stream");
#endif
}

}  // namespace dqk
