// The CPU GEMM engine of the kernels that are a matrix product plus an epilogue
// (masked_linear forward and backward, vq_nearest, vq_sample; the RBM and sigmoid belief
// network kernels next). A kernel is this engine plus an "op": where the operands come
// from and what happens to the finished products.
//
//   C[m, n] = init + sum_k A[m, k] B[k, n]        m < M, n < N, k < K
//
// Register tile. MR rows of A by NR = MV * L columns of B, held in MR x MV vector
// registers of L lanes: the columns of B lie in the lanes, each element of A is broadcast
// (one fused multiply-add per vector and k; the elements of A are read straight from
// memory by the FMA's embedded broadcast). B is read from a packed panel [steps][NR]; A
// from a packed block [steps][MR] (APacked) or in place, row i at p + i * ld (AInPlace).
// For bf16 inputs on AVX512-BF16 a packed entry holds a pair of consecutive k (low half
// the even k; KP = 2) and the tile runs vdpbf16ps (two exact bf16 products added to the
// fp32 accumulator per lane). Tiles are VecTile<Acc, vector bytes, MV, MR> and
// Bf16Tile<MR>; each kernel picks its shape per instruction set.
//
// Packing. pack<P, W>() writes a panel [steps][W] (W = NR for B, MR for A; entry (s, w)
// holds k = KP s .. KP s + KP - 1 of lane w) from a strided tensor (element (k, w) at
// src[k * sk + w * sw]), a keep(k, w) predicate (the mask: a masked element is packed as
// 0 and never read) and a conversion of the stored value (AsIs; vq: -2 z). Lanes and k
// past the valid ones are zeros and are never read. It runs lane by lane where the
// source is contiguous along k, else k by k, with unit-stride loops where the stride is 1
// (raw bf16 pairs: one 32-bit load). pack_lane() packs one lane (a gathered row),
// pack_a() an A block in MR-row tiles.
//
// Blocking and the driver (run_item). C is cut into work items of CH rows of A by G
// panels of B. An item runs K in blocks of KC: it packs its G panels once per block
// (each panel only over the k range [lo, hi) its op says can be nonzero: skipping), then
// sweeps its A rows in sub-blocks of MC (the op packs or converts them, or reads them in
// place), panel-major: a packed B panel stays in L1 while the A tiles stream by. Items
// run on OpenMP threads (parallel_items, dynamic schedule, in the order the kernel gives,
// e.g. largest first), each thread with one 64-byte aligned workspace (Layout: a zeroed
// 64-byte header for the kernel's per-thread state, the C buffer, packed A and B, then
// the op's own bytes). Every C element is summed by one thread in a fixed order, so the
// results do not depend on the thread count. plan() is the default blocking.
//
// The epilogue. Two modes, chosen by Op::kBuffered:
//   buffered  (kBuffered = true) C accumulates, across the K blocks, in the item's
//             buffer (rows of stride G * NR, starting at 0); when the item is done the
//             op's end(item, c, ldc) gets the finished rows: add a bias, mask, apply a
//             nonlinearity, draw, reduce, convert and store (masked_linear, RBM, SBN).
//   registers (kBuffered = false) K runs whole in one block (KC >= K) and each finished
//             register tile goes to the epilogue object that op.panel() returns for one
//             (panel, A sub-block): ep.init(m) is the value every accumulator of A row m
//             starts from, ep(m, acc) gets row m's MV vectors over the panel's NR
//             columns; op.panel_end() stores what the epilogue kept (vq: a per-column
//             running argmin kept in registers; the scores of a code block for sampling).
//   Both call op.end(item, c, ldc) at the end of the item (c null for registers).
//
// What an op provides (OpBase gives the defaults marked *):
//   using Path = the tile (VecTile / Bf16Tile); using A = APacked<Path> / AInPlace<Path>
//   static constexpr bool kBuffered, kPackA (a_block packs into the engine's A buffer)
//   void pack_b(item, q, k0, lo, hi, kc, Pk* dst)   B panel q of the item (columns
//        [n0 + q NR, +NR)), k in [k0 + lo, k0 + hi): pack<Path, NR>(...)
//   bool a_block(item, m, mv, k0, klo, khi, kc, Pk* apack, A& a)   A rows [m, m + mv),
//        k in [k0 + klo, k0 + khi); false: no tile of it is needed
//   void end(item, Acc* c, int64_t ldc)
//   * int passes()            sweeps of each item (vq_sample: two)
//   * bool begin(item)        false: the item computes nothing (all masked); end runs
//   * void k_range(item, q, k0, kc, lo, hi)   narrow [lo, hi) (starts [0, kc)) to the
//        rows of panel q's K block that can be nonzero; empty: the panel is skipped
//   * bool tile_live(item, t, q)   buffered: must A tile t (item-relative) times panel q
//        run? (a tile that does not run stays 0)
//   registers only: Ep panel(item, q, m, pass) and panel_end(item, q, m, mv, pass, ep)
//   The register-mode sweep of one panel (Sweep) is a separate small function per
//   instruction set, so that the tile loop keeps its strides in registers.
//
// Instruction-set clones. A kernel's body is a struct with template <int kIsa> static
// run(args...) (always inline), Tile<kIsa> and runs<kIsa>(); Clones<Body, Args...>
// compiles run once per path (generic x86-64, x86-64-v3 = AVX2, x86-64-v4 = AVX-512,
// v4 + avx512bf16; the last is the AVX-512 clone where the tile is the same) with GCC
// target attributes, the engine inlined into it, and holds the clones in a table filled
// at compile time. pick_cpu_isa (cpu_isa.h; the CPU is asked once) gives the path a call
// takes: the best one, or the one a test forces through the kernels' isa arguments;
// Clones::fn(isa) and Clones::info(isa) are then one table look-up. The engine's
// functions are always inlined: none of its vector code is compiled for the baseline
// alone.
//
// A new kernel = engine + epilogue, e.g. h = sigmoid(v W + c) (float, contiguous):
//
//   struct Sig { const float *v, *w, *c; float* h; int64_t M, N, K; };
//   template <class P> struct SigmoidOp : gemm::OpBase {
//     using Path = P; using A = gemm::APacked<P>;
//     static constexpr bool kBuffered = true, kPackA = true;
//     const Sig& s;
//     explicit SigmoidOp(const Sig& sig) : s(sig) {}
//     void pack_b(const gemm::Item& it, int64_t q, int64_t k0, int64_t lo, int64_t hi,
//                 int64_t kc, float* dst) const {   // B = W: k strided by N, n in lanes
//       const int64_t n = it.n0 + q * P::NR;
//       gemm::pack<P, P::NR>(dst, s.w + (k0 + lo) * s.N + n, s.N, 1,
//                            std::min<int64_t>(P::NR, s.N - n), std::min(hi, kc) - lo, hi - lo);
//     }
//     bool a_block(const gemm::Item&, int64_t m, int64_t mv, int64_t k0, int64_t klo,
//                  int64_t khi, int64_t kc, float* ap, A& a) const {   // A = v
//       return gemm::pack_a<P>(ap, s.v + m * s.K + k0 + klo, s.K, 1, mv,
//                              std::min(khi, kc) - klo, khi - klo, a);
//     }
//     void end(const gemm::Item& it, float* cb, int64_t ldc) const {   // the epilogue
//       for (int64_t r = 0; r < it.mrows; ++r)
//         for (int64_t j = 0; j < it.ncols; ++j)
//           s.h[(it.m0 + r) * s.N + it.n0 + j] =
//               1.f / (1.f + expf(-(cb[r * ldc + j] + s.c[it.n0 + j])));
//     }
//   };
//   struct SigBody {   // the op on each instruction set's tile
//     template <int kIsa> static constexpr bool runs() { return DQK_GEMM_X86 || kIsa == 1; }
//     template <int kIsa> using Tile = gemm::VecTile<float, gemm::kVecBytes<kIsa>, 2, 4>;
//     template <int kIsa> static DQK_ALWAYS_INLINE void run(const Sig& s,
//         const gemm::Grid& g, const gemm::Layout& lay, int64_t item, unsigned char* ws) {
//       SigmoidOp<Tile<kIsa>> op(s);
//       gemm::run_item<Tile<kIsa>>(op, g, lay, item, ws);
//     }
//   };
//   void sigmoid_linear_cpu(const Sig& s, int nt, int isa) {
//     using K = gemm::Clones<SigBody, const Sig&, const gemm::Grid&, const gemm::Layout&,
//                            int64_t, unsigned char*>;
//     isa = pick_cpu_isa(isa, "sigmoid_linear cpu");
//     const auto fn = K::fn(isa);
//     const gemm::Grid g = gemm::plan(s.M, s.N, s.K, K::info(isa), nt);
//     const gemm::Layout lay(K::info(isa), g, true, true, 0);
//     gemm::parallel_items(nt, g.items(), nullptr, lay.bytes,
//                          [&](int64_t i, unsigned char* w) { fn(s, g, lay, i, w); });
//   }
#pragma once

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cpu_isa.h"
#include "cpu_types.h"
#include "macros.h"

