// CUDA kernels of the masked linear layer: one tiled shared-memory GEMM (SIMT, fp32
// accumulation; fp64 for double), three uses, as in masked_linear_cpu.cpp:
//
//   forward  C[m=row, n=out] = sum_k x[m, k] W[n, k]        mask on B: keep(out[n], in[k])
//   grad x   C[m=row, n=in]  = sum_k gy[m, k] W[k, n]       mask on B: keep(out[k], in[n])
//   grad W   C[m=out, n=in]  = M[m, n] sum_k gy[k, m] x[k, n]   mask on C
//
// Block tile BM x BN (a thread owns TM x TN outputs, strided by BM/TM rows and BN/TN
// columns so shared-memory reads are conflict-free and stores coalesce), K tiles of BK.
// Skipping, per block, with the degree range of its BN columns (and BM rows):
//   mask on B: a K tile is skipped when none of its BK rows is live for the block's
//     columns (row k live iff keep(max out over the columns, in[k]), forward, or
//     keep(out[k], min in over the columns), grad x). The test is one __syncthreads_or,
//     which is also the barrier that protects the shared tiles. Live tiles load W with
//     an elementwise select (a masked entry is never read).
//   mask on C: a block whose tile is entirely masked writes zeros and returns; a partly
//     masked one selects per element at the store.
// Every output element is summed by one thread in a fixed order: deterministic.
#include <cuda_runtime.h>
#include <limits.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common/cuda_types.cuh"
#include "masked_linear.h"

namespace dqk {
namespace masked_linear {
namespace {

constexpr int kSideB = 0, kSideC = 1;

struct DevProblem {
  int64_t M, N, K;
  const void* A;
  int64_t sam, sak;
  const void* B;
  int64_t sbk, sbn;
  int side;
  bool strict, n_is_hi;
  bool a_k_fast, b_n_fast;  // which index of A / B is contiguous-ish (load order)
  const int64_t* dr;        // degrees along k (mask on B) or m (mask on C)
  const int64_t* dn;        // degrees along n
  const void* bias;         // [N] or null
  int64_t sbias;
  void* C;  // [M, N] contiguous, row stride ldc
  int64_t ldc;
};

__device__ __forceinline__ bool dkeep(int64_t hi, int64_t lo, bool strict) {
  return strict ? hi > lo : hi >= lo;
}

// (min, max) of d[i0, i0 + count) over the block (count >= 1); all threads get it.
template <int NT>
__device__ __forceinline__ void block_minmax(const int64_t* d, int64_t i0, int64_t count,
                                             long long* lo_out, long long* hi_out) {
  __shared__ long long s_lo[NT / 32], s_hi[NT / 32];
  long long lo = LLONG_MAX, hi = LLONG_MIN;
  for (int64_t i = threadIdx.x; i < count; i += NT) {
    const long long v = d[i0 + i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const long long l2 = __shfl_xor_sync(0xffffffffu, lo, o);
    const long long h2 = __shfl_xor_sync(0xffffffffu, hi, o);
    lo = l2 < lo ? l2 : lo;
    hi = h2 > hi ? h2 : hi;
  }
  if ((threadIdx.x & 31) == 0) {
    s_lo[threadIdx.x >> 5] = lo;
    s_hi[threadIdx.x >> 5] = hi;
  }
  __syncthreads();
  lo = s_lo[0];
  hi = s_hi[0];
#pragma unroll
  for (int w = 1; w < NT / 32; ++w) {
    lo = s_lo[w] < lo ? s_lo[w] : lo;
    hi = s_hi[w] > hi ? s_hi[w] : hi;
  }
  __syncthreads();  // s_lo / s_hi may be reused by the next call
  *lo_out = lo;
  *hi_out = hi;
}

template <typename S, int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN)) mgemm_kernel(const DevProblem p) {
  using Acc = typename DScalar<S>::acc;
  constexpr int NT = (BM / TM) * (BN / TN);
  constexpr int TX = BN / TN, TY = BM / TM;
  constexpr int PAD = 4;  // row padding: conflict-free transposed stores of BK <= 8 rows
  static_assert(NT % 32 == 0 && BK <= NT, "tile shape");
  __shared__ Acc As[BK][BM + PAD];
  __shared__ Acc Bs[BK][BN + PAD];
  __shared__ long long s_dn[BN];
  __shared__ long long s_dk[BK];

  const int tid = threadIdx.x;
  const int tx = tid % TX, ty = tid / TX;
  const int64_t m0 = int64_t(blockIdx.x) * BM, n0 = int64_t(blockIdx.y) * BN;
  const int64_t mcount = p.M - m0 < BM ? p.M - m0 : BM;
  const int64_t ncount = p.N - n0 < BN ? p.N - n0 : BN;
  const S* A = static_cast<const S*>(p.A);
  const S* B = static_cast<const S*>(p.B);
  S* C = static_cast<S*>(p.C);
  const bool side_b = p.side == kSideB;

  long long nlo, nhi;
  block_minmax<NT>(p.dn, n0, ncount, &nlo, &nhi);
  for (int i = tid; i < BN; i += NT) s_dn[i] = i < ncount ? p.dn[n0 + i] : 0;
  bool partial_c = false;
  if (!side_b) {
    long long mlo, mhi;
    block_minmax<NT>(p.dr, m0, mcount, &mlo, &mhi);
    const bool any = p.n_is_hi ? dkeep(nhi, mlo, p.strict) : dkeep(mhi, nlo, p.strict);
    const bool all = p.n_is_hi ? dkeep(nlo, mhi, p.strict) : dkeep(mlo, nhi, p.strict);
    if (!any) {  // entirely masked tile (uniform over the block)
      for (int64_t e = tid; e < mcount * ncount; e += NT) {
        const int64_t mm = e / ncount, nn = e - mm * ncount;
        DScalar<S>::store(C + (m0 + mm) * p.ldc + n0 + nn, Acc(0));
      }
      return;
    }
    partial_c = !all;
  }
  const long long ext = p.n_is_hi ? nhi : nlo;

  Acc acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);

