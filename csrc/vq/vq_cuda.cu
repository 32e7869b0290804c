// CUDA kernels of the vector-quantisation ops (csrc/vq/vq.h has the contract).
//
// nearest (float32, float16, bfloat16 inputs): a fused GEMM-argmin that never builds the
// N x K matrix. Kernels, in stream order, on a workspace of O(N + K) bytes that the caller
// allocates (dqkernels/kernels/vq/cuda.py: torch's caching allocator, on the stream;
// nearest_cuda_workspace gives its size):
//   1. norms_kernel: |e_k|^2 in float into a K-float buffer, and max_k |e_k|^2 (atomicMax
//      on the bits of a non-negative float; NaN norms left out).
//   2. the scan: blocks of 128 rows x (all code tiles of their K split), 128 codes per tile,
//      256 threads. Per tile, the dot products z.e_k of the 128 x 128 tile, then the
//      epilogue: score s = fma(-2, z.e, |e|^2) (the row's |z|^2 is left out: it does not
//      change the order), and per row a running best score, its index (ties: the lower
//      index) and the second-best score (any other code's). Dot products:
//        - scan_simt_kernel (float32; 16-bit inputs below sm_80): CUDA-core FFMA, 8 x 8
//          outputs per thread, D streamed through shared memory in chunks of 8, transposed
//          (float4 reads, no bank conflicts), double-buffered through registers;
//        - scan_mma_kernel (16-bit inputs, sm_80+): tensor cores, mma.sync m16n8k16 with
//          fp32 accumulation, D in chunks of 32 through cp.async double buffering and
//          ldmatrix; each warp owns 64 rows x 32 codes.
//      Threads sharing a row merge (best, index, second) by shuffles (and shared memory
//      across warps for the mma kernel). When the row blocks alone cannot fill the GPU
//      (small N), K is split over gridDim.y (at most 16 splits); every block writes its
//      rows' partial (best, second, index) to scratch.
//   3. finish_kernel (a warp per row): merges the splits in code order, then screens the
//      row: with u the unit roundoff of the accumulation and n = D + 4,
//      gamma_n = n u / (1 - n u), a computed score is within
//      B = gamma_n (max|e|^2 + 2 |z| max|e|) of the exact |e|^2 - 2 z.e (norm and dot
//      product each within gamma_D of their sums of absolute terms, |z.e| <= |z||e|,
//      one more rounding in the fma; the extra terms of n absorb the rounding of the
//      bound's own arithmetic and of the gap second - best, and a factor 1 + gamma_n the
//      float rounding of |z|^2 and max|e|^2). So if second - best > 2B, the chosen code is
//      the unique exact minimiser. Otherwise (including NaN or overflow) the row goes to a
//      flag list (device counter); unflagged rows get sqdist = sum((z - e_best)^2) from explicit
//      differences, accumulated in float. The bound needs n u < 1: for larger D (millions)
//      there is no screen and every row goes straight to step 4 (no scan, no workspace).
//   4. rescore_kernel (a warp per flagged row, grid-stride over the list): every code's
//      distance from explicit differences accumulated in double, lanes over codes, first
//      minimum wins (strict < in code order per lane, lower index on equal values across
//      lanes): duplicated codebook rows give bit-equal sums and resolve to the lowest
//      index. It then writes the index and sqdist.
//   NaN (the rule of every backend, dqkernels/ops/vq.py): a NaN distance counts as +inf, so
//   a code at NaN distance is never chosen while some code has a finite distance (its scan
//   scores are skipped, its norm is left out of the maximum, the re-score passes it over),
//   and a row with no finite distance gets code 0.
//   u = 2^-24 for FFMA accumulation (products of 16-bit values are exact in float). For the
//   tensor cores u = 2^-22: their fp32 accumulation is not IEEE round-to-nearest (it may
//   truncate after aligning to the largest addend), a 4x margin on the per-addition error.
// nearest (float64): every row goes straight to rescore_kernel (explicit differences in
//   double: exact up to double rounding; correct, not tuned).
//
// sample: sample_kernel, 32 rows per block (4 per warp), lanes over the codes of a 32-code
//   tile; distances from explicit differences (float accumulation, double for float64),
//   z rows and codes staged through shared memory in D chunks of 64. Weights, the
//   normaliser and the cumulative weights are in double, as on the CPU path (in float, a
//   running sum near 1 drops weights below 2^-24 and rounds larger ones by up to 2^-24
//   each: far enough in the tail, whole stretches of the CDF shift and draws change code).
//   Codes of NaN (or inf) distance get weight 0. Pass 1: per lane an
//   online (min m, Z = sum exp(-(d - m) / T)) with rescaling, merged across the warp.
//   Pass 2: the same distances again, tile by tile in code order; weights
//   exp(-(d - m) / T), an inclusive warp scan plus the running prefix gives the cumulative
//   weights; each sorted target u * Z, in order, takes the first lane whose cumulative
//   weight exceeds it (ballot); targets never reached take the last code of positive
//   weight.
//
// Sizes: N, K, D, S at most 2^31 - 1024 (as_int): int arithmetic of a size plus a tile,
// chunk or lane offset cannot overflow; grid-stride counters are 64-bit.
//
// ema_update: a decay kernel over the state, then a warp per (row, sample) adding
//   (1 - decay) / S to the count and times z to the sum with atomicAdd in the state's type
//   (float, or double on sm_60+): the summation order is nondeterministic, so results can
//   differ between runs in the last bits.
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common/cuda_types.cuh"
#include "vq.h"

