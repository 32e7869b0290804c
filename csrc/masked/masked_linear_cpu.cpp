// CPU kernels of the masked linear layer: one blocked GEMM engine, three uses.
//
//   forward  y  = x @ (W*M)^T + b   C[m=row, n=out] = sum_k A[m, k=in]  B[k, n], B = W^T
//   grad x   gx = gy @ (W*M)        C[m=row, n=in]  = sum_k A[m, k=out] B[k, n], B = W
//   grad W   gW = M * (gy^T @ x)    C[m=out, n=in]  = sum_k A[m, k=row] B[k, n], B = x
//
// The mask lives on B for the first two ("side B": row k of B is cut by the degrees of k
// and of the output column n) and on C for the third ("side C").
//
// Layout (BLIS-like). C is cut into work items of CH rows (<= 1024) by G panels of NR
// columns (G*NR ~ 256); an item runs the K loop in blocks of KC = 256 (512 for bf16
// pairs). Per K block it packs its B panels once ([KC][NR] each, only the rows it needs)
// and sweeps its rows in sub-blocks of MC = 8*MR, packing A into MR-row micro-panels
// [KC][MR]; an MR x NR register-tile microkernel accumulates into the item's float
// (double) tile buffer. Paths, picked at run time (tests force each):
//   AVX-512    12 x 32 floats / 12 x 16 doubles (GCC vector extensions)
//   AVX2        6 x 16 / 6 x 8;   SSE2 baseline 4 x 8 / 4 x 4 (same code, other targets)
//   AVX512-BF16 for bf16 inputs: A and B packed straight from bf16 as pairs of
//              consecutive k, 12 x 32 floats, vdpbf16ps (two exact bf16 products added
//              to the fp32 accumulator per lane and instruction)
// Otherwise fp16/bf16 inputs are converted to contiguous float once (F16C for fp16) and
// run the float path. The epilogue adds the bias / applies the side-C mask and the
// caller converts and stores rows. Items run largest first (their work is estimated from
// the degrees), OpenMP dynamic schedule; small problems run on one thread.
//
// Skipping (no sorting; any degrees): with keep(hi, lo) = hi > lo (strict) or hi >= lo,
//   side B: row k of panel P is all zero iff !keep(max_{n in P} out[n], in[k]) (forward)
//           or !keep(out[k], min_{n in P} in[n]) (grad x); per K block, each panel packs
//           and multiplies only the rows [lo, hi) between its first and last nonzero row,
//           and a panel with no nonzero row is skipped. For ascending degrees this is the
//           exact staircase. Rows inside [lo, hi) are packed with an elementwise select
//           (a masked weight is packed as 0 without being read, so NaN in a masked
//           weight never reaches an output; rows outside are not read at all, so neither
//           are inputs that no output of the panel uses).
//   side C: a (MR rows x NR columns) tile is all zero iff !keep(max out, min in) over the
//           tile; it is never computed and written as 0. Partial tiles select per element.
//
// Deterministic: every output element is summed by one thread in a fixed order, for any
// thread count. No atomics.
#include <stdlib.h>
#include <string.h>

#include <cstdlib>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/cpu_types.h"
#include "masked_linear.h"

#if defined(__GNUC__)
#define DQK_ML_INLINE inline __attribute__((always_inline))
#else
#define DQK_ML_INLINE inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_ML_X86 1
#define DQK_ML_V4 __attribute__((target("arch=x86-64-v4")))
#define DQK_ML_V3 __attribute__((target("arch=x86-64-v3")))
#define DQK_ML_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define DQK_ML_BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#include <immintrin.h>
#else
#define DQK_ML_X86 0
#define DQK_ML_CLONES
#endif

