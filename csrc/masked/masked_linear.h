// C++ entry points of the masked linear kernels (MADE layers): raw pointers, sizes,
// element strides and (for CUDA) a stream. Shapes, dtypes and devices are validated by
// the caller; empty sizes never arrive.
//
//   y  = x @ (W * M)^T + bias            M[j, i] = keep(out_deg[j], in_deg[i])
//   gx = gy @ (W * M)
//   gW = M * (gy^T @ x)
//   gb = sum over rows of gy
//   keep(hi, lo) = hi > lo (strict) or hi >= lo
//
// x [rows, in], gy [rows, out] and W [out, in] may have any strides (0 included); the
// degrees are contiguous int64 vectors; bias may have any stride; the outputs y [rows, out],
// gx [rows, in], gW [out, in] and gb [out] are contiguous and are written (never
// accumulated into). Entries of W (and of the products) where M is 0 are never added:
// tiles of M that are entirely 0 are skipped and partly masked tiles select, so NaN in a
// masked weight cannot reach an output.
#pragma once

#include <stdint.h>

#include "../common/cpu_isa.h"
#include "../common/dtype.h"

namespace dqk {
namespace masked_linear {

struct Mat {
  const void* p = nullptr;
  int64_t s0 = 0, s1 = 0;  // element strides of [rows, cols]
};

struct Args {
  DType dtype = DType::kFloat32;
  int64_t rows = 0, in = 0, out = 0;
  bool strict = true;
  const int64_t* in_deg = nullptr;   // [in]
  const int64_t* out_deg = nullptr;  // [out]
  Mat x;                             // [rows, in]
  Mat w;                             // [out, in]
  const void* bias = nullptr;        // [out] or null (forward)
  int64_t bias_stride = 0;
  Mat gy;              // [rows, out] (backward)
  void* y = nullptr;   // [rows, out] (forward)
  void* gx = nullptr;  // [rows, in]  (backward; null: not wanted)
  void* gw = nullptr;  // [out, in]   (backward; null: not wanted)
  void* gb = nullptr;  // [out]       (backward; null: not wanted)
};

// CPU instruction-set paths of the GEMM microkernels (isa argument): dqk::Isa of
// common/cpu_isa.h. Bit i of cpu_isas() set: path i runs on this CPU.
int cpu_isas();

void forward_cpu(const Args& a, int num_threads, int isa = kIsaAuto);
void backward_cpu(const Args& a, int num_threads, int isa = kIsaAuto);

#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error.
void forward_cuda(const Args& a, void* stream);
void backward_cuda(const Args& a, void* stream);
#endif

}  // namespace masked_linear
}  // namespace dqk