namespace dqk {
namespace vq {
namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kTileRows = 128, kTileCodes = 128, kScanThreads = 256, kMaxSplits = 16;

// ----------------------------------------------------------------------------- helpers

template <typename T>
__device__ __forceinline__ double load_double(const T* p) {
  return static_cast<double>(DScalar<T>::load(p));
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

// Running (best score, its index, second-best score) of a row; merge of two disjoint sets.
struct Best {
  float best, second;
  int idx;
};

__device__ __forceinline__ void merge_best(Best& a, float ob, float os, int oi) {
  const float sec = fminf(fminf(a.second, os), fmaxf(a.best, ob));
  if (ob < a.best || (ob == a.best && oi < a.idx)) {
    a.best = ob;
    a.idx = oi;
  }
  a.second = sec;
}

// Shuffle-merge across the lanes `lane ^ o` for o in [lo_mask ... 1] (powers of two).
template <int kFirst>
__device__ __forceinline__ void merge_lanes(Best& b) {
#pragma unroll
  for (int o = kFirst; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(kFull, b.best, o);
    const float os = __shfl_xor_sync(kFull, b.second, o);
    const int oi = __shfl_xor_sync(kFull, b.idx, o);
    merge_best(b, ob, os, oi);
  }
}

// One new score s of code c, codes visited in increasing order. A NaN score (a code with a
// NaN entry, or a NaN row) changes nothing: such a code is never chosen.
__device__ __forceinline__ void push_score(float& best, float& second, int& idx, float s, int c) {
  second = fminf(second, s < best ? best : s);  // fminf drops a NaN s
  if (s < best) {
    best = s;
    idx = c;
  }
}

struct ScanOut {
  float* best;    // [splits, N]
  float* second;  // [splits, N]
  int* idx;       // [splits, N]
};

// ----------------------------------------------------------------------------- norms

// sum_d row[d]^2 in float over the D entries of row, by the 32 lanes of a warp (lane
// takes d = lane, lane + 32, ...; then warp_sum).
template <typename T>
__device__ __forceinline__ float warp_sqnorm(const T* row, int D, int lane) {
  float s = 0.f;
  for (int d = lane; d < D; d += 32) {
    const float v = DScalar<T>::load(row + d);
    s = fmaf(v, v, s);
  }
  return warp_sum(s);
}

// Index of the calling thread's warp in the grid and the number of warps in it: the
// counters of the grid-stride loops over rows or codes, 64-bit (a counter plus the grid's
// warp count can pass 2^31 when N is near it).
__device__ __forceinline__ int64_t grid_warp() {
  return (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
}
__device__ __forceinline__ int64_t grid_warps() { return (int64_t(gridDim.x) * blockDim.x) >> 5; }

// |e_k|^2 in float (a warp per code) and max_k into *emax_bits (float bits, values >= 0).
// A NaN norm (a code with a NaN entry: never chosen) is left out of the maximum.
template <typename T>
__global__ void norms_kernel(const T* __restrict__ e, int K, int D, float* __restrict__ norms,
                             unsigned* __restrict__ emax_bits) {
  const int lane = threadIdx.x & 31;
  for (int64_t k = grid_warp(); k < K; k += grid_warps()) {
    const float s = warp_sqnorm(e + k * D, D, lane);
    if (lane == 0) {
      norms[k] = s;
      if (!isnan(s)) atomicMax(emax_bits, __float_as_uint(s));
    }
  }
}

// ----------------------------------------------------------------------------- SIMT scan

// 4 consecutive elements [k0, k0 + 4) of a row as float (zeros outside [0, D) or when !ok).
template <typename T, bool Vec>
__device__ __forceinline__ void load4(const T* row, bool ok, int k0, int D, float (&v)[4]) {
  if constexpr (Vec) {  // float rows, D % 4 == 0, 16-byte aligned
    if (ok && k0 < D) {
      const float4 q = __ldg(reinterpret_cast<const float4*>(row + k0));
      v[0] = q.x;
      v[1] = q.y;
      v[2] = q.z;
      v[3] = q.w;
    } else {
      v[0] = v[1] = v[2] = v[3] = 0.f;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = (ok && k0 + i < D) ? DScalar<T>::load(row + k0 + i) : 0.f;
  }
}

// Thread (ty, tx) of 16 x 16 owns rows ty*4 + {0..3, 64..67} and codes tx*4 + {0..3, 64..67}
// of the 128 x 128 tile; the loader thread t brings row t/2, elements (t%2)*4 + {0..3} of
// the D chunk, for z and for the codes.
template <typename T, bool Vec>
__global__ void __launch_bounds__(kScanThreads, 2)
    scan_simt_kernel(const T* __restrict__ z, const T* __restrict__ e,
                     const float* __restrict__ norms, int N, int K, int D, int tiles_per_split,
                     ScanOut out) {
  constexpr int BK = 8, LD = kTileRows + 4;  // +4: conflict-free transposed stores
  __shared__ __align__(16) float As[2][BK][LD];
  __shared__ __align__(16) float Bs[2][BK][LD];
  // each thread's running (best, second, index) of its 8 rows, kept in shared memory (read
  // and written once per tile) so that the 8 x 8 accumulators fit in registers
  __shared__ float st_best[8][kScanThreads], st_second[8][kScanThreads];
  __shared__ int st_idx[8][kScanThreads];

  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  const int row0 = blockIdx.x * kTileRows;
  const int ntiles = (K + kTileCodes - 1) / kTileCodes;
  const int tile0 = blockIdx.y * tiles_per_split;
  const int tile1 = min(ntiles, tile0 + tiles_per_split);
  const int nchunks = (D + BK - 1) / BK;
  const int nsteps = (tile1 - tile0) * nchunks;

  const int lr = tid >> 1, lc = (tid & 1) * 4;
  const bool zok = row0 + lr < N;
  const T* zrow = z + (zok ? int64_t(row0 + lr) * D : 0);
  float za[4], ea[4];
  int lt = tile0, lk = 0;  // tile and chunk start of the next global load
  auto gload = [&]() {
    const int code = lt * kTileCodes + lr;
    const bool eok = code < K;
    load4<T, Vec>(zrow, zok, lk + lc, D, za);
    load4<T, Vec>(e + (eok ? int64_t(code) * D : 0), eok, lk + lc, D, ea);
    lk += BK;
    if (lk >= D) {
      lk = 0;
      ++lt;
    }
  };
  auto sstore = [&](int buf) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      As[buf][lc + i][lr] = za[i];
      Bs[buf][lc + i][lr] = ea[i];
    }
  };

  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    st_best[i][tid] = st_second[i][tid] = INFINITY;
    st_idx[i][tid] = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;
  }

  if (nsteps > 0) {
    gload();
    sstore(0);
  }
  __syncthreads();
  int ct = tile0, cc = 0;  // tile and chunk being computed
  for (int step = 0; step < nsteps; ++step) {
    const int buf = step & 1;
    const bool more = step + 1 < nsteps;
    if (more) gload();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
      const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][64 + ty * 4]);
      const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][64 + tx * 4]);
      const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
      const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    if (more) sstore(buf ^ 1);
    if (++cc == nchunks) {  // epilogue of tile ct: codes in increasing order per thread
      cc = 0;
      const int cb = ct * kTileCodes + tx * 4;
      float nb[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = cb + (j < 4 ? j : 60 + j);
        nb[j] = c < K ? __ldg(norms + c) : INFINITY;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        float best = st_best[i][tid], second = st_second[i][tid];
        int idx = st_idx[i][tid];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          push_score(best, second, idx, fmaf(-2.f, acc[i][j], nb[j]), cb + (j < 4 ? j : 60 + j));
          acc[i][j] = 0.f;
        }
        st_best[i][tid] = best;
        st_second[i][tid] = second;
        st_idx[i][tid] = idx;
      }
      ++ct;
    }
    __syncthreads();
  }

  // the 16 threads of a half warp (tx = 0..15) share rows
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    Best b{st_best[i][tid], st_second[i][tid], st_idx[i][tid]};
    merge_lanes<8>(b);
    const int row = row0 + ty * 4 + (i < 4 ? i : 60 + i);
    if (tx == 0 && row < N) {
      const int64_t o = int64_t(blockIdx.y) * N + row;
      out.best[o] = b.best;
      out.second[o] = b.second;
      out.idx[o] = b.idx;
    }
  }
}