namespace dqk {
namespace masked_linear {
namespace {

inline bool keep(int64_t hi, int64_t lo, bool strict) { return strict ? hi > lo : hi >= lo; }

constexpr int kSideB = 0, kSideC = 1;

// Threads worth waking for `work` multiply-adds (or element copies): a parallel region
// costs microseconds, and on a busy machine a descheduled worker costs a time slice.
inline int threads_for(double work, int nt) {
  constexpr double kPerThread = double(1 << 20);
  const double useful = work / kPerThread;
  return useful < 2.0 ? 1 : (useful < double(nt) ? int(useful) : nt);
}

// C[m, n] = sum_k A[m, k] B[k, n] (+ bias[n]) with the mask on side B or C (see top). A
// and B hold Src values (the accumulate type, or bf16 for the AVX512-BF16 path).
template <typename Src, typename Acc>
struct Problem {
  int64_t M = 0, N = 0, K = 0;
  const Src* A = nullptr;
  int64_t sam = 0, sak = 0;
  const Src* B = nullptr;
  int64_t sbk = 0, sbn = 0;
  int side = kSideB;
  bool strict = true;
  const int64_t* dr = nullptr;   // degrees along k (side B) or m (side C)
  const int64_t* dn = nullptr;   // degrees along n
  bool n_is_hi = true;           // mask = keep(dn, dr) if true, keep(dr, dn) otherwise
  const Acc* bias = nullptr;     // [N] contiguous, or null
  // blocking, set by the driver: CH rows by G panels per work item, A sub-blocks of MC
  // rows, K blocks of KC (a multiple of KP)
  int64_t CH = 0, MC = 0, G = 0, KC = 0;
};

// An instruction-set path on float/double: Src = packed = accumulate type, one k per
// packed entry, MR x NR register tile of GCC vectors of kLanes.
template <typename AccT, int kLanes, int kRows>
struct Path {
  using Acc = AccT;
  using Src = AccT;
  using Pk = AccT;
  typedef AccT V __attribute__((vector_size(kLanes * sizeof(AccT))));
  static constexpr int L = kLanes, MR = kRows, NR = 2 * kLanes, KP = 1;
  static Src zero() { return Src(0); }
  static Pk pack(const Src* v) { return v[0]; }
  static void micro(const Pk* a, const Pk* b, int64_t steps, Acc* c, int64_t ldc);
};

// The MR x NR tile c (row stride ldc) += A micro-panel a [steps][MR] times B panel b
// [steps][NR].
template <class P>
DQK_ML_INLINE void vec_microkernel(const typename P::Acc* __restrict a,
                                   const typename P::Acc* __restrict b, int64_t steps,
                                   typename P::Acc* __restrict c, int64_t ldc) {
  using Acc = typename P::Acc;
  using V = typename P::V;
  constexpr int L = P::L, MR = P::MR;
  V c0[MR], c1[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    memcpy(&c0[r], c + r * ldc, sizeof(V));
    memcpy(&c1[r], c + r * ldc + L, sizeof(V));
  }
  for (int64_t k = 0; k < steps; ++k) {
    V b0, b1;
    memcpy(&b0, b, sizeof(V));
    memcpy(&b1, b + L, sizeof(V));
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const Acc av = a[r];
      c0[r] += av * b0;
      c1[r] += av * b1;
    }
    a += MR;
    b += 2 * L;
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    memcpy(c + r * ldc, &c0[r], sizeof(V));
    memcpy(c + r * ldc + L, &c1[r], sizeof(V));
  }
}

template <typename AccT, int kLanes, int kRows>
DQK_ML_INLINE void Path<AccT, kLanes, kRows>::micro(const Pk* a, const Pk* b, int64_t steps,
                                                    Acc* c, int64_t ldc) {
  vec_microkernel<Path>(a, b, steps, c, ldc);
}

#if DQK_ML_X86
// AVX512-BF16: bf16 A and B packed as pairs of consecutive k (low half: even k), 12 x 32
// float tile, vdpbf16ps (a pair of exact bf16 products added to the fp32 accumulator per
// lane). Called, not inlined: its target differs from the engine's.
DQK_ML_BF16 void bf16_microkernel(const uint32_t* __restrict a, const uint32_t* __restrict b,
                                  int64_t steps, float* __restrict c, int64_t ldc) {
  __m512 c0[12], c1[12];
#pragma GCC unroll 12
  for (int r = 0; r < 12; ++r) {
    c0[r] = _mm512_loadu_ps(c + r * ldc);
    c1[r] = _mm512_loadu_ps(c + r * ldc + 16);
  }
  for (int64_t k = 0; k < steps; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
    for (int r = 0; r < 12; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(int(a[r]));
      c0[r] = _mm512_dpbf16_ps(c0[r], av, b0);
      c1[r] = _mm512_dpbf16_ps(c1[r], av, b1);
    }
    a += 12;
    b += 32;
  }
#pragma GCC unroll 12
  for (int r = 0; r < 12; ++r) {
    _mm512_storeu_ps(c + r * ldc, c0[r]);
    _mm512_storeu_ps(c + r * ldc + 16, c1[r]);
  }
}

struct PathBF16 {
  using Acc = float;
  using Src = BFloat16;
  using Pk = uint32_t;
  static constexpr int MR = 12, NR = 32, KP = 2;
  static Src zero() { return BFloat16{0}; }
  static Pk pack(const Src* v) { return uint32_t(v[0].bits) | (uint32_t(v[1].bits) << 16); }
  static void micro(const Pk* a, const Pk* b, int64_t steps, Acc* c, int64_t ldc) {
    bf16_microkernel(a, b, steps, c, ldc);
  }
};
#endif

struct Range {
  int64_t lo, hi;
};

// min/max of d[i0, i1) (i1 > i0)
inline Range deg_range(const int64_t* d, int64_t i0, int64_t i1) {
  Range r{d[i0], d[i0]};
  for (int64_t i = i0 + 1; i < i1; ++i) {
    r.lo = std::min(r.lo, d[i]);
    r.hi = std::max(r.hi, d[i]);
  }
  return r;
}

// Byte offsets of an item's buffers in its workspace: C tile buffer (Acc), packed A and
// packed B (Pk), each 64-byte aligned.
template <class P>
struct WsLayout {
  int64_t c_off, a_off, b_off, bytes;
  WsLayout(int64_t CH, int64_t MC, int64_t G, int64_t KC) {
    auto up = [](int64_t v) { return (v + 63) / 64 * 64; };
    const int64_t steps = KC / P::KP;
    c_off = 0;
    a_off = up(CH * G * P::NR * int64_t(sizeof(typename P::Acc)));
    b_off = a_off + up(MC * steps * int64_t(sizeof(typename P::Pk)));
    bytes = b_off + up(G * steps * P::NR * int64_t(sizeof(typename P::Pk)));
  }
};

// Mask functors for packing B: keep the entry of row degree dk and column degree dn?
struct KeepAll {
  static constexpr bool kAll = true;
  bool operator()(int64_t, int64_t) const { return true; }
};
template <bool kNHi, bool kStrict>
struct KeepDeg {
  static constexpr bool kAll = false;
  bool operator()(int64_t dk, int64_t dn) const {
    const int64_t hi = kNHi ? dn : dk, lo = kNHi ? dk : dn;
    return kStrict ? hi > lo : hi >= lo;
  }
};

// Pack rows [lo, hi) (relative to the K block at k0; rows >= kc are past the block) of
// the B panel of columns [nq, nq + jv) into dst[(kk - lo) / KP][jj]. Masked entries,
// rows past the block and columns past jv are zeros; masked entries are not read.
template <class P, class KeepF>
DQK_ML_INLINE void pack_b(const Problem<typename P::Src, typename P::Acc>& p, KeepF keepf,
                          int64_t k0, int64_t lo, int64_t hi, int64_t kc, int64_t nq,
                          int64_t jv, bool b_cols, typename P::Pk* __restrict dst) {
  using Src = typename P::Src;
  using Pk = typename P::Pk;
  constexpr int NR = P::NR, KP = P::KP;
  const Src z = P::zero();
  Src zz[KP];
  for (int e = 0; e < KP; ++e) zz[e] = z;
  const Pk pz = P::pack(zz);
  const int64_t steps = (hi - lo) / KP;
  const int64_t nval = std::min(hi, kc) - lo;   // valid rows; steps == ceil(nval / KP)
  const int64_t kb = k0 + lo;
  const int64_t* dk = KeepF::kAll ? nullptr : p.dr + kb;
  if (b_cols) {
    const int64_t sbk = p.sbk;
    for (int64_t jj = 0; jj < NR; ++jj) {
      if (jj >= jv) {
        for (int64_t s = 0; s < steps; ++s) dst[s * NR + jj] = pz;
        continue;
      }
      const int64_t n = nq + jj;
      const int64_t dnn = KeepF::kAll ? 0 : p.dn[n];
      const Src* src = p.B + n * p.sbn + kb * sbk;
      if constexpr (KP == 1) {
        for (int64_t s = 0; s < nval; ++s)
          dst[s * NR + jj] = (KeepF::kAll || keepf(dk[s], dnn)) ? src[s * sbk] : z;
      } else {
        const int64_t full = nval / 2;
        if (sbk == 1) {   // one 32-bit load per pair, masked halves cleared
          for (int64_t s = 0; s < full; ++s) {
            Pk pair;
            memcpy(&pair, src + 2 * s, sizeof(Pk));
            if (!KeepF::kAll) {
              const Pk m0 = keepf(dk[2 * s], dnn) ? Pk(0xffffu) : Pk(0);
              const Pk m1 = keepf(dk[2 * s + 1], dnn) ? Pk(0xffff0000u) : Pk(0);
              pair &= m0 | m1;
            }
            dst[s * NR + jj] = pair;
          }
        } else {
          for (int64_t s = 0; s < full; ++s) {
            Src v[2];
            v[0] = (KeepF::kAll || keepf(dk[2 * s], dnn)) ? src[2 * s * sbk] : z;
            v[1] = (KeepF::kAll || keepf(dk[2 * s + 1], dnn)) ? src[(2 * s + 1) * sbk] : z;
            dst[s * NR + jj] = P::pack(v);
          }
        }
        if (full < steps) {   // one valid row left
          Src v[2] = {z, z};
          v[0] = (KeepF::kAll || keepf(dk[2 * full], dnn)) ? src[2 * full * sbk] : z;
          dst[full * NR + jj] = P::pack(v);
        }
      }
    }
  } else {
    bool done = false;
    if constexpr (KP == 2) {
      if (p.sbn == 1) {
        // bf16 pairs from two contiguous rows: interleave the halves (vectorises)
        const int64_t* dn = p.dn + nq;
        for (int64_t s = 0; s < steps; ++s) {
          Pk* d = dst + s * NR;
          const int64_t i0 = 2 * s, i1 = 2 * s + 1;
          const uint16_t* r0 = reinterpret_cast<const uint16_t*>(p.B + (kb + i0) * p.sbk + nq);
          const int64_t d0 = KeepF::kAll ? 0 : dk[i0];
          if (i1 < nval) {
            const uint16_t* r1 = reinterpret_cast<const uint16_t*>(p.B + (kb + i1) * p.sbk + nq);
            const int64_t d1 = KeepF::kAll ? 0 : dk[i1];
            for (int64_t jj = 0; jj < jv; ++jj) {
              const Pk lo = (KeepF::kAll || keepf(d0, dn[jj])) ? Pk(r0[jj]) : Pk(0);
              const Pk hi = (KeepF::kAll || keepf(d1, dn[jj])) ? Pk(r1[jj]) : Pk(0);
              d[jj] = lo | (hi << 16);
            }
          } else {
            for (int64_t jj = 0; jj < jv; ++jj)
              d[jj] = (KeepF::kAll || keepf(d0, dn[jj])) ? Pk(r0[jj]) : Pk(0);
          }
          for (int64_t jj = jv; jj < NR; ++jj) d[jj] = pz;
        }
        done = true;
      }
    }
    if (!done) {
      const int64_t sbn = p.sbn;
      const int64_t* dn = p.dn + nq;
      for (int64_t s = 0; s < steps; ++s) {
        Src v[KP][NR];
        for (int e = 0; e < KP; ++e) {
          const int64_t i = s * KP + e;
          int64_t jj = 0;
          if (i < nval) {
            const Src* row = p.B + (kb + i) * p.sbk + nq * sbn;
            const int64_t dki = KeepF::kAll ? 0 : dk[i];
            for (; jj < jv; ++jj) v[e][jj] = (KeepF::kAll || keepf(dki, dn[jj])) ? row[jj * sbn] : z;
          }
          for (; jj < NR; ++jj) v[e][jj] = z;
        }
        Pk* d = dst + s * NR;
        for (int64_t jj = 0; jj < NR; ++jj) {
          Src w[KP];
          for (int e = 0; e < KP; ++e) w[e] = v[e][jj];
          d[jj] = P::pack(w);
        }
      }
    }
  }
}

// Pack rows [mt0, mt0 + rv) of A (zeros up to MR) by k in [klo, khi) (relative to the
// K block at k0; rows >= kc are past the block) into dst[(kk - klo) / KP][r].
template <class P>
DQK_ML_INLINE void pack_a(const Problem<typename P::Src, typename P::Acc>& p, int64_t mt0,
                          int64_t rv, int64_t k0, int64_t klo, int64_t khi, int64_t kc,
                          bool a_rows, typename P::Pk* __restrict dst) {
  using Src = typename P::Src;
  using Pk = typename P::Pk;
  constexpr int MR = P::MR, KP = P::KP;
  const Src z = P::zero();
  Src zz[KP];
  for (int e = 0; e < KP; ++e) zz[e] = z;
  const Pk pz = P::pack(zz);
  const int64_t steps = (khi - klo) / KP;
  const int64_t nval = std::min(khi, kc) - klo;
  const int64_t kb = k0 + klo;
  if (a_rows) {
    const int64_t sak = p.sak;
    for (int64_t r = 0; r < rv; ++r) {
      const Src* src = p.A + (mt0 + r) * p.sam + kb * sak;
      if constexpr (KP == 1) {
        for (int64_t s = 0; s < nval; ++s) dst[s * MR + r] = src[s * sak];
      } else {
        const int64_t full = nval / 2;
        if (sak == 1) {   // a pair is one 32-bit load (low half: the even k)
          for (int64_t s = 0; s < full; ++s) memcpy(&dst[s * MR + r], src + 2 * s, sizeof(Pk));
        } else {
          for (int64_t s = 0; s < full; ++s) {
            const Src v[2] = {src[2 * s * sak], src[(2 * s + 1) * sak]};
            dst[s * MR + r] = P::pack(v);
          }
        }
        if (full < steps) {
          const Src v[2] = {src[2 * full * sak], z};
          dst[full * MR + r] = P::pack(v);
        }
      }
    }
  } else {
    bool done = false;
    if constexpr (KP == 2) {
      if (p.sam == 1) {
        // bf16 pairs from two contiguous rows of k: interleave the halves
        for (int64_t s = 0; s < steps; ++s) {
          Pk* d = dst + s * MR;
          const int64_t i0 = 2 * s, i1 = 2 * s + 1;
          const uint16_t* r0 = reinterpret_cast<const uint16_t*>(p.A + mt0 + (kb + i0) * p.sak);
          if (i1 < nval) {
            const uint16_t* r1 = reinterpret_cast<const uint16_t*>(p.A + mt0 + (kb + i1) * p.sak);
            for (int64_t r = 0; r < rv; ++r) d[r] = Pk(r0[r]) | (Pk(r1[r]) << 16);
          } else {
            for (int64_t r = 0; r < rv; ++r) d[r] = Pk(r0[r]);
          }
        }
        done = true;
      }
    }
    if (!done) {
      const int64_t sam = p.sam;
      for (int64_t s = 0; s < steps; ++s) {
        Src v[KP][MR];
        for (int e = 0; e < KP; ++e) {
          const int64_t i = s * KP + e;
          int64_t r = 0;
          if (i < nval) {
            const Src* row = p.A + mt0 * sam + (kb + i) * p.sak;
            for (; r < rv; ++r) v[e][r] = row[r * sam];
          }
          for (; r < MR; ++r) v[e][r] = z;
        }
        Pk* d = dst + s * MR;
        for (int r = 0; r < MR; ++r) {
          Src w[KP];
          for (int e = 0; e < KP; ++e) w[e] = v[e][r];
          d[r] = P::pack(w);
        }
      }
    }
  }
  for (int64_t r = rv; r < MR; ++r)
    for (int64_t s = 0; s < steps; ++s) dst[s * MR + r] = pz;
}

// One work item: rows [c*CH, c*CH + CH) by panels [g*G, g*G + G) of C (item = c*ngroups
// + g), into the item's C buffer (row stride G*NR) as final values (bias added, side-C
// mask applied); the caller converts and stores them. Per K block the item packs its B
// panels once and sweeps its rows in sub-blocks of MC rows. A packed entry holds KP
// consecutive k (2 for bf16 pairs): ranges are widened to multiples of KP, and the
// entries added that way are masked rows or past the end, packed as zeros.
template <class P>
DQK_ML_INLINE void run_item(const Problem<typename P::Src, typename P::Acc>& p, int64_t item,
                            unsigned char* ws) {
  using Acc = typename P::Acc;
  using Pk = typename P::Pk;
  constexpr int MR = P::MR, NR = P::NR, KP = P::KP;
  const int64_t npan = (p.N + NR - 1) / NR;
  const int64_t ngr = (npan + p.G - 1) / p.G;
  const int64_t c = item / ngr, g = item - c * ngr;
  const int64_t m0 = c * p.CH, mrows = std::min(p.CH, p.M - m0);
  const int64_t mts = (mrows + MR - 1) / MR;          // row tiles of the item
  const int64_t mct = p.MC / MR;                       // row tiles per A sub-block
  const int64_t pan0 = g * p.G, pans = std::min(p.G, npan - pan0);
  const int64_t n0 = pan0 * NR, ncols = std::min(pans * NR, p.N - n0);
  const int64_t GW = p.G * NR, KC = p.KC, SK = KC / KP;   // SK: packed steps per K block
  const WsLayout<P> lay(p.CH, p.MC, p.G, p.KC);
  Acc* cbuf = reinterpret_cast<Acc*>(ws + lay.c_off);
  Pk* apack = reinterpret_cast<Pk*>(ws + lay.a_off);
  Pk* bpack = reinterpret_cast<Pk*>(ws + lay.b_off);
  for (int64_t r = 0; r < mts * MR; ++r)
    for (int64_t n = 0; n < pans * NR; ++n) cbuf[r * GW + n] = Acc(0);

  // degree ranges of the panels (over their valid columns)
  std::vector<Range> pranges(pans);
  for (int64_t q = 0; q < pans; ++q) {
    const int64_t a0 = n0 + q * NR, a1 = std::min(a0 + NR, p.N);
    pranges[q] = deg_range(p.dn, a0, a1);
  }
  // side C: is tile (t, q) live (not entirely masked)?  side B: rows are cut per K block
  std::vector<unsigned char> live;
  std::vector<unsigned char> panel_live(pans, 1);
  bool any_live = true;
  if (p.side == kSideC) {
    live.assign(mts * pans, 0);
    panel_live.assign(pans, 0);
    any_live = false;
    for (int64_t t = 0; t < mts; ++t) {
      const int64_t r0 = m0 + t * MR, r1 = std::min(r0 + MR, m0 + mrows);
      const Range rr = deg_range(p.dr, r0, r1);
      for (int64_t q = 0; q < pans; ++q) {
        const bool any = p.n_is_hi ? keep(pranges[q].hi, rr.lo, p.strict)
                                   : keep(rr.hi, pranges[q].lo, p.strict);
        live[t * pans + q] = any;
        panel_live[q] = panel_live[q] || any;
        any_live = any_live || any;
      }
    }
  }

  if (any_live) {
    std::vector<int64_t> lo(pans), hi(pans);
    const bool a_rows = std::abs(p.sak) <= std::abs(p.sam);
    const bool b_cols = std::abs(p.sbk) <= std::abs(p.sbn);
    const bool sideb = p.side == kSideB;
    for (int64_t k0 = 0; k0 < p.K; k0 += KC) {
      const int64_t kc = std::min(KC, p.K - k0);
      // rows [lo, hi) of each panel within this K block (relative to k0), widened to
      // multiples of KP
      int64_t klo = kc, khi = 0;
      for (int64_t q = 0; q < pans; ++q) {
        int64_t l = 0, h = kc;
        if (sideb) {
          const int64_t ext = p.n_is_hi ? pranges[q].hi : pranges[q].lo;
          auto nz = [&](int64_t kk) {
            const int64_t d = p.dr[k0 + kk];
            return p.n_is_hi ? keep(ext, d, p.strict) : keep(d, ext, p.strict);
          };
          while (l < kc && !nz(l)) ++l;
          while (h > l && !nz(h - 1)) --h;
        } else if (!panel_live[q]) {
          l = h = 0;
        }
        if (h > l) {
          l = l / KP * KP;
          h = (h + KP - 1) / KP * KP;
          klo = std::min(klo, l);
          khi = std::max(khi, h);
        }
        lo[q] = l;
        hi[q] = h;
      }
      if (khi <= klo) continue;

      // pack each live panel's rows [lo, hi): bpack[q][(kk - lo) / KP][jj]
      for (int64_t q = 0; q < pans; ++q) {
        if (hi[q] <= lo[q]) continue;
        Pk* dst = bpack + q * SK * NR;
        const int64_t nq = n0 + q * NR, jv = std::min<int64_t>(NR, p.N - nq);
        if (!sideb) {
          pack_b<P>(p, KeepAll{}, k0, lo[q], hi[q], kc, nq, jv, b_cols, dst);
        } else if (p.n_is_hi) {
          if (p.strict) pack_b<P>(p, KeepDeg<true, true>{}, k0, lo[q], hi[q], kc, nq, jv, b_cols, dst);
          else pack_b<P>(p, KeepDeg<true, false>{}, k0, lo[q], hi[q], kc, nq, jv, b_cols, dst);
        } else {
          if (p.strict) pack_b<P>(p, KeepDeg<false, true>{}, k0, lo[q], hi[q], kc, nq, jv, b_cols, dst);
          else pack_b<P>(p, KeepDeg<false, false>{}, k0, lo[q], hi[q], kc, nq, jv, b_cols, dst);
        }
      }

      for (int64_t t0 = 0; t0 < mts; t0 += mct) {
        const int64_t t1 = std::min(mts, t0 + mct);
        if (!sideb) {
          bool any = false;
          for (int64_t t = t0; t < t1 && !any; ++t)
            for (int64_t q = 0; q < pans && !any; ++q) any = live[t * pans + q];
          if (!any) continue;
        }
        // pack A rows of tiles [t0, t1) x k in [k0 + klo, k0 + khi): apack[t - t0][s][r]
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t mt0 = m0 + t * MR;
          pack_a<P>(p, mt0, std::min<int64_t>(MR, m0 + mrows - mt0), k0, klo, khi, kc, a_rows,
                    apack + (t - t0) * SK * MR);
        }
        // panel-major, so each packed B panel stays in L1 while A micro-panels stream by
        for (int64_t q = 0; q < pans; ++q) {
          if (hi[q] <= lo[q]) continue;
          for (int64_t t = t0; t < t1; ++t) {
            if (!sideb && !live[t * pans + q]) continue;
            P::micro(apack + (t - t0) * SK * MR + (lo[q] - klo) / KP * MR,
                     bpack + q * SK * NR, (hi[q] - lo[q]) / KP, cbuf + t * MR * GW + q * NR,
                     GW);
          }
        }
      }
    }
  }

