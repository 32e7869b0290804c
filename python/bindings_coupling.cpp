// pybind11 bindings of the coupling kernels (csrc/coupling/coupling.h): the affine and the
// mixture-of-logistics CDF coupling. Every tensor arrives as the [B, n1, n2, n3] view (per
// element) or [B, n1, n2, n3, K] view (per mixture component) that
// dqkernels/kernels/_layout.py makes of it; logdet and grad_logdet are [B]. The binding
// checks that the views agree and puts them into the kernel's slots.
#include <pybind11/pybind11.h>

#include <string>

#include "../csrc/coupling/coupling.h"
#include "binding.h"

namespace py = pybind11;

namespace dqk {
namespace {

namespace cp = coupling;

// Fills the slots of a coupling Args from checked views: x (slot 0) fixes the sizes, the
// first per-component tensor fixes K.
class Slots {
 public:
  Slots(ArgCheck& c, const TensorArg& x, bool inverse) : c_(c) {
    c_.floating("x", x, {kAny, kAny, kAny, kAny});
    a_.dtype = x.dtype;
    a_.B = x.size(0);
    a_.n1 = x.size(1);
    a_.n2 = x.size(2);
    a_.n3 = x.size(3);
    a_.inverse = inverse;
    c_.require(a_.B > 0 && a_.n1 > 0 && a_.n2 > 0 && a_.n3 > 0,
               "the kernels take no empty tensors; got x viewed as " + shape_str(x.sizes, 4));
    put(cp::kIn0, x);
  }
  // a tensor of x's shape and dtype
  void elem(int slot, const char* name, const TensorArg& t) {
    c_.tensor(name, t, {a_.B, a_.n1, a_.n2, a_.n3}, a_.dtype);
    put(slot, t);
  }
  // a tensor of shape [*x.shape, K] and x's dtype
  void per_k(int slot, const char* name, const TensorArg& t) {
    if (!have_k_) {
      c_.floating(name, t, {a_.B, a_.n1, a_.n2, a_.n3, kAny});
      a_.K = t.size(4);
      c_.require(a_.K > 0, std::string(name) + " has no mixture components (K = 0)");
      have_k_ = true;
    }
    c_.tensor(name, t, {a_.B, a_.n1, a_.n2, a_.n3, a_.K}, a_.dtype);
    put(slot, t);
  }
  // a [B] tensor in the accumulate dtype (logdet, grad_logdet)
  void per_row(int slot, const char* name, const TensorArg& t) {
    c_.tensor(name, t, {a_.B}, accumulate_dtype(a_.dtype));
    put(slot, t);
  }
  // x, logits, means, log_scales, a, b (or their gradients) into slots first..first+5;
  // slot `first` (x or grad_x) only when with_x
  void mixture(int first, const char* const names[6], const TensorArg* const t[6], bool with_x) {
    if (with_x) elem(first, names[0], *t[0]);
    for (int i = 1; i < 4; ++i) per_k(first + i, names[i], *t[i]);
    for (int i = 4; i < 6; ++i) elem(first + i, names[i], *t[i]);
  }
  const cp::Args& args() const { return a_; }

 private:
  void put(int slot, const TensorArg& t) {
    a_.t[slot].p = t.data;
    t.copy_strides(a_.t[slot].st);
  }