// ----------------------------------------------------------------------------- mma scan

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ unsigned smem_u32(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n"); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}
#endif

// 16-bit inputs on tensor cores (sm_80+; on older devices the host picks scan_simt_kernel).
// Shared tiles hold 128 rows x 32 elements of z and of the codes (row pitch 40 elements:
// ldmatrix reads of 8 rows hit distinct banks). Warp w owns rows (w & 1) * 64 + [0, 64) and
// codes (w >> 1) * 32 + [0, 32): 4 x 4 m16n8 accumulators. In an m16n8 accumulator, lane l
// holds rows l/4 and l/4 + 8, codes (l%4)*2 + {0, 1}.
template <typename T, bool Vec>
__global__ void __launch_bounds__(kScanThreads, 2)
    scan_mma_kernel(const T* __restrict__ z, const T* __restrict__ e,
                    const float* __restrict__ norms, int N, int K, int D, int tiles_per_split,
                    ScanOut out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr int BK = 32, LD = 40;
  __shared__ __align__(16) uint16_t As[2][kTileRows][LD];
  __shared__ __align__(16) uint16_t Bs[2][kTileCodes][LD];
  __shared__ float red_best[4][kTileRows], red_second[4][kTileRows];
  __shared__ int red_idx[4][kTileRows];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp & 1, wn = warp >> 1, g = lane >> 2, tig = lane & 3;
  const int row0 = blockIdx.x * kTileRows;
  const int ntiles = (K + kTileCodes - 1) / kTileCodes;
  const int tile0 = blockIdx.y * tiles_per_split;
  const int tile1 = min(ntiles, tile0 + tiles_per_split);
  const int nchunks = (D + BK - 1) / BK;
  const int nsteps = (tile1 - tile0) * nchunks;
  const uint16_t* zb = reinterpret_cast<const uint16_t*>(z);
  const uint16_t* eb = reinterpret_cast<const uint16_t*>(e);

  // loader: 512 pieces of 8 elements per operand; thread t brings pieces t and t + 256
  int lt = tile0, lk = 0;
  auto issue = [&](int buf) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int q = tid + h * kScanThreads, r = q >> 2, part = (q & 3) * 8;
      const int k = lk + part, zr = row0 + r, code = lt * kTileCodes + r;
      const bool zok = zr < N, eok = code < K;
      if constexpr (Vec) {  // D % 8 == 0, 16-byte aligned rows: whole pieces in or out
        cp_async16(&As[buf][r][part], zok && k < D ? zb + int64_t(zr) * D + k : zb, zok && k < D);
        cp_async16(&Bs[buf][r][part], eok && k < D ? eb + int64_t(code) * D + k : eb, eok && k < D);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          As[buf][r][part + i] = zok && k + i < D ? __ldg(zb + int64_t(zr) * D + k + i) : 0;
          Bs[buf][r][part + i] = eok && k + i < D ? __ldg(eb + int64_t(code) * D + k + i) : 0;
        }
      }
    }
    lk += BK;
    if (lk >= D) {
      lk = 0;
      ++lt;
    }
  };

  float acc[4][4][4];
  float best[8], second[8];
  int bidx[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    best[i] = second[i] = INFINITY;
    bidx[i] = 0;
  }