  // epilogue on the valid part
  if (p.bias) {
    for (int64_t r = 0; r < mrows; ++r) {
      Acc* cr = cbuf + r * GW;
      const Acc* b = p.bias + n0;
      for (int64_t n = 0; n < ncols; ++n) cr[n] += b[n];
    }
  }
  if (p.side == kSideC) {
    for (int64_t r = 0; r < mrows; ++r) {
      Acc* cr = cbuf + r * GW;
      const int64_t dm = p.dr[m0 + r];
      const int64_t* dn = p.dn + n0;
      if (p.n_is_hi) {
        for (int64_t n = 0; n < ncols; ++n) cr[n] = keep(dn[n], dm, p.strict) ? cr[n] : Acc(0);
      } else {
        for (int64_t n = 0; n < ncols; ++n) cr[n] = keep(dm, dn[n], p.strict) ? cr[n] : Acc(0);
      }
    }
  }
}

// The paths, each compiled for its instruction set (the engine is inlined into these, so
// its vector code is generated for that target).
using PF512 = Path<float, 16, 12>;
using PD512 = Path<double, 8, 12>;
using PF256 = Path<float, 8, 6>;
using PD256 = Path<double, 4, 6>;
using PF128 = Path<float, 4, 4>;
using PD128 = Path<double, 2, 4>;

template <typename Src, typename Acc>
using ItemFn = void (*)(const Problem<Src, Acc>&, int64_t, unsigned char*);

void item_f128(const Problem<float, float>& p, int64_t i, unsigned char* w) { run_item<PF128>(p, i, w); }
void item_d128(const Problem<double, double>& p, int64_t i, unsigned char* w) { run_item<PD128>(p, i, w); }
#if DQK_ML_X86
DQK_ML_V3 void item_f256(const Problem<float, float>& p, int64_t i, unsigned char* w) { run_item<PF256>(p, i, w); }
DQK_ML_V3 void item_d256(const Problem<double, double>& p, int64_t i, unsigned char* w) { run_item<PD256>(p, i, w); }
DQK_ML_V4 void item_f512(const Problem<float, float>& p, int64_t i, unsigned char* w) { run_item<PF512>(p, i, w); }
DQK_ML_V4 void item_d512(const Problem<double, double>& p, int64_t i, unsigned char* w) { run_item<PD512>(p, i, w); }
DQK_ML_V4 void item_bf16(const Problem<BFloat16, float>& p, int64_t i, unsigned char* w) { run_item<PathBF16>(p, i, w); }
#endif

// A path's item function, register tile, K granularity and workspace size.
template <typename Src, typename Acc>
struct Kernel {
  ItemFn<Src, Acc> fn;
  int MR, NR, KP;
  int64_t (*ws_bytes)(int64_t CH, int64_t MC, int64_t G, int64_t KC);
};

template <class P>
int64_t ws_bytes_of(int64_t CH, int64_t MC, int64_t G, int64_t KC) {
  return WsLayout<P>(CH, MC, G, KC).bytes;
}

template <class P>
Kernel<typename P::Src, typename P::Acc> kernel_of(ItemFn<typename P::Src, typename P::Acc> fn) {
  return Kernel<typename P::Src, typename P::Acc>{fn, P::MR, P::NR, P::KP, &ws_bytes_of<P>};
}

// the float/double kernel of an instruction-set path (bf16 inputs pick theirs apart)
Kernel<float, float> acc_kernel(int isa, float*) {
#if DQK_ML_X86
  if (isa >= kIsaAvx512) return kernel_of<PF512>(item_f512);
  if (isa == kIsaAvx2) return kernel_of<PF256>(item_f256);
#endif
  return kernel_of<PF128>(item_f128);
}

Kernel<double, double> acc_kernel(int isa, double*) {
#if DQK_ML_X86
  if (isa >= kIsaAvx512) return kernel_of<PD512>(item_d512);
  if (isa == kIsaAvx2) return kernel_of<PD256>(item_d256);
#endif
  return kernel_of<PD128>(item_d128);
}
// ----------------------------------------------------------------------------- storage

#if DQK_ML_X86 && __GNUC__ >= 12
// fp16 <-> float through the compiler's _Float16 (F16C in the AVX2/AVX-512 clones; round
// to nearest even, as Scalar<Half>)
DQK_ML_CLONES void half_row_to_f32(const Half* src, float* dst, int64_t n) {
  const _Float16* p = reinterpret_cast<const _Float16*>(src);
  for (int64_t j = 0; j < n; ++j) dst[j] = float(p[j]);
}
DQK_ML_CLONES void f32_row_to_half(const float* src, Half* dst, int64_t n) {
  _Float16* p = reinterpret_cast<_Float16*>(dst);
  for (int64_t j = 0; j < n; ++j) p[j] = _Float16(src[j]);
}
#define DQK_ML_FAST_HALF 1
#endif

DQK_ML_CLONES void bf16_row_to_f32(const BFloat16* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = bits_f32(uint32_t(src[j].bits) << 16);
}

// a contiguous row of n values of S (unit stride) to the accumulate type
template <typename S, typename Acc>
void load_row(const S* src, Acc* dst, int64_t n) {
  if constexpr (std::is_same<S, BFloat16>::value) {
    bf16_row_to_f32(src, dst, n);
#ifdef DQK_ML_FAST_HALF
  } else if constexpr (std::is_same<S, Half>::value) {
    half_row_to_f32(src, dst, n);
#endif
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] = Acc(Scalar<S>::load(src + j));
  }
}

