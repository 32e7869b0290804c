// CPU kernels of the PixelCNN masked convolution: implicit GEMM over the kept taps only.
//
// Layout. Inputs (x, and grad_y in the backward) are copied, a chunk of batch elements
// at a time, into zero-padded "row" buffers [b][h][channel][Wp] of the accumulate type
// (float; double for float64): each image row of one channel is stored at columns
// [c, c + W) of a line of Wp = Wr + 2c elements, Wr = W rounded up to whole vectors.
// A tap (dh, dw) then reads, for output columns [w0, w0 + n), the contiguous elements
// [c + dw + w0, ...) of input row h + dh: always inside the line (the zero columns are
// the "same" padding on the left and right, and the rounding to whole vectors); taps
// whose input row is outside the image are skipped (no padding rows).
//
// forward  y[b, o, h, :] = bias[o] + sum over taps (dh, dw) and input channels k of the
//          tap's range: w[o, k, tap] * x[b, k, h + dh, : + dw]     (dh = i - c, dw = j - c)
// grad_x   the same "implicit GEMM" with the roles swapped: rows = input channels,
//          reduction over output channels, input grad_y, shifts dh = c - i, dw = c - j.
// Both run the same tile kernel (igemm_row_*): kMR output rows x (1 or 2) vectors of
// columns held in registers, the weights of an output-row tile packed per tap as
// [k][kMR] (zeros for rows past the end and for masked centre entries inside a tile), so
// each reduction step is kMR broadcasts, one or two vector loads and kMR * NV FMAs. The
// centre tap's channel range is cut to the tile's block range: (k*k-1)/2 + part of one
// tap are visited, not k*k.
// grad_w   a GEMM over pixels per tap: x is copied pixel-major instead ([b][h][Wx][Cp],
//          channels contiguous, Wx = W + 2c columns with the padding, Cp = Cin rounded up
//          to tiles of two vectors). Work units are (tile of kMW output channels, chunk of
//          kCiTiles input-channel tiles); per block of rows, input-channel tile and tap,
//          dw_tile_* keeps kMW x 2 vectors of accumulators in registers over the block's
//          pixels: per pixel kMW broadcasts of grad_y, two vector loads of x, 2 kMW FMAs.
//          The centre tap runs over the input channels the tile's last output channel
//          sees; masked entries are written as zeros, never computed into the result.
// grad_b   sum over batch, rows and columns, per output channel, in a fixed order.
//
// The copies live in a per-thread scratch buffer that is kept between calls (fresh
// allocations of tens of MB cost page faults every call), filled a chunk of batch
// elements (about kChunkBytes) at a time.
//
// No atomics, no thread-count-dependent reductions: results are deterministic. The tile
// kernels are compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time;
// their register tiles are sized for AVX-512's 32 vector registers (AVX2 spills some).
#include <string.h>

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/cpu_convert.h"
#include "../common/cpu_types.h"
#include "../common/macros.h"
#include "masked_conv2d.h"
#include "masked_conv2d_math.h"

#if defined(__GNUC__) && !defined(__clang__)
// the 64-byte vector helpers are always inlined: no vector crosses a call boundary
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#if defined(__GNUC__)
#define DQK_INLINE inline __attribute__((always_inline))
#else
#define DQK_INLINE inline
#endif

namespace dqk {
namespace masked_conv2d {
namespace {

constexpr int kMR = 8;                   // rows (channels) of an implicit-GEMM tile
constexpr int kMW = 8;                   // output channels of a grad_w tile (x 2 vectors of ci)
constexpr int64_t kCiTiles = 2;          // grad_w tiles of input channels per work unit
constexpr int64_t kDwBlockPixels = 256;  // pixels per grad_w block (rows of one image)
constexpr int64_t kChunkBytes = int64_t(16) << 20;  // padded copies per batch chunk

// 64-byte vectors (GCC/clang vector extensions: one zmm, two ymm or four xmm)
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(64)));
  static constexpr int L = 8;
};

template <typename V, typename T>
DQK_INLINE V loadu(const T* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}

// One tap of a tile: input row/column shift, the reduction range [k0, k1) and where
// its packed weights start.
struct TapRange {
  int64_t dh, dw, k0, k1, woff;
};

struct Geo {
  int64_t c, T, Wr, Wp;
};