  for (int64_t k0 = 0; k0 < p.K; k0 += BK) {
    int live = 1;
    if (side_b) {
      live = 0;
      if (tid < BK) {
        const int64_t k = k0 + tid;
        const long long d = k < p.K ? p.dr[k] : 0;
        s_dk[tid] = d;  // safe: every thread is past the loads of the previous tile
        live = k < p.K && (p.n_is_hi ? dkeep(ext, d, p.strict) : dkeep(d, ext, p.strict));
      }
    }
    // the barrier before the shared tiles are overwritten, and the skip test
    if (!__syncthreads_or(live)) continue;

    for (int e = tid; e < BM * BK; e += NT) {
      int mm, kk;
      if (p.a_k_fast) {
        kk = e % BK;
        mm = e / BK;
      } else {
        mm = e % BM;
        kk = e / BM;
      }
      const int64_t m = m0 + mm, k = k0 + kk;
      Acc v = Acc(0);
      if (m < p.M && k < p.K) v = DScalar<S>::load(A + m * p.sam + k * p.sak);
      As[kk][mm] = v;
    }
    for (int e = tid; e < BK * BN; e += NT) {
      int nn, kk;
      if (p.b_n_fast) {
        nn = e % BN;
        kk = e / BN;
      } else {
        kk = e % BK;
        nn = e / BK;
      }
      const int64_t n = n0 + nn, k = k0 + kk;
      Acc v = Acc(0);
      if (n < p.N && k < p.K) {
        bool ok = true;
        if (side_b)
          ok =
              p.n_is_hi ? dkeep(s_dn[nn], s_dk[kk], p.strict) : dkeep(s_dk[kk], s_dn[nn], p.strict);
        if (ok) v = DScalar<S>::load(B + k * p.sbk + n * p.sbn);
      }
      Bs[kk][nn] = v;
    }
    __syncthreads();

#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      Acc a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = As[kk][ty + i * TY];
#pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx + j * TX];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  const S* bias = static_cast<const S*>(p.bias);
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int64_t mm = ty + i * TY;
    if (mm >= mcount) continue;
    const int64_t m = m0 + mm;
    const long long dm = partial_c ? p.dr[m] : 0;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int nn = tx + j * TX;
      if (nn >= ncount) continue;
      Acc v = acc[i][j];
      if (bias) v += DScalar<S>::load(bias + (n0 + nn) * p.sbias);
      if (partial_c) {
        const bool ok = p.n_is_hi ? dkeep(s_dn[nn], dm, p.strict) : dkeep(dm, s_dn[nn], p.strict);
        if (!ok) v = Acc(0);
      }
      DScalar<S>::store(C + m * p.ldc + n0 + nn, v);
    }
  }
}