#ifndef DQK_ALWAYS_INLINE
#if defined(__GNUC__)
#define DQK_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DQK_ALWAYS_INLINE inline
#endif
#endif

// Instruction-set targets of the clones (GCC on x86-64; elsewhere only the generic path)
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DQK_GEMM_X86 1
#define DQK_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define DQK_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define DQK_TARGET_AVX512BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))
#include <immintrin.h>
#else
#define DQK_GEMM_X86 0
#endif

// The vector types below pass through always-inline functions only (no ABI is involved)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace dqk {
namespace gemm {

// ----------------------------------------------------------------------------- threads

// Threads worth waking for `work` multiply-adds (or element copies) split into `items`:
// a parallel region costs microseconds, and on a busy machine a descheduled worker costs
// a time slice.
inline int threads_for(double work, int nt, int64_t items = std::numeric_limits<int64_t>::max()) {
  const double useful = work / double(1 << 20);
  int t = useful < 2.0 ? 1 : (useful < double(nt) ? int(useful) : nt);
  if (int64_t(t) > items) t = int(items);
  return t < 1 ? 1 : t;
}

// A 64-byte aligned heap buffer.
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

// Bytes at the start of every thread's workspace, zeroed before its first item: the
// kernel's per-thread state (e.g. vq's count of rows waiting for a candidate sweep).
constexpr int64_t kWsHeader = 64;

// Runs item(i, ws) for i in [0, n) (order[i] when order is given) on nt threads, dynamic
// schedule, each thread with its own workspace of ws_bytes; then thread_end(ws) on each.
template <class ItemF, class EndF>
void parallel_items(int nt, int64_t n, const int64_t* order, int64_t ws_bytes, ItemF&& item,
                    EndF&& thread_end) {
#pragma omp parallel num_threads(nt)
  {
    AlignedBuf buf{static_cast<size_t>(std::max(ws_bytes, kWsHeader))};
    unsigned char* ws = static_cast<unsigned char*>(buf.p);
    memset(ws, 0, kWsHeader);
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) item(order ? order[i] : i, ws);
    thread_end(ws);
  }
}

