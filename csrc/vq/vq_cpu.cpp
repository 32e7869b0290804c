// VQ CPU kernels: nearest code (a fused GEMM-argmin), sampling by inverse CDF, EMA
// statistics. No N x K buffer: extra memory is O(N + K) plus fixed per-thread tiles.
//
// Score engine (nearest and sample): the GEMM engine of common/cpu_gemm.h in register
// mode. The score of code k for row z is
//   s_k = |e_k|^2 - 2 z.e_k      (so |z - e_k|^2 = |z|^2 + s_k)
// i.e. C = E (-2 Z)^T + |e|^2 with the engine's A = the codebook (M = K codes, broadcast),
// B = -2 z (N = the rows, in vector lanes) and the reduction over D in one block. Work
// items are blocks of up to 256 rows; an item packs its rows transposed and scaled by -2
// (exact) into panels zt[d][TR] (TR rows in vector lanes). The codebook is read in place,
// in blocks of CB codes (~128 KiB and <= 1024 codes, L2-resident while every panel of
// the row block sweeps them; fp16 inputs, and bf16 ones off the AVX512-BF16 path, are
// converted to float per block into a per-thread buffer). The register tile is TR rows x
// NC codes: per d, the row vectors are loaded once and each code's element is broadcast
// (vfmadd231ps with an embedded broadcast), accumulators start at |e_k|^2 (float norms
// rounded from double sums), so each accumulator ends as the score vector of one code
// over TR rows. The epilogue then runs per code on those vectors:
//   nearest: per row lane, best score, its index (strict <: the first minimum) and the
//            second-best score, kept in registers while a panel sweeps a code block;
//   sample:  the scores are stored to a [CB][TR] buffer and consumed in double.
// Paths (picked at run time, tests force each), rows x codes per register tile: AVX-512
// 32 x 8 (fp32) / 16 x 8 (fp64); AVX2 8 x 8 / 4 x 8; SSE2 baseline 8 x 4 / 4 x 4;
// AVX512-BF16 for bf16 inputs: rows packed as bf16 pairs (-2 z_{2i}, -2 z_{2i+1}), code
// pairs broadcast from the tensor as 32-bit words, vdpbf16ps (exact bf16 products, fp32
// accumulation), 2 x 16 rows x 8 codes.
//
// Exactness of nearest. Every score carries |s_hat - s| <= g (|e|^2 + 2 |z||e|) + t,
// g = gamma_m = m u / (1 - m u) with m = D + 4 (D roundings of the sequential
// accumulation, the norm's rounding from double, slack), m = 2 D + 4 for vdpbf16ps (two
// roundings per pair at most) and for float64 (whose norms carry gamma_D themselves);
// t = 4 m tiny (1 + sqrt(D) (|z| + max|e|)) covers underflow, flush-to-zero and
// denormals-are-zero (vdpbf16ps, or a caller's FTZ/DAZ mode). With
// B = 2 g (max|e|^2 + 2 |z| max|e|) + 2 t, a row whose computed gap (second - best) is
// > B has a unique true minimum at the computed best. A closer row waits, with the
// threshold best + B, for a candidate sweep (once a panel of TR such rows has gathered in
// the thread, and at the end): the engine runs over all codes again for those rows and
// every code whose score is <= the threshold (the true argmin and every code tied with
// it are among them) is re-scored from explicit differences sum((z - e_k)^2) in double,
// the first minimum in code order winning: exact ties (duplicated codes) go to the
// lowest index. Rows too large for the float expansion, or with a NaN/inf best, are
// re-scored that way over all codes. sqdist = sum((z - e_best)^2) from explicit
// differences, accumulated in float (double for float64 inputs).
//
// sample: two sweeps (engine passes) of the codes per row block, d = max(|z|^2 + s, 0):
// (1) m = min d (NaN distances skipped) and Z = sum exp(-(d - m) / T) in double (rescaled
// per code block as m falls; a NaN weight counts as 0: code_weight); (2) cumulative weights in
// double in code order: the sorted targets u * Z go to the first code whose cumulative weight
// exceeds them, leftovers to the last code of positive weight. Distances and weights are computed
// over the panel's rows in lanes (a branch-free double exp that vectorises); the cumulative scan
// runs per row.
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
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/cpu_convert.h"
#include "../common/cpu_gemm.h"
#include "../common/cpu_types.h"
#include "vq.h"

