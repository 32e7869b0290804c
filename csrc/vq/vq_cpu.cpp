// VQ CPU kernels: nearest code (a fused GEMM-argmin), sampling by inverse CDF, EMA
// statistics. No N x K buffer: extra memory is O(N + K) plus fixed per-thread tiles.
//
// Score engine (nearest and sample). The score of code k for row z is
//   s_k = |e_k|^2 - 2 z.e_k      (so |z - e_k|^2 = |z|^2 + s_k)
// Rows are cut into blocks of up to 256; a block packs its rows transposed and scaled by
// -2 (exact) into tiles zt[d][TR] (TR rows in vector lanes). The codebook is read in
// place, in blocks of CB codes (~128 KiB and <= 1024 codes, L2-resident while every tile
// of the row block sweeps them; fp16 inputs, and bf16 ones off the AVX512-BF16 path, are
// converted to float per block into a per-thread buffer). The register tile is TR rows x NC codes:
// per d, the row vectors are loaded once and each code's element is broadcast
// (vfmadd231ps with an embedded broadcast), accumulators start at |e_k|^2 (float norms
// rounded from double sums), so each accumulator ends as the score vector of one code
// over TR rows. The epilogue then runs per code on those vectors:
//   nearest: per row lane, best score, its index (strict <: the first minimum) and the
//            second-best score, kept in registers while a tile sweeps a code block;
//   sample:  the scores are stored to a [CB][TR] buffer and consumed in double.
// Paths (picked at run time, tests force each), rows x codes per register tile: AVX-512
// 32 x 8 (fp32) / 16 x 8 (fp64); AVX2 8 x 8 / 4 x 8; SSE2 baseline 8 x 4 / 4 x 4 (GCC
// vector extensions compiled per target); AVX512-BF16 for bf16 inputs: rows packed as bf16
// pairs (-2 z_{2i}, -2 z_{2i+1}), code pairs broadcast from the tensor as 32-bit words,
// vdpbf16ps (exact bf16 products, fp32 accumulation), 2 x 16 rows x 8 codes.
//
// Exactness of nearest. Every score carries |s_hat - s| <= g (|e|^2 + 2 |z||e|) + t,
// g = gamma_m = m u / (1 - m u) with m = D + 4 (D roundings of the sequential
// accumulation, the norm's rounding from double, slack), m = 2 D + 4 for vdpbf16ps (two
// roundings per pair at most) and for float64 (whose norms carry gamma_D themselves);
// t = 4 m tiny (1 + sqrt(D) (|z| + max|e|)) covers underflow, flush-to-zero and
// denormals-are-zero (vdpbf16ps, or a caller's FTZ/DAZ mode). With
// B = 2 g (max|e|^2 + 2 |z| max|e|) + 2 t, a row whose computed gap (second - best) is
// > B has a unique true minimum at the computed best. A closer row waits, with the
// threshold best + B, for a candidate sweep (once a tile of TR such rows has gathered in
// the thread, and at the end): the engine runs over all codes again for those rows and
// every code whose score is <= the threshold (the true argmin and every code tied with
// it are among them) is re-scored from explicit differences sum((z - e_k)^2) in double,
// the first minimum in code order winning: exact ties (duplicated codes) go to the
// lowest index. Rows too large for the float expansion, or with a NaN/inf best, are
// re-scored that way over all codes. sqdist = sum((z - e_best)^2) from explicit
// differences, accumulated in float (double for float64 inputs).
//
// sample: two sweeps of the codes per tile with the same engine, d = max(|z|^2 + s, 0):
// (1) m = min d and Z = sum exp(-(d - m) / T) in double (rescaled per code block as m
// falls); (2) cumulative weights in double in code order: the sorted targets u * Z go to
// the first code whose cumulative weight exceeds them, leftovers to the last code of
// positive weight. Distances and weights are computed over the tile's rows in lanes
// (a branch-free double exp that vectorises); the cumulative scan runs per row.
//
// ema_update: the samples are sorted by code (a counting sort: O(N S + K) memory, row
// order kept); each code then sums its rows in double and is updated once,
// x = decay * x + (1 - decay) / S * sum, in double and rounded to the state dtype.
// Deterministic for any thread count, no atomics.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/cpu_types.h"
#include "vq.h"


#if defined(__GNUC__)
#define DQK_VQ_INLINE inline __attribute__((always_inline))
#else
#define DQK_VQ_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_VQ_X86 1
#define DQK_VQ_V4 __attribute__((target("arch=x86-64-v4")))
#define DQK_VQ_V3 __attribute__((target("arch=x86-64-v3")))
#define DQK_VQ_BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#include <immintrin.h>
#else
#define DQK_VQ_X86 0
#endif

namespace dqk {
namespace vq {
namespace {

constexpr int64_t kRowBlock = 256;            // rows per work item (a multiple of every TR)
constexpr int64_t kCodeBlockBytes = 1 << 17;  // code block size in packed bytes
constexpr int64_t kMaxCodeBlock = 1024;       // and in codes

// Threads worth waking for `work` multiply-adds: a parallel region costs microseconds.
inline int threads_for(double work, int64_t items, int nt) {
  const double useful = work / double(1 << 20);
  int t = useful < 2.0 ? 1 : (useful < double(nt) ? int(useful) : nt);
  if (int64_t(t) > items) t = int(items);
  return t < 1 ? 1 : t;
}

template <typename T>
DQK_VQ_INLINE float to_f(T v) { return float(v); }
template <>
DQK_VQ_INLINE float to_f(Half v) { return to_float(v); }
template <>
DQK_VQ_INLINE float to_f(BFloat16 v) { return to_float(v); }

template <typename T>
DQK_VQ_INLINE double to_d(T v) { return double(to_f(v)); }
template <>
DQK_VQ_INLINE double to_d(double v) { return v; }

#if DQK_VQ_X86
// fp16 to float with F16C (vcvtph2ps; exact), 16 / 8 at a time
DQK_VQ_V4 __attribute__((noinline)) void half_to_float_v4(const Half* src, float* dst,
                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_maskz_cvtph_ps(__mmask16(0xffff),
                                                    _mm256_loadu_si256((const __m256i*)(src + i))));
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}
DQK_VQ_V3 __attribute__((noinline)) void half_to_float_v3(const Half* src, float* dst,
                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(src + i))));
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}
#endif