template <class ItemF>
void parallel_items(int nt, int64_t n, const int64_t* order, int64_t ws_bytes, ItemF&& item) {
  parallel_items(nt, n, order, ws_bytes, item, [](unsigned char*) {});
}

// ----------------------------------------------------------------------------- tiles

// Vector register bytes of a path.
template <int kIsa>
constexpr int kVecBytes = kIsa >= kIsaAvx512 ? 64 : (kIsa == kIsaAvx2 ? 32 : 16);

// A float/double register tile: MR rows of A by MV vectors of L lanes (kBytes each).
// Packed entries are Acc values, one k each.
template <typename AccT, int kBytes, int kMV, int kMR>
struct VecTile {
  using Acc = AccT;
  using Pk = AccT;    // a packed entry
  using Elem = AccT;  // what a packing source gives per element
  typedef AccT V __attribute__((vector_size(kBytes)));
  using VB = V;  // a vector of packed B entries
  static constexpr int L = kBytes / int(sizeof(AccT)), MV = kMV, NR = L * kMV, MR = kMR;
  static constexpr int KP = 1;
  static constexpr bool kBf16 = false;
  // the clone whose instruction set the tile needs
  static constexpr int kIsa = kBytes >= 64 ? kIsaAvx512 : (kBytes == 32 ? kIsaAvx2 : kIsaGeneric);
  static DQK_ALWAYS_INLINE Pk pack(Elem e0, Elem) { return e0; }
  static DQK_ALWAYS_INLINE void madd(V& acc, const VB& b, Pk a) { acc += b * a; }
};

#if DQK_GEMM_X86
// AVX512-BF16: packed entries are bf16 pairs of consecutive k (low half: the even k),
// 16 float lanes, vdpbf16ps. Only in code compiled for kIsaAvx512Bf16.
template <int kMR>
struct Bf16Tile {
  using Acc = float;
  using Pk = uint32_t;
  using Elem = uint16_t;  // bf16 bits
  typedef float V __attribute__((vector_size(64)));
  typedef int32_t VB __attribute__((vector_size(64)));
  static constexpr int L = 16, MV = 2, NR = 32, MR = kMR, KP = 2;
  static constexpr bool kBf16 = true;
  static constexpr int kIsa = kIsaAvx512Bf16;
  static DQK_ALWAYS_INLINE Pk pack(Elem e0, Elem e1) { return uint32_t(e0) | uint32_t(e1) << 16; }
  // vdpbf16ps through its builtin: the intrinsic's own target attribute would refuse to
  // inline into this (target-less) template, the builtin expands in the clone it lands in
  static DQK_ALWAYS_INLINE void madd(V& acc, const VB& b, Pk a) {
    const VB av = VB{} + int32_t(a);
    acc = (V)__builtin_ia32_dpbf16ps_v16sf(acc, (__m512bh)b, (__m512bh)av);
  }
};
#endif

// A tile's shape as plain numbers, for code outside the clones (blocking, workspace).
struct TileInfo {
  int MR = 0, NR = 0, KP = 1, acc_bytes = 0, pk_bytes = 0;
};
template <class P>
constexpr TileInfo info_of() {
  return TileInfo{P::MR, P::NR, P::KP, int(sizeof(typename P::Acc)), int(sizeof(typename P::Pk))};
}

// A operand packed by pack_a: row tiles [steps][MR], one every `ts` entries. Only whole
// tiles run (rows past the block are zeros).
template <class P>
struct APacked {
  static constexpr bool kPadded = true;
  const typename P::Pk* p = nullptr;
  int64_t ts = 0;
  DQK_ALWAYS_INLINE typename P::Pk operator()(int i, int64_t s) const { return p[s * P::MR + i]; }
  DQK_ALWAYS_INLINE APacked at(int64_t i) const { return APacked{p + i / P::MR * ts, ts}; }
  DQK_ALWAYS_INLINE APacked skip(int64_t s) const { return APacked{p + s * P::MR, ts}; }
};