template <typename T>
Geo geometry(const Args& a) {
  Geo g;
  g.c = a.k / 2;
  g.T = num_taps(a.k);
  const int64_t L = Vec<T>::L;
  g.Wr = (a.W + L - 1) / L * L;
  g.Wp = g.Wr + 2 * g.c;
  return g;
}

// ----------------------------------------------------------------------------- tile kernels

template <typename T, int NV>
DQK_INLINE void igemm_block(const T* in, int64_t H, int64_t K, int64_t Wp, int64_t c,
                            const TapRange* rng, int64_t nr, const T* wpk, const T* init, int64_t h,
                            int64_t w0, T* out, int64_t Wr) {
  using V = typename Vec<T>::V;
  constexpr int L = Vec<T>::L;
  V acc[kMR][NV];
  for (int m = 0; m < kMR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = V{} + init[m];
  for (int64_t r = 0; r < nr; ++r) {
    const TapRange& q = rng[r];
    const int64_t row = h + q.dh;
    if (row < 0 || row >= H) continue;
    const T* xp = in + (row * K + q.k0) * Wp + c + q.dw + w0;
    const T* wp = wpk + q.woff;
    for (int64_t kk = q.k0; kk < q.k1; ++kk, xp += Wp, wp += kMR) {
      V xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = loadu<V>(xp + v * L);
      for (int m = 0; m < kMR; ++m) {
        const T s = wp[m];
        for (int v = 0; v < NV; ++v) acc[m][v] += xv[v] * s;
      }
    }
  }
  for (int m = 0; m < kMR; ++m)
    for (int v = 0; v < NV; ++v) memcpy(out + m * Wr + w0 + v * L, &acc[m][v], sizeof(V));
}

// out[m][0:Wr] for the kMR rows of one tile at output row h
template <typename T>
DQK_INLINE void igemm_row_impl(const T* in, int64_t H, int64_t K, int64_t Wp, int64_t Wr, int64_t c,
                               const TapRange* rng, int64_t nr, const T* wpk, const T* init,
                               int64_t h, T* out) {
  constexpr int L = Vec<T>::L;
  int64_t w0 = 0;
  for (; w0 + 2 * L <= Wr; w0 += 2 * L)
    igemm_block<T, 2>(in, H, K, Wp, c, rng, nr, wpk, init, h, w0, out, Wr);
  for (; w0 < Wr; w0 += L) igemm_block<T, 1>(in, H, K, Wp, c, rng, nr, wpk, init, h, w0, out, Wr);
}

DQK_CPU_CLONES void igemm_row_f32(const float* in, int64_t H, int64_t K, int64_t Wp, int64_t Wr,
                                  int64_t c, const TapRange* rng, int64_t nr, const float* wpk,
                                  const float* init, int64_t h, float* out) {
  igemm_row_impl<float>(in, H, K, Wp, Wr, c, rng, nr, wpk, init, h, out);
}
DQK_CPU_CLONES void igemm_row_f64(const double* in, int64_t H, int64_t K, int64_t Wp, int64_t Wr,
                                  int64_t c, const TapRange* rng, int64_t nr, const double* wpk,
                                  const double* init, int64_t h, double* out) {
  igemm_row_impl<double>(in, H, K, Wp, Wr, c, rng, nr, wpk, init, h, out);
}
inline void igemm_row(const float* in, int64_t H, int64_t K, int64_t Wp, int64_t Wr, int64_t c,
                      const TapRange* rng, int64_t nr, const float* wpk, const float* init,
                      int64_t h, float* out) {
  igemm_row_f32(in, H, K, Wp, Wr, c, rng, nr, wpk, init, h, out);
}
inline void igemm_row(const double* in, int64_t H, int64_t K, int64_t Wp, int64_t Wr, int64_t c,
                      const TapRange* rng, int64_t nr, const double* wpk, const double* init,
                      int64_t h, double* out) {
  igemm_row_f64(in, H, K, Wp, Wr, c, rng, nr, wpk, init, h, out);
}

// grad_w tile: for kMW output channels o0.. and 2 vectors of input channels ci0.. (x in a
// pixel-major buffer [h][Wx][Cp], channels contiguous), one tap (dh, dw), rows [h0, h1)
// of one batch element:
//   acc[m][n] += sum_{h, w} gy[o0 + m, h, w] * x[ci0 + n, h + dh, w + dw]
// a GEMM over pixels: per pixel kMW broadcasts of grad_y, two vector loads of x and
// 2 kMW FMAs, the accumulators in registers for the whole block of rows.
struct DwGeo {
  int64_t W, Cout, Wp, Wx, Cp, c;
};

template <typename T>
DQK_INLINE void dw_tile_impl(const T* gyb, const T* xb, const DwGeo& d, int64_t o0, int64_t ci0,
                             int64_t dh, int64_t dw, int64_t h0, int64_t h1, T* acc, int64_t cols) {
  using V = typename Vec<T>::V;
  constexpr int L = Vec<T>::L;
  V a[kMW][2];
  for (int m = 0; m < kMW; ++m)
    for (int v = 0; v < 2; ++v) a[m][v] = loadu<V>(acc + m * cols + v * L);
  int64_t go[kMW];
  for (int m = 0; m < kMW; ++m) go[m] = std::min<int64_t>(o0 + m, d.Cout - 1) * d.Wp + d.c;
  for (int64_t h = h0; h < h1; ++h) {
    const T* g = gyb + h * d.Cout * d.Wp;
    const T* xr = xb + ((h + dh) * d.Wx + d.c + dw) * d.Cp + ci0;
    for (int64_t w = 0; w < d.W; ++w, xr += d.Cp) {
      const V x0 = loadu<V>(xr), x1 = loadu<V>(xr + L);
      for (int m = 0; m < kMW; ++m) {
        const T sv = g[go[m] + w];
        a[m][0] += x0 * sv;
        a[m][1] += x1 * sv;
      }
    }
  }
  for (int m = 0; m < kMW; ++m)
    for (int v = 0; v < 2; ++v) memcpy(acc + m * cols + v * L, &a[m][v], sizeof(V));
}

DQK_CPU_CLONES void dw_tile_f32(const float* gyb, const float* xb, const DwGeo& d, int64_t o0,
                                int64_t ci0, int64_t dh, int64_t dw, int64_t h0, int64_t h1,
                                float* acc, int64_t cols) {
  dw_tile_impl<float>(gyb, xb, d, o0, ci0, dh, dw, h0, h1, acc, cols);
}
DQK_CPU_CLONES void dw_tile_f64(const double* gyb, const double* xb, const DwGeo& d, int64_t o0,
                                int64_t ci0, int64_t dh, int64_t dw, int64_t h0, int64_t h1,
                                double* acc, int64_t cols) {
  dw_tile_impl<double>(gyb, xb, d, o0, ci0, dh, dw, h0, h1, acc, cols);
}
inline void dw_tile(const float* gyb, const float* xb, const DwGeo& d, int64_t o0, int64_t ci0,
                    int64_t dh, int64_t dw, int64_t h0, int64_t h1, float* acc, int64_t cols) {
  dw_tile_f32(gyb, xb, d, o0, ci0, dh, dw, h0, h1, acc, cols);
}
inline void dw_tile(const double* gyb, const double* xb, const DwGeo& d, int64_t o0, int64_t ci0,
                    int64_t dh, int64_t dw, int64_t h0, int64_t h1, double* acc, int64_t cols) {
  dw_tile_f64(gyb, xb, d, o0, ci0, dh, dw, h0, h1, acc, cols);
}

// ----------------------------------------------------------------------------- helpers

// Runs of storage values to and from float/double: unit-stride fp16 through
// common/cpu_convert.h (F16C where the CPU has it; round to nearest even, as
// Scalar<Half>); the rest is Scalar<S>, whose bf16 and float paths vectorise.
template <typename S, typename T>
inline void load_run(const S* src, int64_t stride, T* dst, int64_t n) {
  if constexpr (std::is_same<S, Half>::value && std::is_same<T, float>::value) {
    if (stride == 1) {
      half_to_float(src, dst, n);
      return;
    }
  }
  if (std::is_same<S, T>::value && stride == 1) {
    memcpy(dst, src, sizeof(T) * n);
    return;
  }
  for (int64_t j = 0; j < n; ++j) dst[j] = T(Scalar<S>::load(src + j * stride));
}

// Copy batch elements [b0, b0 + nb) of a [B, C, H, W] tensor into the row buffer
// dst[bb][h][ch][Wp] (data at columns [c, c + W), zeros elsewhere).
template <typename S, typename T>
void pad_rows(const S* src, const int64_t* st, int64_t b0, int64_t nb, int64_t C, int64_t H,
              int64_t W, const Geo& g, T* dst, int nt) {
  const int64_t rows = nb * H * C;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bb = r / (H * C), rem = r - bb * H * C;
    const int64_t h = rem / C, ch = rem - h * C;
    T* d = dst + r * g.Wp;
    const S* s = src + (b0 + bb) * st[0] + ch * st[1] + h * st[2];
    for (int64_t j = 0; j < g.c; ++j) d[j] = T(0);
    load_run(s, st[3], d + g.c, W);
    for (int64_t j = g.c + W; j < g.Wp; ++j) d[j] = T(0);
  }
}

