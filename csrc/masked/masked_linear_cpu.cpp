// CPU kernels of the masked linear layer: the GEMM engine of common/cpu_gemm.h, three uses.
//
//   forward  y  = x @ (W*M)^T + b   C[m=row, n=out] = sum_k A[m, k=in]  B[k, n], B = W^T
//   grad x   gx = gy @ (W*M)        C[m=row, n=in]  = sum_k A[m, k=out] B[k, n], B = W
//   grad W   gW = M * (gy^T @ x)    C[m=out, n=in]  = sum_k A[m, k=row] B[k, n], B = x
//
// The mask lives on B for the first two ("side B": row k of B is cut by the degrees of k
// and of the output column n) and on C for the third ("side C").
//
// The engine (common/cpu_gemm.h) runs them in buffered mode with its default blocking:
// work items of CH rows (<= 1024) by G panels of NR columns (G*NR ~ 256), K blocks of
// KC = 256 (512 for bf16 pairs), B panels packed once per K block (only the rows they
// need), A packed in sub-blocks of MC = 8*MR rows, an MR x NR register tile accumulating
// into the item's float (double) buffer. Tiles per path (tests force each):
//   AVX-512    12 x 32 floats / 12 x 16 doubles
//   AVX2        6 x 16 / 6 x 8;   SSE2 baseline 4 x 8 / 4 x 4
//   AVX512-BF16 for bf16 inputs: A and B packed straight from bf16 as pairs of
//              consecutive k, 12 x 32 floats, vdpbf16ps
// Otherwise fp16/bf16 inputs are converted to contiguous float once (F16C for fp16) and
// run the float path. The op here gives the engine its operands (strides, the mask as a
// packing select), its skipping (k ranges of the panels, live tiles) and its epilogue:
// add the bias / apply the side-C mask; the caller converts and stores rows. Items run
// largest first (their work is estimated from the degrees); small problems run on one
// thread.
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

#include "../common/cpu_convert.h"
#include "../common/cpu_gemm.h"
#include "../common/cpu_types.h"
#include "masked_linear.h"

namespace dqk {
namespace masked_linear {
namespace {

using gemm::threads_for;

inline bool keep(int64_t hi, int64_t lo, bool strict) { return strict ? hi > lo : hi >= lo; }

constexpr int kSideB = 0, kSideC = 1;

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
  const int64_t* dr = nullptr;  // degrees along k (side B) or m (side C)
  const int64_t* dn = nullptr;  // degrees along n
  bool n_is_hi = true;          // mask = keep(dn, dr) if true, keep(dr, dn) otherwise
  const Acc* bias = nullptr;    // [N] contiguous, or null
};

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

// keep(degree of B's row k, degree of column w) for packing B (side B)
template <bool kNHi, bool kStrict>
struct KeepDeg {
  static constexpr bool kAll = false;
  const int64_t* dk;
  const int64_t* dn;
  DQK_ALWAYS_INLINE bool operator()(int64_t k, int64_t w) const {
    const int64_t hi = kNHi ? dn[w] : dk[k], lo = kNHi ? dk[k] : dn[w];
    return kStrict ? hi > lo : hi >= lo;
  }
};

// Bytes of the op's workspace: the side-C live flags of an item's (row tile, panel) pairs.
inline int64_t op_bytes(const gemm::Grid& g) { return (g.CH + g.MR - 1) / g.MR * g.G; }

// The engine's op for one Problem on tile P. Skipping (see top): begin() finds the
// panels' degree ranges and, on side C, the live tiles; k_range() cuts each panel's rows
// per K block on side B; pack_b() selects the masked entries to 0; end() is the epilogue.
template <class P>
struct Op : gemm::OpBase {
  using Path = P;
  using Acc = typename P::Acc;
  using Pk = typename P::Pk;
  using Src = typename std::conditional<P::kBf16, BFloat16, Acc>::type;
  using A = gemm::APacked<P>;
  static constexpr bool kBuffered = true, kPackA = true;
  static constexpr int MR = P::MR, NR = P::NR, KP = P::KP;