#pragma unroll
  for (int mi = 0; mi < 4; ++mi)
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.f;

  if (nsteps > 0) issue(0);
  cp_async_commit();
  int ct = tile0, cc = 0;
  for (int step = 0; step < nsteps; ++step) {
    const int buf = step & 1;
    if (step + 1 < nsteps) issue(buf ^ 1);
    cp_async_commit();
    cp_async_wait1();  // all but the group just issued: stage `buf` has landed
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < BK; ks += 16) {
      unsigned bf[4][2];
#pragma unroll
      for (int nj = 0; nj < 2; ++nj) {
        unsigned r[4];
        ldmatrix_x4(r, &Bs[buf][wn * 32 + nj * 16 + (lane & 7) + ((lane >> 4) << 3)]
                          [ks + ((lane >> 3) & 1) * 8]);
        bf[nj * 2][0] = r[0];
        bf[nj * 2][1] = r[1];
        bf[nj * 2 + 1][0] = r[2];
        bf[nj * 2 + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi) {
        unsigned af[4];
        ldmatrix_x4(
            af,
            &As[buf][wm * 64 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][ks + (lane >> 4) * 8]);
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) mma16816<T>(acc[mi][ni], af, bf[ni][0], bf[ni][1]);
      }
    }
    if (++cc == nchunks) {  // epilogue of tile ct; per thread codes ascend with (ni, q&1)
      cc = 0;
      const int cb = ct * kTileCodes + wn * 32 + tig * 2;
      float nb[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int c = cb + (j >> 1) * 8 + (j & 1);
        nb[j] = c < K ? __ldg(norms + c) : INFINITY;
      }
#pragma unroll
      for (int mi = 0; mi < 4; ++mi)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            float& a = acc[mi][j >> 1][h * 2 + (j & 1)];
            push_score(best[mi * 2 + h], second[mi * 2 + h], bidx[mi * 2 + h], fmaf(-2.f, a, nb[j]),
                       cb + (j >> 1) * 8 + (j & 1));
            a = 0.f;
          }
      ++ct;
    }
    __syncthreads();  // stage `buf` is refilled by the next iteration's issue
  }

  // lanes with the same g share rows; then the 4 warps along the codes, in code order
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    Best b{best[i], second[i], bidx[i]};
    merge_lanes<2>(b);
    if (tig == 0) {
      const int r = wm * 64 + (i >> 1) * 16 + (i & 1) * 8 + g;
      red_best[wn][r] = b.best;
      red_second[wn][r] = b.second;
      red_idx[wn][r] = b.idx;
    }
  }
  __syncthreads();
  if (tid < kTileRows && row0 + tid < N) {
    Best b{red_best[0][tid], red_second[0][tid], red_idx[0][tid]};
#pragma unroll
    for (int w = 1; w < 4; ++w)
      merge_best(b, red_best[w][tid], red_second[w][tid], red_idx[w][tid]);
    const int64_t o = int64_t(blockIdx.y) * N + row0 + tid;
    out.best[o] = b.best;
    out.second[o] = b.second;
    out.idx[o] = b.idx;
  }
#else
  __trap();  // never launched below sm_80
#endif
}

// ----------------------------------------------------------------------------- finish

// A warp per row: merge the K splits, screen (`screen` = 2 gamma_n (1 + gamma_n)), write the
// unflagged rows, list the others.
template <typename T>
__global__ void finish_kernel(const T* __restrict__ z, const T* __restrict__ e, int N, int D,
                              int splits, ScanOut part, const unsigned* __restrict__ emax_bits,
                              float screen, int64_t* __restrict__ indices,
                              float* __restrict__ sqdist, int* __restrict__ flagged,
                              int* __restrict__ nflagged) {
  const int lane = threadIdx.x & 31;
  const float emax = __uint_as_float(*emax_bits);
  for (int64_t n = grid_warp(); n < N; n += grid_warps()) {
    Best b{INFINITY, INFINITY, INT_MAX};
    if (lane < splits) {
      const int64_t o = lane * int64_t(N) + n;
      b = Best{part.best[o], part.second[o], part.idx[o]};
    }
    merge_lanes<16>(b);
    const T* zr = z + n * D;
    const float zn = warp_sqnorm(zr, D, lane);
    const float bound = screen * (emax + 2.f * sqrtf(zn) * sqrtf(emax));
    // close, tied, no finite best (NaN row, every code NaN), overflowed: re-score
    if (!(b.second - b.best > bound)) {
      if (lane == 0) flagged[atomicAdd(nflagged, 1)] = static_cast<int>(n);
      continue;
    }
    const T* er = e + int64_t(b.idx) * D;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) {
      const float df = DScalar<T>::load(zr + d) - DScalar<T>::load(er + d);
      s = fmaf(df, df, s);
    }
    s = warp_sum(s);
    if (lane == 0) {
      indices[n] = b.idx;
      sqdist[n] = s;
    }
  }
}

