// CUDA kernels of bernoulli_flip_loglik (bernoulli_flip.h has the contract). One
// translation unit for the four dtypes; arithmetic in float (double for float64).
//
// Forward (forward_kernel): a 16 x 16 thread block computes a 32 x 64 tile of out (rows b,
// columns h), each thread 2 rows x 4 columns (rows ty + 16 i, columns tx + 16 j: the
// threads of a warp read consecutive weight columns), streaming d = 0..D-1 with the sums
// in registers: per d and thread 2 loads of logits and x, 4 of the weight (L1/L2
// resident: the inputs are small), 8 exp + 8 log1p. log1p(e) for e = exp(-|t|) in (0, 1]
// is 2 atanh(e / (2 + e)) by its odd series (as the Triton kernels): no libm call in the
// float path.
//
// Backward: two kernels, no atomics (deterministic). bd_kernel: a tile of 32 b x 64 d per
// block streams h, for grad_logits = sum_h g r and grad_x = logits sum_h g + sum_h g s w;
// dh_kernel: a tile of 32 d x 64 h streams b, for grad_weight = sum_b g s r. Each
// recomputes r = x - sigmoid(t). Not yet run on a GPU; compiled for sm_90.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/cuda_types.cuh"
#include "bernoulli_flip.h"

namespace dqk {
namespace bernoulli_flip {
namespace {

constexpr int kTX = 16, kTY = 16;  // threads
constexpr int kRI = 2, kCJ = 4;    // per thread: 2 "row" by 4 "column" elements
constexpr int kTileR = kTY * kRI;  // 32
constexpr int kTileC = kTX * kCJ;  // 64

// log1p(e), e in [0, 1]: float by the series of bernoulli_flip.h, double by libdevice
__device__ __forceinline__ float log1p_e(float e) { return log1p_unit(e); }
__device__ __forceinline__ double log1p_e(double e) { return log1p(e); }
__device__ __forceinline__ float d_exp(float v) { return __expf(v); }
__device__ __forceinline__ double d_exp(double v) { return exp(v); }

template <typename S>
__device__ __forceinline__ typename DScalar<S>::acc ld(const Mat& m, int64_t i, int64_t j) {
  return DScalar<S>::load(static_cast<const S*>(m.p) + i * m.s0 + j * m.s1);
}

template <typename S>
__global__ void forward_kernel(Args a) {
  using A = typename DScalar<S>::acc;
  const int64_t b0 = int64_t(blockIdx.y) * kTileR + threadIdx.y;
  const int64_t h0 = int64_t(blockIdx.x) * kTileC + threadIdx.x;
  A acc[kRI][kCJ], s[kRI][kCJ];
  int64_t bi[kRI], hj[kCJ];
  for (int i = 0; i < kRI; ++i) bi[i] = min(b0 + kTY * i, a.B - 1);
  for (int j = 0; j < kCJ; ++j) hj[j] = min(h0 + kTX * j, a.H - 1);
  for (int i = 0; i < kRI; ++i)
    for (int j = 0; j < kCJ; ++j) {
      acc[i][j] = A(0);
      s[i][j] = A(1) - A(2) * ld<S>(a.z, bi[i], hj[j]);
    }
  for (int64_t d = 0; d < a.D; ++d) {
    A l[kRI], xv[kRI], w[kCJ];
    for (int i = 0; i < kRI; ++i) {
      l[i] = ld<S>(a.logits, bi[i], d);
      xv[i] = ld<S>(a.x, bi[i], d);
    }
    for (int j = 0; j < kCJ; ++j) w[j] = ld<S>(a.w, d, hj[j]);
    for (int i = 0; i < kRI; ++i)
      for (int j = 0; j < kCJ; ++j) {
        const A t = l[i] + s[i][j] * w[j];
        const A e = d_exp(-fabs(t));
        acc[i][j] += flip_term(xv[i], A(1) - xv[i], t, log1p_e(e));
      }
  }
  A* out = static_cast<A*>(a.out);
  for (int i = 0; i < kRI; ++i)
    for (int j = 0; j < kCJ; ++j) {
      const int64_t b = b0 + kTY * i, h = h0 + kTX * j;
      if (b < a.B && h < a.H) out[b * a.H + h] = acc[i][j];
    }
}

// rows b, columns d; streams h
template <typename S>
__global__ void bd_kernel(Args a) {
  using A = typename DScalar<S>::acc;
  const int64_t b0 = int64_t(blockIdx.y) * kTileR + threadIdx.y;
  const int64_t d0 = int64_t(blockIdx.x) * kTileC + threadIdx.x;
  int64_t bi[kRI], dj[kCJ];
  for (int i = 0; i < kRI; ++i) bi[i] = min(b0 + kTY * i, a.B - 1);
  for (int j = 0; j < kCJ; ++j) dj[j] = min(d0 + kTX * j, a.D - 1);
  A l[kRI][kCJ], xv[kRI][kCJ], acc_l[kRI][kCJ], acc_x[kRI][kCJ], gsum[kRI];
  for (int i = 0; i < kRI; ++i) {
    gsum[i] = A(0);
    for (int j = 0; j < kCJ; ++j) {
      l[i][j] = ld<S>(a.logits, bi[i], dj[j]);
      xv[i][j] = ld<S>(a.x, bi[i], dj[j]);
      acc_l[i][j] = acc_x[i][j] = A(0);
    }
  }
  const A* g = static_cast<const A*>(a.gout.p);
  for (int64_t h = 0; h < a.H; ++h) {
    A s[kRI], gv[kRI], w[kCJ];
    for (int i = 0; i < kRI; ++i) {
      s[i] = A(1) - A(2) * ld<S>(a.z, bi[i], h);
      gv[i] = g[bi[i] * a.gout.s0 + h * a.gout.s1];
      gsum[i] += gv[i];
    }
    for (int j = 0; j < kCJ; ++j) w[j] = ld<S>(a.w, dj[j], h);
    for (int i = 0; i < kRI; ++i)
      for (int j = 0; j < kCJ; ++j) {
        const A t = l[i][j] + s[i] * w[j];
        const A e = d_exp(-fabs(t));
        acc_l[i][j] += gv[i] * flip_resid(xv[i][j], xv[i][j] - A(1), t, e);
        acc_x[i][j] += gv[i] * s[i] * w[j];
      }
  }
  for (int i = 0; i < kRI; ++i)
    for (int j = 0; j < kCJ; ++j) {
      const int64_t b = b0 + kTY * i, d = d0 + kTX * j;
      if (b >= a.B || d >= a.D) continue;
      if (a.gl) DScalar<S>::store(static_cast<S*>(a.gl) + b * a.D + d, acc_l[i][j]);
      if (a.gx)
        DScalar<S>::store(static_cast<S*>(a.gx) + b * a.D + d, l[i][j] * gsum[i] + acc_x[i][j]);
    }
}

// rows d, columns h; streams b
template <typename S>
__global__ void dh_kernel(Args a) {
  using A = typename DScalar<S>::acc;
  const int64_t d0 = int64_t(blockIdx.y) * kTileR + threadIdx.y;
  const int64_t h0 = int64_t(blockIdx.x) * kTileC + threadIdx.x;
  int64_t di[kRI], hj[kCJ];
  for (int i = 0; i < kRI; ++i) di[i] = min(d0 + kTY * i, a.D - 1);
  for (int j = 0; j < kCJ; ++j) hj[j] = min(h0 + kTX * j, a.H - 1);
  A w[kRI][kCJ], acc[kRI][kCJ];
  for (int i = 0; i < kRI; ++i)
    for (int j = 0; j < kCJ; ++j) {
      w[i][j] = ld<S>(a.w, di[i], hj[j]);
      acc[i][j] = A(0);
    }
  const A* g = static_cast<const A*>(a.gout.p);
  for (int64_t b = 0; b < a.B; ++b) {
    A l[kRI], xv[kRI], s[kCJ], gs[kCJ];
    for (int i = 0; i < kRI; ++i) {
      l[i] = ld<S>(a.logits, b, di[i]);
      xv[i] = ld<S>(a.x, b, di[i]);
    }
    for (int j = 0; j < kCJ; ++j) {
      s[j] = A(1) - A(2) * ld<S>(a.z, b, hj[j]);
      gs[j] = g[b * a.gout.s0 + hj[j] * a.gout.s1] * s[j];
    }
    for (int i = 0; i < kRI; ++i)
      for (int j = 0; j < kCJ; ++j) {
        const A t = l[i] + s[j] * w[i][j];
        const A e = d_exp(-fabs(t));
        acc[i][j] += gs[j] * flip_resid(xv[i], xv[i] - A(1), t, e);
      }
  }
  for (int i = 0; i < kRI; ++i)
    for (int j = 0; j < kCJ; ++j) {
      const int64_t d = d0 + kTY * i, h = h0 + kTX * j;
      if (d < a.D && h < a.H) DScalar<S>::store(static_cast<S*>(a.gw) + d * a.H + h, acc[i][j]);
    }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("bernoulli_flip cuda: ") + what +
                             " launch failed: " + cudaGetErrorString(err));
}

dim3 grid_of(int64_t rows, int64_t cols) {
  const int64_t gy = (rows + kTileR - 1) / kTileR, gx = (cols + kTileC - 1) / kTileC;
  if (gy > 65535)
    throw std::invalid_argument("bernoulli_flip cuda: too many rows for one grid (" +
                                std::to_string(rows) + ")");
  return dim3(unsigned(gx), unsigned(gy));
}

template <typename S>
void forward_impl(const Args& a, cudaStream_t stream) {
  forward_kernel<S><<<grid_of(a.B, a.H), dim3(kTX, kTY), 0, stream>>>(a);
  check_launch("forward");
}

template <typename S>
void backward_impl(const Args& a, cudaStream_t stream) {
  if (a.gl || a.gx) {
    bd_kernel<S><<<grid_of(a.B, a.D), dim3(kTX, kTY), 0, stream>>>(a);
    check_launch("grad_logits / grad_x");
  }
  if (a.gw) {
    dh_kernel<S><<<grid_of(a.D, a.H), dim3(kTX, kTY), 0, stream>>>(a);
    check_launch("grad_weight");
  }
}

template <typename F>
void dispatch(DType dt, F&& f) {
  visit_dtype<__half, __nv_bfloat16>(dt, "bernoulli_flip cuda", f);
}

}  // namespace

void forward_cuda(const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  dispatch(a.dtype, [&](auto v) { forward_impl<decltype(v)>(a, s); });
}

void backward_cuda(const Args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  dispatch(a.dtype, [&](auto v) { backward_impl<decltype(v)>(a, s); });
}

}  // namespace bernoulli_flip
}  // namespace dqk