// Column sums of gy [rows, cols] in a fixed order: 32 columns by 8 row phases per block.
template <typename S>
__global__ void __launch_bounds__(256)
    colsum_kernel(const S* gy, int64_t s0, int64_t s1, int64_t rows, int64_t cols, S* out) {
  using Acc = typename DScalar<S>::acc;
  __shared__ Acc part[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int64_t j = int64_t(blockIdx.x) * 32 + tx;
  Acc s = Acc(0);
  if (j < cols)
    for (int64_t r = ty; r < rows; r += 8) s += DScalar<S>::load(gy + r * s0 + j * s1);
  part[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && j < cols) {
    Acc t = Acc(0);
#pragma unroll
    for (int i = 0; i < 8; ++i) t += part[i][tx];
    DScalar<S>::store(out + j, t);
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("masked_linear cuda: ") + what +
                             " launch failed: " + cudaGetErrorString(err));
}

template <typename S>
void launch_gemm(DevProblem p, cudaStream_t stream) {
  p.a_k_fast = (p.sak < 0 ? -p.sak : p.sak) <= (p.sam < 0 ? -p.sam : p.sam);
  p.b_n_fast = (p.sbn < 0 ? -p.sbn : p.sbn) <= (p.sbk < 0 ? -p.sbk : p.sbk);
  // float-accumulated: 128 x 128 tiles, 8 x 8 per thread; double: 64 x 64, 4 x 4
  constexpr bool dbl = std::is_same<S, double>::value;
  constexpr int BM = dbl ? 64 : 128, BN = dbl ? 64 : 128, BK = 8;
  constexpr int TM = dbl ? 4 : 8, TN = dbl ? 4 : 8;
  const int64_t gm = (p.M + BM - 1) / BM, gn = (p.N + BN - 1) / BN;
  if (gm > 0x7fffffffLL || gn > 65535)
    throw std::invalid_argument("masked_linear cuda: problem too large for one grid (" +
                                std::to_string(p.M) + " x " + std::to_string(p.N) + ")");
  const dim3 grid{unsigned(gm), unsigned(gn), 1u};
  mgemm_kernel<S, BM, BN, BK, TM, TN><<<grid, (BM / TM) * (BN / TN), 0, stream>>>(p);
  check_launch("gemm");
}

template <typename S>
void forward_impl(const Args& a, cudaStream_t stream) {
  DevProblem p{};
  p.M = a.rows;
  p.N = a.out;
  p.K = a.in;
  p.A = a.x.p;
  p.sam = a.x.s0;
  p.sak = a.x.s1;
  p.B = a.w.p;
  p.sbk = a.w.s1;
  p.sbn = a.w.s0;  // B[k=i, n=j] = W[j, i]
  p.side = kSideB;
  p.strict = a.strict;
  p.n_is_hi = true;
  p.dr = a.in_deg;
  p.dn = a.out_deg;
  p.bias = a.bias;
  p.sbias = a.bias_stride;
  p.C = a.y;
  p.ldc = a.out;
  launch_gemm<S>(p, stream);
}

template <typename S>
void backward_impl(const Args& a, cudaStream_t stream) {
  if (a.gx) {
    DevProblem p{};
    p.M = a.rows;
    p.N = a.in;
    p.K = a.out;
    p.A = a.gy.p;
    p.sam = a.gy.s0;
    p.sak = a.gy.s1;
    p.B = a.w.p;
    p.sbk = a.w.s0;
    p.sbn = a.w.s1;  // B[k=j, n=i] = W[j, i]
    p.side = kSideB;
    p.strict = a.strict;
    p.n_is_hi = false;
    p.dr = a.out_deg;
    p.dn = a.in_deg;
    p.C = a.gx;
    p.ldc = a.in;
    launch_gemm<S>(p, stream);
  }
  if (a.gw) {
    DevProblem p{};
    p.M = a.out;
    p.N = a.in;
    p.K = a.rows;
    p.A = a.gy.p;
    p.sam = a.gy.s1;
    p.sak = a.gy.s0;  // A[m=j, k=r] = gy[r, j]
    p.B = a.x.p;
    p.sbk = a.x.s0;
    p.sbn = a.x.s1;  // B[k=r, n=i] = x[r, i]
    p.side = kSideC;
    p.strict = a.strict;
    p.n_is_hi = false;
    p.dr = a.out_deg;
    p.dn = a.in_deg;
    p.C = a.gw;
    p.ldc = a.in;
    launch_gemm<S>(p, stream);
  }
  if (a.gb) {
    const int64_t blocks = (a.out + 31) / 32;
    if (blocks > 0x7fffffffLL) throw std::invalid_argument("masked_linear cuda: too many outputs");
    colsum_kernel<S><<<unsigned(blocks), 256, 0, stream>>>(
        static_cast<const S*>(a.gy.p), a.gy.s0, a.gy.s1, a.rows, a.out, static_cast<S*>(a.gb));
    check_launch("bias gradient");
  }
}

template <typename F>
void dispatch(DType dt, F&& f) {
  visit_dtype<__half, __nv_bfloat16>(dt, "masked_linear cuda", f);
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

}  // namespace masked_linear
}  // namespace dqk
