// CUDA kernels of the dmol ops, templated on the storage type. One thread per pixel in a
// grid-stride loop; each pixel is evaluated by the shared math in dmol_math.h. The
// per-dtype instantiations live in dmol_cuda_<dtype>.cu so that they compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/cuda_types.cuh"
#include "dmol.h"
#include "dmol_math.h"
#include "dmol_pixel.h"

namespace dqk {
namespace dmol {

constexpr int kThreads = 256;

// f(n) for every pixel n: one thread per pixel, grid-stride
template <class F>
__device__ __forceinline__ void for_each_pixel(const Args& a, F f) {
  const int64_t N = a.B * a.H * a.W;
  for (int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * kThreads)
    f(n);
}

template <typename S>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Args a) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, [&](int64_t n) { forward_pixel<DScalar<S>, S>(a, g, n); });
}

template <typename S>
__global__ void __launch_bounds__(kThreads) backward_kernel(const Args a) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, [&](int64_t n) { backward_pixel<DScalar<S>, S, false>(a, g, n); });
}

template <typename S>
__global__ void __launch_bounds__(kThreads) sample_kernel(const Args a) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, [&](int64_t n) { sample_pixel<DScalar<S>, S>(a, g, n); });
}

inline int64_t num_pixels(const Args& a) { return a.B * a.H * a.W; }

// Blocks of a launch over the pixels, at least 1: a launch of 0 blocks is an error, so the
// launchers below return before launching when there are no pixels.
inline unsigned grid_for(const Args& a) {
  int64_t blocks = (num_pixels(a) + kThreads - 1) / kThreads;
  if (blocks < 1) blocks = 1;
  if (blocks > 0x7fffffffLL) blocks = 0x7fffffffLL;
  return unsigned(blocks);
}

inline void check_launch(const char* what) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("dqkernels ") + what +
                             ": CUDA launch failed: " + cudaGetErrorString(err));
  }
}

template <typename S>
void launch_forward(const Args& a, cudaStream_t s) {
  if (num_pixels(a) <= 0) return;  // empty input: nothing to do, no launch
  forward_kernel<S><<<grid_for(a), kThreads, 0, s>>>(a);
  check_launch("dmol_nll forward");
}
template <typename S>
void launch_backward(const Args& a, cudaStream_t s) {
  if (num_pixels(a) <= 0) return;  // empty input: nothing to do, no launch
  backward_kernel<S><<<grid_for(a), kThreads, 0, s>>>(a);
  check_launch("dmol_nll backward");
}
template <typename S>
void launch_sample(const Args& a, cudaStream_t s) {
  if (num_pixels(a) <= 0) return;  // empty input: nothing to do, no launch
  sample_kernel<S><<<grid_for(a), kThreads, 0, s>>>(a);
  check_launch("dmol_sample");
}

#define DQK_DMOL_INSTANTIATE(S)                                \
  template void launch_forward<S>(const Args&, cudaStream_t);  \
  template void launch_backward<S>(const Args&, cudaStream_t); \
  template void launch_sample<S>(const Args&, cudaStream_t);

#define DQK_DMOL_DECLARE(S)                                           \
  extern template void launch_forward<S>(const Args&, cudaStream_t);  \
  extern template void launch_backward<S>(const Args&, cudaStream_t); \
  extern template void launch_sample<S>(const Args&, cudaStream_t);

}  // namespace dmol
}  // namespace dqk