// Copy batch elements [b0, b0 + nb) of a [B, C, H, W] tensor into the pixel-major buffer
// dst[bb][h][Wx][Cp] (pixel (h, w) at column c + w, channels contiguous; zeros elsewhere).
template <typename S, typename T>
void pad_pixels(const S* src, const int64_t* st, int64_t b0, int64_t nb, int64_t C, int64_t H,
                int64_t W, int64_t c, int64_t Wx, int64_t Cp, T* dst, int nt) {
  const int64_t rows = nb * H;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t bb = r / H, h = r - bb * H;
    T* d = dst + r * Wx * Cp;
    std::fill(d, d + c * Cp, T(0));
    std::fill(d + (c + W) * Cp, d + Wx * Cp, T(0));
    const S* s = src + (b0 + bb) * st[0] + h * st[2];
    // 16 x 16 tiles (channels x columns) transposed through a local buffer
    alignas(64) T tile[16][16];
    for (int64_t ch0 = 0; ch0 < Cp; ch0 += 16) {
      const int64_t n = std::max<int64_t>(0, std::min<int64_t>(16, C - ch0));
      for (int64_t w0 = 0; w0 < W; w0 += 16) {
        const int64_t nw = std::min<int64_t>(16, W - w0);
        for (int64_t q = 0; q < 16; ++q) {
          if (q < n) {
            T run[16];
            load_run(s + (ch0 + q) * st[1] + w0 * st[3], st[3], run, nw);
            for (int64_t j = 0; j < nw; ++j) tile[j][q] = run[j];
          } else {
            for (int64_t j = 0; j < nw; ++j) tile[j][q] = T(0);
          }
        }
        for (int64_t j = 0; j < nw; ++j)
          memcpy(d + (c + w0 + j) * Cp + ch0, tile[j], sizeof(tile[j]));
      }
    }
  }
}