// A operand in place: row i's packed entries at p + i * ld. Partial tiles at the end.
template <class P>
struct AInPlace {
  static constexpr bool kPadded = false;
  const typename P::Pk* p = nullptr;
  int64_t ld = 0;
  DQK_ALWAYS_INLINE typename P::Pk operator()(int i, int64_t s) const { return p[i * ld + s]; }
  DQK_ALWAYS_INLINE AInPlace at(int64_t i) const { return AInPlace{p + i * ld, ld}; }
  DQK_ALWAYS_INLINE AInPlace skip(int64_t s) const { return AInPlace{p + s, ld}; }
};

// One register tile of R (<= MR) rows of A: io.init(acc), acc[i][v] += a(i, s) * b[s][v]
// over the steps, io.finish(acc).
template <class P, int R, class A, class IO>
DQK_ALWAYS_INLINE void tile(const typename P::Pk* __restrict b, int64_t steps, const A& a, IO& io) {
  using V = typename P::V;
  using VB = typename P::VB;
  constexpr int MV = P::MV, L = P::L, NR = P::NR;
  V acc[R][MV];
  io.template init<R>(acc);
  for (int64_t s = 0; s < steps; ++s) {
    VB bv[MV];
#pragma GCC unroll 4
    for (int v = 0; v < MV; ++v) memcpy(&bv[v], b + s * NR + v * L, sizeof(VB));
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const typename P::Pk ai = a(i, s);
#pragma GCC unroll 4
      for (int v = 0; v < MV; ++v) P::madd(acc[i][v], bv[v], ai);
    }
  }
  io.template finish<R>(acc);
}

template <class P, int R, class A, class IO>
DQK_ALWAYS_INLINE void tail_tile(const typename P::Pk* b, int64_t steps, const A& a, int64_t r,
                                 IO& io) {
  if constexpr (R >= 1) {
    if (r == R) tile<P, R>(b, steps, a, io);
    else tail_tile<P, R - 1>(b, steps, a, r, io);
  }
}

// Rows [0, m) of A against one B panel: whole tiles, then (A in place) one partial tile.
// io_at(i) gives the IO of the tile starting at row i.
template <class P, class A, class IOAt>
DQK_ALWAYS_INLINE void strip(const typename P::Pk* b, int64_t steps, const A& a, int64_t m,
                             IOAt&& io_at) {
  constexpr int MR = P::MR;
  int64_t i = 0;
  for (; i + MR <= m; i += MR) {
    auto io = io_at(i);
    tile<P, MR>(b, steps, a.at(i), io);
  }
  if constexpr (!A::kPadded) {
    if (i < m) {
      auto io = io_at(i);
      tail_tile<P, MR - 1>(b, steps, a.at(i), m - i, io);
    }
  } else if (i < m) {  // padded rows: a whole tile
    auto io = io_at(i);
    tile<P, MR>(b, steps, a.at(i), io);
  }
}

// ----------------------------------------------------------------------------- packing

// Element sources of a packed panel: a strided tensor S* (element (k, w) at
// src[k * sk + w * sw]), a keep predicate (masked elements are packed as 0 without being
// read) and a conversion of a stored value to the tile's element (P::Elem).
struct KeepAll {
  static constexpr bool kAll = true;
  DQK_ALWAYS_INLINE bool operator()(int64_t, int64_t) const { return true; }
};

// The stored value itself (bf16: its bits, for the AVX512-BF16 tile).
struct AsIs {
  DQK_ALWAYS_INLINE float operator()(float v) const { return v; }
  DQK_ALWAYS_INLINE double operator()(double v) const { return v; }
  DQK_ALWAYS_INLINE uint16_t operator()(BFloat16 v) const { return v.bits; }
};

// keep(k, w) of one lane w, as pack_lane asks it
template <class Keep>
struct KeepLane {
  static constexpr bool kAll = Keep::kAll;
  const Keep& keep;
  int64_t w;
  DQK_ALWAYS_INLINE bool operator()(int64_t k) const { return keep(k, w); }
};

// Zeros in lanes [wv, W) of a panel [steps][W].
template <class P, int W>
DQK_ALWAYS_INLINE void zero_lanes(typename P::Pk* dst, int64_t wv, int64_t steps) {
  const typename P::Pk pz = P::pack(typename P::Elem(0), typename P::Elem(0));
  if (wv < W)
    for (int64_t s = 0; s < steps; ++s)
      for (int64_t w = wv; w < W; ++w) dst[s * W + w] = pz;
}

