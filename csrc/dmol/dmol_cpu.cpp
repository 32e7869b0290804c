// CPU kernels of the dmol ops. float32-accumulated dtypes with M <= 64 take the
// vectorised tile path (dmol_cpu_tile.h), compiled for AVX-512, AVX2 and baseline x86-64
// and picked at load time; float64 and larger M use one OpenMP loop over pixels with the
// shared scalar math of dmol_math.h.
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "../common/cpu_types.h"
#include "../common/macros.h"
#include "dmol.h"
#include "dmol_cpu_tile.h"
#include "dmol_math.h"
#include "dmol_pixel.h"

namespace dqk {
namespace dmol {
namespace {

// f(n) for every pixel n of the flattened [B, H, W] grid, on nt threads
template <class F>
void for_each_pixel(const Args& a, int nt, F f) {
  const int64_t N = a.B * a.H * a.W;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) f(n);
}

template <typename S>
void forward(const Args& a, int nt) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, nt, [&](int64_t n) { forward_pixel<Scalar<S>, S>(a, g, n); });
}

template <typename S>
void backward(const Args& a, int nt) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, nt, [&](int64_t n) { backward_pixel<Scalar<S>, S, true>(a, g, n); });
}

template <typename S>
void sample(const Args& a, int nt) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  for_each_pixel(a, nt, [&](int64_t n) { sample_pixel<Scalar<S>, S>(a, g, n); });
}

// ------------------------------------------------------------ vectorised tile path

// Tiles run along the innermost spatial dimension, or along H*W flattened when every
// tensor involved lays H and W out as one run (contiguous NCHW does).
struct TileWalk {
  int64_t rows;  // rows per image
  int64_t len;   // pixels per row
  int64_t tiles_per_row;
  bool merged;
  int64_t total;
};

inline bool hw_mergeable4(const int64_t* s, int64_t W) { return s[2] == W * s[3]; }
inline bool hw_mergeable3(const int64_t* s, int64_t W) { return s[1] == W * s[2]; }

inline TileWalk make_walk(const Args& a, bool backward) {
  bool merged = hw_mergeable4(a.x_stride, a.W) && hw_mergeable4(a.p_stride, a.W);
  if (backward) {
    merged = merged && hw_mergeable4(a.gp_stride, a.W);
    if (a.grad_out != nullptr) merged = merged && hw_mergeable3(a.g_stride, a.W);
  }
  if (a.out != nullptr) merged = merged && hw_mergeable3(a.out_stride, a.W);
  TileWalk t;
  t.merged = merged;
  t.rows = merged ? 1 : a.H;
  t.len = merged ? a.H * a.W : a.W;
  t.tiles_per_row = (t.len + tile::kLanes - 1) / tile::kLanes;
  t.total = a.B * t.rows * t.tiles_per_row;
  return t;
}

struct TileAt {
  int64_t b, r, p0;  // image, row, first pixel of the row's run
  int n;             // lanes in use
  // element offset of the tile's first pixel in a 4-D [B, C, H, W] / 3-D [B, H, W] tensor
  int64_t off4(const int64_t* s) const { return b * s[0] + r * s[2] + p0 * s[3]; }
  int64_t off3(const int64_t* s) const { return b * s[0] + r * s[1] + p0 * s[2]; }
};

inline TileAt tile_at(const TileWalk& t, int64_t i) {
  const int64_t per_b = t.rows * t.tiles_per_row;
  TileAt at;
  at.b = i / per_b;
  const int64_t rem = i - at.b * per_b;
  at.r = rem / t.tiles_per_row;
  at.p0 = (rem - at.r * t.tiles_per_row) * tile::kLanes;
  const int64_t left = t.len - at.p0;
  at.n = int(left < tile::kLanes ? left : tile::kLanes);
  return at;
}

// A tile's view of a [B, C, H, W] input: channel stride, lane stride, lanes in use.
template <typename S>
DQK_ALWAYS_INLINE tile::In<S> tile_in(const void* base, const int64_t* s, const TileAt& at) {
  return tile::In<S>{static_cast<const S*>(base) + at.off4(s), s[1], s[3], at.n};
}

template <typename S>
DQK_ALWAYS_INLINE void forward_tiles(const Args& a, const TileWalk& t, int64_t begin, int64_t end,
                                     tile::Work& w) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  float nll[tile::kLanes];
  for (int64_t i = begin; i < end; ++i) {
    const TileAt at = tile_at(t, i);
    const tile::In<S> P = tile_in<S>(a.params, a.p_stride, at);
    const tile::In<S> X = tile_in<S>(a.x, a.x_stride, at);
    tile::tile_forward<S>(g, P, X, float(a.min_log_scale), w, nll);
    float* out = static_cast<float*>(a.out) + at.off3(a.out_stride);
    for (int j = 0; j < at.n; ++j) out[j * a.out_stride[2]] = nll[j];
  }
}

