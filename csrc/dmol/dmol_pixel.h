// One pixel of each dmol kernel (nll forward, its backward, sampling) on strided tensors,
// shared by the CPU loop (dmol_cpu.cpp) and the CUDA kernels (dmol_cuda.cuh). `Sc` reads
// and writes the storage type S and names its accumulation type: Scalar<S> on the CPU,
// DScalar<S> on CUDA.
#pragma once

#include <stdint.h>

#include "../common/macros.h"
#include "dmol.h"
#include "dmol_math.h"

namespace dqk {
namespace dmol {

struct Pixel {
  int64_t b, h, w;
};

// pixel n of the flattened [B, H, W] grid
DQK_HD Pixel pixel_of(const Args& a, int64_t n) {
  const int64_t hw = a.H * a.W;
  const int64_t b = n / hw, r = n - b * hw;
  const int64_t h = r / a.W;
  return Pixel{b, h, r - h * a.W};
}

// channel 0 of the pixel in a [B, C, H, W] tensor with strides s
template <typename T>
DQK_HD T* at_bchw(T* base, const int64_t* s, const Pixel& px) {
  return base + px.b * s[0] + px.h * s[2] + px.w * s[3];
}

// the pixel in a [B, H, W] tensor with strides s
template <typename T>
DQK_HD T* at_bhw(T* base, const int64_t* s, const Pixel& px) {
  return base + px.b * s[0] + px.h * s[1] + px.w * s[2];
}

#ifdef __CUDACC__
#pragma nv_exec_check_disable  // Sc's loads are device-only for DScalar
#endif
template <class Sc, typename S>
DQK_HD void forward_pixel(const Args& a, const Geometry& g, int64_t n) {
  using Acc = typename Sc::acc;
  const Pixel px = pixel_of(a, n);
  const S* pp = at_bchw(static_cast<const S*>(a.params), a.p_stride, px);
  const S* xp = at_bchw(static_cast<const S*>(a.x), a.x_stride, px);
  auto P = [&](int64_t i) { return Acc(Sc::load(pp + i * a.p_stride[1])); };
  auto X = [&](int64_t c) { return Acc(Sc::load(xp + c * a.x_stride[1])); };
  *at_bhw(static_cast<Acc*>(a.out), a.out_stride, px) =
      pixel_nll<Acc>(g, P, X, Acc(a.min_log_scale));
}

// kCache: as in pixel_nll_backward (the CPU keeps the per-component values, CUDA
// recomputes them); a null grad_out stands for ones.
#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Sc, typename S, bool kCache>
DQK_HD void backward_pixel(const Args& a, const Geometry& g, int64_t n) {
  using Acc = typename Sc::acc;
  const Pixel px = pixel_of(a, n);
  const S* pp = at_bchw(static_cast<const S*>(a.params), a.p_stride, px);
  const S* xp = at_bchw(static_cast<const S*>(a.x), a.x_stride, px);
  S* gpp = at_bchw(static_cast<S*>(a.grad_params), a.gp_stride, px);
  const Acc* go = static_cast<const Acc*>(a.grad_out);
  auto P = [&](int64_t i) { return Acc(Sc::load(pp + i * a.p_stride[1])); };
  auto X = [&](int64_t c) { return Acc(Sc::load(xp + c * a.x_stride[1])); };
  auto G = [&](int64_t i, Acc v) { Sc::store(gpp + i * a.gp_stride[1], v); };
  const Acc gout = go ? *at_bhw(go, a.g_stride, px) : Acc(1);
  pixel_nll_backward<Acc, kCache>(g, P, X, gout, Acc(a.min_log_scale), G);
}

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Sc, typename S>
DQK_HD void sample_pixel(const Args& a, const Geometry& g, int64_t n) {
  using Acc = typename Sc::acc;
  const Pixel px = pixel_of(a, n);
  const S* pp = at_bchw(static_cast<const S*>(a.params), a.p_stride, px);
  const Acc* up = at_bchw(static_cast<const Acc*>(a.u), a.u_stride, px);
  S* op = at_bchw(static_cast<S*>(a.out), a.out_stride, px);
  auto P = [&](int64_t i) { return Acc(Sc::load(pp + i * a.p_stride[1])); };
  auto U = [&](int64_t i) { return up[i * a.u_stride[1]]; };
  auto St = [&](int64_t c, Acc v) { Sc::store(op + c * a.out_stride[1], v); };
  pixel_sample<Acc>(g, P, U, Acc(a.min_log_scale), St);
}

}  // namespace dmol
}  // namespace dqk