template <typename S, typename Acc>
void store_row(const Acc* src, S* dst, int64_t n) {
#ifdef DQK_ML_FAST_HALF
  if constexpr (std::is_same<S, Half>::value) {
    f32_row_to_half(src, dst, n);
    return;
  }
#endif
  if constexpr (std::is_same<S, Acc>::value) {
    memcpy(dst, src, size_t(n) * sizeof(Acc));
  } else {
    for (int64_t j = 0; j < n; ++j) Scalar<S>::store(dst + j, src[j]);
  }
}

// A matrix of Acc values: the tensor itself (float/double storage) or a contiguous
// converted copy (fp16/bf16).
template <typename Acc>
struct TMat {
  const Acc* p;
  int64_t s0, s1;
};

template <typename S, typename Acc>
TMat<Acc> as_acc(const Mat& m, int64_t rows, int64_t cols, std::vector<Acc>& buf, int nt) {
  const S* src = static_cast<const S*>(m.p);
  if constexpr (std::is_same<S, Acc>::value) {
    (void)rows; (void)cols; (void)buf; (void)nt;
    return TMat<Acc>{src, m.s0, m.s1};
  } else {
    buf.resize(size_t(rows * cols));
    Acc* dst = buf.data();
    nt = threads_for(double(rows) * double(cols) * 16.0, nt);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; ++r) {
      if (m.s1 == 1) {
        load_row<S, Acc>(src + r * m.s0, dst + r * cols, cols);
      } else {
        for (int64_t c = 0; c < cols; ++c)
          dst[r * cols + c] = Acc(Scalar<S>::load(src + r * m.s0 + c * m.s1));
      }
    }
    return TMat<Acc>{dst, cols, 1};
  }
}