// n values to float (fp16 with F16C on the AVX2 / AVX-512 paths: kLanes 8 / 16)
template <int kLanes, typename T>
DQK_VQ_INLINE void row_to_float(const T* src, float* dst, int64_t n) {
#if DQK_VQ_X86
  if constexpr (std::is_same<T, Half>::value && kLanes >= 8) {
    if (kLanes == 16) half_to_float_v4(src, dst, n);
    else half_to_float_v3(src, dst, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f(src[i]);
}

// ----------------------------------------------------------------------------- paths

// A float/double path: TR = L * MV rows in MV vectors of L lanes, NC codes per register
// tile; packed rows and code elements are Acc values, one d per step.
template <typename AccT, int kL, int kMV, int kNC>
struct FPath {
  using Acc = AccT;
  using Pk = AccT;   // packed row element
  using Ce = AccT;   // code element as the engine reads it
  using IdxT = typename std::conditional<sizeof(AccT) == 4, int32_t, int64_t>::type;
  typedef AccT V __attribute__((vector_size(kL * sizeof(AccT))));
  typedef IdxT IV __attribute__((vector_size(kL * sizeof(AccT))));
  static constexpr int L = kL, MV = kMV, NC = kNC, TR = kL * kMV;
  static constexpr bool kBf16 = false;
  static int64_t steps(int64_t D) { return D; }
};

#if DQK_VQ_X86
// AVX512-BF16: packed rows and codes are 32-bit pairs of bf16 (low half: even d).
struct PathBF16 {
  using Acc = float;
  using Pk = uint32_t;
  using Ce = uint32_t;
  using IdxT = int32_t;
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t IV __attribute__((vector_size(64)));
  static constexpr int L = 16, MV = 2, NC = 8, TR = 32;
  static constexpr bool kBf16 = true;
  static int64_t steps(int64_t D) { return (D + 1) / 2; }
};
#endif

// Per-row state of nearest over the codes swept so far, for one tile of TR rows.
template <class P>
struct NearestEp {
  using V = typename P::V;
  using IV = typename P::IV;
  using Acc = typename P::Acc;
  using IdxT = typename P::IdxT;
  V best[P::MV], second[P::MV];
  IV idx[P::MV];

  DQK_VQ_INLINE void load(const Acc* b, const Acc* s, const IdxT* ix) {
    for (int v = 0; v < P::MV; ++v) {
      memcpy(&best[v], b + v * P::L, sizeof(V));
      memcpy(&second[v], s + v * P::L, sizeof(V));
      memcpy(&idx[v], ix + v * P::L, sizeof(IV));
    }
  }
  DQK_VQ_INLINE void store(Acc* b, Acc* s, IdxT* ix) const {
    for (int v = 0; v < P::MV; ++v) {
      memcpy(b + v * P::L, &best[v], sizeof(V));
      memcpy(s + v * P::L, &second[v], sizeof(V));
      memcpy(ix + v * P::L, &idx[v], sizeof(IV));
    }
  }
  // scores s[MV] of code k over the tile's rows
  DQK_VQ_INLINE void operator()(int64_t k, const V* s) {
    const IV kv = IV{} + IdxT(k);
#pragma GCC unroll 4
    for (int v = 0; v < P::MV; ++v) {
      const auto lt = s[v] < best[v];
      const V cand = lt ? best[v] : s[v];   // what is not the best is a second candidate
      second[v] = cand < second[v] ? cand : second[v];
      best[v] = lt ? s[v] : best[v];
      idx[v] = lt ? kv : idx[v];
    }
  }
};

// Stores the scores of codes [kb, kb + nb) over a tile into buf[k - kb][TR].
template <class P>
struct StoreEp {
  typename P::Acc* buf;
  int64_t kb;
  DQK_VQ_INLINE void operator()(int64_t k, const typename P::V* s) {
    for (int v = 0; v < P::MV; ++v)
      memcpy(buf + (k - kb) * P::TR + v * P::L, &s[v], sizeof(typename P::V));
  }
};

// The register tile: NCc codes (rows of e, stride lde) against the tile zt[steps][TR];
// accumulators start at the codes' norms; ep(k0 + j, scores) per code.
template <class P, int NCc, class Ep>
DQK_VQ_INLINE void micro_f(const typename P::Acc* __restrict zt, int64_t steps,
                           const typename P::Acc* __restrict e, int64_t lde,
                           const typename P::Acc* __restrict nrm, int64_t k0, Ep& ep) {
  using V = typename P::V;
  using Acc = typename P::Acc;
  constexpr int MV = P::MV, L = P::L, TR = P::TR;
  V acc[NCc][MV];
#pragma GCC unroll 16
  for (int j = 0; j < NCc; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) acc[j][v] = V{} + nrm[j];
  for (int64_t d = 0; d < steps; ++d) {
    V zv[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) memcpy(&zv[v], zt + d * TR + v * L, sizeof(V));
#pragma GCC unroll 16
    for (int j = 0; j < NCc; ++j) {
      const Acc ej = e[j * lde + d];
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v) acc[j][v] += zv[v] * ej;
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NCc; ++j) ep(k0 + j, acc[j]);
}

// All nb codes of a block against one tile: full register tiles, then the remainder.
template <class P, class Ep>
DQK_VQ_INLINE void block_f(const typename P::Acc* zt, int64_t steps, const typename P::Acc* e,
                           int64_t lde, int64_t nb, const typename P::Acc* nrm, int64_t k0,
                           Ep& ep_io) {
  constexpr int NC = P::NC;
  Ep ep = ep_io;
  int64_t j = 0;
  for (; j + NC <= nb; j += NC) micro_f<P, NC>(zt, steps, e + j * lde, lde, nrm + j, k0 + j, ep);
  const int64_t rem = nb - j;
  const auto* ej = e + j * lde;
  if (rem > 0) {
    static_assert(NC <= 8, "remainder cases cover NC <= 8");
    switch (rem) {
      case 1: micro_f<P, 1>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      case 2: micro_f<P, 2>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      case 3: micro_f<P, 3>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      case 4: if constexpr (NC > 4) micro_f<P, 4>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      case 5: if constexpr (NC > 5) micro_f<P, 5>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      case 6: if constexpr (NC > 6) micro_f<P, 6>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
      default: if constexpr (NC > 7) micro_f<P, 7>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    }
  }
  ep_io = ep;
}

#if DQK_VQ_X86
template <int NCc, class Ep>
DQK_VQ_INLINE DQK_VQ_BF16 void micro_bf16(const uint32_t* __restrict zt, int64_t steps,
                                          const uint32_t* __restrict e, int64_t lde,
                                          const float* __restrict nrm, int64_t k0, Ep& ep) {
  __m512 acc[NCc][2];
#pragma GCC unroll 8
  for (int j = 0; j < NCc; ++j) acc[j][0] = acc[j][1] = _mm512_set1_ps(nrm[j]);
  for (int64_t s = 0; s < steps; ++s) {
    const __m512bh z0 = (__m512bh)_mm512_loadu_si512(zt + s * 32);
    const __m512bh z1 = (__m512bh)_mm512_loadu_si512(zt + s * 32 + 16);
#pragma GCC unroll 8
    for (int j = 0; j < NCc; ++j) {
      uint32_t pair;
      memcpy(&pair, e + j * lde + s, 4);
      const __m512bh ev = (__m512bh)_mm512_set1_epi32(int(pair));
      acc[j][0] = _mm512_dpbf16_ps(acc[j][0], z0, ev);
      acc[j][1] = _mm512_dpbf16_ps(acc[j][1], z1, ev);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NCc; ++j) {
    const PathBF16::V sc[2] = {(PathBF16::V)acc[j][0], (PathBF16::V)acc[j][1]};
    ep(k0 + j, sc);
  }
}

// Called, not inlined: its target differs from the (AVX-512) engine's.
template <class Ep>
DQK_VQ_BF16 __attribute__((noinline)) void block_bf16(const uint32_t* zt, int64_t steps,
                                                      const uint32_t* e, int64_t lde,
                                                      int64_t nb, const float* nrm, int64_t k0,
                                                      Ep& ep_io) {
  Ep ep = ep_io;
  int64_t j = 0;
  for (; j + 8 <= nb; j += 8) micro_bf16<8>(zt, steps, e + j * lde, lde, nrm + j, k0 + j, ep);
  const uint32_t* ej = e + j * lde;
  switch (nb - j) {
    case 0: break;
    case 1: micro_bf16<1>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    case 2: micro_bf16<2>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    case 3: micro_bf16<3>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    case 4: micro_bf16<4>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    case 5: micro_bf16<5>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    case 6: micro_bf16<6>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
    default: micro_bf16<7>(zt, steps, ej, lde, nrm + j, k0 + j, ep); break;
  }
  ep_io = ep;
}
#endif

template <class P, class Ep>
DQK_VQ_INLINE void run_block(const typename P::Pk* zt, int64_t steps, const typename P::Ce* e,
                             int64_t lde, int64_t nb, const typename P::Acc* nrm, int64_t k0,
                             Ep& ep) {
#if DQK_VQ_X86
  if constexpr (P::kBf16) {
    block_bf16(zt, steps, e, lde, nb, nrm, k0, ep);
    return;
  }
#endif
  if constexpr (!P::kBf16) block_f<P>(zt, steps, e, lde, nb, nrm, k0, ep);
}

// ----------------------------------------------------------------------------- packing

// -2 * z rows [0, rows) (row r at row(r), D values) into tiles zt[t][steps][TR]; lanes
// past `rows` (and the odd pair half past D) are zeros.
template <class P, typename T, class RowF>
DQK_VQ_INLINE void pack_rows(RowF row, int64_t rows, int64_t D, typename P::Pk* zt) {
  constexpr int TR = P::TR;
  const int64_t steps = P::steps(D);
  const int64_t tiles = (rows + TR - 1) / TR;
  for (int64_t t = 0; t < tiles; ++t) {
    typename P::Pk* dst = zt + t * steps * TR;
    const int64_t rv = std::min<int64_t>(TR, rows - t * TR);
    if (rv < TR) memset(dst, 0, size_t(steps * TR) * sizeof(typename P::Pk));
    for (int64_t r = 0; r < rv; ++r) {
      const T* src = row(t * TR + r);
      if constexpr (P::kBf16) {
        for (int64_t s = 0; s < steps; ++s) {
          const uint32_t lo = bf16_from_float(-2.0f * to_f(src[2 * s])).bits;
          const uint32_t hi =
              2 * s + 1 < D ? bf16_from_float(-2.0f * to_f(src[2 * s + 1])).bits : 0u;
          dst[s * TR + r] = lo | (hi << 16);
        }
      } else {
        using Acc = typename P::Acc;
        for (int64_t d = 0; d < D; ++d) dst[d * TR + r] = Acc(-2) * Acc(to_d(src[d]));
      }
    }
  }
}

// Codes [kb, kb + nb) as the engine reads them: in place when the storage matches (lde
// elements per code), else converted into buf.
template <class P, typename T>
DQK_VQ_INLINE const typename P::Ce* code_block(const T* e, int64_t kb, int64_t nb, int64_t D,
                                               typename P::Ce* buf, int64_t& lde) {
  using Ce = typename P::Ce;
  const T* src = e + kb * D;
  if constexpr (P::kBf16) {
    lde = (D + 1) / 2;
    if (D % 2 == 0) return reinterpret_cast<const Ce*>(src);
    for (int64_t k = 0; k < nb; ++k) {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(src + k * D);
      Ce* out = buf + k * lde;
      for (int64_t s = 0; s < lde; ++s)
        out[s] = uint32_t(row[2 * s]) | (2 * s + 1 < D ? uint32_t(row[2 * s + 1]) << 16 : 0u);
    }
    return buf;
  } else {
    lde = D;
    if constexpr (std::is_same<T, Ce>::value) {
      (void)buf;
      return src;
    } else {
      row_to_float<P::L>(src, buf, nb * D);
      return buf;
    }
  }
}

template <class P>
int64_t code_block_size(int64_t D) {
  const int64_t per = P::steps(D) * int64_t(sizeof(typename P::Ce));
  const int64_t cb = std::min<int64_t>(kMaxCodeBlock, kCodeBlockBytes / per) / P::NC * P::NC;
  return std::max<int64_t>(P::NC, cb);
}

// ----------------------------------------------------------------------------- exact

typedef double D8 __attribute__((vector_size(64)));
typedef float F8 __attribute__((vector_size(32)));

// sum_d (zd[d] - e[d])^2 in double, in a fixed order (the same for every code)
template <typename T>
DQK_VQ_INLINE double exact_sqdist(const double* zd, const T* e, int64_t D) {
  D8 acc = D8{};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    D8 zv, ev;
    memcpy(&zv, zd + d, sizeof(D8));
    if constexpr (std::is_same<T, double>::value) {
      memcpy(&ev, e + d, sizeof(D8));
    } else if constexpr (std::is_same<T, float>::value) {
      F8 f;
      memcpy(&f, e + d, sizeof(F8));
      ev = __builtin_convertvector(f, D8);
    } else {
      for (int i = 0; i < 8; ++i) ev[i] = to_d(e[d + i]);
    }
    const D8 df = zv - ev;
    acc += df * df;
  }
  double s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
  for (; d < D; ++d) {
    const double df = zd[d] - to_d(e[d]);
    s += df * df;
  }
  return s;
}

// first argmin_k of the exact squared distance of row zd (double) to the K codes
template <typename T>
DQK_VQ_INLINE int64_t exact_argmin(const double* zd, const T* e, int64_t K, int64_t D) {
  double best = std::numeric_limits<double>::infinity();
  int64_t bi = 0;
  for (int64_t k = 0; k < K; ++k) {
    const double d = exact_sqdist(zd, e + k * D, D);
    if (d < best) {
      best = d;
      bi = k;
    }
  }
  return bi;
}

// sum_d (z[d] - e[d])^2 accumulated in Acc (8 partial sums, then a fixed tree)
template <typename Acc, typename T>
DQK_VQ_INLINE Acc acc_sqdist(const T* z, const T* e, int64_t D) {
  Acc p[8] = {};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int i = 0; i < 8; ++i) {
      const Acc df = Acc(to_d(z[d + i])) - Acc(to_d(e[d + i]));
      p[i] += df * df;
    }
  Acc s = ((p[0] + p[4]) + (p[2] + p[6])) + ((p[1] + p[5]) + (p[3] + p[7]));
  for (; d < D; ++d) {
    const Acc df = Acc(to_d(z[d])) - Acc(to_d(e[d]));
    s += df * df;
  }
  return s;
}

// ----------------------------------------------------------------------------- jobs

template <typename T>
struct Job {
  int64_t N = 0, K = 0, D = 0, S = 0;
  const T* z = nullptr;
  const T* e = nullptr;
  const void* norms = nullptr;   // [K] Acc: |e_k|^2 rounded from double
  double emax = 0.0;             // max_k |e_k|^2 (double)
  // nearest
  int64_t* indices = nullptr;
  void* sqdist = nullptr;
  // sample
  const void* u = nullptr;
  double inv_t = 1.0;
  int64_t* out = nullptr;
};

// Per-thread workspace of a path (byte offsets, 64-byte aligned). The first word counts
// the rows waiting for a candidate sweep (nearest); the driver zeroes it.
template <class P>
struct Ws {
  int64_t zt, st_best, st_second, st_idx, ebuf, sbuf, wbuf, rowd, rowi;
  int64_t pzt, pn, pthr, pzd, pbest, pidx, bytes;
  Ws(int64_t D, int64_t CB) {
    auto up = [](int64_t v) { return (v + 63) / 64 * 64; };
    const int64_t steps = P::steps(D);
    constexpr int64_t TR = P::TR;
    int64_t o = 64;
    auto take = [&](int64_t n) { const int64_t at = o; o += up(n); return at; };
    zt = take(kRowBlock * steps * int64_t(sizeof(typename P::Pk)));
    st_best = take(kRowBlock * int64_t(sizeof(typename P::Acc)));
    st_second = take(kRowBlock * int64_t(sizeof(typename P::Acc)));
    st_idx = take(kRowBlock * int64_t(sizeof(typename P::IdxT)));
    ebuf = take(CB * steps * int64_t(sizeof(typename P::Ce)));
    sbuf = take(CB * TR * int64_t(sizeof(typename P::Acc)));   // sample: scores
    wbuf = take(CB * TR * int64_t(sizeof(double)));           // and distances, weights
    rowd = take(4 * kRowBlock * int64_t(sizeof(double)));    // |z|^2, m, Z, cum
    rowi = take(2 * kRowBlock * int64_t(sizeof(int64_t)));   // next target, last code
    // rows waiting for the candidate sweep: packed tile, row ids, thresholds, rows in
    // double, exact best distance and index
    pzt = take(steps * TR * int64_t(sizeof(typename P::Pk)));
    pn = take(TR * int64_t(sizeof(int64_t)));
    pthr = take(TR * int64_t(sizeof(typename P::Acc)));
    pzd = take(TR * D * int64_t(sizeof(double)));
    pbest = take(TR * int64_t(sizeof(double)));
    pidx = take(TR * int64_t(sizeof(int64_t)));
    bytes = o;
  }
};

// scale of the float expansion above which a row is re-scored exactly (no overflow)
template <typename Acc>
constexpr double big_scale() { return sizeof(Acc) == 4 ? 0x1p100 : 0x1p1000; }

// ----------------------------------------------------------------------------- nearest

// Candidate sweep epilogue: codes whose score is <= the row's threshold (best + bound)
// are re-scored exactly; the first exact minimum (in code order) wins.
template <class P, typename T>
struct CandEp {
  using V = typename P::V;
  V thr[P::MV];
  const double* zd;   // [TR][D] rows in double
  const T* e;
  int64_t D;
  double* xbest;      // [TR]
  int64_t* xidx;      // [TR]
  DQK_VQ_INLINE void operator()(int64_t k, const V* s) {
    for (int v = 0; v < P::MV; ++v) {
      const auto hit = s[v] <= thr[v];
      for (int i = 0; i < P::L; ++i) {
        if (!hit[i]) continue;
        const int64_t r = v * P::L + i;
        const double d = exact_sqdist(zd + r * D, e + k * D, D);
        if (d < xbest[r]) {
          xbest[r] = d;
          xidx[r] = k;
        }
      }
    }
  }
};

template <typename T>
using OutOf = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <typename T>
DQK_VQ_INLINE void finish_row(const Job<T>& j, int64_t n, int64_t k) {
  j.indices[n] = k;
  static_cast<OutOf<T>*>(j.sqdist)[n] = acc_sqdist<OutOf<T>>(j.z + n * j.D, j.e + k * j.D, j.D);
}

// Sweep all codes for the waiting rows (one tile) and finish them.
template <class P, typename T>
DQK_VQ_INLINE void nearest_flush_rows(const Job<T>& j, unsigned char* w) {
  using Acc = typename P::Acc;
  constexpr int TR = P::TR;
  int64_t& count = *reinterpret_cast<int64_t*>(w);
  if (count == 0) return;
  const int64_t D = j.D, K = j.K, steps = P::steps(D);
  const int64_t CB = code_block_size<P>(D);
  const Ws<P> lay(D, CB);
  auto* pzt = reinterpret_cast<typename P::Pk*>(w + lay.pzt);
  auto* ebuf = reinterpret_cast<typename P::Ce*>(w + lay.ebuf);
  const int64_t* pn = reinterpret_cast<const int64_t*>(w + lay.pn);
  Acc* pthr = reinterpret_cast<Acc*>(w + lay.pthr);
  const double* pzd = reinterpret_cast<const double*>(w + lay.pzd);
  double* pbest = reinterpret_cast<double*>(w + lay.pbest);
  int64_t* pidx = reinterpret_cast<int64_t*>(w + lay.pidx);
  const Acc* norms = static_cast<const Acc*>(j.norms);
  pack_rows<P, T>([&](int64_t r) { return j.z + pn[r] * D; }, count, D, pzt);
  for (int64_t r = count; r < TR; ++r) pthr[r] = -std::numeric_limits<Acc>::infinity();
  CandEp<P, T> ep;
  for (int v = 0; v < P::MV; ++v) memcpy(&ep.thr[v], pthr + v * P::L, sizeof(typename P::V));
  ep.zd = pzd;
  ep.e = j.e;
  ep.D = D;
  ep.xbest = pbest;
  ep.xidx = pidx;
  for (int64_t kb = 0; kb < K; kb += CB) {
    const int64_t nb = std::min(CB, K - kb);
    int64_t lde = 0;
    const typename P::Ce* eb = code_block<P>(j.e, kb, nb, D, ebuf, lde);
    run_block<P>(pzt, steps, eb, lde, nb, norms + kb, kb, ep);
  }
  for (int64_t r = 0; r < count; ++r) finish_row(j, pn[r], pidx[r]);
  count = 0;
}

template <class P, typename T>
DQK_VQ_INLINE void nearest_rows(const Job<T>& j, int64_t r0, int64_t rows, unsigned char* w) {
  using Acc = typename P::Acc;
  using IdxT = typename P::IdxT;
  constexpr int TR = P::TR;
  const int64_t D = j.D, K = j.K, steps = P::steps(D);
  const int64_t CB = code_block_size<P>(D);
  const Ws<P> lay(D, CB);
  auto* zt = reinterpret_cast<typename P::Pk*>(w + lay.zt);
  auto* best = reinterpret_cast<Acc*>(w + lay.st_best);
  auto* second = reinterpret_cast<Acc*>(w + lay.st_second);
  auto* idx = reinterpret_cast<IdxT*>(w + lay.st_idx);
  auto* ebuf = reinterpret_cast<typename P::Ce*>(w + lay.ebuf);
  const Acc* norms = static_cast<const Acc*>(j.norms);
  const int64_t tiles = (rows + TR - 1) / TR;

  pack_rows<P, T>([&](int64_t r) { return j.z + (r0 + r) * D; }, rows, D, zt);
  for (int64_t r = 0; r < tiles * TR; ++r) {
    best[r] = second[r] = std::numeric_limits<Acc>::infinity();
    idx[r] = 0;
  }
  for (int64_t kb = 0; kb < K; kb += CB) {
    const int64_t nb = std::min(CB, K - kb);
    int64_t lde = 0;
    const typename P::Ce* eb = code_block<P>(j.e, kb, nb, D, ebuf, lde);
    for (int64_t t = 0; t < tiles; ++t) {
      NearestEp<P> ep;
      ep.load(best + t * TR, second + t * TR, idx + t * TR);
      run_block<P>(zt + t * steps * TR, steps, eb, lde, nb, norms + kb, kb, ep);
      ep.store(best + t * TR, second + t * TR, idx + t * TR);
    }
  }

  // Screen each row with the rounding bound. Close rows wait (one tile of them) for a
  // candidate sweep; rows beyond the float expansion are re-scored over all codes.
  constexpr double u = sizeof(Acc) == 4 ? 0x1p-24 : 0x1p-53;
  const double m = double(P::kBf16 || sizeof(Acc) == 8 ? 2 * D + 4 : D + 4);
  const double gamma = m * u / (1.0 - m * u);
  const double tiny = 4.0 * m * double(std::numeric_limits<Acc>::min());
  const double sqrt_d = sqrt(double(D)), emax_sqrt = sqrt(j.emax);
  int64_t& count = *reinterpret_cast<int64_t*>(w);
  int64_t* pn = reinterpret_cast<int64_t*>(w + lay.pn);
  Acc* pthr = reinterpret_cast<Acc*>(w + lay.pthr);
  double* pzd = reinterpret_cast<double*>(w + lay.pzd);
  double* pbest = reinterpret_cast<double*>(w + lay.pbest);
  int64_t* pidx = reinterpret_cast<int64_t*>(w + lay.pidx);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t n = r0 + r;
    const T* zr = j.z + n * D;
    double* zd = pzd + count * D;
    double zn = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      zd[d] = to_d(zr[d]);
      zn += zd[d] * zd[d];
    }
    const double scale = j.emax + 2.0 * sqrt(zn * j.emax);
    const double under = tiny * (1.0 + sqrt_d * (sqrt(zn) + emax_sqrt));
    const double bound = (2.0 * gamma * scale + 2.0 * under) * (1.0 + 0x1p-20);
    const double b = double(best[r]);
    if (!(scale + zn < big_scale<Acc>()) || !(b < big_scale<Acc>())) {
      finish_row(j, n, exact_argmin(zd, j.e, K, D));
    } else if (double(second[r]) - b > bound) {
      finish_row(j, n, int64_t(idx[r]));
    } else {
      const double t = b + bound;   // threshold, rounded up to Acc
      Acc ta = Acc(t);
      if (double(ta) < t) ta = std::nextafter(ta, std::numeric_limits<Acc>::infinity());
      pn[count] = n;
      pthr[count] = ta;
      pbest[count] = std::numeric_limits<double>::infinity();
      pidx[count] = int64_t(idx[r]);
      if (++count == TR) nearest_flush_rows<P, T>(j, w);
    }
  }
}