// ----------------------------------------------------------------------------- rescore

// A warp per listed row (all rows when `flagged` is null): every code's distance from
// explicit differences in double, first minimum by a strict < from (+inf, none): a NaN
// distance never compares below, so it counts as +inf (the NaN rule of the VQ ops), and a
// row with no finite distance gets code 0; then sqdist in Acc.
template <typename T, typename Acc>
__global__ void rescore_kernel(const T* __restrict__ z, const T* __restrict__ e, int N, int K,
                               int D, const int* __restrict__ flagged,
                               const int* __restrict__ nflagged, int64_t* __restrict__ indices,
                               Acc* __restrict__ sqdist) {
  const int lane = threadIdx.x & 31;
  const int64_t count = flagged ? *nflagged : N;
  for (int64_t f = grid_warp(); f < count; f += grid_warps()) {
    const int64_t n = flagged ? flagged[f] : f;
    const T* zr = z + n * D;
    double best = INFINITY;
    int bi = INT_MAX;  // none yet
    for (int k = lane; k < K; k += 32) {
      const T* er = e + int64_t(k) * D;
      double s = 0.0;
      for (int d = 0; d < D; ++d) {
        const double df = load_double(zr + d) - load_double(er + d);
        s = fma(df, df, s);
      }
      if (s < best) {
        best = s;
        bi = k;
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const double ob = __shfl_xor_sync(kFull, best, o);
      const int oi = __shfl_xor_sync(kFull, bi, o);
      if (ob < best || (ob == best && oi < bi)) {
        best = ob;
        bi = oi;
      }
    }
    if (bi == INT_MAX) bi = 0;  // no finite distance (NaN or overflow): code 0
    const T* er = e + int64_t(bi) * D;
    Acc s = Acc(0);
    for (int d = lane; d < D; d += 32) {
      const Acc df = DScalar<T>::load(zr + d) - DScalar<T>::load(er + d);
      s = fma(df, df, s);
    }
    s = warp_sum(s);
    if (lane == 0) {
      indices[n] = bi;
      sqdist[n] = s;
    }
  }
}

// ----------------------------------------------------------------------------- sample

// exp(-(d - m) / T) for distances d >= m (the difference is exact in double)
template <typename Acc>
__device__ __forceinline__ double weight(Acc d, Acc m, double inv_t) {
  return d == m ? 1.0 : exp(-(double(d) - double(m)) * inv_t);
}

// 32 rows per block, 4 per warp; lanes over the 32 codes of a tile. Distances in Acc;
// weights, the normaliser Z and the cumulative weights in double, as on the CPU path.
template <typename T, typename Acc>
__global__ void __launch_bounds__(256, 2)
    sample_kernel(const T* __restrict__ z, const T* __restrict__ e, const Acc* __restrict__ u,
                  int N, int K, int D, int S, double inv_t, int64_t* __restrict__ out) {
  constexpr int RPW = 4, SR = 32, SC = 32, DC = 64;
  static_assert(SR == SC && SR == 8 * RPW, "one loader loop fills both tiles; 8 warps");
  __shared__ Acc zs[SR][DC];
  __shared__ Acc es[SC][DC + 1];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int row0 = blockIdx.x * SR;

  // squared distances of this warp's rows to code c0 + lane (explicit differences)
  auto tile_dist = [&](int c0, Acc(&dist)[RPW]) {
#pragma unroll
    for (int r = 0; r < RPW; ++r) dist[r] = Acc(0);
    for (int d0 = 0; d0 < D; d0 += DC) {
      const int dc = min(DC, D - d0);
      __syncthreads();
      for (int q = tid; q < SR * DC; q += blockDim.x) {
        const int r = q / DC, c = q % DC;
        const int row = row0 + r, code = c0 + r;
        zs[r][c] =
            row < N && c < dc ? Acc(DScalar<T>::load(z + int64_t(row) * D + d0 + c)) : Acc(0);
        es[r][c] =
            code < K && c < dc ? Acc(DScalar<T>::load(e + int64_t(code) * D + d0 + c)) : Acc(0);
      }
      __syncthreads();
      for (int c = 0; c < dc; ++c) {
        const Acc ev = es[lane][c];
#pragma unroll
        for (int r = 0; r < RPW; ++r) {
          const Acc df = zs[warp * RPW + r][c] - ev;
          dist[r] = fma(df, df, dist[r]);
        }
      }
    }
  };

  // pass 1: per lane (m, Z) online, then merged across the warp
  Acc m[RPW];
  double Z[RPW];
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    m[r] = Acc(INFINITY);
    Z[r] = 0.0;
  }
  for (int c0 = 0; c0 < K; c0 += SC) {
    Acc dist[RPW];
    tile_dist(c0, dist);
    if (c0 + lane < K) {
#pragma unroll
      for (int r = 0; r < RPW; ++r) {
        const Acc d = dist[r];
        if (!(d < Acc(INFINITY))) continue;  // overflow or NaN: weight 0
        if (d < m[r]) {
          Z[r] = m[r] < Acc(INFINITY) ? Z[r] * weight(m[r], d, inv_t) + 1.0 : 1.0;
          m[r] = d;
        } else {
          Z[r] += weight(d, m[r], inv_t);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    Acc mw = m[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mw = min(mw, __shfl_xor_sync(kFull, mw, o));
    Z[r] = warp_sum(m[r] < Acc(INFINITY) ? Z[r] * weight(m[r], mw, inv_t) : 0.0);
    m[r] = mw;
  }

  // pass 2: cumulative weights in code order; sorted targets u * Z take the first code
  // whose cumulative weight exceeds them
  double prefix[RPW];
  int next[RPW], last_pos[RPW];
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    prefix[r] = 0.0;
    next[r] = 0;
    last_pos[r] = 0;
  }
  for (int c0 = 0; c0 < K; c0 += SC) {
    Acc dist[RPW];
    tile_dist(c0, dist);
#pragma unroll
    for (int r = 0; r < RPW; ++r) {
      const int row = row0 + warp * RPW + r;
      if (row >= N) continue;  // warp-uniform
      const Acc d = dist[r];
      const double w =
          c0 + lane < K && d < Acc(INFINITY) && m[r] < Acc(INFINITY) ? weight(d, m[r], inv_t) : 0.0;
      double cum = w;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const double v = __shfl_up_sync(kFull, cum, o);
        if (lane >= o) cum += v;
      }
      cum += prefix[r];
      const unsigned pos = __ballot_sync(kFull, w > 0.0);
      if (pos) last_pos[r] = c0 + 31 - __clz(pos);
      const Acc* ur = u + int64_t(row) * S;
      int64_t* orow = out + int64_t(row) * S;
      while (next[r] < S) {
        const double t = double(ur[next[r]]) * Z[r];
        const unsigned hit = __ballot_sync(kFull, cum > t);
        if (!hit) break;
        if (lane == 0) orow[next[r]] = c0 + __ffs(hit) - 1;
        ++next[r];
      }
      prefix[r] = __shfl_sync(kFull, cum, 31);
    }
  }
#pragma unroll
  for (int r = 0; r < RPW; ++r) {
    const int row = row0 + warp * RPW + r;
    if (row >= N) continue;
    for (int s = next[r] + lane; s < S; s += 32) out[int64_t(row) * S + s] = last_pos[r];
  }
}

// ----------------------------------------------------------------------------- EMA

template <typename St>
__global__ void ema_decay_kernel(St* __restrict__ cluster_size, St* __restrict__ embed_sum,
                                 int64_t K, int64_t KD, St decay) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < KD; i += stride) {
    embed_sum[i] *= decay;
    if (i < K) cluster_size[i] *= decay;
  }
}