// ----------------------------------------------------------------------------- driver

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


// Work estimate of each item (multiply-adds, up to a constant), for largest-first
// scheduling: the staircase makes items very unequal.
template <typename Src, typename Acc>
std::vector<double> item_costs(const Problem<Src, Acc>& p, int64_t NR, int64_t ngr,
                               int64_t nitems) {
  const int64_t npan = (p.N + NR - 1) / NR;
  std::vector<double> group(ngr, 0.0), cost(nitems, 0.0);
  if (p.side == kSideB) {
    // per panel: its rows that are not entirely masked, times the item's rows
    for (int64_t q = 0; q < npan; ++q) {
      const Range r = deg_range(p.dn, q * NR, std::min(p.N, (q + 1) * NR));
      const int64_t ext = p.n_is_hi ? r.hi : r.lo;
      int64_t rows = 0;
      for (int64_t k = 0; k < p.K; ++k) {
        const int64_t d = p.dr[k];
        rows += p.n_is_hi ? keep(ext, d, p.strict) : keep(d, ext, p.strict);
      }
      group[q / p.G] += double(rows);
    }
    for (int64_t it = 0; it < nitems; ++it) {
      const int64_t c = it / ngr;
      cost[it] = group[it - c * ngr] * double(std::min(p.CH, p.M - c * p.CH));
    }
  } else {
    // per (row, panel): not entirely masked, times K
    std::vector<Range> pr(npan);
    for (int64_t q = 0; q < npan; ++q) pr[q] = deg_range(p.dn, q * NR, std::min(p.N, (q + 1) * NR));
    for (int64_t it = 0; it < nitems; ++it) {
      const int64_t c = it / ngr, g = it - c * ngr;
      double n = 0;
      for (int64_t m = c * p.CH; m < std::min(p.M, (c + 1) * p.CH); ++m)
        for (int64_t q = g * p.G; q < std::min(npan, (g + 1) * p.G); ++q)
          n += p.n_is_hi ? keep(pr[q].hi, p.dr[m], p.strict) : keep(p.dr[m], pr[q].lo, p.strict);
      cost[it] = n * double(p.K);
    }
  }
  return cost;
}