  const Problem<Src, Acc>& p;
  unsigned char* live;  // [row tiles][pans] (side C)
  Range pr[gemm::kMaxPanels];
  bool panel_live[gemm::kMaxPanels];

  Op(const Problem<Src, Acc>& prob, unsigned char* ws) : p(prob), live(ws) {}

  bool begin(const gemm::Item& it) {
    for (int64_t q = 0; q < it.pans; ++q) {
      const int64_t a0 = it.n0 + q * NR, a1 = std::min(a0 + NR, p.N);
      pr[q] = deg_range(p.dn, a0, a1);
      panel_live[q] = true;
    }
    if (p.side != kSideC) return true;
    bool any_live = false;
    const int64_t mts = (it.mrows + MR - 1) / MR;
    for (int64_t q = 0; q < it.pans; ++q) panel_live[q] = false;
    for (int64_t t = 0; t < mts; ++t) {
      const int64_t r0 = it.m0 + t * MR, r1 = std::min(r0 + MR, it.m0 + it.mrows);
      const Range rr = deg_range(p.dr, r0, r1);
      for (int64_t q = 0; q < it.pans; ++q) {
        const bool any =
            p.n_is_hi ? keep(pr[q].hi, rr.lo, p.strict) : keep(rr.hi, pr[q].lo, p.strict);
        live[t * it.pans + q] = any;
        panel_live[q] = panel_live[q] || any;
        any_live = any_live || any;
      }
    }
    return any_live;
  }

  void k_range(const gemm::Item&, int64_t q, int64_t k0, int64_t kc, int64_t& l, int64_t& h) const {
    if (p.side == kSideB) {
      const int64_t ext = p.n_is_hi ? pr[q].hi : pr[q].lo;
      auto nz = [&](int64_t kk) {
        const int64_t d = p.dr[k0 + kk];
        return p.n_is_hi ? keep(ext, d, p.strict) : keep(d, ext, p.strict);
      };
      while (l < kc && !nz(l)) ++l;
      while (h > l && !nz(h - 1)) --h;
    } else if (!panel_live[q]) {
      l = h = 0;
    }
  }

  bool tile_live(const gemm::Item& it, int64_t t, int64_t q) const {
    return p.side != kSideC || live[t * it.pans + q];
  }

  // B panel q, rows [k0 + lo, k0 + hi): masked entries packed as 0 without being read
  DQK_ALWAYS_INLINE void pack_b(const gemm::Item& it, int64_t q, int64_t k0, int64_t lo, int64_t hi,
                                int64_t kc, Pk* dst) const {
    const int64_t nq = it.n0 + q * NR, jv = std::min<int64_t>(NR, p.N - nq);
    const int64_t nval = std::min(hi, kc) - lo, steps = (hi - lo) / KP, kb = k0 + lo;
    const Src* b = p.B + kb * p.sbk + nq * p.sbn;
    const int64_t *dk = p.dr + kb, *dn = p.dn + nq;
    auto run = [&](auto keepf) DQK_LAMBDA_INLINE {
      gemm::pack<P, NR>(dst, b, p.sbk, p.sbn, jv, nval, steps, keepf);
    };
    if (p.side != kSideB) run(gemm::KeepAll{});
    else if (p.n_is_hi && p.strict) run(KeepDeg<true, true>{dk, dn});
    else if (p.n_is_hi) run(KeepDeg<true, false>{dk, dn});
    else if (p.strict) run(KeepDeg<false, true>{dk, dn});
    else run(KeepDeg<false, false>{dk, dn});
  }