// A warp per (row, sample) pair; lanes over D.
template <typename T, typename St>
__global__ void ema_accum_kernel(St* __restrict__ cluster_size, St* __restrict__ embed_sum,
                                 const T* __restrict__ z, const int64_t* __restrict__ indices,
                                 int64_t pairs, int S, int D, St alpha) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  for (int64_t p = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; p < pairs; p += warps) {
    const int64_t n = p / S, k = indices[p];
    if (lane == 0) atomicAdd(cluster_size + k, alpha);
    const T* zr = z + n * D;
    St* er = embed_sum + k * D;
    for (int d = lane; d < D; d += 32)
      atomicAdd(er + d, alpha * static_cast<St>(DScalar<T>::load(zr + d)));
  }
}

// ----------------------------------------------------------------------------- host

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("vq cuda: ") + what +
                             " failed: " + cudaGetErrorString(err));
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("vq cuda: ") + what +
                             " launch failed: " + cudaGetErrorString(err));
}

// Makes the device holding `ptr` (z) current for the scope (the stream belongs to it). A
// pointer the runtime cannot place on a device is an error, never a silent guess.
class DeviceGuard {
 public:
  explicit DeviceGuard(const void* ptr) {
    cudaPointerAttributes at{};
    const cudaError_t err = cudaPointerGetAttributes(&at, ptr);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();  // not sticky: clear it
      throw std::runtime_error(
          std::string("vq cuda: cannot tell which CUDA device holds z: cudaPointerGetAttributes "
                      "failed: ") +
          cudaGetErrorString(err));
    }
    if (at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged)
      throw std::invalid_argument(
          "vq cuda: z is not in CUDA device memory (cudaPointerGetAttributes reports host or "
          "unregistered memory); the CUDA kernels take tensors on a CUDA device");
    int cur = 0;
    check_cuda(cudaGetDevice(&cur), "cudaGetDevice");
    if (at.device != cur) {
      check_cuda(cudaSetDevice(at.device), "cudaSetDevice");
      prev_ = cur;
    }
  }
  ~DeviceGuard() {
    if (prev_ >= 0) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

struct DeviceInfo {
  int sms = 1, major = 0;
};

DeviceInfo device_info() {
  DeviceInfo d;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev), "attribute");
  check_cuda(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev), "attribute");
  return d;
}