// Run the engine with kernel `k`: C (S, contiguous rows of stride ldc) = the result.
template <typename S, typename Src, typename Acc>
void run_gemm(Problem<Src, Acc> p, const Kernel<Src, Acc>& k, S* C, int64_t ldc, int nt) {
  nt = threads_for(double(p.M) * double(p.N) * double(p.K), nt);
  const int64_t MR = k.MR, NR = k.NR;
  // blocking: K blocks of KC; G panels (G*NR ~ 256 columns) by CH rows (<= 1024) per
  // item; A sub-blocks of MC = 8 row tiles
  const int64_t mpad = (p.M + MR - 1) / MR * MR;
  const int64_t npan = (p.N + NR - 1) / NR;
  p.KC = 256 * k.KP;
  p.MC = std::min(8 * MR, mpad);
  p.G = std::min(std::max<int64_t>(1, 256 / NR), npan);
  p.CH = std::min<int64_t>(mpad, 1024 / MR * MR);
  auto items = [&]() { return ((p.M + p.CH - 1) / p.CH) * ((npan + p.G - 1) / p.G); };
  auto half_rows = [&](int64_t ch) { return std::max(MR, (ch / 2 + MR - 1) / MR * MR); };
  // enough items to keep the threads busy: split the rows while chunks are large, then
  // the panel groups, then the rows again
  while (items() < 3 * nt) {
    if (p.CH >= 512) p.CH = half_rows(p.CH);
    else if (p.G > 2) p.G = (p.G + 1) / 2;
    else if (p.CH > MR) p.CH = half_rows(p.CH);
    else if (p.G > 1) p.G = 1;
    else break;
  }
  p.MC = std::min(p.MC, p.CH);
  const int64_t n_items = items();
  const int64_t ngr = (npan + p.G - 1) / p.G;
  const int64_t GW = p.G * NR;
  const int64_t ws_bytes = k.ws_bytes(p.CH, p.MC, p.G, p.KC);
  std::vector<int64_t> order(n_items);
  for (int64_t i = 0; i < n_items; ++i) order[i] = i;
  if (nt > 1 && n_items > 1) {
    const std::vector<double> cost = item_costs(p, NR, ngr, n_items);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  }

#pragma omp parallel num_threads(nt)
  {
    AlignedBuf ws{static_cast<size_t>(ws_bytes)};
    unsigned char* w = static_cast<unsigned char*>(ws.p);
    const Acc* cbuf = reinterpret_cast<const Acc*>(w);   // WsLayout: the C buffer is first
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n_items; ++i) {
      const int64_t it = order[i];
      k.fn(p, it, w);
      const int64_t c = it / ngr, g = it - c * ngr;
      const int64_t m0 = c * p.CH, mrows = std::min(p.CH, p.M - m0);
      const int64_t n0 = g * GW, ncols = std::min(GW, p.N - n0);
      for (int64_t r = 0; r < mrows; ++r)
        store_row<S, Acc>(cbuf + r * GW, C + (m0 + r) * ldc + n0, ncols);
    }
  }
}