  // A rows [m, m + mv) by k in [k0 + klo, k0 + khi); side C: only if a tile there lives
  DQK_ALWAYS_INLINE bool a_block(const gemm::Item& it, int64_t m, int64_t mv, int64_t k0,
                                 int64_t klo, int64_t khi, int64_t kc, Pk* ap, A& a) const {
    if (p.side == kSideC) {
      bool any = false;
      const int64_t t0 = (m - it.m0) / MR, t1 = (m - it.m0 + mv + MR - 1) / MR;
      for (int64_t t = t0; t < t1 && !any; ++t)
        for (int64_t q = 0; q < it.pans && !any; ++q) any = live[t * it.pans + q];
      if (!any) return false;
    }
    return gemm::pack_a<P>(ap, p.A + m * p.sam + (k0 + klo) * p.sak, p.sam, p.sak, mv,
                           std::min(khi, kc) - klo, (khi - klo) / KP, a);
  }

  // epilogue on the item's valid part: bias, side-C mask (the caller stores the rows)
  void end(const gemm::Item& it, Acc* cbuf, int64_t ldc) const {
    if (p.bias) {
      for (int64_t r = 0; r < it.mrows; ++r) {
        Acc* cr = cbuf + r * ldc;
        const Acc* b = p.bias + it.n0;
        for (int64_t n = 0; n < it.ncols; ++n) cr[n] += b[n];
      }
    }
    if (p.side == kSideC) {
      for (int64_t r = 0; r < it.mrows; ++r) {
        Acc* cr = cbuf + r * ldc;
        const int64_t dm = p.dr[it.m0 + r];
        const int64_t* dn = p.dn + it.n0;
        if (p.n_is_hi) {
          for (int64_t n = 0; n < it.ncols; ++n) cr[n] = keep(dn[n], dm, p.strict) ? cr[n] : Acc(0);
        } else {
          for (int64_t n = 0; n < it.ncols; ++n) cr[n] = keep(dm, dn[n], p.strict) ? cr[n] : Acc(0);
        }
      }
    }
  }
};

// Register tile per path: MR = 12 / 6 / 4 rows by two vectors; bf16 pairs on
// AVX512-BF16 when the problem holds bf16 (Src = BFloat16, that path only).
template <int kIsa, typename Src, typename Acc>
struct TileOf {
  using type = gemm::VecTile<Acc, gemm::kVecBytes<kIsa>, 2,
                             kIsa >= kIsaAvx512 ? 12 : (kIsa == kIsaAvx2 ? 6 : 4)>;
};
#if DQK_GEMM_X86
template <int kIsa>
struct TileOf<kIsa, BFloat16, float> {
  using type = gemm::Bf16Tile<12>;
};
#endif

template <typename Src, typename Acc>
struct Body {
  template <int kIsa>
  static constexpr bool runs() {
    if constexpr (std::is_same<Src, BFloat16>::value) return DQK_GEMM_X86 && kIsa == kIsaAvx512Bf16;
    else return DQK_GEMM_X86 || kIsa == kIsaGeneric;
  }
  template <int kIsa>
  using Tile = typename TileOf<kIsa, Src, Acc>::type;
  template <int kIsa>
  static DQK_ALWAYS_INLINE void run(const Problem<Src, Acc>& p, const gemm::Grid& g,
                                    const gemm::Layout& lay, int64_t item, unsigned char* ws) {
    using P = Tile<kIsa>;
    Op<P> op(p, ws + lay.op);
    gemm::run_item<P>(op, g, lay, item, ws);
  }
};

template <typename Src, typename Acc>
using Kernel = gemm::Clones<Body<Src, Acc>, const Problem<Src, Acc>&, const gemm::Grid&,
                            const gemm::Layout&, int64_t, unsigned char*>;

// ----------------------------------------------------------------------------- storage

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
    (void)rows;
    (void)cols;
    (void)buf;
    (void)nt;
    return TMat<Acc>{src, m.s0, m.s1};
  } else {
    buf.resize(size_t(rows * cols));
    Acc* dst = buf.data();
    nt = threads_for(double(rows) * double(cols) * 16.0, nt);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t r = 0; r < rows; ++r) {
      if (m.s1 == 1) {
        convert_run(src + r * m.s0, dst + r * cols, cols);
      } else {
        for (int64_t c = 0; c < cols; ++c)
          dst[r * cols + c] = Acc(Scalar<S>::load(src + r * m.s0 + c * m.s1));
      }
    }
    return TMat<Acc>{dst, cols, 1};
  }
}