template <typename S, typename T>
inline void store_line(S* dst, int64_t stride, const T* src, int64_t n) {
  if constexpr (std::is_same<S, Half>::value && std::is_same<T, float>::value) {
    if (stride == 1) {
      float_to_half(src, dst, n);
      return;
    }
  }
  if (std::is_same<S, T>::value && stride == 1) {
    memcpy(dst, src, sizeof(T) * n);
    return;
  }
  for (int64_t j = 0; j < n; ++j) Scalar<S>::store(dst + j * stride, src[j]);
}

template <typename S>
inline typename Scalar<S>::acc load_w(const Args& a, int64_t o, int64_t ci, int64_t i, int64_t j) {
  const S* w = static_cast<const S*>(a.w);
  return Scalar<S>::load(w + o * a.w_st[0] + ci * a.w_st[1] + i * a.w_st[2] + j * a.w_st[3]);
}

// Tap ranges and packed weights of every row tile of the forward (rows = output channels,
// reduction over input channels) or of grad_x (rows = input channels, reduction over
// output channels).
template <typename T>
struct Plan {
  int64_t M = 0, K = 0, tiles = 0, nr = 0;
  std::vector<TapRange> rng;  // [tiles][nr]
  std::vector<T> wpk;
};

template <typename S, typename T>
Plan<T> make_plan(const Args& a, const Geo& g, bool transposed) {
  Plan<T> p;
  p.M = transposed ? a.Cin : a.Cout;
  p.K = transposed ? a.Cout : a.Cin;
  p.tiles = (p.M + kMR - 1) / kMR;
  p.nr = g.T + 1;
  p.rng.resize(p.tiles * p.nr);
  int64_t off = 0;
  for (int64_t mt = 0; mt < p.tiles; ++mt) {
    const int64_t m_first = mt * kMR, m_last = std::min(p.M, m_first + kMR) - 1;
    for (int64_t t = 0; t <= g.T; ++t) {
      TapRange& q = p.rng[mt * p.nr + t];
      int64_t i = g.c, j = g.c;
      if (t < g.T) tap_ij(t, a.k, &i, &j);
      const int64_t sgn = transposed ? -1 : 1;
      q.dh = sgn * (i - g.c);
      q.dw = sgn * (j - g.c);
      q.k0 = 0;
      q.k1 = p.K;
      if (t == g.T) {  // centre: the tile's channel-block range
        if (transposed) q.k0 = centre_min_output(m_first, a.Cin, a.Cout, a.groups, a.type_b);
        else q.k1 = centre_inputs(m_last, a.Cin, a.Cout, a.groups, a.type_b);
        if (q.k1 < q.k0) q.k1 = q.k0;
      }
      q.woff = off;
      off += (q.k1 - q.k0) * kMR;
    }
  }
  p.wpk.assign(off, T(0));
  for (int64_t mt = 0; mt < p.tiles; ++mt)
    for (int64_t t = 0; t <= g.T; ++t) {
      const TapRange& q = p.rng[mt * p.nr + t];
      int64_t i = g.c, j = g.c;
      if (t < g.T) tap_ij(t, a.k, &i, &j);
      for (int64_t kk = q.k0; kk < q.k1; ++kk)
        for (int m = 0; m < kMR; ++m) {
          const int64_t row = mt * kMR + m;
          if (row >= p.M) continue;
          const int64_t o = transposed ? kk : row, ci = transposed ? row : kk;
          if (is_kept(o, ci, i, j, a))
            p.wpk[q.woff + (kk - q.k0) * kMR + m] = T(load_w<S>(a, o, ci, i, j));
        }
    }
  return p;
}