template <typename S>
DQK_ALWAYS_INLINE void backward_tiles(const Args& a, const TileWalk& t, int64_t begin, int64_t end,
                                      tile::Work& w) {
  const Geometry g = make_geometry(a.C, a.M, a.L);
  float gout[tile::kLanes], nll[tile::kLanes];
  for (int64_t i = begin; i < end; ++i) {
    const TileAt at = tile_at(t, i);
    const tile::In<S> P = tile_in<S>(a.params, a.p_stride, at);
    const tile::In<S> X = tile_in<S>(a.x, a.x_stride, at);
    tile::Out<S> G{static_cast<S*>(a.grad_params) + at.off4(a.gp_stride), a.gp_stride[1],
                   a.gp_stride[3], at.n};
    if (a.grad_out != nullptr) {
      const float* go = static_cast<const float*>(a.grad_out) + at.off3(a.g_stride);
      for (int j = 0; j < tile::kLanes; ++j) gout[j] = j < at.n ? go[j * a.g_stride[2]] : 0.0f;
    } else {
      for (int j = 0; j < tile::kLanes; ++j) gout[j] = 1.0f;  // fused forward: unit gradient
    }
    tile::tile_backward<S>(g, P, X, gout, float(a.min_log_scale), w, G,
                           a.out != nullptr ? nll : nullptr);
    if (a.out != nullptr) {
      float* out = static_cast<float*>(a.out) + at.off3(a.out_stride);
      for (int j = 0; j < at.n; ++j) out[j * a.out_stride[2]] = nll[j];
    }
  }
}

// The ISA-specific entry points (one clone per x86-64 level, chosen when loaded).
#define DQK_TILE_ENTRY(NAME, BODY, S)                                              \
  DQK_CPU_CLONES void NAME(const Args& a, const TileWalk& t, int64_t b, int64_t e, \
                           tile::Work& w) {                                        \
    BODY<S>(a, t, b, e, w);                                                        \
  }
DQK_TILE_ENTRY(forward_tiles_f32, forward_tiles, float)
DQK_TILE_ENTRY(forward_tiles_f16, forward_tiles, Half)
DQK_TILE_ENTRY(forward_tiles_bf16, forward_tiles, BFloat16)
DQK_TILE_ENTRY(backward_tiles_f32, backward_tiles, float)
DQK_TILE_ENTRY(backward_tiles_f16, backward_tiles, Half)
DQK_TILE_ENTRY(backward_tiles_bf16, backward_tiles, BFloat16)

using TileFn = void (*)(const Args&, const TileWalk&, int64_t, int64_t, tile::Work&);

void run_tiles(const Args& a, int nt, bool backward, TileFn fn) {
  const TileWalk t = make_walk(a, backward);
#pragma omp parallel num_threads(nt)
  {
    int tid = 0, nth = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nth = omp_get_num_threads();
#endif
    tile::Work w(a.M);
    const int64_t begin = t.total * tid / nth, end = t.total * (tid + 1) / nth;
    if (begin < end) fn(a, t, begin, end, w);
  }
}

// true if the tile path took the call
bool try_tiles(const Args& a, int nt, bool backward) {
  if (a.M > tile::kMaxM || a.dtype == DType::kFloat64) return false;
  TileFn fn = nullptr;
  switch (a.dtype) {
    case DType::kFloat32: fn = backward ? backward_tiles_f32 : forward_tiles_f32; break;
    case DType::kFloat16: fn = backward ? backward_tiles_f16 : forward_tiles_f16; break;
    case DType::kBFloat16: fn = backward ? backward_tiles_bf16 : forward_tiles_bf16; break;
    default: return false;
  }
  run_tiles(a, nt, backward, fn);
  return true;
}

template <template <typename> class F>
void dispatch(const Args& a, int nt) {
  visit_dtype<Half, BFloat16>(a.dtype, "dmol cpu kernels",
                              [&](auto t) { F<decltype(t)>::run(a, nt); });
}

template <typename S>
struct Fwd {
  static void run(const Args& a, int nt) { forward<S>(a, nt); }
};
template <typename S>
struct Bwd {
  static void run(const Args& a, int nt) { backward<S>(a, nt); }
};
template <typename S>
struct Smp {
  static void run(const Args& a, int nt) { sample<S>(a, nt); }
};

}  // namespace

void nll_forward_cpu(const Args& a, int nt) {
  nt = nt > 0 ? nt : 1;
  if (!try_tiles(a, nt, false)) dispatch<Fwd>(a, nt);
}
void nll_backward_cpu(const Args& a, int nt) {
  nt = nt > 0 ? nt : 1;
  Args b = a;
  b.out = nullptr;  // the backward writes gradients only
  if (!try_tiles(b, nt, true)) dispatch<Bwd>(b, nt);
}
void nll_forward_backward_cpu(const Args& a, int nt) {
  nt = nt > 0 ? nt : 1;
  Args b = a;
  b.grad_out = nullptr;  // unit upstream gradient
  if (try_tiles(b, nt, true)) return;
  dispatch<Fwd>(b, nt);
  dispatch<Bwd>(b, nt);
}
void sample_cpu(const Args& a, int nt) { dispatch<Smp>(a, nt > 0 ? nt : 1); }

}  // namespace dmol
}  // namespace dqk
