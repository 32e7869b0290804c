// C++ entry points of the vector-quantisation kernels: raw pointers to contiguous tensors,
// sizes and (for CUDA) a stream. Shapes, dtypes, devices and index ranges are validated by
// the caller (dqkernels/ops/vq.py); N, K, D and S are >= 1 when these are called.
//
//   nearest:  indices[n] = first argmin_k |z_n - e_k|^2, sqdist[n] = sum_d (z_nd - e_kd)^2.
//             Exact for fp32 inputs: scores from the expansion |e|^2 - 2 z.e are screened
//             with their rounding bound and close rows re-scored from explicit differences,
//             so ties (duplicated codes) go to the lowest index. No N x K buffer.
//   sample:   u [N, S] sorted ascending per row in [0, 1); out[n, s] = first k whose
//             cumulative weight sum_{j<=k} exp(-(d_j - min d) * inv_temperature) exceeds
//             u[n, s] * Z (Z the total), else the last code of positive weight.
//   ema:      cluster_size = decay * cluster_size + (1 - decay) * counts, embed_sum likewise
//             with sums; each of a row's S indices adds weight 1/S. State float32/float64.
//
// Element types: z, codebook: `dtype`; sqdist and u: float (double when dtype is float64);
// indices, out: int64; cluster_size, embed_sum: `state_dtype` (float32 or float64).
#pragma once

#include <stdint.h>

#include "../common/cpu_isa.h"
#include "../common/dtype.h"

namespace dqk {
namespace vq {

struct NearestArgs {
  DType dtype = DType::kFloat32;
  int64_t N = 0, K = 0, D = 0;
  const void* z = nullptr;         // [N, D]
  const void* codebook = nullptr;  // [K, D]
  int64_t* indices = nullptr;      // [N]
  void* sqdist = nullptr;          // [N]
};

struct SampleArgs {
  DType dtype = DType::kFloat32;
  int64_t N = 0, K = 0, D = 0, S = 0;
  const void* z = nullptr;         // [N, D]
  const void* codebook = nullptr;  // [K, D]
  const void* u = nullptr;         // [N, S]
  double inv_temperature = 1.0;
  int64_t* out = nullptr;  // [N, S]
};

struct EmaArgs {
  DType dtype = DType::kFloat32;        // of z
  DType state_dtype = DType::kFloat32;  // of cluster_size and embed_sum
  int64_t N = 0, K = 0, D = 0, S = 0;
  void* cluster_size = nullptr;      // [K]
  void* embed_sum = nullptr;         // [K, D]
  const void* z = nullptr;           // [N, D]
  const int64_t* indices = nullptr;  // [N, S]
  double decay = 0.0;
};

// CPU instruction-set paths (isa argument): dqk::Isa of common/cpu_isa.h. Bit i of
// cpu_isas() set: path i runs on this CPU.
int cpu_isas();

void nearest_cpu(const NearestArgs& a, int num_threads, int isa = kIsaAuto);
void sample_cpu(const SampleArgs& a, int num_threads, int isa = kIsaAuto);
void ema_update_cpu(const EmaArgs& a, int num_threads);

#ifdef DQK_WITH_CUDA
// `stream` is a cudaStream_t; throws std::runtime_error on a launch error. Sizes up to
// 2^31 - 1024 (larger ones throw std::invalid_argument).
// nearest_cuda's scratch comes from the caller (torch's caching allocator, on the stream):
// `workspace` holds at least nearest_cuda_workspace(a) bytes (O(N + K); 0 when every row
// takes the exact path), 16-byte aligned, on z's device.
int64_t nearest_cuda_workspace(const NearestArgs& a);
void nearest_cuda(const NearestArgs& a, void* workspace, int64_t workspace_bytes, void* stream);
void sample_cuda(const SampleArgs& a, void* stream);
void ema_update_cuda(const EmaArgs& a, void* stream);
#endif

}  // namespace vq
}  // namespace dqk