// The three problems, on A/B matrices of Src values.
template <typename Src, typename Acc>
Problem<Src, Acc> forward_problem(const Args& a, TMat<Src> X, TMat<Src> W, const Acc* bias) {
  Problem<Src, Acc> p;
  p.M = a.rows; p.N = a.out; p.K = a.in;
  p.A = X.p; p.sam = X.s0; p.sak = X.s1;
  p.B = W.p; p.sbk = W.s1; p.sbn = W.s0;           // B[k=i, n=j] = W[j, i]
  p.side = kSideB; p.strict = a.strict;
  p.dr = a.in_deg; p.dn = a.out_deg; p.n_is_hi = true;
  p.bias = bias;
  return p;
}

template <typename Src, typename Acc>
Problem<Src, Acc> grad_x_problem(const Args& a, TMat<Src> GY, TMat<Src> W) {
  Problem<Src, Acc> p;
  p.M = a.rows; p.N = a.in; p.K = a.out;
  p.A = GY.p; p.sam = GY.s0; p.sak = GY.s1;
  p.B = W.p; p.sbk = W.s0; p.sbn = W.s1;           // B[k=j, n=i] = W[j, i]
  p.side = kSideB; p.strict = a.strict;
  p.dr = a.out_deg; p.dn = a.in_deg; p.n_is_hi = false;
  return p;
}

template <typename Src, typename Acc>
Problem<Src, Acc> grad_w_problem(const Args& a, TMat<Src> GY, TMat<Src> X) {
  Problem<Src, Acc> p;
  p.M = a.out; p.N = a.in; p.K = a.rows;
  p.A = GY.p; p.sam = GY.s1; p.sak = GY.s0;        // A[m=j, k=r] = gy[r, j]
  p.B = X.p; p.sbk = X.s0; p.sbn = X.s1;           // B[k=r, n=i] = x[r, i]
  p.side = kSideC; p.strict = a.strict;
  p.dr = a.out_deg; p.dn = a.in_deg; p.n_is_hi = false;
  return p;
}