// ----------------------------------------------------------------------------- sample

// exp(x) for x <= 0 (NaN stays NaN), within 1 ulp of libm and branch-free, so that
// loops over lanes vectorise: Cody-Waite reduction by ln 2, Taylor polynomial to r^13
// (|r| <= ln2 / 2: truncation below 5e-18), 2^n as two normal factors (denormal results
// and 0 below about -745 come out right).
DQK_VQ_INLINE double exp_nonpos(double x) {
  const double xc = x < -746.0 ? -746.0 : x;
  const double magic = 0x1.8p52;   // adding it rounds to an integer
  const double t = xc * 1.4426950408889634 + magic;
  const double n = t - magic;
  uint64_t tb, mb;
  memcpy(&tb, &t, 8);
  memcpy(&mb, &magic, 8);
  const int64_t ni = int64_t(tb - mb);
  const double r = (xc - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const int64_t n1 = ni >> 1, n2 = ni - n1;
  const uint64_t b1 = uint64_t(n1 + 1023) << 52, b2 = uint64_t(n2 + 1023) << 52;
  double s1, s2;
  memcpy(&s1, &b1, 8);
  memcpy(&s2, &b2, 8);
  return p * s1 * s2;
}

template <class P, typename T>
DQK_VQ_INLINE void sample_rows(const Job<T>& j, int64_t r0, int64_t rows, unsigned char* w) {
  using Acc = typename P::Acc;
  constexpr int TR = P::TR;
  const int64_t D = j.D, K = j.K, S = j.S, steps = P::steps(D);
  const int64_t CB = code_block_size<P>(D);
  const Ws<P> lay(D, CB);
  auto* zt = reinterpret_cast<typename P::Pk*>(w + lay.zt);
  auto* ebuf = reinterpret_cast<typename P::Ce*>(w + lay.ebuf);
  auto* sbuf = reinterpret_cast<Acc*>(w + lay.sbuf);
  double* wbuf = reinterpret_cast<double*>(w + lay.wbuf);
  double* zn = reinterpret_cast<double*>(w + lay.rowd);
  double* mn = zn + kRowBlock;
  double* Z = mn + kRowBlock;
  double* cum = Z + kRowBlock;
  int64_t* next = reinterpret_cast<int64_t*>(w + lay.rowi);
  int64_t* last = next + kRowBlock;
  const Acc* norms = static_cast<const Acc*>(j.norms);
  const Acc* u = static_cast<const Acc*>(j.u);
  const double it = j.inv_t;
  const int64_t tiles = (rows + TR - 1) / TR;

  pack_rows<P, T>([&](int64_t r) { return j.z + (r0 + r) * D; }, rows, D, zt);
  for (int64_t r = 0; r < tiles * TR; ++r) {   // padding lanes too (their values unused)
    double s = 0.0;
    if (r < rows) {
      const T* zr = j.z + (r0 + r) * D;
      for (int64_t d = 0; d < D; ++d) s += to_d(zr[d]) * to_d(zr[d]);
    }
    zn[r] = s;
    mn[r] = std::numeric_limits<double>::infinity();
    Z[r] = 0.0;
    cum[r] = 0.0;
    next[r] = 0;
    last[r] = 0;
  }
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t kb = 0; kb < K; kb += CB) {
      const int64_t nb = std::min(CB, K - kb);
      int64_t lde = 0;
      const typename P::Ce* eb = code_block<P>(j.e, kb, nb, D, ebuf, lde);
      for (int64_t t = 0; t < tiles; ++t) {
        StoreEp<P> ep{sbuf, kb};
        run_block<P>(zt + t * steps * TR, steps, eb, lde, nb, norms + kb, kb, ep);
        const int64_t t0 = t * TR;
        // wbuf[k][lane] = d = max(|z|^2 + s, 0) of code kb + k and row t0 + lane
        for (int64_t k = 0; k < nb; ++k)
          for (int r = 0; r < TR; ++r) {
            const double d = zn[t0 + r] + double(sbuf[k * TR + r]);
            wbuf[k * TR + r] = d < 0.0 ? 0.0 : d;
          }
        if (pass == 0) {   // block minimum, rescale Z to it, add the block's weights
          double mb[TR], acc[TR];
          for (int r = 0; r < TR; ++r) {
            mb[r] = mn[t0 + r];
            acc[r] = 0.0;
          }
          for (int64_t k = 0; k < nb; ++k)
            for (int r = 0; r < TR; ++r) {
              const double d = wbuf[k * TR + r];
              mb[r] = d < mb[r] ? d : mb[r];
            }
          for (int64_t k = 0; k < nb; ++k)
            for (int r = 0; r < TR; ++r) acc[r] += exp_nonpos(-(wbuf[k * TR + r] - mb[r]) * it);
          for (int r = 0; r < TR; ++r) {
            const double z0 = Z[t0 + r];
            const double kept = z0 > 0.0 ? z0 * exp_nonpos(-(mn[t0 + r] - mb[r]) * it) : 0.0;
            Z[t0 + r] = kept + acc[r];
            mn[t0 + r] = mb[r];
          }
        } else {           // weights, then per row the cumulative sum against its targets
          for (int64_t k = 0; k < nb; ++k)
            for (int r = 0; r < TR; ++r)
              wbuf[k * TR + r] = exp_nonpos(-(wbuf[k * TR + r] - mn[t0 + r]) * it);
          for (int64_t r = t0; r < std::min(rows, t0 + TR); ++r) {
            const Acc* ur = u + (r0 + r) * S;
            int64_t* o = j.out + (r0 + r) * S;
            const double* wr = wbuf + (r - t0);
            const double zz = Z[r];
            double c = cum[r];
            int64_t nx = next[r], lp = last[r];
            for (int64_t k = 0; k < nb; ++k) {
              const double wk = wr[k * TR];
              c += wk;
              if (wk > 0.0) lp = kb + k;
              while (nx < S && double(ur[nx]) * zz < c) o[nx++] = kb + k;
            }
            cum[r] = c;
            next[r] = nx;
            last[r] = lp;
          }
        }
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    int64_t* o = j.out + (r0 + r) * S;
    for (int64_t s = next[r]; s < S; ++s) o[s] = last[r];
  }
}

// ----------------------------------------------------------------------------- dispatch

// What a path's row function does with rows [r0, r0 + n): the nearest sweep, the
// candidate sweep of the rows waiting in the workspace (r0, n unused), or sampling.
enum Op { kNearest, kFlush, kSample };

template <typename T>
using RowsFn = void (*)(int, const Job<T>&, int64_t, int64_t, unsigned char*);

template <class P, typename T>
DQK_VQ_INLINE void rows_op(int op, const Job<T>& j, int64_t r0, int64_t n, unsigned char* w) {
  if (op == kNearest) nearest_rows<P, T>(j, r0, n, w);
  else if (op == kFlush) nearest_flush_rows<P, T>(j, w);
  else sample_rows<P, T>(j, r0, n, w);
}

// Each path's row function, compiled for its instruction set (the engine is inlined).
template <class P, typename T>
void rows_generic(int op, const Job<T>& j, int64_t r0, int64_t n, unsigned char* w) {
  rows_op<P, T>(op, j, r0, n, w);
}
#if DQK_VQ_X86
template <class P, typename T>
DQK_VQ_V3 void rows_v3(int op, const Job<T>& j, int64_t r0, int64_t n, unsigned char* w) {
  rows_op<P, T>(op, j, r0, n, w);
}
template <class P, typename T>
DQK_VQ_V4 void rows_v4(int op, const Job<T>& j, int64_t r0, int64_t n, unsigned char* w) {
  rows_op<P, T>(op, j, r0, n, w);
}
#endif

using PF128 = FPath<float, 4, 2, 4>;
using PD128 = FPath<double, 2, 2, 4>;
using PF256 = FPath<float, 8, 1, 8>;
using PD256 = FPath<double, 4, 1, 8>;
using PF512 = FPath<float, 16, 2, 8>;
using PD512 = FPath<double, 8, 2, 8>;

template <typename T>
struct Kernel {
  RowsFn<T> fn;
  int64_t ws_bytes;
};

template <class P, typename T>
Kernel<T> kernel(RowsFn<T> fn, int64_t D) {
  return Kernel<T>{fn, Ws<P>(D, code_block_size<P>(D)).bytes};
}

// the kernel of a path for storage type T (float paths for float/fp16/bf16 inputs)
template <typename T>
Kernel<T> kernel_for(int isa, int64_t D) {
  if constexpr (std::is_same<T, double>::value) {
#if DQK_VQ_X86
    if (isa >= kIsaAvx512) return kernel<PD512, T>(rows_v4<PD512, T>, D);
    if (isa == kIsaAvx2) return kernel<PD256, T>(rows_v3<PD256, T>, D);
#endif
    return kernel<PD128, T>(rows_generic<PD128, T>, D);
  } else {
#if DQK_VQ_X86
    if constexpr (std::is_same<T, BFloat16>::value) {
      if (isa == kIsaAvx512Bf16)
        return kernel<PathBF16, T>(rows_v4<PathBF16, T>, D);
    }
    if (isa >= kIsaAvx512) return kernel<PF512, T>(rows_v4<PF512, T>, D);
    if (isa == kIsaAvx2) return kernel<PF256, T>(rows_v3<PF256, T>, D);
#endif
    return kernel<PF128, T>(rows_generic<PF128, T>, D);
  }
}

struct AlignedBuf {
  void* p = nullptr;
  explicit AlignedBuf(size_t bytes) {
    const size_t n = (bytes + 63) / 64 * 64;
    p = aligned_alloc(64, n ? n : 64);
    if (!p) throw std::bad_alloc();
  }
  ~AlignedBuf() { free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
};

// |e_k|^2 in double, rounded to Acc, and the maximum (double)
template <typename T, typename Acc>
double code_norms(const T* e, int64_t K, int64_t D, Acc* out, int nt) {
  double emax = 0.0;
  nt = threads_for(double(K) * double(D), K, nt);
#pragma omp parallel for schedule(static) num_threads(nt) reduction(max : emax)
  for (int64_t k = 0; k < K; ++k) {
    const T* r = e + k * D;
    double s = 0.0;
    for (int64_t d = 0; d < D; ++d) s += to_d(r[d]) * to_d(r[d]);
    out[k] = Acc(s);
    emax = std::max(emax, s);
  }
  return emax;
}

// Run op on the job's rows in blocks of up to kRowBlock rows over the threads (nearest:
// then each thread's waiting rows). Blocks shrink (to multiples of 32 rows, a multiple of
// every TR) so that small batches still give each thread several. A row's results do
// not depend on its block.
template <typename T>
void run_rows(const Job<T>& j, int op, const Kernel<T>& k, int nt) {
  nt = threads_for(double(j.N) * double(j.K) * double(j.D), (j.N + 31) / 32, nt);
  int64_t rb = kRowBlock;
  if (nt > 1) rb = std::min(kRowBlock, std::max<int64_t>(32, (j.N / (4 * nt) + 31) / 32 * 32));
  const int64_t blocks = (j.N + rb - 1) / rb;
#pragma omp parallel num_threads(nt)
  {
    AlignedBuf ws{static_cast<size_t>(k.ws_bytes)};
    unsigned char* w = static_cast<unsigned char*>(ws.p);
    memset(w, 0, 64);   // no rows waiting
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * rb;
      k.fn(op, j, r0, std::min(rb, j.N - r0), w);
    }
    if (op == kNearest) k.fn(kFlush, j, 0, 0, w);
  }
}

template <typename T>
void nearest_impl(const NearestArgs& a, int nt, int isa) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  isa = pick_cpu_isa(isa, "vq cpu");
  Job<T> j;
  j.N = a.N; j.K = a.K; j.D = a.D;
  j.z = static_cast<const T*>(a.z);
  j.e = static_cast<const T*>(a.codebook);
  j.indices = a.indices;
  j.sqdist = a.sqdist;
  if (sizeof(Acc) == 4 && a.K > int64_t(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument("vq_nearest cpu: more than 2^31 - 1 codes");
  std::vector<Acc> norms(size_t(a.K));
  j.emax = code_norms(j.e, a.K, a.D, norms.data(), nt);
  j.norms = norms.data();
  const Kernel<T> k = kernel_for<T>(isa, a.D);
  run_rows(j, kNearest, k, nt);
}

template <typename T>
void sample_impl(const SampleArgs& a, int nt, int isa) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  isa = pick_cpu_isa(isa, "vq cpu");
  Job<T> j;
  j.N = a.N; j.K = a.K; j.D = a.D; j.S = a.S;
  j.z = static_cast<const T*>(a.z);
  j.e = static_cast<const T*>(a.codebook);
  j.u = a.u;
  j.inv_t = a.inv_temperature;
  j.out = a.out;
  std::vector<Acc> norms(size_t(a.K));
  j.emax = code_norms(j.e, a.K, a.D, norms.data(), nt);
  j.norms = norms.data();
  const Kernel<T> k = kernel_for<T>(isa, a.D);
  run_rows(j, kSample, k, nt);
}

// ----------------------------------------------------------------------------- EMA

template <typename T, typename St>
void ema_impl(const EmaArgs& a, int nt) {
  const int64_t N = a.N, K = a.K, D = a.D, S = a.S, M = N * S;
  St* cs = static_cast<St*>(a.cluster_size);
  St* es = static_cast<St*>(a.embed_sum);
  const T* z = static_cast<const T*>(a.z);
  const int64_t* ix = a.indices;
  const double decay = a.decay, alpha = (1.0 - a.decay) / double(S);
  // counting sort of the samples by code (stable: row order within a code)
  std::vector<int64_t> start(static_cast<size_t>(K + 1), 0);
  std::vector<int64_t> rows(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) ++start[size_t(ix[i] + 1)];
  for (int64_t k = 0; k < K; ++k) start[size_t(k + 1)] += start[size_t(k)];
  {
    std::vector<int64_t> at(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < M; ++i) rows[size_t(at[size_t(ix[i])]++)] = i / S;
  }
  nt = threads_for(double(M) * double(D) + double(K) * double(D), K, nt);
#pragma omp parallel num_threads(nt)
  {
    std::vector<double> acc(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 16)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = start[size_t(k)], e = start[size_t(k + 1)];
      cs[k] = St(double(cs[k]) * decay + alpha * double(e - b));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = b; i < e; ++i) {
        // the rows of a code are scattered over z: fetch the row after next meanwhile
        if (i + 2 < e) {
          const char* next = reinterpret_cast<const char*>(z + rows[size_t(i + 2)] * D);
          for (int64_t off = 0; off < D * int64_t(sizeof(T)); off += 64)
            __builtin_prefetch(next + off);
        }
        const T* zr = z + rows[size_t(i)] * D;
        for (int64_t d = 0; d < D; ++d) acc[size_t(d)] += to_d(zr[d]);
      }
      St* row = es + k * D;
      for (int64_t d = 0; d < D; ++d)
        row[d] = St(double(row[d]) * decay + alpha * acc[size_t(d)]);
    }
  }
}

template <typename F>
void dispatch(DType dt, const char* who, F&& f) {
  visit_dtype<Half, BFloat16>(dt, who, f);
}

}  // namespace

int cpu_isas() { return supported_cpu_isas(); }

void nearest_cpu(const NearestArgs& a, int num_threads, int isa) {
  dispatch(a.dtype, "vq_nearest cpu",
           [&](auto t) { nearest_impl<decltype(t)>(a, num_threads, isa); });
}

void sample_cpu(const SampleArgs& a, int num_threads, int isa) {
  dispatch(a.dtype, "vq_sample cpu",
           [&](auto t) { sample_impl<decltype(t)>(a, num_threads, isa); });
}

void ema_update_cpu(const EmaArgs& a, int num_threads) {
  dispatch(a.dtype, "vq_ema_update cpu", [&](auto t) {
    if (a.state_dtype == DType::kFloat64)
      ema_impl<decltype(t), double>(a, num_threads);
    else
      ema_impl<decltype(t), float>(a, num_threads);
  });
}

}  // namespace vq
}  // namespace dqk
