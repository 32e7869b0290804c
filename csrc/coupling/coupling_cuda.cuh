// CUDA kernels of the coupling ops, templated on the storage type; the per-element math
// is coupling_math.h, shared with (and tested through) the CPU build. The per-dtype
// instantiations live in coupling_cuda_<dtype>.cu so that they compile in parallel.
//
// Reductions: a block sums the logdet terms of `chunk` elements of one batch row into
// work[b, chunk index]; a second kernel adds each row's partials in order. No atomics,
// so results are deterministic.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/cuda_types.cuh"
#include "coupling.h"
#include "coupling_math.h"

namespace dqk {
namespace coupling {

constexpr int kThreads = 256;

struct DevIdx {
  int64_t i1, i2, i3;
};

// element i of a row -> (i1, i2, i3); rows of merged contiguous tensors have n1 = n2 = 1
__device__ __forceinline__ DevIdx dev_idx(const Args& a, int64_t i) {
  if (a.n1 == 1 && a.n2 == 1) return DevIdx{0, 0, i};
  const int64_t n23 = a.n2 * a.n3;
  const int64_t i1 = i / n23, r = i - i1 * n23;
  const int64_t i2 = r / a.n3;
  return DevIdx{i1, i2, r - i2 * a.n3};
}

__device__ __forceinline__ int64_t dev_off(const T& t, int64_t b, const DevIdx& d) {
  return b * t.st[0] + d.i1 * t.st[1] + d.i2 * t.st[2] + d.i3 * t.st[3];
}

template <typename S, typename Acc = typename DScalar<S>::acc>
__device__ __forceinline__ Acc dload(const Args& a, int slot, int64_t b, const DevIdx& d) {
  return Acc(DScalar<S>::load(static_cast<const S*>(a.t[slot].p) + dev_off(a.t[slot], b, d)));
}

template <typename S, typename Acc>
__device__ __forceinline__ void dstore(const Args& a, int slot, int64_t b, const DevIdx& d, Acc v) {
  DScalar<S>::store(static_cast<S*>(a.t[slot].p) + dev_off(a.t[slot], b, d), v);
}

// sum over the block; every thread of the block must call it
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v) {
  __shared__ Acc warp_sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  Acc s = Acc(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
  __syncthreads();
  return s;  // valid in thread 0
}

template <typename Acc>
__global__ void __launch_bounds__(kThreads) reduce_logdet_kernel(const Args a, int64_t chunks) {
  const Acc* work = static_cast<const Acc*>(a.work);
  Acc* ld = static_cast<Acc*>(a.t[kLogdet].p);
  for (int64_t b = int64_t(blockIdx.x) * kThreads + threadIdx.x; b < a.B;
       b += int64_t(gridDim.x) * kThreads) {
    Acc s = Acc(0);
    for (int64_t c = 0; c < chunks; ++c) s += work[b * chunks + c];
    ld[b * a.t[kLogdet].st[0]] = s;
  }
}

// Per-component loads of element (b, d).
template <typename S>
struct DevCompLoad {
  const S *lg, *mu, *ls;
  int64_t s1, s2, s3;
  __device__ DevCompLoad(const Args& a, int64_t b, const DevIdx& d)
      : lg(static_cast<const S*>(a.t[1].p) + dev_off(a.t[1], b, d)),
        mu(static_cast<const S*>(a.t[2].p) + dev_off(a.t[2], b, d)),
        ls(static_cast<const S*>(a.t[3].p) + dev_off(a.t[3], b, d)),
        s1(a.t[1].st[4]),
        s2(a.t[2].st[4]),
        s3(a.t[3].st[4]) {}
  template <typename Acc>
  __device__ void operator()(int64_t k, Acc* l, Acc* m, Acc* s) const {
    *l = DScalar<S>::load(lg + k * s1);
    *m = DScalar<S>::load(mu + k * s2);
    *s = DScalar<S>::load(ls + k * s3);
  }
};

// Kernels that produce a logdet: the element functor returns its logdet term.
template <typename S, typename Elem>
__device__ __forceinline__ void chunked_rows(const Args& a, Elem elem) {
  using Acc = typename DScalar<S>::acc;
  const int64_t N = a.n1 * a.n2 * a.n3;
  const int64_t chunks = (N + a.chunk - 1) / a.chunk;
  Acc* work = static_cast<Acc*>(a.work);
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    for (int64_t c = blockIdx.x; c < chunks; c += gridDim.x) {
      const int64_t end = (c + 1) * a.chunk < N ? (c + 1) * a.chunk : N;
      Acc sum = Acc(0);
      for (int64_t i = c * a.chunk + threadIdx.x; i < end; i += kThreads)
        sum += elem(b, dev_idx(a, i));
      sum = block_sum(sum);
      if (threadIdx.x == 0) work[b * chunks + c] = sum;
    }
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) affine_forward_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  chunked_rows<S>(a, [&](int64_t b, const DevIdx& d) {
    const Acc x = dload<S>(a, 0, b, d), sh = dload<S>(a, 1, b, d);
    const AffineScale<Acc> sc = affine_scale(dload<S>(a, 2, b, d));
    dstore<S>(a, kOut, b, d, a.inverse ? x / sc.s - sh : (x + sh) * sc.s);
    return a.inverse ? -sc.log_s : sc.log_s;
  });
}

// Backward kernels: every element once, in a grid-stride loop, with its row's upstream
// logdet gradient. elem(b, d, gld).
template <typename Acc, typename Elem>
__device__ __forceinline__ void each_element(const Args& a, Elem elem) {
  const int64_t N = a.n1 * a.n2 * a.n3;
  const Acc* gldp = static_cast<const Acc*>(a.t[kGradLogdet].p);
  for (int64_t n = int64_t(blockIdx.x) * kThreads + threadIdx.x; n < a.B * N;
       n += int64_t(gridDim.x) * kThreads) {
    const int64_t b = n / N;
    elem(b, dev_idx(a, n - b * N), gldp[b * a.t[kGradLogdet].st[0]]);
  }
}

template <typename S>
__global__ void __launch_bounds__(kThreads) affine_backward_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  each_element<Acc>(a, [&](int64_t b, const DevIdx& d, Acc gld) {
    const Acc x = dload<S>(a, 0, b, d), sh = dload<S>(a, 1, b, d);
    const Acc g = dload<S>(a, kGradOut, b, d);
    const AffineScale<Acc> sc = affine_scale(dload<S>(a, 2, b, d));
    if (a.inverse) {
      dstore<S>(a, kGrad0, b, d, g / sc.s);
      dstore<S>(a, kGrad0 + 1, b, d, -g);
      dstore<S>(a, kGrad0 + 2, b, d, -(g * x / sc.s + gld) * sc.one_minus_s);
    } else {
      dstore<S>(a, kGrad0, b, d, g * sc.s);
      dstore<S>(a, kGrad0 + 1, b, d, g * sc.s);
      dstore<S>(a, kGrad0 + 2, b, d, (g * (x + sh) * sc.s + gld) * sc.one_minus_s);
    }
  });
}