// Scratch for the padded copies, kept per calling thread and grown as needed: fresh
// allocations of this size cost page faults and zeroing on every call.
template <typename T>
T* scratch(int64_t count) {
  thread_local std::unique_ptr<unsigned char[]> buf;
  thread_local int64_t cap = 0;
  const int64_t bytes = count * int64_t(sizeof(T)) + 64;
  if (bytes > cap) {
    buf.reset();
    buf.reset(new unsigned char[bytes]);
    cap = bytes;
  }
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.get());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

// batch elements per chunk of padded copies
int64_t batch_chunk(const Args& a, int64_t bytes_per_b, int nt) {
  int64_t bc = bytes_per_b > 0 ? kChunkBytes / bytes_per_b : a.B;
  bc = std::max<int64_t>(bc, std::min<int64_t>(a.B, std::max(nt, 1)));
  return std::max<int64_t>(1, std::min(bc, a.B));
}

// rows of one implicit GEMM (forward or grad_x) for a chunk of batch elements:
// out[b0 + bb, row, h, :] for every row tile and output row
template <typename S, typename T>
void igemm_chunk(const Plan<T>& p, const Geo& g, const T* in, int64_t H, int64_t W, int64_t b0,
                 int64_t nb, const std::vector<T>& init, S* out, const int64_t* ost, int nt) {
  const int64_t units = nb * p.tiles;
#pragma omp parallel num_threads(nt)
  {
    std::vector<T> buf(kMR * g.Wr);
#pragma omp for schedule(static)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t bb = u / p.tiles, mt = u - bb * p.tiles;
      const T* inb = in + bb * H * p.K * g.Wp;
      const TapRange* rng = p.rng.data() + mt * p.nr;
      const T* ini = init.data() + mt * kMR;
      const int64_t rows = std::min<int64_t>(kMR, p.M - mt * kMR);
      for (int64_t h = 0; h < H; ++h) {
        igemm_row(inb, H, p.K, g.Wp, g.Wr, g.c, rng, p.nr, p.wpk.data(), ini, h, buf.data());
        for (int64_t m = 0; m < rows; ++m)
          store_line(out + (b0 + bb) * ost[0] + (mt * kMR + m) * ost[1] + h * ost[2], ost[3],
                     buf.data() + m * g.Wr, W);
      }
    }
  }
}

// ----------------------------------------------------------------------------- drivers