namespace dqk {
namespace vq {
namespace {

using gemm::threads_for;

constexpr int64_t kRowBlock = 256;            // rows per work item (a multiple of every TR)
constexpr int64_t kCodeBlockBytes = 1 << 17;  // code block size in packed bytes
constexpr int64_t kMaxCodeBlock = 1024;       // and in codes

template <typename T>
DQK_ALWAYS_INLINE float to_f(T v) {
  return float(v);
}
template <>
DQK_ALWAYS_INLINE float to_f(Half v) {
  return to_float(v);
}
template <>
DQK_ALWAYS_INLINE float to_f(BFloat16 v) {
  return to_float(v);
}

template <typename T>
DQK_ALWAYS_INLINE double to_d(T v) {
  return double(to_f(v));
}
template <>
DQK_ALWAYS_INLINE double to_d(double v) {
  return v;
}

// ----------------------------------------------------------------------------- tiles

// The register tile of a path for storage type T: rows of z in the lanes (TR = NR), NC =
// MR codes broadcast. bf16 pairs on AVX512-BF16 for bf16 inputs.
template <int kIsa, typename T>
struct TileOf {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  using type = gemm::VecTile<Acc, gemm::kVecBytes<kIsa>, kIsa == kIsaAvx2 ? 1 : 2,
                             kIsa == kIsaGeneric ? 4 : 8>;
};
#if DQK_GEMM_X86
template <>
struct TileOf<kIsaAvx512Bf16, BFloat16> {
  using type = gemm::Bf16Tile<8>;
};
#endif

// packed steps of a row of D values (bf16 pairs: ceil(D / 2))
inline int64_t steps_of(const gemm::TileInfo& ti, int64_t D) { return (D + ti.KP - 1) / ti.KP; }

// Codes per block: ~kCodeBlockBytes of packed codes, <= kMaxCodeBlock, a multiple of NC.
inline int64_t code_block_size(const gemm::TileInfo& ti, int64_t D) {
  const int64_t per = steps_of(ti, D) * ti.pk_bytes;
  const int64_t cb = std::min<int64_t>(kMaxCodeBlock, kCodeBlockBytes / per) / ti.MR * ti.MR;
  return std::max<int64_t>(ti.MR, cb);
}

// -2 z as the tile's element (exact; bf16 pairs rounded from float, as -2 x is in bf16)
template <class P, typename T>
struct MinusTwo {
  DQK_ALWAYS_INLINE typename P::Elem operator()(T v) const {
    if constexpr (P::kBf16) return bf16_from_float(-2.0f * to_f(v)).bits;
    else return typename P::Acc(-2) * typename P::Acc(to_d(v));
  }
};

// Codes [kb, kb + nb) as the engine reads them: in place when the storage matches (lde
// entries per code), else converted into buf.
template <class P, typename T>
DQK_ALWAYS_INLINE gemm::AInPlace<P> code_block(const T* e, int64_t kb, int64_t nb, int64_t D,
                                               typename P::Pk* buf) {
  using Pk = typename P::Pk;
  const T* src = e + kb * D;
  if constexpr (P::kBf16) {
    const int64_t lde = (D + 1) / 2;
    if (D % 2 == 0) return gemm::AInPlace<P>{reinterpret_cast<const Pk*>(src), lde};
    for (int64_t k = 0; k < nb; ++k) {
      const uint16_t* row = reinterpret_cast<const uint16_t*>(src + k * D);
      Pk* out = buf + k * lde;
      for (int64_t s = 0; s < lde; ++s)
        out[s] = uint32_t(row[2 * s]) | (2 * s + 1 < D ? uint32_t(row[2 * s + 1]) << 16 : 0u);
    }
    return gemm::AInPlace<P>{buf, lde};
  } else if constexpr (std::is_same<T, Pk>::value) {
    (void)buf;
    return gemm::AInPlace<P>{src, D};
  } else {
    convert_run(src, buf, nb * D);
    return gemm::AInPlace<P>{buf, D};
  }
}

// ----------------------------------------------------------------------------- exact

typedef double D8 __attribute__((vector_size(64)));
typedef float F8 __attribute__((vector_size(32)));

// sum_d (zd[d] - e[d])^2 in double, in a fixed order (the same for every code)
template <typename T>
DQK_ALWAYS_INLINE double exact_sqdist(const double* zd, const T* e, int64_t D) {
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
DQK_ALWAYS_INLINE int64_t exact_argmin(const double* zd, const T* e, int64_t K, int64_t D) {
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
DQK_ALWAYS_INLINE Acc acc_sqdist(const T* z, const T* e, int64_t D) {
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
  const void* norms = nullptr;  // [K] Acc: |e_k|^2 rounded from double
  double emax = 0.0;            // max_k |e_k|^2 (double)
  // nearest
  int64_t* indices = nullptr;
  void* sqdist = nullptr;
  // sample
  const void* u = nullptr;
  double inv_t = 1.0;
  int64_t* out = nullptr;
};

// Byte offsets of the vq buffers in the op's part of a thread's workspace (64-byte
// aligned). The rows waiting for a candidate sweep are counted in the workspace header.
struct Ws {
  int64_t best, second, idx, ebuf, sbuf, wbuf, rowd, rowi, pn, pthr, pzd, pbest, pidx, bytes;
  Ws(const gemm::TileInfo& ti, int64_t D, int64_t CB) {
    auto up = [](int64_t v) { return (v + 63) / 64 * 64; };
    const int64_t TR = ti.NR, acc = ti.acc_bytes;
    int64_t o = 0;
    auto take = [&](int64_t n) {
      const int64_t at = o;
      o += up(n);
      return at;
    };
    best = take(kRowBlock * acc);                           // nearest: per row best score,
    second = take(kRowBlock * acc);                         // second best,
    idx = take(kRowBlock * acc);                            // index of the best (Acc-sized ints)
    ebuf = take(CB * steps_of(ti, D) * ti.pk_bytes);        // a converted code block
    sbuf = take(CB * TR * acc);                             // sample: scores,
    wbuf = take(CB * TR * int64_t(sizeof(double)));         // distances, weights
    rowd = take(4 * kRowBlock * int64_t(sizeof(double)));   // |z|^2, m, Z, cum
    rowi = take(2 * kRowBlock * int64_t(sizeof(int64_t)));  // next target, last code
    // rows waiting for the candidate sweep: row ids, thresholds, rows in double, exact
    // best distance and index
    pn = take(TR * int64_t(sizeof(int64_t)));
    pthr = take(TR * acc);
    pzd = take(TR * D * int64_t(sizeof(double)));
    pbest = take(TR * int64_t(sizeof(double)));
    pidx = take(TR * int64_t(sizeof(int64_t)));
    bytes = o;
  }
};

// a buffer of the vq part o of a workspace
template <typename X>
DQK_ALWAYS_INLINE X* buf(unsigned char* o, int64_t off) {
  return reinterpret_cast<X*>(o + off);
}

// scale of the float expansion above which a row is re-scored exactly (no overflow)
template <typename Acc>
constexpr double big_scale() {
  return sizeof(Acc) == 4 ? 0x1p100 : 0x1p1000;
}

template <typename T>
using OutOf = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <typename T>
DQK_ALWAYS_INLINE void finish_row(const Job<T>& j, int64_t n, int64_t k) {
  j.indices[n] = k;
  static_cast<OutOf<T>*>(j.sqdist)[n] = acc_sqdist<OutOf<T>>(j.z + n * j.D, j.e + k * j.D, j.D);
}

// What the three ops share: the codebook as the engine's A operand (read in place, or
// converted per code block), the job's rows as B, the workspace's buffers.
template <class P, typename T>
struct VqOp : gemm::OpBase {
  using Path = P;
  using Acc = typename P::Acc;
  using Pk = typename P::Pk;
  using V = typename P::V;
  using IdxT = typename std::conditional<sizeof(Acc) == 4, int32_t, int64_t>::type;
  using A = gemm::AInPlace<P>;
  static constexpr bool kBuffered = false, kPackA = false;
  static constexpr int TR = P::NR, MV = P::MV, L = P::L;

  const Job<T>& j;
  unsigned char* w;  // the thread's workspace (its header counts the waiting rows)
  unsigned char* o;  // its vq part, laid out by ws
  Ws ws;
  const Acc* norms;
  int64_t D, steps;

  VqOp(const Job<T>& job, unsigned char* wsp, const gemm::Layout& lay, int64_t CB)
      : j(job),
        w(wsp),
        o(wsp + lay.op),
        ws(gemm::info_of<P>(), job.D, CB),
        norms(static_cast<const Acc*>(job.norms)),
        D(job.D),
        steps((job.D + P::KP - 1) / P::KP) {}

  // B panel q of the item: its rows as -2 z
  DQK_ALWAYS_INLINE void pack_b(const gemm::Item& it, int64_t q, int64_t, int64_t, int64_t, int64_t,
                                Pk* dst) const {
    const int64_t r0 = it.n0 + q * TR;
    gemm::pack<P, TR>(dst, j.z + r0 * D, 1, D, std::min<int64_t>(TR, j.N - r0), D, steps,
                      gemm::KeepAll{}, MinusTwo<P, T>{});
  }

  DQK_ALWAYS_INLINE bool a_block(const gemm::Item&, int64_t m, int64_t mv, int64_t, int64_t,
                                 int64_t, int64_t, Pk*, A& a) const {
    a = code_block<P>(j.e, m, mv, D, buf<Pk>(o, ws.ebuf));
    return true;
  }
};

// ----------------------------------------------------------------------------- nearest

// Per-row state of nearest over the codes swept so far, for one panel of TR rows.
template <class P>
struct NearestEp {
  using V = typename P::V;
  using Acc = typename P::Acc;
  using IdxT = typename std::conditional<sizeof(Acc) == 4, int32_t, int64_t>::type;
  typedef IdxT IV __attribute__((vector_size(sizeof(V))));
  const Acc* norms;
  V best[P::MV], second[P::MV];
  IV idx[P::MV];

  DQK_ALWAYS_INLINE void load(const Acc* b, const Acc* s, const IdxT* ix) {
    for (int v = 0; v < P::MV; ++v) {
      memcpy(&best[v], b + v * P::L, sizeof(V));
      memcpy(&second[v], s + v * P::L, sizeof(V));
      memcpy(&idx[v], ix + v * P::L, sizeof(IV));
    }
  }
  DQK_ALWAYS_INLINE void store(Acc* b, Acc* s, IdxT* ix) const {
    for (int v = 0; v < P::MV; ++v) {
      memcpy(b + v * P::L, &best[v], sizeof(V));
      memcpy(s + v * P::L, &second[v], sizeof(V));
      memcpy(ix + v * P::L, &idx[v], sizeof(IV));
    }
  }
  DQK_ALWAYS_INLINE Acc init(int64_t k) const { return norms[k]; }
  // scores s[MV] of code k over the panel's rows
  DQK_ALWAYS_INLINE void operator()(int64_t k, const V* s) {
    const IV kv = IV{} + IdxT(k);
#pragma GCC unroll 4
    for (int v = 0; v < P::MV; ++v) {
      const auto lt = s[v] < best[v];
      const V cand = lt ? best[v] : s[v];  // what is not the best is a second candidate
      second[v] = cand < second[v] ? cand : second[v];
      best[v] = lt ? s[v] : best[v];
      idx[v] = lt ? kv : idx[v];
    }
  }
};

// Candidate sweep epilogue: codes whose score is <= the row's threshold (best + bound)
// are re-scored exactly; the first exact minimum (in code order) wins.
template <class P, typename T>
struct CandEp {
  using V = typename P::V;
  using Acc = typename P::Acc;
  const Acc* norms;
  V thr[P::MV];
  const double* zd;  // [TR][D] rows in double
  const T* e;
  int64_t D;
  double* xbest;  // [TR]
  int64_t* xidx;  // [TR]
  DQK_ALWAYS_INLINE Acc init(int64_t k) const { return norms[k]; }
  DQK_ALWAYS_INLINE void operator()(int64_t k, const V* s) {
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

// The candidate sweep of the rows waiting in the workspace: one panel, all codes.
template <class P, typename T>
struct CandOp : VqOp<P, T> {
  using Base = VqOp<P, T>;
  using Base::Base, Base::o, Base::ws, Base::TR;
  using typename Base::Pk;

  DQK_ALWAYS_INLINE void pack_b(const gemm::Item& it, int64_t, int64_t, int64_t, int64_t, int64_t,
                                Pk* dst) const {
    const int64_t* pn = buf<int64_t>(o, ws.pn);
    for (int64_t r = 0; r < it.ncols; ++r)
      gemm::pack_lane<P, TR>(dst + r, this->j.z + pn[r] * this->D, 1, this->D, this->steps,
                             gemm::KeepLane<gemm::KeepAll>{gemm::KeepAll{}, r}, MinusTwo<P, T>{});
    gemm::zero_lanes<P, TR>(dst, it.ncols, this->steps);
  }
  DQK_ALWAYS_INLINE CandEp<P, T> panel(const gemm::Item& it, int64_t, int64_t, int) const {
    using Acc = typename P::Acc;
    CandEp<P, T> ep;
    ep.norms = this->norms;
    const Acc* pthr = buf<Acc>(o, ws.pthr);
    for (int v = 0; v < P::MV; ++v) memcpy(&ep.thr[v], pthr + v * P::L, sizeof(ep.thr[v]));
    ep.zd = buf<double>(o, ws.pzd);
    ep.e = this->j.e;
    ep.D = this->D;
    ep.xbest = buf<double>(o, ws.pbest);
    ep.xidx = buf<int64_t>(o, ws.pidx);
    return ep;
  }
  DQK_ALWAYS_INLINE void panel_end(const gemm::Item&, int64_t, int64_t, int64_t, int,
                                   CandEp<P, T>&) const {}
  DQK_ALWAYS_INLINE void end(const gemm::Item&, typename P::Acc*, int64_t) const {}
};

// Sweep all codes for the waiting rows (one panel) and finish them.
template <class P, typename T>
DQK_ALWAYS_INLINE void nearest_flush(const Job<T>& j, const gemm::Grid& g, const gemm::Layout& lay,
                                     unsigned char* w) {
  using Acc = typename P::Acc;
  int64_t& count = *reinterpret_cast<int64_t*>(w);
  if (count == 0) return;
  CandOp<P, T> op(j, w, lay, g.MC);
  Acc* pthr = buf<Acc>(op.o, op.ws.pthr);
  for (int64_t r = count; r < P::NR; ++r) pthr[r] = -std::numeric_limits<Acc>::infinity();
  gemm::Grid gc = g;  // one item: one panel of the waiting rows by all codes
  gc.N = count;
  gc.G = 1;
  gemm::run_item<P>(op, gc, lay, 0, w);
  const int64_t* pn = buf<int64_t>(op.o, op.ws.pn);
  const int64_t* pidx = buf<int64_t>(op.o, op.ws.pidx);
  for (int64_t r = 0; r < count; ++r) finish_row(j, pn[r], pidx[r]);
  count = 0;
}

// What a path's clone does: a nearest row block, the candidate sweep of the rows
// waiting in the workspace (item unused), or a sampling row block.
enum Op { kNearest, kFlush, kSample };

// A path's clone (Body below), for the candidate sweep from within a nearest item.
template <typename T>
using CloneFn = void (*)(const Job<T>&, const gemm::Grid&, const gemm::Layout&, int, int64_t,
                         unsigned char*);

template <class P, typename T>
struct NearestOp : VqOp<P, T> {
  using Base = VqOp<P, T>;
  using Base::Base, Base::o, Base::ws, Base::TR;
  using typename Base::Acc;
  using typename Base::IdxT;
  const gemm::Grid* grid = nullptr;
  const gemm::Layout* lay = nullptr;
  CloneFn<T> flush = nullptr;  // this path's clone, called with kFlush

  DQK_ALWAYS_INLINE bool begin(const gemm::Item& it) {
    Acc* best = buf<Acc>(o, ws.best);
    Acc* second = buf<Acc>(o, ws.second);
    IdxT* idx = buf<IdxT>(o, ws.idx);
    for (int64_t r = 0; r < it.pans * TR; ++r) {
      best[r] = second[r] = std::numeric_limits<Acc>::infinity();
      idx[r] = 0;
    }
    return true;
  }
  DQK_ALWAYS_INLINE NearestEp<P> panel(const gemm::Item&, int64_t q, int64_t, int) const {
    NearestEp<P> ep;
    ep.norms = this->norms;
    ep.load(buf<Acc>(o, ws.best) + q * TR, buf<Acc>(o, ws.second) + q * TR,
            buf<IdxT>(o, ws.idx) + q * TR);
    return ep;
  }
  DQK_ALWAYS_INLINE void panel_end(const gemm::Item&, int64_t q, int64_t, int64_t, int,
                                   NearestEp<P>& ep) const {
    ep.store(buf<Acc>(o, ws.best) + q * TR, buf<Acc>(o, ws.second) + q * TR,
             buf<IdxT>(o, ws.idx) + q * TR);
  }

  // Screen each row with the rounding bound. Close rows wait (one panel of them) for a
  // candidate sweep; rows beyond the float expansion are re-scored over all codes.
  DQK_ALWAYS_INLINE void end(const gemm::Item& it, Acc*, int64_t) const {
    const Job<T>& j = this->j;
    const int64_t D = j.D, K = j.K;
    const Acc* best = buf<Acc>(o, ws.best);
    const Acc* second = buf<Acc>(o, ws.second);
    const IdxT* idx = buf<IdxT>(o, ws.idx);
    constexpr double u = sizeof(Acc) == 4 ? 0x1p-24 : 0x1p-53;
    const double m = double(P::kBf16 || sizeof(Acc) == 8 ? 2 * D + 4 : D + 4);
    const double gamma = m * u / (1.0 - m * u);
    const double tiny = 4.0 * m * double(std::numeric_limits<Acc>::min());
    const double sqrt_d = sqrt(double(D)), emax_sqrt = sqrt(j.emax);
    unsigned char* w = this->w;
    int64_t& count = *reinterpret_cast<int64_t*>(w);
    int64_t* pn = buf<int64_t>(o, ws.pn);
    Acc* pthr = buf<Acc>(o, ws.pthr);
    double* pzd = buf<double>(o, ws.pzd);
    double* pbest = buf<double>(o, ws.pbest);
    int64_t* pidx = buf<int64_t>(o, ws.pidx);
    for (int64_t r = 0; r < it.ncols; ++r) {
      const int64_t n = it.n0 + r;
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
        const double t = b + bound;  // threshold, rounded up to Acc
        Acc ta = Acc(t);
        if (double(ta) < t) ta = std::nextafter(ta, std::numeric_limits<Acc>::infinity());
        pn[count] = n;
        pthr[count] = ta;
        pbest[count] = std::numeric_limits<double>::infinity();
        pidx[count] = int64_t(idx[r]);
        if (++count == TR) flush(j, *grid, *lay, kFlush, 0, w);
      }
    }
  }
};

// ----------------------------------------------------------------------------- sample

// exp(x) for x <= 0 (NaN stays NaN), within 1 ulp of libm and branch-free, so that
// loops over lanes vectorise: Cody-Waite reduction by ln 2, Taylor polynomial to r^13
// (|r| <= ln2 / 2: truncation below 5e-18), 2^n as two normal factors (denormal results
// and 0 below about -745 come out right).
DQK_ALWAYS_INLINE double exp_nonpos(double x) {
  const double xc = x < -746.0 ? -746.0 : x;
  const double magic = 0x1.8p52;  // adding it rounds to an integer
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

// The weight exp(x) of a code, x = -(d - m) / T: 0 where x is NaN (a NaN distance, or an
// infinite one against an infinite minimum or a 1/T that rounded to 0), so that such a code
// is never drawn (the NaN rule of vq_nearest); branch-free (a select).
DQK_ALWAYS_INLINE double code_weight(double x) { return x <= 0.0 ? exp_nonpos(x) : 0.0; }

// Stores the scores of codes [kb, kb + nb) over a panel into buf[k - kb][TR].
template <class P>
struct StoreEp {
  using Acc = typename P::Acc;
  const Acc* norms;
  Acc* buf;
  int64_t kb;
  DQK_ALWAYS_INLINE Acc init(int64_t k) const { return norms[k]; }
  DQK_ALWAYS_INLINE void operator()(int64_t k, const typename P::V* s) {
    for (int v = 0; v < P::MV; ++v)
      memcpy(buf + (k - kb) * P::NR + v * P::L, &s[v], sizeof(typename P::V));
  }
};

// Two passes over the codes per row block: (0) m = min d and Z; (1) the cumulative
// weights against the sorted targets (see top).
template <class P, typename T>
struct SampleOp : VqOp<P, T> {
  using Base = VqOp<P, T>;
  using Base::Base, Base::o, Base::ws, Base::TR;
  using typename Base::Acc;

  int passes() const { return 2; }

  // per row of the block: |z|^2, m, Z, cumulative weight; next target, last code
  struct RowsState {
    double *zn, *mn, *Z, *cum;
    int64_t *next, *last;
  };
  DQK_ALWAYS_INLINE RowsState rows_state() const {
    double* d = buf<double>(o, ws.rowd);
    int64_t* i = buf<int64_t>(o, ws.rowi);
    return RowsState{d, d + kRowBlock, d + 2 * kRowBlock, d + 3 * kRowBlock, i, i + kRowBlock};
  }

  DQK_ALWAYS_INLINE bool begin(const gemm::Item& it) {
    const Job<T>& j = this->j;
    auto [zn, mn, Z, cum, next, last] = rows_state();
    for (int64_t r = 0; r < it.pans * TR; ++r) {  // padding lanes too (their values unused)
      double s = 0.0;
      if (r < it.ncols) {
        const T* zr = j.z + (it.n0 + r) * j.D;
        for (int64_t d = 0; d < j.D; ++d) s += to_d(zr[d]) * to_d(zr[d]);
      }
      zn[r] = s;
      mn[r] = std::numeric_limits<double>::infinity();
      Z[r] = 0.0;
      cum[r] = 0.0;
      next[r] = 0;
      last[r] = 0;
    }
    return true;
  }
  DQK_ALWAYS_INLINE StoreEp<P> panel(const gemm::Item&, int64_t, int64_t kb, int) const {
    return StoreEp<P>{this->norms, buf<Acc>(o, ws.sbuf), kb};
  }
  // the scores of codes [kb, kb + nb) over panel q are in sbuf
  DQK_ALWAYS_INLINE void panel_end(const gemm::Item& it, int64_t q, int64_t kb, int64_t nb,
                                   int pass, StoreEp<P>&) const {
    const Job<T>& j = this->j;
    const int64_t S = j.S;
    const Acc* sbuf = buf<Acc>(o, ws.sbuf);
    double* wbuf = buf<double>(o, ws.wbuf);
    auto [zn, mn, Z, cum, next, last] = rows_state();
    const Acc* u = static_cast<const Acc*>(j.u);
    const double it_ = j.inv_t;
    const int64_t t0 = q * TR, rows = it.ncols, r0 = it.n0;
    // wbuf[k][lane] = d = max(|z|^2 + s, 0) of code kb + k and row t0 + lane
    for (int64_t k = 0; k < nb; ++k)
      for (int r = 0; r < TR; ++r) {
        const double d = zn[t0 + r] + double(sbuf[k * TR + r]);
        wbuf[k * TR + r] = d < 0.0 ? 0.0 : d;
      }
    if (pass == 0) {  // block minimum, rescale Z to it, add the block's weights
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
        for (int r = 0; r < TR; ++r) acc[r] += code_weight(-(wbuf[k * TR + r] - mb[r]) * it_);
      for (int r = 0; r < TR; ++r) {
        const double z0 = Z[t0 + r];
        const double kept = z0 > 0.0 ? z0 * exp_nonpos(-(mn[t0 + r] - mb[r]) * it_) : 0.0;
        Z[t0 + r] = kept + acc[r];
        mn[t0 + r] = mb[r];
      }
    } else {  // weights, then per row the cumulative sum against its targets
      for (int64_t k = 0; k < nb; ++k)
        for (int r = 0; r < TR; ++r)
          wbuf[k * TR + r] = code_weight(-(wbuf[k * TR + r] - mn[t0 + r]) * it_);
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
  // targets left over go to the last code of positive weight
  DQK_ALWAYS_INLINE void end(const gemm::Item& it, Acc*, int64_t) const {
    const int64_t S = this->j.S;
    const RowsState st = rows_state();
    const int64_t *next = st.next, *last = st.last;
    for (int64_t r = 0; r < it.ncols; ++r) {
      int64_t* o = this->j.out + (it.n0 + r) * S;
      for (int64_t s = next[r]; s < S; ++s) o[s] = last[r];
    }
  }
};

// ----------------------------------------------------------------------------- dispatch

template <typename T>
struct Body;

template <typename T>
using Kernel = gemm::Clones<Body<T>, const Job<T>&, const gemm::Grid&, const gemm::Layout&, int,
                            int64_t, unsigned char*>;

template <typename T>
struct Body {
  template <int kIsa>
  static constexpr bool runs() {
    return DQK_GEMM_X86 || kIsa == kIsaGeneric;
  }
  template <int kIsa>
  using Tile = typename TileOf<kIsa, T>::type;
  template <int kIsa>
  static DQK_ALWAYS_INLINE void run(const Job<T>& j, const gemm::Grid& g, const gemm::Layout& lay,
                                    int op, int64_t item, unsigned char* w) {
    using P = Tile<kIsa>;
    if (op == kNearest) {
      NearestOp<P, T> o(j, w, lay, g.MC);
      o.grid = &g;
      o.lay = &lay;
      o.flush = Kernel<T>::fn(kIsa);
      gemm::run_item<P>(o, g, lay, item, w);
    } else if (op == kFlush) {
      nearest_flush<P, T>(j, g, lay, w);
    } else {
      SampleOp<P, T> o(j, w, lay, g.MC);
      gemm::run_item<P>(o, g, lay, item, w);
    }
  }
};

// |e_k|^2 in double, rounded to Acc, and the maximum (double)
template <typename T, typename Acc>
double code_norms(const T* e, int64_t K, int64_t D, Acc* out, int nt) {
  double emax = 0.0;
  nt = threads_for(double(K) * double(D), nt, K);
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

// Run op on the job's rows in blocks of up to kRowBlock rows (the engine's work items)
// over the threads (nearest: then each thread's waiting rows). Blocks shrink (to
// multiples of 32 rows, a multiple of every TR) so that small batches still give each
// thread several. A row's results do not depend on its block.
template <typename T>
void run_rows(const Job<T>& j, int op, int isa, int nt) {
  const auto fn = Kernel<T>::fn(isa);
  const gemm::TileInfo ti = Kernel<T>::info(isa);
  nt = threads_for(double(j.N) * double(j.K) * double(j.D), nt, (j.N + 31) / 32);
  int64_t rb = kRowBlock;
  if (nt > 1) rb = std::min(kRowBlock, std::max<int64_t>(32, (j.N / (4 * nt) + 31) / 32 * 32));
  gemm::Grid g;  // C = codes x rows, D the reduction in one block
  g.M = j.K;
  g.N = j.N;
  g.K = j.D;
  g.MR = ti.MR;
  g.NR = ti.NR;
  g.KP = ti.KP;
  g.CH = j.K;
  g.G = rb / ti.NR;
  g.MC = code_block_size(ti, j.D);
  g.KC = steps_of(ti, j.D) * ti.KP;
  const gemm::Layout lay(ti, g, false, false, Ws(ti, j.D, g.MC).bytes);
  gemm::parallel_items(
      nt, g.items(), nullptr, lay.bytes,
      [&](int64_t item, unsigned char* w) { fn(j, g, lay, op, item, w); },
      [&](unsigned char* w) {
        if (op == kNearest) fn(j, g, lay, kFlush, 0, w);
      });
}

// Completes j (its op's own fields already set) with the sizes, the inputs and the squared
// code norms that nearest and sample share, and runs op over its rows.
template <typename T>
void run_with_norms(Job<T>& j, int64_t N, int64_t K, int64_t D, const void* z, const void* codebook,
                    int op, int isa, int nt) {
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  j.N = N;
  j.K = K;
  j.D = D;
  j.z = static_cast<const T*>(z);
  j.e = static_cast<const T*>(codebook);
  std::vector<Acc> norms(static_cast<size_t>(K));
  j.emax = code_norms(j.e, K, D, norms.data(), nt);
  j.norms = norms.data();
  run_rows(j, op, isa, nt);
}

template <typename T>
void nearest_impl(const NearestArgs& a, int nt, int isa) {
  isa = pick_cpu_isa(isa, "vq cpu");
  if (!std::is_same<T, double>::value && a.K > int64_t(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument("vq_nearest cpu: more than 2^31 - 1 codes");
  Job<T> j;
  j.indices = a.indices;
  j.sqdist = a.sqdist;
  run_with_norms(j, a.N, a.K, a.D, a.z, a.codebook, kNearest, isa, nt);
}

template <typename T>
void sample_impl(const SampleArgs& a, int nt, int isa) {
  isa = pick_cpu_isa(isa, "vq cpu");
  Job<T> j;
  j.S = a.S;
  j.u = a.u;
  j.inv_t = a.inv_temperature;
  j.out = a.out;
  run_with_norms(j, a.N, a.K, a.D, a.z, a.codebook, kSample, isa, nt);
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
  nt = threads_for(double(M) * double(D) + double(K) * double(D), nt, K);
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
      for (int64_t d = 0; d < D; ++d) row[d] = St(double(row[d]) * decay + alpha * acc[size_t(d)]);
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
    if (a.state_dtype == DType::kFloat64) ema_impl<decltype(t), double>(a, num_threads);
    else ema_impl<decltype(t), float>(a, num_threads);
  });
}

}  // namespace vq
}  // namespace dqk