template <typename S>
__global__ void __launch_bounds__(kThreads) mix_forward_kernel(const Args a, bool inverse) {
  using Acc = typename DScalar<S>::acc;
  chunked_rows<S>(a, [&](int64_t b, const DevIdx& d) {
    const Acc in = dload<S>(a, 0, b, d), av = dload<S>(a, 4, b, d), bv = dload<S>(a, 5, b, d);
    const DevCompLoad<S> load(a, b, d);
    Acc out;
    const Acc ld = inverse ? mix_inverse<Acc>(in, av, bv, a.K, load, &out)
                           : mix_forward<Acc>(in, av, bv, a.K, load, &out);
    dstore<S>(a, kOut, b, d, out);
    return ld;
  });
}

template <typename S>
__global__ void __launch_bounds__(kThreads) mix_backward_kernel(const Args a) {
  using Acc = typename DScalar<S>::acc;
  each_element<Acc>(a, [&](int64_t b, const DevIdx& d, Acc gld) {
    const Acc x = dload<S>(a, 0, b, d), av = dload<S>(a, 4, b, d);
    const Acc go = dload<S>(a, kGradOut, b, d);
    S* gl = static_cast<S*>(a.t[kGrad0 + 1].p) + dev_off(a.t[kGrad0 + 1], b, d);
    S* gm = static_cast<S*>(a.t[kGrad0 + 2].p) + dev_off(a.t[kGrad0 + 2], b, d);
    S* gs = static_cast<S*>(a.t[kGrad0 + 3].p) + dev_off(a.t[kGrad0 + 3], b, d);
    const int64_t s1 = a.t[kGrad0 + 1].st[4], s2 = a.t[kGrad0 + 2].st[4],
                  s3 = a.t[kGrad0 + 3].st[4];
    auto store = [&](int64_t k, Acc dl, Acc dm, Acc ds) {
      DScalar<S>::store(gl + k * s1, dl);
      DScalar<S>::store(gm + k * s2, dm);
      DScalar<S>::store(gs + k * s3, ds);
    };
    const DevCompLoad<S> load(a, b, d);
    const ElemGrad<Acc> e = mix_backward<Acc>(x, av, a.K, load, go, gld, a.inverse, store);
    dstore<S>(a, kGrad0, b, d, e.d_in);
    dstore<S>(a, kGrad0 + 4, b, d, e.d_a);
    dstore<S>(a, kGrad0 + 5, b, d, e.d_b);
  });
}

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("dqkernels coupling ") + what + ": " +
                             cudaGetErrorString(err));
}

inline unsigned grid_1d(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return unsigned(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

template <typename S>
void launch(Kind kind, const Args& a, cudaStream_t stream) {
  using Acc = typename DScalar<S>::acc;
  const int64_t N = a.n1 * a.n2 * a.n3;
  if (kind == kAffineBackward || kind == kMixBackward) {
    const unsigned g = grid_1d(a.B * N);
    if (kind == kAffineBackward) affine_backward_kernel<S><<<g, kThreads, 0, stream>>>(a);
    else mix_backward_kernel<S><<<g, kThreads, 0, stream>>>(a);
    check_launch("backward");
    return;
  }
  if (a.chunk <= 0 || a.work == nullptr)
    throw std::invalid_argument("coupling cuda: forward kernels need a work buffer and chunk");
  const int64_t chunks = (N + a.chunk - 1) / a.chunk;
  const dim3 grid(unsigned(chunks < 65535 ? chunks : 65535), unsigned(a.B < 65535 ? a.B : 65535));
  if (kind == kAffineForward) affine_forward_kernel<S><<<grid, kThreads, 0, stream>>>(a);
  else mix_forward_kernel<S><<<grid, kThreads, 0, stream>>>(a, kind == kMixInverse);
  check_launch("forward");
  reduce_logdet_kernel<Acc><<<grid_1d(a.B), kThreads, 0, stream>>>(a, chunks);
  check_launch("logdet reduction");
}

#define DQK_COUPLING_INSTANTIATE(S) template void launch<S>(Kind, const Args&, cudaStream_t);
#define DQK_COUPLING_DECLARE(S) extern template void launch<S>(Kind, const Args&, cudaStream_t);

}  // namespace coupling
}  // namespace dqk
