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

namespace dqk {
namespace dmol {

constexpr int kThreads = 256;

struct DevPixel {
  int64_t b, h, w;
};

__device__ __forceinline__ DevPixel dev_pixel_of(const Args& a, int64_t n) {
  const int64_t hw = a.H * a.W;
  const int64_t b = n / hw, r = n - b * hw;
  const int64_t h = r / a.W;
  return DevPixel{b, h, r - h * a.W};
}

template <typename S>
__global__ void __launch_bounds__(kThreads) forward_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* x = static_cast<const S*>(a.x);
  const S* p = static_cast<const S*>(a.params);
  Acc* out = static_cast<Acc*>(a.out);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
  for (int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * kThreads) {
    const DevPixel px = dev_pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const S* xp = x + px.b * a.x_stride[0] + px.h * a.x_stride[2] + px.w * a.x_stride[3];
    auto P = [&](int64_t i) { return Acc(DScalar<S>::load(pp + i * a.p_stride[1])); };
    auto X = [&](int64_t c) { return Acc(DScalar<S>::load(xp + c * a.x_stride[1])); };
    out[px.b * a.out_stride[0] + px.h * a.out_stride[1] + px.w * a.out_stride[2]] =
        pixel_nll<Acc>(g, P, X, mls);
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) backward_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* x = static_cast<const S*>(a.x);
  const S* p = static_cast<const S*>(a.params);
  const Acc* go = static_cast<const Acc*>(a.grad_out);
  S* gp = static_cast<S*>(a.grad_params);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
  for (int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * kThreads) {
    const DevPixel px = dev_pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const S* xp = x + px.b * a.x_stride[0] + px.h * a.x_stride[2] + px.w * a.x_stride[3];
    S* gpp = gp + px.b * a.gp_stride[0] + px.h * a.gp_stride[2] + px.w * a.gp_stride[3];
    auto P = [&](int64_t i) { return Acc(DScalar<S>::load(pp + i * a.p_stride[1])); };
    auto X = [&](int64_t c) { return Acc(DScalar<S>::load(xp + c * a.x_stride[1])); };
    auto G = [&](int64_t i, Acc v) { DScalar<S>::store(gpp + i * a.gp_stride[1], v); };
    const Acc gout = go[px.b * a.g_stride[0] + px.h * a.g_stride[1] + px.w * a.g_stride[2]];
    pixel_nll_backward<Acc, false>(g, P, X, gout, mls, G);
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) sample_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  const Geometry g = make_geometry(a.C, a.M, a.L);
  const S* p = static_cast<const S*>(a.params);
  const Acc* u = static_cast<const Acc*>(a.u);
  S* out = static_cast<S*>(a.out);
  const Acc mls = Acc(a.min_log_scale);
  const int64_t N = a.B * a.H * a.W;
  for (int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * kThreads) {
    const DevPixel px = dev_pixel_of(a, n);
    const S* pp = p + px.b * a.p_stride[0] + px.h * a.p_stride[2] + px.w * a.p_stride[3];
    const Acc* up = u + px.b * a.u_stride[0] + px.h * a.u_stride[2] + px.w * a.u_stride[3];
    S* op = out + px.b * a.out_stride[0] + px.h * a.out_stride[2] + px.w * a.out_stride[3];
    auto P = [&](int64_t i) { return Acc(DScalar<S>::load(pp + i * a.p_stride[1])); };
    auto U = [&](int64_t i) { return up[i * a.u_stride[1]]; };
    auto St = [&](int64_t c, Acc v) { DScalar<S>::store(op + c * a.out_stride[1], v); };
    pixel_sample<Acc>(g, P, U, mls, St);
  }
}

inline unsigned grid_for(const Args& a) {
  const int64_t N = a.B * a.H * a.W;
  int64_t blocks = (N + kThreads - 1) / kThreads;
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
  forward_kernel<S><<<grid_for(a), kThreads, 0, s>>>(a);
  check_launch("dmol_nll forward");
}
template <typename S>
void launch_backward(const Args& a, cudaStream_t s) {
  backward_kernel<S><<<grid_for(a), kThreads, 0, s>>>(a);
  check_launch("dmol_nll backward");
}
template <typename S>
void launch_sample(const Args& a, cudaStream_t s) {
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
