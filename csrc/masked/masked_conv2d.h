// C++ entry points of the PixelCNN masked convolution (odd square kernel k = 2c + 1,
// "same" padding c, stride 1): raw pointers, sizes, element strides and (for CUDA) a
// stream. Shapes and dtypes are validated by the caller; empty tensors never arrive.
//
// Tensors (each with its own 4 element strides; bias and grad_bias with one):
//   x [B, Cin, H, W], weight [Cout, Cin, k, k], bias [Cout] (may be null)
//   y [B, Cout, H, W]                          forward output
//   grad_y [B, Cout, H, W]                     backward input
//   grad_x, grad_weight, grad_bias             backward outputs; null = not wanted
// All of one storage dtype; accumulation in float (double for float64).
//
// Taps visited (docs/INTERNALS.md, "Masked conv2d"): the (k*k - 1)/2 taps above the
// centre row or left of the centre, plus the centre tap restricted to the channel pairs
// of masked_conv2d_math.h. Masked weight entries are never read; grad_weight is written
// everywhere (zero at masked entries).
#pragma once

#include <stdint.h>

#include "../common/dtype.h"

namespace dqk {
namespace masked_conv2d {

struct Args {
  DType dtype = DType::kFloat32;
  int64_t B = 0, Cin = 0, Cout = 0, H = 0, W = 0, k = 1;
  bool type_b = false;  // mask type "B" (else "A")
  int64_t groups = 1;
  const void* x = nullptr;
  int64_t x_st[4] = {0, 0, 0, 0};
  const void* w = nullptr;
  int64_t w_st[4] = {0, 0, 0, 0};
  const void* bias = nullptr;
  int64_t bias_st = 0;
  void* y = nullptr;
  int64_t y_st[4] = {0, 0, 0, 0};
  const void* gy = nullptr;
  int64_t gy_st[4] = {0, 0, 0, 0};
  void* gx = nullptr;
  int64_t gx_st[4] = {0, 0, 0, 0};
  void* gw = nullptr;
  int64_t gw_st[4] = {0, 0, 0, 0};
  void* gb = nullptr;
  int64_t gb_st = 0;
  // CUDA backward only: scratch of backward_cuda_workspace(a) bytes (split-K partial
  // sums of grad_weight and grad_bias, reduced in a fixed order: no atomics)
  void* work = nullptr;
};

void forward_cpu(const Args& a, int num_threads);
void backward_cpu(const Args& a, int num_threads);
#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error.
void forward_cuda(const Args& a, void* stream);
void backward_cuda(const Args& a, void* stream);
// bytes of scratch backward_cuda needs in a.work (0 when grad_weight and grad_bias are
// null)
int64_t backward_cuda_workspace(const Args& a);
#endif

}  // namespace masked_conv2d
}  // namespace dqk