// ----------------------------------------------------------------------------- driver

// Work estimate of each item (multiply-adds, up to a constant), for largest-first
// scheduling: the staircase makes items very unequal.
template <typename Src, typename Acc>
std::vector<double> item_costs(const Problem<Src, Acc>& p, const gemm::Grid& g) {
  const int64_t NR = g.NR, npan = g.panels(), ngr = g.groups(), nitems = g.items();
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
      group[q / g.G] += double(rows);
    }
    for (int64_t it = 0; it < nitems; ++it) {
      const int64_t c = it / ngr;
      cost[it] = group[it - c * ngr] * double(std::min(g.CH, p.M - c * g.CH));
    }
  } else {
    // per (row, panel): not entirely masked, times K
    std::vector<Range> pr(npan);
    for (int64_t q = 0; q < npan; ++q) pr[q] = deg_range(p.dn, q * NR, std::min(p.N, (q + 1) * NR));
    for (int64_t it = 0; it < nitems; ++it) {
      const int64_t c = it / ngr, gi = it - c * ngr;
      double n = 0;
      for (int64_t m = c * g.CH; m < std::min(p.M, (c + 1) * g.CH); ++m)
        for (int64_t q = gi * g.G; q < std::min(npan, (gi + 1) * g.G); ++q)
          n += p.n_is_hi ? keep(pr[q].hi, p.dr[m], p.strict) : keep(p.dr[m], pr[q].lo, p.strict);
      cost[it] = n * double(p.K);
    }
  }
  return cost;
}

// Run the engine on path `isa`: C (S, contiguous rows of stride ldc) = the result.
template <typename S, typename Src, typename Acc>
void run_gemm(const Problem<Src, Acc>& p, int isa, S* C, int64_t ldc, int nt) {
  using K = Kernel<Src, Acc>;
  const auto fn = K::fn(isa);
  const gemm::TileInfo ti = K::info(isa);
  nt = threads_for(double(p.M) * double(p.N) * double(p.K), nt);
  const gemm::Grid g = gemm::plan(p.M, p.N, p.K, ti, nt);
  const gemm::Layout lay(ti, g, true, true, op_bytes(g));
  const int64_t n_items = g.items(), ngr = g.groups(), GW = g.G * g.NR;
  std::vector<int64_t> order(n_items);
  for (int64_t i = 0; i < n_items; ++i) order[i] = i;
  if (nt > 1 && n_items > 1) {
    const std::vector<double> cost = item_costs(p, g);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  }
  gemm::parallel_items(nt, n_items, order.data(), lay.bytes, [&](int64_t it, unsigned char* w) {
    fn(p, g, lay, it, w);
    const Acc* cbuf = reinterpret_cast<const Acc*>(w + lay.cbuf);
    const int64_t c = it / ngr, gi = it - c * ngr;
    const int64_t m0 = c * g.CH, mrows = std::min(g.CH, p.M - m0);
    const int64_t n0 = gi * GW, ncols = std::min(GW, p.N - n0);
    for (int64_t r = 0; r < mrows; ++r) convert_run(cbuf + r * GW, C + (m0 + r) * ldc + n0, ncols);
  });
}

// The three problems, on A/B matrices of Src values (Problem's fields in order: sizes,
// A and its strides, B and its strides, mask side, strictness, degrees, bias).
template <typename Src, typename Acc>
Problem<Src, Acc> forward_problem(const Args& a, TMat<Src> X, TMat<Src> W, const Acc* bias) {
  // A = x [row, in], B[k=i, n=j] = W[j, i]
  return {a.rows, a.out,  a.in,     X.p,      X.s0,      X.s1, W.p, W.s1,
          W.s0,   kSideB, a.strict, a.in_deg, a.out_deg, true, bias};
}