// One lane of a panel: d[s * W] packs elements k = KP s + e of col (stride sk along k)
// for k < nval (keep(k) false: 0), zeros up to steps = ceil(nval / KP).
template <class P, int W, typename S, class KeepK, class Conv>
DQK_ALWAYS_INLINE void pack_lane(typename P::Pk* __restrict d, const S* col, int64_t sk,
                                 int64_t nval, int64_t steps, KeepK keep, Conv conv) {
  using Pk = typename P::Pk;
  using E = typename P::Elem;
  constexpr bool kAll = KeepK::kAll;
  const E z = E(0);
  auto el = [&](int64_t k)
                DQK_LAMBDA_INLINE -> E { return (kAll || keep(k)) ? E(conv(col[k * sk])) : z; };
  auto el1 = [&](int64_t k) DQK_LAMBDA_INLINE -> E {  // unit stride
    return (kAll || keep(k)) ? E(conv(col[k])) : z;
  };
  if constexpr (P::KP == 1) {
    if (sk == 1)
      for (int64_t s = 0; s < nval; ++s) d[s * W] = el1(s);
    else
      for (int64_t s = 0; s < nval; ++s) d[s * W] = el(s);
  } else {
    const int64_t full = nval / 2;
    if constexpr (std::is_same<S, BFloat16>::value && std::is_same<Conv, AsIs>::value) {
      if (sk == 1) {  // raw bf16 pairs: one 32-bit load, masked halves cleared
        for (int64_t s = 0; s < full; ++s) {
          Pk pair;
          memcpy(&pair, col + 2 * s, sizeof(Pk));
          if (!kAll)
            pair &=
                (keep(2 * s) ? Pk(0xffffu) : Pk(0)) | (keep(2 * s + 1) ? Pk(0xffff0000u) : Pk(0));
          d[s * W] = pair;
        }
        if (full < steps) d[full * W] = P::pack(el1(2 * full), z);
        return;
      }
    }
    for (int64_t s = 0; s < full; ++s) d[s * W] = P::pack(el(2 * s), el(2 * s + 1));
    if (full < steps) d[full * W] = P::pack(el(2 * full), z);
  }
}

// Panel [steps][W]: entry (s, w) packs the elements k = KP s + e (e < KP) of lane w for
// w < wv and k < nval (keep(k, w) false: 0); zeros elsewhere; steps = ceil(nval / KP).
// The loops run lane by lane where the source is contiguous along k (|sk| <= |sw|), else
// k by k.
template <class P, int W, typename S, class Keep = KeepAll, class Conv = AsIs>
DQK_ALWAYS_INLINE void pack(typename P::Pk* __restrict dst, const S* src, int64_t sk, int64_t sw,
                            int64_t wv, int64_t nval, int64_t steps, Keep keep = Keep{},
                            Conv conv = Conv{}) {
  using E = typename P::Elem;
  constexpr bool kAll = Keep::kAll;
  const E z = E(0);
  if ((sk < 0 ? -sk : sk) <= (sw < 0 ? -sw : sw)) {
    for (int64_t w = 0; w < wv; ++w)
      pack_lane<P, W>(dst + w, src + w * sw, sk, nval, steps, KeepLane<Keep>{keep, w}, conv);
  } else {
    for (int64_t s = 0; s < steps; ++s) {
      typename P::Pk* d = dst + s * W;
      const int64_t k0 = P::KP * s, k1 = k0 + 1;
      const S* r0 = src + k0 * sk;
      const S* r1 = r0 + sk;
      auto el = [&](const S* r, int64_t k, int64_t w) DQK_LAMBDA_INLINE -> E {
        return (kAll || keep(k, w)) ? E(conv(r[w * sw])) : z;
      };
      auto el1 = [&](const S* r, int64_t k, int64_t w)
                     DQK_LAMBDA_INLINE -> E { return (kAll || keep(k, w)) ? E(conv(r[w])) : z; };
      if constexpr (P::KP == 1) {
        if (sw == 1)
          for (int64_t w = 0; w < wv; ++w) d[w] = el1(r0, k0, w);
        else
          for (int64_t w = 0; w < wv; ++w) d[w] = el(r0, k0, w);
      } else if (k1 < nval) {
        if (sw == 1)
          for (int64_t w = 0; w < wv; ++w) d[w] = P::pack(el1(r0, k0, w), el1(r1, k1, w));
        else
          for (int64_t w = 0; w < wv; ++w) d[w] = P::pack(el(r0, k0, w), el(r1, k1, w));
      } else {
        for (int64_t w = 0; w < wv; ++w) d[w] = P::pack(el(r0, k0, w), z);
      }
    }
  }
  zero_lanes<P, W>(dst, wv, steps);
}

// A rows [0, mv) of src (row i at src + i * sm, stride sk along k) packed into tiles of
// MR rows at ap (tile stride steps * MR entries; rows past mv are zeros); the accessor
// in a. Returns true.
template <class P, typename S, class Conv = AsIs>
DQK_ALWAYS_INLINE bool pack_a(typename P::Pk* ap, const S* src, int64_t sm, int64_t sk, int64_t mv,
                              int64_t nval, int64_t steps, APacked<P>& a, Conv conv = Conv{}) {
  constexpr int MR = P::MR;
  const int64_t ts = steps * MR;
  for (int64_t t = 0; t * MR < mv; ++t)
    pack<P, MR>(ap + t * ts, src + t * MR * sm, sk, sm, std::min<int64_t>(MR, mv - t * MR), nval,
                steps, KeepAll{}, conv);
  a = APacked<P>{ap, ts};
  return true;
}

// ----------------------------------------------------------------------------- blocking