template <typename S>
void forward_impl(const Args& a, int nt) {
  using T = typename Scalar<S>::acc;
  const Geo g = geometry<T>(a);
  const Plan<T> p = make_plan<S, T>(a, g, false);
  std::vector<T> init(p.tiles * kMR, T(0));
  if (a.bias != nullptr)
    for (int64_t o = 0; o < a.Cout; ++o)
      init[o] = T(Scalar<S>::load(static_cast<const S*>(a.bias) + o * a.bias_st));
  const int64_t per_b = a.H * a.Cin * g.Wp;
  const int64_t bc = batch_chunk(a, per_b * int64_t(sizeof(T)), nt);
  T* xp = scratch<T>(bc * per_b);
  for (int64_t b0 = 0; b0 < a.B; b0 += bc) {
    const int64_t nb = std::min(bc, a.B - b0);
    pad_rows(static_cast<const S*>(a.x), a.x_st, b0, nb, a.Cin, a.H, a.W, g, xp, nt);
    igemm_chunk(p, g, xp, a.H, a.W, b0, nb, init, static_cast<S*>(a.y), a.y_st, nt);
  }
}

template <typename S>
void backward_impl(const Args& a, int nt) {
  using T = typename Scalar<S>::acc;
  constexpr int64_t NT = 2 * Vec<T>::L;  // input channels of a grad_w tile
  const Geo g = geometry<T>(a);
  const bool need_x = a.gx != nullptr, need_w = a.gw != nullptr, need_b = a.gb != nullptr;
  if (!need_x && !need_w && !need_b) return;
  // grad_y as rows [b][h][o][Wp] (grad_x, grad_w, grad_b); x pixel-major [b][h][Wx][Cp]
  const int64_t Cp = (a.Cin + NT - 1) / NT * NT, Wx = a.W + 2 * g.c;
  const int64_t per_b_gy = a.H * a.Cout * g.Wp, per_b_x = need_w ? a.H * Wx * Cp : 0;
  const int64_t bc = batch_chunk(a, (per_b_gy + per_b_x) * int64_t(sizeof(T)), nt);

  Plan<T> px;
  std::vector<T> zeros;
  if (need_x) {
    px = make_plan<S, T>(a, g, true);
    zeros.assign(px.tiles * kMR, T(0));
  }
  // grad_w units: (output-channel tile of kMW, chunk of kCiTiles input-channel tiles),
  // accumulators [tap][m][cols] per unit; each tile's tap ranges over input channels
  // (the centre's cut to the tile's block range)
  const int64_t cols = kCiTiles * NT;
  const int64_t otiles = (a.Cout + kMW - 1) / kMW;
  const int64_t cchunks = (Cp + cols - 1) / cols;
  const int64_t nr = g.T + 1;
  const int64_t wacc_n = need_w ? otiles * cchunks * nr * kMW * cols : 0;
  T* gyp = scratch<T>(bc * (per_b_gy + per_b_x) + wacc_n);
  T* xp = gyp + bc * per_b_gy;
  T* wacc = xp + bc * per_b_x;
  std::fill(wacc, wacc + wacc_n, T(0));
  std::vector<TapRange> wr;
  if (need_w) {
    wr.resize(otiles * nr);
    for (int64_t ot = 0; ot < otiles; ++ot)
      for (int64_t t = 0; t <= g.T; ++t) {
        TapRange& q = wr[ot * nr + t];
        int64_t i = g.c, j = g.c;
        if (t < g.T) tap_ij(t, a.k, &i, &j);
        q.dh = i - g.c;
        q.dw = j - g.c;
        q.k0 = 0;
        q.k1 = a.Cin;
        if (t == g.T)
          q.k1 = centre_inputs(std::min(a.Cout, (ot + 1) * kMW) - 1, a.Cin, a.Cout, a.groups,
                               a.type_b);
        q.woff = 0;
      }
  }
  std::vector<T> bacc(need_b ? a.Cout : 0, T(0));
  const DwGeo dg{a.W, a.Cout, g.Wp, Wx, Cp, g.c};
  const int64_t rows_per_block = std::max<int64_t>(1, kDwBlockPixels / a.W);

  for (int64_t b0 = 0; b0 < a.B; b0 += bc) {
    const int64_t nb = std::min(bc, a.B - b0);
    pad_rows(static_cast<const S*>(a.gy), a.gy_st, b0, nb, a.Cout, a.H, a.W, g, gyp, nt);
    if (need_w)
      pad_pixels(static_cast<const S*>(a.x), a.x_st, b0, nb, a.Cin, a.H, a.W, g.c, Wx, Cp, xp, nt);
    if (need_x)
      igemm_chunk(px, g, gyp, a.H, a.W, b0, nb, zeros, static_cast<S*>(a.gx), a.gx_st, nt);
    if (need_w) {
      const int64_t units = otiles * cchunks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
      for (int64_t u = 0; u < units; ++u) {
        const int64_t ot = u / cchunks, cc = u - ot * cchunks;
        const int64_t ci_lo = cc * cols;
        T* acc = wacc + u * nr * kMW * cols;
        for (int64_t bb = 0; bb < nb; ++bb) {
          const T* gyb = gyp + bb * per_b_gy;
          const T* xb = xp + bb * per_b_x;
          // per block of rows and tile of input channels, every tap (the tile's x rows
          // stay in L1 across the taps)
          for (int64_t hb = 0; hb < a.H; hb += rows_per_block) {
            for (int64_t ci0 = ci_lo; ci0 < std::min(ci_lo + cols, a.Cin); ci0 += NT) {
              for (int64_t r = 0; r < nr; ++r) {
                const TapRange& q = wr[ot * nr + r];
                const int64_t h0 = std::max(hb, -q.dh);
                const int64_t h1 = std::min(std::min(hb + rows_per_block, a.H), a.H - q.dh);
                if (h0 >= h1 || ci0 >= q.k1) continue;
                dw_tile(gyb, xb, dg, ot * kMW, ci0, q.dh, q.dw, h0, h1,
                        acc + r * kMW * cols + (ci0 - ci_lo), cols);
              }
            }
          }
        }
      }
    }
    if (need_b) {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int64_t o = 0; o < a.Cout; ++o) {
        T s = T(0);
        for (int64_t bb = 0; bb < nb; ++bb)
          for (int64_t h = 0; h < a.H; ++h) {
            const T* row = gyp + bb * per_b_gy + (h * a.Cout + o) * g.Wp + g.c;
            for (int64_t j = 0; j < a.W; ++j) s += row[j];
          }
        bacc[o] += s;
      }
    }
  }

  if (need_w) {
    S* gw = static_cast<S*>(a.gw);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t o = 0; o < a.Cout; ++o) {
      const int64_t ot = o / kMW, m = o - ot * kMW;
      const int64_t ncen = centre_inputs(o, a.Cin, a.Cout, a.groups, a.type_b);
      for (int64_t ci = 0; ci < a.Cin; ++ci) {
        const int64_t cc = ci / cols, col = ci - cc * cols;
        const T* acc = wacc + (ot * cchunks + cc) * nr * kMW * cols;
        for (int64_t i = 0; i < a.k; ++i)
          for (int64_t j = 0; j < a.k; ++j) {
            T v = T(0);
            if (i < g.c || (i == g.c && j < g.c)) {
              const int64_t t = i < g.c ? i * a.k + j : g.c * a.k + j;
              v = acc[(t * kMW + m) * cols + col];
            } else if (i == g.c && j == g.c && ci < ncen) {
              v = acc[(g.T * kMW + m) * cols + col];
            }
            Scalar<S>::store(
                gw + o * a.gw_st[0] + ci * a.gw_st[1] + i * a.gw_st[2] + j * a.gw_st[3], v);
          }
      }
    }
  }
  if (need_b) {
    S* gb = static_cast<S*>(a.gb);
    for (int64_t o = 0; o < a.Cout; ++o) Scalar<S>::store(gb + o * a.gb_st, bacc[o]);
  }
}

template <template <typename> class F>
void dispatch(const Args& a, int nt) {
  visit_dtype<Half, BFloat16>(a.dtype, "masked_conv2d cpu kernels",
                              [&](auto t) { F<decltype(t)>::run(a, nt); });
}

template <typename S>
struct Fwd {
  static void run(const Args& a, int nt) { forward_impl<S>(a, nt); }
};
template <typename S>
struct Bwd {
  static void run(const Args& a, int nt) { backward_impl<S>(a, nt); }
};

}  // namespace

void forward_cpu(const Args& a, int num_threads) { dispatch<Fwd>(a, num_threads); }
void backward_cpu(const Args& a, int num_threads) { dispatch<Bwd>(a, num_threads); }

}  // namespace masked_conv2d
}  // namespace dqk