template <typename Src, typename Acc>
Problem<Src, Acc> grad_x_problem(const Args& a, TMat<Src> GY, TMat<Src> W) {
  // A = gy [row, out], B[k=j, n=i] = W[j, i]
  return {a.rows, a.in,   a.out,    GY.p,      GY.s0,    GY.s1, W.p,    W.s0,
          W.s1,   kSideB, a.strict, a.out_deg, a.in_deg, false, nullptr};
}

template <typename Src, typename Acc>
Problem<Src, Acc> grad_w_problem(const Args& a, TMat<Src> GY, TMat<Src> X) {
  // A[m=j, k=r] = gy[r, j], B[k=r, n=i] = x[r, i]
  return {a.out, a.in,   a.rows,   GY.p,      GY.s1,    GY.s0, X.p,    X.s0,
          X.s1,  kSideC, a.strict, a.out_deg, a.in_deg, false, nullptr};
}

template <typename S>
TMat<S> raw(const Mat& m) {
  return TMat<S>{static_cast<const S*>(m.p), m.s0, m.s1};
}

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
        convert_run(src, row, nj);
      } else {
        for (int64_t j = 0; j < nj; ++j) row[j] = Acc(Scalar<S>::load(src + j * a.gy.s1));
      }
      for (int64_t j = 0; j < nj; ++j) acc[j] += row[j];
    }
    convert_run(acc, gb + j0, nj);
  }
}

template <typename S>
void forward_impl(const Args& a, int nt, int isa) {
  using Acc = typename Scalar<S>::acc;
  isa = pick_cpu_isa(isa, "masked_linear cpu");
  const std::vector<Acc> bb = bias_vector<S, Acc>(a);
  const Acc* bias = a.bias ? bb.data() : nullptr;
  if constexpr (std::is_same<S, BFloat16>::value) {
    if (isa == kIsaAvx512Bf16) {  // bf16 pairs straight from the tensors
      run_gemm<S>(forward_problem<S, Acc>(a, raw<S>(a.x), raw<S>(a.w), bias), isa,
                  static_cast<S*>(a.y), a.out, nt);
      return;
    }
  }
  std::vector<Acc> xb, wb;
  const TMat<Acc> X = as_acc<S, Acc>(a.x, a.rows, a.in, xb, nt);
  const TMat<Acc> W = as_acc<S, Acc>(a.w, a.out, a.in, wb, nt);
  run_gemm<S>(forward_problem<Acc, Acc>(a, X, W, bias), isa, static_cast<S*>(a.y), a.out, nt);
}

template <typename S>
void backward_impl(const Args& a, int nt, int isa) {
  using Acc = typename Scalar<S>::acc;
  isa = pick_cpu_isa(isa, "masked_linear cpu");
  if (a.gb) bias_grad<S, Acc>(a, nt);
  if (!a.gx && !a.gw) return;
  if constexpr (std::is_same<S, BFloat16>::value) {
    if (isa == kIsaAvx512Bf16) {
      if (a.gx)
        run_gemm<S>(grad_x_problem<S, Acc>(a, raw<S>(a.gy), raw<S>(a.w)), isa,
                    static_cast<S*>(a.gx), a.in, nt);
      if (a.gw)
        run_gemm<S>(grad_w_problem<S, Acc>(a, raw<S>(a.gy), raw<S>(a.x)), isa,
                    static_cast<S*>(a.gw), a.in, nt);
      return;
    }
  }
  std::vector<Acc> gyb, xb, wb;
  const TMat<Acc> GY = as_acc<S, Acc>(a.gy, a.rows, a.out, gyb, nt);
  if (a.gx) {
    const TMat<Acc> W = as_acc<S, Acc>(a.w, a.out, a.in, wb, nt);
    run_gemm<S>(grad_x_problem<Acc, Acc>(a, GY, W), isa, static_cast<S*>(a.gx), a.in, nt);
    std::vector<Acc>().swap(wb);
  }
  if (a.gw) {
    const TMat<Acc> X = as_acc<S, Acc>(a.x, a.rows, a.in, xb, nt);
    run_gemm<S>(grad_w_problem<Acc, Acc>(a, GY, X), isa, static_cast<S*>(a.gw), a.in, nt);
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