template <typename S>
TMat<S> raw(const Mat& m) { return TMat<S>{static_cast<const S*>(m.p), m.s0, m.s1}; }

template <typename S, typename Acc>
std::vector<Acc> bias_vector(const Args& a) {
  std::vector<Acc> bb;
  if (a.bias) {
    bb.resize(size_t(a.out));
    const S* b = static_cast<const S*>(a.bias);
    for (int64_t j = 0; j < a.out; ++j) bb[j] = Acc(Scalar<S>::load(b + j * a.bias_stride));
  }
  return bb;
}

// grad_bias = column sums of gy, in a fixed order: blocks of columns in parallel, rows
// in sequence
template <typename S, typename Acc>
void bias_grad(const Args& a, int nt) {
  constexpr int64_t kCols = 256;
  const int64_t blocks = (a.out + kCols - 1) / kCols;
  const S* gy = static_cast<const S*>(a.gy.p);
  S* gb = static_cast<S*>(a.gb);
  const int nt_b = threads_for(double(a.rows) * double(a.out) * 4.0, nt);
#pragma omp parallel for schedule(static) num_threads(nt_b)
  for (int64_t bl = 0; bl < blocks; ++bl) {
    const int64_t j0 = bl * kCols, nj = std::min(kCols, a.out - j0);
    Acc acc[kCols], row[kCols];
    for (int64_t j = 0; j < nj; ++j) acc[j] = Acc(0);
    for (int64_t r = 0; r < a.rows; ++r) {
      const S* src = gy + r * a.gy.s0 + j0 * a.gy.s1;
      if (a.gy.s1 == 1) {
        load_row<S, Acc>(src, row, nj);
      } else {
        for (int64_t j = 0; j < nj; ++j) row[j] = Acc(Scalar<S>::load(src + j * a.gy.s1));
      }
      for (int64_t j = 0; j < nj; ++j) acc[j] += row[j];
    }
    store_row<S, Acc>(acc, gb + j0, nj);
  }
}

template <typename S>
void forward_impl(const Args& a, int nt, int isa) {
  using Acc = typename Scalar<S>::acc;
  isa = pick_cpu_isa(isa, "masked_linear cpu");
  const std::vector<Acc> bb = bias_vector<S, Acc>(a);
  const Acc* bias = a.bias ? bb.data() : nullptr;
#if DQK_ML_X86
  if constexpr (std::is_same<S, BFloat16>::value) {
    if (isa == kIsaAvx512Bf16) {   // bf16 pairs straight from the tensors
      run_gemm<S>(forward_problem<S, Acc>(a, raw<S>(a.x), raw<S>(a.w), bias),
                  kernel_of<PathBF16>(item_bf16), static_cast<S*>(a.y), a.out, nt);
      return;
    }
  }
#endif
  std::vector<Acc> xb, wb;
  const TMat<Acc> X = as_acc<S, Acc>(a.x, a.rows, a.in, xb, nt);
  const TMat<Acc> W = as_acc<S, Acc>(a.w, a.out, a.in, wb, nt);
  run_gemm<S>(forward_problem<Acc, Acc>(a, X, W, bias), acc_kernel(isa, (Acc*)nullptr),
              static_cast<S*>(a.y), a.out, nt);
}

template <typename S>
void backward_impl(const Args& a, int nt, int isa) {
  using Acc = typename Scalar<S>::acc;
  isa = pick_cpu_isa(isa, "masked_linear cpu");
  if (a.gb) bias_grad<S, Acc>(a, nt);
  if (!a.gx && !a.gw) return;
#if DQK_ML_X86
  if constexpr (std::is_same<S, BFloat16>::value) {
    if (isa == kIsaAvx512Bf16) {
      const auto k = kernel_of<PathBF16>(item_bf16);
      if (a.gx)
        run_gemm<S>(grad_x_problem<S, Acc>(a, raw<S>(a.gy), raw<S>(a.w)), k,
                    static_cast<S*>(a.gx), a.in, nt);
      if (a.gw)
        run_gemm<S>(grad_w_problem<S, Acc>(a, raw<S>(a.gy), raw<S>(a.x)), k,
                    static_cast<S*>(a.gw), a.in, nt);
      return;
    }
  }
#endif
  const auto k = acc_kernel(isa, (Acc*)nullptr);
  std::vector<Acc> gyb, xb, wb;
  const TMat<Acc> GY = as_acc<S, Acc>(a.gy, a.rows, a.out, gyb, nt);
  if (a.gx) {
    const TMat<Acc> W = as_acc<S, Acc>(a.w, a.out, a.in, wb, nt);
    run_gemm<S>(grad_x_problem<Acc, Acc>(a, GY, W), k, static_cast<S*>(a.gx), a.in, nt);
    std::vector<Acc>().swap(wb);
  }
  if (a.gw) {
    const TMat<Acc> X = as_acc<S, Acc>(a.x, a.rows, a.in, xb, nt);
    run_gemm<S>(grad_w_problem<Acc, Acc>(a, GY, X), k, static_cast<S*>(a.gw), a.in, nt);
  }
}

template <typename F>
void dispatch(DType dt, F&& f) {
  visit_dtype<Half, BFloat16>(dt, "masked_linear cpu", f);
}

}  // namespace

int cpu_isas() { return supported_cpu_isas(); }

void forward_cpu(const Args& a, int num_threads, int isa) {
  dispatch(a.dtype, [&](auto s) { forward_impl<decltype(s)>(a, num_threads, isa); });
}

void backward_cpu(const Args& a, int num_threads, int isa) {
  dispatch(a.dtype, [&](auto s) { backward_impl<decltype(s)>(a, num_threads, isa); });
}

}  // namespace masked_linear
}  // namespace dqk