  ArgCheck& c_;
  cp::Args a_;
  bool have_k_ = false;
};

// x, shift and scale_logit
Slots affine_inputs(ArgCheck& c, const TensorArg& x, const TensorArg& shift,
                    const TensorArg& scale_logit, bool inverse) {
  Slots s(c, x, inverse);
  s.elem(cp::kIn0 + 1, "shift", shift);
  s.elem(cp::kIn0 + 2, "scale_logit", scale_logit);
  return s;
}

cp::Args affine_forward(ArgCheck& c, const TensorArg& x, const TensorArg& shift,
                        const TensorArg& scale_logit, const TensorArg& y, const TensorArg& logdet,
                        bool inverse) {
  Slots s = affine_inputs(c, x, shift, scale_logit, inverse);
  s.elem(cp::kOut, "y", y);
  s.per_row(cp::kLogdet, "logdet", logdet);
  return s.args();
}

cp::Args affine_backward(ArgCheck& c, const TensorArg& x, const TensorArg& shift,
                         const TensorArg& scale_logit, const TensorArg& grad_y,
                         const TensorArg& grad_logdet, const TensorArg& grad_x,
                         const TensorArg& grad_shift, const TensorArg& grad_scale_logit,
                         bool inverse) {
  Slots s = affine_inputs(c, x, shift, scale_logit, inverse);
  s.elem(cp::kGradOut, "grad_y", grad_y);
  s.per_row(cp::kGradLogdet, "grad_logdet", grad_logdet);
  s.elem(cp::kGrad0, "grad_x", grad_x);
  s.elem(cp::kGrad0 + 1, "grad_shift", grad_shift);
  s.elem(cp::kGrad0 + 2, "grad_scale_logit", grad_scale_logit);
  return s.args();
}

const char* const kMixNames[6] = {"x", "logits", "means", "log_scales", "a", "b"};
const char* const kMixGradNames[6] = {"grad_x",          "grad_logits", "grad_means",
                                      "grad_log_scales", "grad_a",      "grad_b"};

// The forward map (or, `inverse`, its inverse: then x is the inverse's input y and out
// receives x).
cp::Args mix_forward(ArgCheck& c, const TensorArg& x, const TensorArg& logits,
                     const TensorArg& means, const TensorArg& log_scales, const TensorArg& a,
                     const TensorArg& b, const TensorArg& out, const TensorArg& logdet,
                     bool inverse) {
  Slots s(c, x, false);
  const TensorArg* const in[6] = {&x, &logits, &means, &log_scales, &a, &b};
  s.mixture(cp::kIn0, kMixNames, in, false);
  s.elem(cp::kOut, "out", out);
  s.per_row(cp::kLogdet, "logdet", logdet);
  cp::Args args = s.args();
  args.inverse = inverse;  // read by the launcher, which picks the kind
  return args;
}

cp::Args mix_backward(ArgCheck& c, const TensorArg& x, const TensorArg& logits,
                      const TensorArg& means, const TensorArg& log_scales, const TensorArg& a,
                      const TensorArg& b, const TensorArg& grad_out, const TensorArg& grad_logdet,
                      const TensorArg& grad_x, const TensorArg& grad_logits,
                      const TensorArg& grad_means, const TensorArg& grad_log_scales,
                      const TensorArg& grad_a, const TensorArg& grad_b, bool inverse) {
  Slots s(c, x, inverse);
  const TensorArg* const in[6] = {&x, &logits, &means, &log_scales, &a, &b};
  s.mixture(cp::kIn0, kMixNames, in, false);
  s.elem(cp::kGradOut, "grad_out", grad_out);
  s.per_row(cp::kGradLogdet, "grad_logdet", grad_logdet);
  const TensorArg* const grads[6] = {&grad_x,          &grad_logits, &grad_means,
                                     &grad_log_scales, &grad_a,      &grad_b};
  s.mixture(cp::kGrad0, kMixGradNames, grads, true);
  return s.args();
}

// The kind of a mixture forward Args; the kernels see inverse = false for both maps.
cp::Kind mix_kind(cp::Args& a) {
  const cp::Kind kind = a.inverse ? cp::kMixInverse : cp::kMixForward;
  a.inverse = false;
  return kind;
}

template <cp::Kind K>
void run_cpu(ArgCheck&, const cp::Args& a, int nt, bool scalar_only) {
  cp::run_cpu(K, a, nt, scalar_only);
}
void mix_forward_cpu(ArgCheck&, cp::Args a, int nt, bool scalar_only) {
  const cp::Kind kind = mix_kind(a);
  cp::run_cpu(kind, a, nt, scalar_only);
}

#ifdef DQK_WITH_CUDA
// CUDA forward kernels: work [B, chunks] (contiguous, accumulate dtype) receives the
// per-block logdet partial sums over `chunk` elements of a row
void set_work(ArgCheck& c, cp::Args& a, const TensorArg& work, int64_t chunk) {
  c.require(chunk > 0, "chunk must be positive; got " + std::to_string(chunk));
  const int64_t chunks = (a.n1 * a.n2 * a.n3 + chunk - 1) / chunk;
  c.tensor("work", work, {a.B, chunks}, accumulate_dtype(a.dtype));
  c.contiguous("work", work);
  a.work = work.data;
  a.chunk = chunk;
}
void affine_forward_cuda(ArgCheck& c, cp::Args a, const TensorArg& work, int64_t chunk,
                         uintptr_t stream) {
  set_work(c, a, work, chunk);
  cp::run_cuda(cp::kAffineForward, a, cuda_stream(stream));
}
void mix_forward_cuda(ArgCheck& c, cp::Args a, const TensorArg& work, int64_t chunk,
                      uintptr_t stream) {
  const cp::Kind kind = mix_kind(a);
  set_work(c, a, work, chunk);
  cp::run_cuda(kind, a, cuda_stream(stream));
}
template <cp::Kind K>
void run_cuda(ArgCheck&, const cp::Args& a, uintptr_t stream) {
  cp::run_cuda(K, a, cuda_stream(stream));
}
#endif

}  // namespace

void bind_coupling(py::module_& m) {
  // CPU launch arguments: scalar_only runs the CPU kernels' scalar path (the math the CUDA
  // kernels share) on float32 too (tests). CUDA forward kernels also take work (see
  // set_work) and chunk.
  const char* cpu = "num_threads, scalar_only";
  const char* cuda_fwd = "work, chunk, stream";
  auto affine_fwd = entry(m, "affine_coupling_forward", affine_forward,
                          "x, shift, scale_logit, y, logdet, inverse");
  affine_fwd.cpu<int, bool>(run_cpu<cp::kAffineForward>, cpu);
  auto affine_bwd = entry(m, "affine_coupling_backward", affine_backward,
                          "x, shift, scale_logit, grad_y, grad_logdet, grad_x, "
                          "grad_shift, grad_scale_logit, inverse");
  affine_bwd.cpu<int, bool>(run_cpu<cp::kAffineBackward>, cpu);
  auto mix_fwd = entry(m, "mixlogcdf_forward", mix_forward,
                       "x, logits, means, log_scales, a, b, out, logdet, inverse");
  mix_fwd.cpu<int, bool>(mix_forward_cpu, cpu);
  auto mix_bwd = entry(m, "mixlogcdf_backward", mix_backward,
                       "x, logits, means, log_scales, a, b, grad_out, grad_logdet, "
                       "grad_x, grad_logits, grad_means, grad_log_scales, grad_a, "
                       "grad_b, inverse");
  mix_bwd.cpu<int, bool>(run_cpu<cp::kMixBackward>, cpu);
#ifdef DQK_WITH_CUDA
  affine_fwd.cuda<const TensorArg&, int64_t, uintptr_t>(affine_forward_cuda, cuda_fwd);
  affine_bwd.cuda<uintptr_t>(run_cuda<cp::kAffineBackward>, "stream");
  mix_fwd.cuda<const TensorArg&, int64_t, uintptr_t>(mix_forward_cuda, cuda_fwd);
  mix_bwd.cuda<uintptr_t>(run_cuda<cp::kMixBackward>, "stream");
#else
  (void)cuda_fwd;
#endif
}

}  // namespace dqk