// Sizes and blocking: C is M x N, K the reduction; work items of CH rows of A (a multiple
// of MR unless CH >= M) by G panels of NR columns; A sub-blocks of MC rows; K blocks of KC
// (a multiple of KP; >= K: one block).
struct Grid {
  int64_t M = 0, N = 0, K = 0;
  int64_t NR = 1, MR = 1, KP = 1;
  int64_t CH = 0, G = 0, MC = 0, KC = 0;
  int64_t panels() const { return (N + NR - 1) / NR; }
  int64_t groups() const { return (panels() + G - 1) / G; }
  int64_t items() const { return ((M + CH - 1) / CH) * groups(); }
};

// Most panels an item may hold (the driver keeps their k ranges on the stack).
constexpr int64_t kMaxPanels = 64;

// The default blocking for nt threads: KC = 256 entries, CH <= 1024 rows by G panels
// (G * NR ~ 256 columns), MC = 8 row tiles; while there are fewer than 3 items a thread,
// split the rows while chunks are large, then the panel groups, then the rows again.
inline Grid plan(int64_t M, int64_t N, int64_t K, const TileInfo& ti, int nt) {
  Grid g;
  g.M = M;
  g.N = N;
  g.K = K;
  g.MR = ti.MR;
  g.NR = ti.NR;
  g.KP = ti.KP;
  const int64_t MR = ti.MR, NR = ti.NR;
  const int64_t mpad = (M + MR - 1) / MR * MR;
  const int64_t npan = g.panels();
  g.KC = 256 * ti.KP;
  g.MC = std::min(8 * MR, mpad);
  g.G = std::min(std::max<int64_t>(1, 256 / NR), npan);
  g.CH = std::min<int64_t>(mpad, 1024 / MR * MR);
  auto half_rows = [&](int64_t ch) { return std::max(MR, (ch / 2 + MR - 1) / MR * MR); };
  while (g.items() < 3 * nt) {
    if (g.CH >= 512) g.CH = half_rows(g.CH);
    else if (g.G > 2) g.G = (g.G + 1) / 2;
    else if (g.CH > MR) g.CH = half_rows(g.CH);
    else if (g.G > 1) g.G = 1;
    else break;
  }
  g.MC = std::min(g.MC, g.CH);
  return g;
}

// Byte offsets in a thread's workspace (64-byte aligned): header, C buffer (buffered
// ops: CH x G NR accumulators), packed A (kPackA: MC rows), packed B (G panels), the op's.
// Made outside the parallel region: it checks the blocking (G <= kMaxPanels).
struct Layout {
  int64_t cbuf = 0, apack = 0, bpack = 0, op = 0, bytes = 0;
  Layout() = default;
  Layout(const TileInfo& ti, const Grid& g, bool buffered, bool pack_a, int64_t op_bytes) {
    if (g.G > kMaxPanels) throw std::invalid_argument("gemm: more than kMaxPanels per item");
    auto up = [](int64_t v) { return (v + 63) / 64 * 64; };
    int64_t o = kWsHeader;
    auto take = [&](int64_t n) {
      const int64_t at = o;
      o += up(n);
      return at;
    };
    const int64_t sk = g.KC / ti.KP;  // packed steps per K block
    const int64_t ch = (g.CH + ti.MR - 1) / ti.MR * ti.MR;
    const int64_t mc = (g.MC + ti.MR - 1) / ti.MR * ti.MR;
    cbuf = take(buffered ? ch * g.G * ti.NR * ti.acc_bytes : 0);
    apack = take(pack_a ? mc * sk * ti.pk_bytes : 0);
    bpack = take(g.G * sk * ti.NR * ti.pk_bytes);
    op = take(op_bytes);
    bytes = o;
  }
};

// ----------------------------------------------------------------------------- driver

// One work item: A rows [m0, m0 + mrows) by B columns [n0, n0 + ncols), pans panels.
struct Item {
  int64_t index = 0, m0 = 0, mrows = 0, n0 = 0, ncols = 0, pans = 0;
};

// The defaults of an op's optional hooks.
struct OpBase {
  int passes() const { return 1; }
  bool begin(const Item&) { return true; }
  void k_range(const Item&, int64_t, int64_t, int64_t, int64_t&, int64_t&) const {}
  bool tile_live(const Item&, int64_t, int64_t) const { return true; }
};

// Tile IO of buffered ops: the accumulators live in the C buffer between K blocks.
template <class P>
struct BufIO {
  typename P::Acc* c;
  int64_t ldc;
  template <int R>
  DQK_ALWAYS_INLINE void init(typename P::V (&acc)[R][P::MV]) const {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < P::MV; ++v) memcpy(&acc[i][v], c + i * ldc + v * P::L, sizeof(acc[i][v]));
  }
  template <int R>
  DQK_ALWAYS_INLINE void finish(typename P::V (&acc)[R][P::MV]) const {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < P::MV; ++v) memcpy(c + i * ldc + v * P::L, &acc[i][v], sizeof(acc[i][v]));
  }
};