// Every size (N, K, D, S) is at most kMaxExtent, so that the kernels' int arithmetic of a
// size plus a tile, chunk or lane offset (at most 1024) cannot overflow; the grid-stride
// counters, whose stride is the whole grid, are 64-bit.
constexpr int64_t kMaxExtent = int64_t(INT_MAX) - 1023;

int as_int(int64_t v, const char* name) {
  if (v > kMaxExtent)
    throw std::invalid_argument(
        std::string("vq cuda: ") + name + " = " + std::to_string(v) +
        " exceeds the CUDA kernels' limit of 2^31 - 1024 = " + std::to_string(kMaxExtent));
  return static_cast<int>(v);
}

unsigned grid_for(int64_t work, int64_t per_block, int64_t cap) {
  const int64_t b = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(b < 1 ? 1 : (b > cap ? cap : b));
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

size_t round_up(size_t v) { return (v + 255) & ~size_t(255); }

// How nearest runs for given sizes on the current device, and the layout of its workspace.
struct NearestPlan {
  int N = 0, K = 0, D = 0;
  bool exact_only = false;  // every row straight to rescore_kernel (no scan, no workspace)
  bool mma = false;         // the tensor-core scan (16-bit inputs, sm_80+)
  float screen = 0.f;       // 2 gamma_n (1 + gamma_n), see the top of the file
  int splits = 1, tiles_per_split = 1;
  size_t part = 0;   // bytes of one of the three [splits, N] partial arrays
  size_t bytes = 0;  // of the workspace: norms [K], partials, flag list [N], counter, max
};

NearestPlan plan_nearest(const NearestArgs& a, const DeviceInfo& dev) {
  NearestPlan p;
  p.N = as_int(a.N, "N");
  p.K = as_int(a.K, "K");
  p.D = as_int(a.D, "D");
  if (a.dtype == DType::kFloat64) {  // explicit differences in double for every row
    p.exact_only = true;
    return p;
  }
  p.mma = a.dtype != DType::kFloat32 && dev.major >= 8;
  // u: FFMA accumulation 2^-24; tensor cores 2^-22 (see the top of the file)
  const double u = p.mma ? 1.0 / (1 << 22) : 1.0 / (1 << 24);
  const double nu = double(p.D + 4) * u;
  if (!(nu < 1.0)) {  // gamma_n needs n u < 1: beyond (D in the millions) no bound, no screen
    p.exact_only = true;
    return p;
  }
  // 2 gamma_n, times (1 + gamma_n) for the rounding of |z|^2 and max|e|^2 themselves
  const double gamma = nu / (1.0 - nu);
  p.screen = static_cast<float>(2.0 * gamma * (1.0 + gamma));

  const int row_blocks = (p.N + kTileRows - 1) / kTileRows;
  const int ntiles = (p.K + kTileCodes - 1) / kTileCodes;
  int splits = (2 * dev.sms + row_blocks - 1) / row_blocks;  // 2 resident blocks per SM
  splits = splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits);
  splits = splits > ntiles ? ntiles : splits;
  p.tiles_per_split = (ntiles + splits - 1) / splits;
  p.splits = (ntiles + p.tiles_per_split - 1) / p.tiles_per_split;  // no empty split
  p.part = round_up(size_t(p.splits) * size_t(p.N) * 4);
  p.bytes = round_up(size_t(p.K) * 4) + 3 * p.part + round_up(size_t(p.N) * 4) + 256;
  return p;
}

// every row by explicit differences in double (float64 inputs; a vacuous screen)
template <typename T, typename Acc>
void nearest_exact(const NearestPlan& p, const NearestArgs& a, const DeviceInfo& dev,
                   cudaStream_t stream) {
  rescore_kernel<T, Acc><<<grid_for(p.N, 8, 32u * dev.sms), 256, 0, stream>>>(
      static_cast<const T*>(a.z), static_cast<const T*>(a.codebook), p.N, p.K, p.D, nullptr,
      nullptr, a.indices, static_cast<Acc*>(a.sqdist));
  check_launch("nearest (exact)");
}

