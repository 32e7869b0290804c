// C++ entry points of the dmol kernels: raw pointers, sizes, element strides and (for
// CUDA) a stream. Shapes and dtypes are validated by the caller; empty tensors never
// arrive. Accumulate-type tensors (out, grad_out, u) are float32, or float64 when the
// inputs are float64.
#pragma once

#include <stdint.h>

#include "../common/dtype.h"

namespace dqk {
namespace dmol {

struct Args {
  DType dtype;  // of x, params, grad_params, sample out
  int64_t B, C, H, W, M, L;
  double min_log_scale;
  const void* x = nullptr;
  int64_t x_stride[4] = {0, 0, 0, 0};
  const void* params = nullptr;
  int64_t p_stride[4] = {0, 0, 0, 0};
  void* out = nullptr;
  int64_t out_stride[4] = {0, 0, 0, 0};  // [B,H,W] nll / [B,C,H,W] sample
  const void* grad_out = nullptr;
  int64_t g_stride[3] = {0, 0, 0};
  void* grad_params = nullptr;
  int64_t gp_stride[4] = {0, 0, 0, 0};
  const void* u = nullptr;
  int64_t u_stride[4] = {0, 0, 0, 0};
};

void nll_forward_cpu(const Args& a, int num_threads);
void nll_backward_cpu(const Args& a, int num_threads);
// The NLL into `out` and, in the same sweep, its gradient for a unit upstream gradient
// into `grad_params` (grad_out is ignored): the CPU path of a forward that will be
// differentiated, whose backward is then one scaling pass.
void nll_forward_backward_cpu(const Args& a, int num_threads);
void sample_cpu(const Args& a, int num_threads);

#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error.
void nll_forward_cuda(const Args& a, void* stream);
void nll_backward_cuda(const Args& a, void* stream);
void sample_cuda(const Args& a, void* stream);
#endif

}  // namespace dmol
}  // namespace dqk