// Tile IO of register ops: start from ep.init(row), hand each finished row to ep.
template <class P, class Ep>
struct RegIO {
  Ep& ep;
  int64_t m;  // the tile's first A row
  template <int R>
  DQK_ALWAYS_INLINE void init(typename P::V (&acc)[R][P::MV]) const {
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const typename P::Acc x = ep.init(m + i);
#pragma GCC unroll 4
      for (int v = 0; v < P::MV; ++v) acc[i][v] = typename P::V{} + x;
    }
  }
  template <int R>
  DQK_ALWAYS_INLINE void finish(typename P::V (&acc)[R][P::MV]) const {
    int64_t m0 = m;
#if defined(__GNUC__)
    // computed here, not before the tile loop: its row indices would hold vector
    // registers (GCC parks them there) through the loop and make it spill accumulators
    __asm__ volatile("" : "+r"(m0));
#endif
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) ep(m0 + i, acc[i]);
  }
};

// Register mode: rows [0, mv) of A (row m + i is the epilogue's row) against one packed
// B panel, out of line: a small function whose tile loop keeps its strides in registers
// (inlined into a whole work item, the tile loop spills them). Compiled for the tile's
// instruction set. The epilogue is copied in and out, so that it lives in registers.
template <class P, class A, class Ep>
struct Sweep {
  using Pk = typename P::Pk;
  static DQK_ALWAYS_INLINE void body(const Pk* b, int64_t steps, const A& a, int64_t mv, int64_t m,
                                     Ep& ep_io) {
    Ep ep = ep_io;
    strip<P>(b, steps, a, mv, [&](int64_t i) DQK_LAMBDA_INLINE { return RegIO<P, Ep>{ep, m + i}; });
    ep_io = ep;
  }
  __attribute__((noinline)) static void generic(const Pk* b, int64_t steps, A a, int64_t mv,
                                                int64_t m, Ep& ep) {
    body(b, steps, a, mv, m, ep);
  }
#if DQK_GEMM_X86
  DQK_TARGET_AVX2 __attribute__((noinline)) static void avx2(const Pk* b, int64_t steps, A a,
                                                             int64_t mv, int64_t m, Ep& ep) {
    body(b, steps, a, mv, m, ep);
  }
  DQK_TARGET_AVX512 __attribute__((noinline)) static void avx512(const Pk* b, int64_t steps, A a,
                                                                 int64_t mv, int64_t m, Ep& ep) {
    body(b, steps, a, mv, m, ep);
  }
  DQK_TARGET_AVX512BF16 __attribute__((noinline)) static void avx512bf16(const Pk* b, int64_t steps,
                                                                         A a, int64_t mv, int64_t m,
                                                                         Ep& ep) {
    body(b, steps, a, mv, m, ep);
  }
#endif
  static DQK_ALWAYS_INLINE void run(const Pk* b, int64_t steps, const A& a, int64_t mv, int64_t m,
                                    Ep& ep) {
#if DQK_GEMM_X86
    if constexpr (P::kIsa == kIsaAvx512Bf16) avx512bf16(b, steps, a, mv, m, ep);
    else if constexpr (P::kIsa == kIsaAvx512) avx512(b, steps, a, mv, m, ep);
    else if constexpr (P::kIsa == kIsaAvx2) avx2(b, steps, a, mv, m, ep);
    else generic(b, steps, a, mv, m, ep);
#else
    generic(b, steps, a, mv, m, ep);
#endif
  }
};

// Runs work item `index` of `op` (see the top of this file) in the workspace ws.
template <class P, class Op>
DQK_ALWAYS_INLINE void run_item(Op& op, const Grid& g, const Layout& lay, int64_t index,
                                unsigned char* ws) {
  using Acc = typename P::Acc;
  using Pk = typename P::Pk;
  constexpr int MR = P::MR, NR = P::NR, KP = P::KP;
  const int64_t npan = g.panels(), ngr = g.groups();
  Item it;
  it.index = index;
  const int64_t c = index / ngr, gi = index - c * ngr;
  it.m0 = c * g.CH;
  it.mrows = std::min(g.CH, g.M - it.m0);
  const int64_t pan0 = gi * g.G;
  it.pans = std::min(g.G, npan - pan0);
  it.n0 = pan0 * NR;
  it.ncols = std::min(it.pans * NR, g.N - it.n0);
  const int64_t GW = g.G * NR, SK = g.KC / KP;
  Acc* cbuf = Op::kBuffered ? reinterpret_cast<Acc*>(ws + lay.cbuf) : nullptr;
  Pk* apack = reinterpret_cast<Pk*>(ws + lay.apack);
  Pk* bpack = reinterpret_cast<Pk*>(ws + lay.bpack);
  if constexpr (Op::kBuffered) {
    const int64_t rows = (it.mrows + MR - 1) / MR * MR;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t n = 0; n < it.pans * NR; ++n) cbuf[r * GW + n] = Acc(0);
  }
  if (op.begin(it)) {
    int64_t lo[kMaxPanels] = {}, hi[kMaxPanels] = {};
    const int passes = op.passes();
    for (int pass = 0; pass < passes; ++pass) {
      for (int64_t k0 = 0; k0 < g.K; k0 += g.KC) {
        const int64_t kc = std::min(g.KC, g.K - k0);
        // each panel's rows [lo, hi) in this K block, widened to multiples of KP
        int64_t klo = kc, khi = 0;
        for (int64_t q = 0; q < it.pans; ++q) {
          int64_t l = 0, h = kc;
          op.k_range(it, q, k0, kc, l, h);
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
        // with one K block, later passes find the panels packed
        if (pass == 0 || g.KC < g.K)
          for (int64_t q = 0; q < it.pans; ++q)
            if (hi[q] > lo[q]) op.pack_b(it, q, k0, lo[q], hi[q], kc, bpack + q * SK * NR);
        for (int64_t mb = 0; mb < it.mrows; mb += g.MC) {
          const int64_t mv = std::min(g.MC, it.mrows - mb);
          typename Op::A a;
          if (!op.a_block(it, it.m0 + mb, mv, k0, klo, khi, kc, apack, a)) continue;
          // panel-major: a packed B panel stays in L1 while the A tiles stream by
          for (int64_t q = 0; q < it.pans; ++q) {
            if (hi[q] <= lo[q]) continue;
            const Pk* bq = bpack + q * SK * NR;
            const int64_t steps = (hi[q] - lo[q]) / KP;
            const auto aq = a.skip((lo[q] - klo) / KP);
            if constexpr (Op::kBuffered) {
              for (int64_t i = 0; i < mv; i += MR) {
                if (!op.tile_live(it, (mb + i) / MR, q)) continue;
                BufIO<P> io{cbuf + (mb + i) * GW + q * NR, GW};
                tile<P, MR>(bq, steps, aq.at(i), io);
              }
            } else {
              auto ep = op.panel(it, q, it.m0 + mb, pass);
              Sweep<P, typename Op::A, decltype(ep)>::run(bq, steps, aq, mv, it.m0 + mb, ep);
              op.panel_end(it, q, it.m0 + mb, mv, pass, ep);
            }
          }
        }
      }
    }
  }
  op.end(it, cbuf, GW);
}

