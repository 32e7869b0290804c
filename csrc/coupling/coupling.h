// C++ entry points of the coupling kernels (affine and mixture-of-logistics CDF): raw
// pointers, sizes, element strides and (for CUDA) a stream. Shapes and dtypes are
// validated by the caller; empty tensors never arrive.
//
// Every tensor is seen as [B, n1, n2, n3] (per element) or [B, n1, n2, n3, K] (per
// component), each with its own strides (dqkernels/kernels/_layout.py). Slots:
//   in[0..5]   affine: x, shift, scale_logit; mixlog: x, logits, means, log_scales, a, b
//   out        y (the inverse's x for mixlog_inverse), input dtype
//   logdet     [B], accumulate dtype (float32; float64 for float64 inputs), written
//   grad_out   upstream gradient of out, input dtype
//   grad_logdet [B], accumulate dtype, any stride
//   grad[0..5] gradients of in[0..5], input dtype
#pragma once

#include <stdint.h>

#include "../common/dtype.h"

namespace dqk {
namespace coupling {

constexpr int kSlots = 16;
enum Slot { kIn0 = 0, kOut = 6, kLogdet = 7, kGradOut = 8, kGradLogdet = 9, kGrad0 = 10 };

struct T {
  void* p = nullptr;
  int64_t st[5] = {0, 0, 0, 0, 0};  // strides over [B, n1, n2, n3, K]
};

struct Args {
  DType dtype;
  int64_t B = 0, n1 = 1, n2 = 1, n3 = 1, K = 1;
  bool inverse = false;
  T t[kSlots];
  // CUDA only: a [B, chunks] accumulate-dtype buffer for per-block logdet partial sums,
  // and the number of elements of one batch row each block sums.
  void* work = nullptr;
  int64_t chunk = 0;
};

// kind: 0 affine forward (out, logdet), 1 affine backward (grad[0..2]),
//       2 mixlog forward (out, logdet), 3 mixlog inverse (out, logdet),
//       4 mixlog backward (grad[0..5]; `inverse` selects the implicit-function form)
enum Kind { kAffineForward = 0, kAffineBackward, kMixForward, kMixInverse, kMixBackward };

// scalar_only: skip the vectorised CPU path (tests use it to run the scalar math that
// the CUDA kernels share on float32 too)
void run_cpu(Kind kind, const Args& a, int num_threads, bool scalar_only = false);
#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error.
void run_cuda(Kind kind, const Args& a, void* stream);
#endif

}  // namespace coupling
}  // namespace dqk