template <typename T>
void nearest_float_acc(const NearestPlan& p, const NearestArgs& a, const DeviceInfo& dev, char* ws,
                       cudaStream_t stream) {
  const int N = p.N, K = p.K, D = p.D;
  const T* z = static_cast<const T*>(a.z);
  const T* e = static_cast<const T*>(a.codebook);

  char* q = ws;
  float* norms = reinterpret_cast<float*>(q);
  q += round_up(size_t(K) * 4);
  ScanOut out{reinterpret_cast<float*>(q), reinterpret_cast<float*>(q + p.part),
              reinterpret_cast<int*>(q + 2 * p.part)};
  q += 3 * p.part;
  int* flagged = reinterpret_cast<int*>(q);
  q += round_up(size_t(N) * 4);
  int* nflagged = reinterpret_cast<int*>(q);
  unsigned* emax_bits = reinterpret_cast<unsigned*>(q + 4);
  check_cuda(cudaMemsetAsync(q, 0, 8, stream), "cudaMemsetAsync");

  const unsigned warp_blocks_cap = 32u * dev.sms;
  norms_kernel<T><<<grid_for(K, 8, warp_blocks_cap), 256, 0, stream>>>(e, K, D, norms, emax_bits);
  check_launch("norms");

  const dim3 grid{unsigned((N + kTileRows - 1) / kTileRows), unsigned(p.splits), 1u};
  const int tps = p.tiles_per_split;
  if constexpr (std::is_same<T, float>::value) {
    if (D % 4 == 0 && aligned16(z) && aligned16(e))
      scan_simt_kernel<T, true><<<grid, kScanThreads, 0, stream>>>(z, e, norms, N, K, D, tps, out);
    else
      scan_simt_kernel<T, false><<<grid, kScanThreads, 0, stream>>>(z, e, norms, N, K, D, tps, out);
  } else if (p.mma) {
    if (D % 8 == 0 && aligned16(z) && aligned16(e))
      scan_mma_kernel<T, true><<<grid, kScanThreads, 0, stream>>>(z, e, norms, N, K, D, tps, out);
    else
      scan_mma_kernel<T, false><<<grid, kScanThreads, 0, stream>>>(z, e, norms, N, K, D, tps, out);
  } else {
    scan_simt_kernel<T, false><<<grid, kScanThreads, 0, stream>>>(z, e, norms, N, K, D, tps, out);
  }
  check_launch("nearest scan");

  finish_kernel<T><<<grid_for(N, 8, warp_blocks_cap), 256, 0, stream>>>(
      z, e, N, D, p.splits, out, emax_bits, p.screen, a.indices, static_cast<float*>(a.sqdist),
      flagged, nflagged);
  check_launch("nearest finish");
  rescore_kernel<T, float><<<grid_for(N, 8, 8u * dev.sms), 256, 0, stream>>>(
      z, e, N, K, D, flagged, nflagged, a.indices, static_cast<float*>(a.sqdist));
  check_launch("nearest rescore");
}

template <typename T>
void sample_impl(const SampleArgs& a, cudaStream_t stream) {
  using Acc = typename DScalar<T>::acc;
  const int N = as_int(a.N, "N"), K = as_int(a.K, "K"), D = as_int(a.D, "D");
  const int S = as_int(a.S, "S");
  const unsigned blocks = static_cast<unsigned>((int64_t(N) + 31) / 32);
  sample_kernel<T, Acc><<<blocks, 256, 0, stream>>>(
      static_cast<const T*>(a.z), static_cast<const T*>(a.codebook), static_cast<const Acc*>(a.u),
      N, K, D, S, a.inv_temperature, a.out);
  check_launch("sample");
}

template <typename T, typename St>
void ema_impl(const EmaArgs& a, cudaStream_t stream) {
  const DeviceInfo dev = device_info();
  St* cs = static_cast<St*>(a.cluster_size);
  St* es = static_cast<St*>(a.embed_sum);
  const int64_t KD = a.K * a.D;
  ema_decay_kernel<St><<<grid_for(KD, 256, 32u * dev.sms), 256, 0, stream>>>(
      cs, es, a.K, KD, static_cast<St>(a.decay));
  check_launch("ema decay");
  const St alpha = static_cast<St>((1.0 - a.decay) / double(a.S));
  const int64_t pairs = a.N * a.S;
  ema_accum_kernel<T, St><<<grid_for(pairs, 8, 32u * dev.sms), 256, 0, stream>>>(
      cs, es, static_cast<const T*>(a.z), a.indices, pairs, as_int(a.S, "S"), as_int(a.D, "D"),
      alpha);
  check_launch("ema accumulate");
}

template <typename F>
void dispatch(DType dt, F&& f) {
  visit_dtype<__half, __nv_bfloat16>(dt, "vq cuda", f);
}

}  // namespace

int64_t nearest_cuda_workspace(const NearestArgs& a) {
  DeviceGuard guard(a.z);
  const NearestPlan p = plan_nearest(a, device_info());
  return p.exact_only ? 0 : static_cast<int64_t>(p.bytes);
}

void nearest_cuda(const NearestArgs& a, void* workspace, int64_t workspace_bytes, void* stream) {
  DeviceGuard guard(a.z);
  auto s = static_cast<cudaStream_t>(stream);
  const DeviceInfo dev = device_info();
  const NearestPlan p = plan_nearest(a, dev);
  if (!p.exact_only && (workspace_bytes < static_cast<int64_t>(p.bytes) || !aligned16(workspace)))
    throw std::invalid_argument("vq cuda: nearest needs a 16-byte aligned workspace of " +
                                std::to_string(p.bytes) + " bytes (nearest_cuda_workspace); got " +
                                std::to_string(workspace_bytes) + " bytes");
  dispatch(a.dtype, [&](auto v) {
    using T = decltype(v);
    if constexpr (std::is_same<T, double>::value) {
      nearest_exact<double, double>(p, a, dev, s);
    } else {
      if (p.exact_only) nearest_exact<T, float>(p, a, dev, s);
      else nearest_float_acc<T>(p, a, dev, static_cast<char*>(workspace), s);
    }
  });
}

void sample_cuda(const SampleArgs& a, void* stream) {
  DeviceGuard guard(a.z);
  auto s = static_cast<cudaStream_t>(stream);
  dispatch(a.dtype, [&](auto v) { sample_impl<decltype(v)>(a, s); });
}

void ema_update_cuda(const EmaArgs& a, void* stream) {
  DeviceGuard guard(a.z);
  auto s = static_cast<cudaStream_t>(stream);
  dispatch(a.dtype, [&](auto v) {
    if (a.state_dtype == DType::kFloat64) ema_impl<decltype(v), double>(a, s);
    else ema_impl<decltype(v), float>(a, s);
  });
}

}  // namespace vq
}  // namespace dqk