// ----------------------------------------------------------------------------- clones

// A kernel body compiled once per instruction-set path (see the top of this file). Body:
//   template <int kIsa> static constexpr bool runs()   the body has a path for kIsa
//   template <int kIsa> using Tile = ...                its register tile there
//   template <int kIsa> static DQK_ALWAYS_INLINE void run(Args...)
template <class Body, class... Args>
struct Clones {
  using Fn = void (*)(Args...);

  static void generic(Args... a) {
    if constexpr (Body::template runs<kIsaGeneric>()) Body::template run<kIsaGeneric>(a...);
  }
#if DQK_GEMM_X86
  DQK_TARGET_AVX2 static void avx2(Args... a) {
    if constexpr (Body::template runs<kIsaAvx2>()) Body::template run<kIsaAvx2>(a...);
  }
  DQK_TARGET_AVX512 static void avx512(Args... a) {
    if constexpr (Body::template runs<kIsaAvx512>()) Body::template run<kIsaAvx512>(a...);
  }
  DQK_TARGET_AVX512BF16 static void avx512bf16(Args... a) {
    if constexpr (Body::template runs<kIsaAvx512Bf16>()) Body::template run<kIsaAvx512Bf16>(a...);
  }
#endif

  template <int kIsa>
  static constexpr Fn entry(Fn f) {
    if constexpr (Body::template runs<kIsa>()) return f;
    else return nullptr;
  }
#if DQK_GEMM_X86
  // kIsaAvx512Bf16 runs the AVX-512 clone where the body's tile is the same there
  static constexpr bool kBf16SameTile =
      Body::template runs<kIsaAvx512>() && Body::template runs<kIsaAvx512Bf16>() &&
      std::is_same<typename Body::template Tile<kIsaAvx512>,
                   typename Body::template Tile<kIsaAvx512Bf16>>::value;
  static constexpr Fn bf16_entry() {
    if constexpr (kBf16SameTile) return avx512;
    else return entry<kIsaAvx512Bf16>(avx512bf16);
  }
#endif
  template <int kIsa>
  static constexpr TileInfo tile_info() {
    if constexpr (Body::template runs<kIsa>()) return info_of<typename Body::template Tile<kIsa>>();
    else return TileInfo{};
  }

  // the clone of path `isa` (a pick_cpu_isa result); throws if the body has none
  static Fn fn(int isa) {
#if DQK_GEMM_X86
    static constexpr Fn table[5] = {nullptr, entry<kIsaGeneric>(generic), entry<kIsaAvx2>(avx2),
                                    entry<kIsaAvx512>(avx512), bf16_entry()};
#else
    static constexpr Fn table[5] = {nullptr, entry<kIsaGeneric>(generic), nullptr, nullptr,
                                    nullptr};
#endif
    const Fn f = isa >= 0 && isa < 5 ? table[isa] : nullptr;
    if (!f)
      throw std::logic_error("gemm: no clone for instruction-set path " + std::to_string(isa));
    return f;
  }

  static TileInfo info(int isa) {
    static constexpr TileInfo table[5] = {TileInfo{}, tile_info<kIsaGeneric>(),
                                          tile_info<kIsaAvx2>(), tile_info<kIsaAvx512>(),
                                          tile_info<kIsaAvx512Bf16>()};
    return table[isa];
  }
};

}  // namespace gemm
}  // namespace dqk

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
