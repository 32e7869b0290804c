// CUDA kernels of the PixelCNN masked convolution: tiled implicit GEMM over the kept taps
// only, templated on the storage type; accumulation in float (double for float64).
//
// igemm_kernel (forward and grad_x): a block computes a kBM x kBN tile of
//   out[row, pixel], rows = output channels (forward) or input channels (grad_x), pixels
//   flattened over (b, h, w). The reduction runs over "steps" (tap, chunk of kBK
//   channels): the T = (k*k - 1)/2 fully kept taps with every channel, then the centre tap
//   with only the channel range the tile's rows see (forward: input channels
//   [0, centre_inputs(last row)); grad_x: output channels [centre_min_output(first row),
//   Cout)), each weight entry of the centre loaded only where it is kept. Per step the
//   block stages the weight slice A[k][row] and the shifted input pixels B[k][pixel]
//   (zero outside the image: the "same" padding) in shared memory; each of the 256
//   threads accumulates a 4 x 4 register tile. The next step's global loads are issued
//   into registers before the current step's FMAs (software pipelining).
// dw_kernel: per (tap, output-channel tile, input-channel tile, pixel split) block, the
//   kBM x kBN partial sum over its share of the pixels of grad_y[o, p] * x[ci, p + shift]
//   into work[split][tap][o][ci]; dw_reduce_kernel adds the splits in order and writes
//   grad_weight (zero at masked entries, which are never computed). At the centre tap a
//   block whose input channels no output channel of the tile sees does nothing.
// db_kernel: one block per output channel sums grad_y over (b, h, w) with a fixed tree.
// No atomics anywhere: results are deterministic.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/cuda_types.cuh"
#include "masked_conv2d.h"
#include "masked_conv2d_math.h"

namespace dqk {
namespace masked_conv2d {
namespace {

constexpr int kBM = 64;                       // rows of a tile
constexpr int kBN = 64;                       // pixels (igemm) / input channels (dw) of a tile
constexpr int kBK = 16;                       // reduction depth of one step
constexpr int kThreads = 256;                 // 16 x 16 threads, 4 x 4 outputs each
constexpr int kLoads = kBM * kBK / kThreads;  // = 4 staged values of A and of B per thread
constexpr int64_t kSplitTarget = 512;         // dw blocks to aim for
constexpr int64_t kMaxGridYZ = 65535;

static_assert(kBM == 64 && kBN == 64 && kBK == 16 && kThreads == 256 && kLoads == 4,
              "the thread mappings below assume these tile sizes");

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("masked_conv2d cuda: ") + what +
                             " launch failed: " + cudaGetErrorString(err));
}

template <typename S>
__device__ __forceinline__ typename DScalar<S>::acc ld(const void* base, int64_t off) {
  return DScalar<S>::load(static_cast<const S*>(base) + off);
}

// One staged step of a thread's 4x4 micro-tile: acc[ii][jj] += As[kk][tm * 4 + ii] *
// Bs[kk][tn + 16 * jj] over the kBK rows kk of the shared tiles.
template <typename Acc, int kWA, int kWB>
__device__ __forceinline__ void micro_tile_step(const Acc (&As)[kBK][kWA],
                                                const Acc (&Bs)[kBK][kWB], int tm, int tn,
                                                Acc (&acc)[4][4]) {
#pragma unroll
  for (int kk = 0; kk < kBK; ++kk) {
    Acc av[4], bv[4];
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) av[ii] = As[kk][tm * 4 + ii];
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) bv[jj] = Bs[kk][tn + 16 * jj];
#pragma unroll
    for (int ii = 0; ii < 4; ++ii)
#pragma unroll
      for (int jj = 0; jj < 4; ++jj) acc[ii][jj] += av[ii] * bv[jj];
  }
}

// kTr = false: forward, rows = output channels, reduction over input channels of x.
// kTr = true: grad_x, rows = input channels, reduction over output channels of grad_y.
template <typename S, typename Acc, bool kTr>
__global__ void __launch_bounds__(kThreads) igemm_kernel(const Args a) {
  __shared__ Acc As[kBK][kBM + 1];  // +1: conflict-free column stores
  __shared__ Acc Bs[kBK][kBN];
  const int tid = threadIdx.x;
  const int64_t M = kTr ? a.Cin : a.Cout, K = kTr ? a.Cout : a.Cin;
  const int64_t HW = a.H * a.W, NPIX = a.B * HW;
  const int64_t n0 = int64_t(blockIdx.x) * kBN, m0 = int64_t(blockIdx.y) * kBM;
  const int64_t c = a.k / 2, T = num_taps(a.k);
  const void* in = kTr ? a.gy : a.x;
  const int64_t* ist = kTr ? a.gy_st : a.x_st;

  // the pixel this thread stages for B (the same for every step) and its k rows
  const int bn = tid % kBN, bk0 = tid / kBN;  // k = bk0 + 4 r
  const int64_t p = n0 + bn;
  const bool pv = p < NPIX;
  int64_t pb = 0, ph = 0, pw = 0;
  if (pv) {
    pb = p / HW;
    const int64_t r = p - pb * HW;
    ph = r / a.W;
    pw = r - ph * a.W;
  }
  const int64_t in_b = pb * ist[0];
  // the weights this thread stages for A: k = ak, rows am0 + 16 r
  const int ak = tid % kBK, am0 = tid / kBK;

  // centre range of this tile
  int64_t lo_c = 0, hi_c = K;
  if (kTr) lo_c = centre_min_output(m0, a.Cin, a.Cout, a.groups, a.type_b);
  else hi_c = centre_inputs((m0 + kBM < M ? m0 + kBM : M) - 1, a.Cin, a.Cout, a.groups, a.type_b);
  const int64_t nch = (K + kBK - 1) / kBK;
  const int64_t steps_full = T * nch;
  const int64_t steps = steps_full + (hi_c > lo_c ? (hi_c - lo_c + kBK - 1) / kBK : 0);

  Acc ra[kLoads], rb[kLoads];
  auto stage = [&](int64_t s) {
    int64_t t, c0;
    if (s < steps_full) {
      t = s / nch;
      c0 = (s - t * nch) * kBK;
    } else {
      t = T;
      c0 = lo_c + (s - steps_full) * kBK;
    }
    int64_t i = c, j = c;
    if (t < T) tap_ij(t, a.k, &i, &j);
    const int64_t kend = t < T ? K : hi_c;
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int64_t m = m0 + am0 + 16 * r, kk = c0 + ak;
      bool ok = m < M && kk < kend;
      if (ok && t == T)
        ok = kTr ? kk >= centre_min_output(m, a.Cin, a.Cout, a.groups, a.type_b)
                 : kk < centre_inputs(m, a.Cin, a.Cout, a.groups, a.type_b);
      const int64_t o = kTr ? kk : m, ci = kTr ? m : kk;
      ra[r] = ok ? Acc(ld<S>(a.w, o * a.w_st[0] + ci * a.w_st[1] + i * a.w_st[2] + j * a.w_st[3]))
                 : Acc(0);
    }
    const int64_t hh = ph + (kTr ? c - i : i - c), ww = pw + (kTr ? c - j : j - c);
    const bool inside = pv && hh >= 0 && hh < a.H && ww >= 0 && ww < a.W;
    const int64_t poff = in_b + hh * ist[2] + ww * ist[3];
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int64_t kk = c0 + bk0 + 4 * r;
      rb[r] = (inside && kk < kend) ? Acc(ld<S>(in, poff + kk * ist[1])) : Acc(0);
    }
  };

  const int tm = tid / 16, tn = tid % 16;  // rows tm*4 + ii, pixels tn + 16 jj
  Acc acc[4][4];
#pragma unroll
  for (int ii = 0; ii < 4; ++ii)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) acc[ii][jj] = Acc(0);

  if (steps > 0) stage(0);
  for (int64_t s = 0; s < steps; ++s) {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      As[ak][am0 + 16 * r] = ra[r];
      Bs[bk0 + 4 * r][bn] = rb[r];
    }
    __syncthreads();
    if (s + 1 < steps) stage(s + 1);
    micro_tile_step(As, Bs, tm, tn, acc);
    __syncthreads();
  }

  S* out = static_cast<S*>(kTr ? a.gx : a.y);
  const int64_t* ost = kTr ? a.gx_st : a.y_st;
#pragma unroll
  for (int jj = 0; jj < 4; ++jj) {
    const int64_t q = n0 + tn + 16 * jj;
    if (q >= NPIX) continue;
    const int64_t qb = q / HW, r = q - qb * HW, qh = r / a.W, qw = r - qh * a.W;
    const int64_t base = qb * ost[0] + qh * ost[2] + qw * ost[3];
#pragma unroll
    for (int ii = 0; ii < 4; ++ii) {
      const int64_t m = m0 + tm * 4 + ii;
      if (m >= M) continue;
      Acc v = acc[ii][jj];
      if (!kTr && a.bias != nullptr) v += Acc(ld<S>(a.bias, m * a.bias_st));
      DScalar<S>::store(out + base + m * ost[1], v);
    }
  }
}

// grad_w partial sums: block (o tile * n_ci_tiles + ci tile, tap, split)
template <typename S, typename Acc>
__global__ void __launch_bounds__(kThreads)
    dw_kernel(const Args a, int64_t steps_per_split, int64_t n_ci_tiles, Acc* work) {
  __shared__ Acc As[kBK][kBM + 1];  // grad_y: A[pixel][o]
  __shared__ Acc Bs[kBK][kBN + 1];  // shifted x: B[pixel][ci]
  const int tid = threadIdx.x;
  const int64_t ot = blockIdx.x / n_ci_tiles, ct = blockIdx.x - ot * n_ci_tiles;
  const int64_t t = blockIdx.y, split = blockIdx.z;
  const int64_t o0 = ot * kBM, ci0 = ct * kBN;
  const int64_t c = a.k / 2, T = num_taps(a.k);
  if (t == T) {  // centre: nothing to do past the channels the tile's last output sees
    const int64_t o_last = (o0 + kBM < a.Cout ? o0 + kBM : a.Cout) - 1;
    if (ci0 >= centre_inputs(o_last, a.Cin, a.Cout, a.groups, a.type_b)) return;
  }
  int64_t i = c, j = c;
  if (t < T) tap_ij(t, a.k, &i, &j);
  const int64_t dh = i - c, dw = j - c;
  const int64_t HW = a.H * a.W, NPIX = a.B * HW;
  const int64_t nk = (NPIX + kBK - 1) / kBK;
  const int64_t s0 = split * steps_per_split;
  const int64_t s1 = s0 + steps_per_split < nk ? s0 + steps_per_split : nk;

  const int pk = tid % kBK, r0 = tid / kBK;  // staged pixel, rows r0 + 16 r
  Acc ra[kLoads], rb[kLoads];
  auto stage = [&](int64_t s) {
    const int64_t p = s * kBK + pk;
    bool pv = p < NPIX, inside = false;
    int64_t goff = 0, xoff = 0;
    if (pv) {
      const int64_t b = p / HW, r = p - b * HW, h = r / a.W, w = r - h * a.W;
      const int64_t hh = h + dh, ww = w + dw;
      inside = hh >= 0 && hh < a.H && ww >= 0 && ww < a.W;
      goff = b * a.gy_st[0] + h * a.gy_st[2] + w * a.gy_st[3];
      xoff = b * a.x_st[0] + hh * a.x_st[2] + ww * a.x_st[3];
    }
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      const int64_t o = o0 + r0 + 16 * r, ci = ci0 + r0 + 16 * r;
      ra[r] = (pv && o < a.Cout) ? Acc(ld<S>(a.gy, goff + o * a.gy_st[1])) : Acc(0);
      rb[r] = (inside && ci < a.Cin) ? Acc(ld<S>(a.x, xoff + ci * a.x_st[1])) : Acc(0);
    }
  };

  const int tm = tid / 16, tn = tid % 16;  // o = tm*4 + ii, ci = tn + 16 jj
  Acc acc[4][4];
#pragma unroll
  for (int ii = 0; ii < 4; ++ii)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) acc[ii][jj] = Acc(0);

  if (s0 < s1) stage(s0);
  for (int64_t s = s0; s < s1; ++s) {
#pragma unroll
    for (int r = 0; r < kLoads; ++r) {
      As[pk][r0 + 16 * r] = ra[r];
      Bs[pk][r0 + 16 * r] = rb[r];
    }
    __syncthreads();
    if (s + 1 < s1) stage(s + 1);
    micro_tile_step(As, Bs, tm, tn, acc);
    __syncthreads();
  }

  Acc* dst = work + (split * (T + 1) + t) * a.Cout * a.Cin;
#pragma unroll
  for (int ii = 0; ii < 4; ++ii) {
    const int64_t o = o0 + tm * 4 + ii;
    if (o >= a.Cout) continue;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int64_t ci = ci0 + tn + 16 * jj;
      if (ci < a.Cin) dst[o * a.Cin + ci] = acc[ii][jj];
    }
  }
}

// grad_weight[o, ci, i, j] = sum over splits of the partials (in order), 0 where masked
template <typename S, typename Acc>
__global__ void __launch_bounds__(kThreads)
    dw_reduce_kernel(const Args a, int64_t splits, const Acc* work) {
  const int64_t kk2 = a.k * a.k, n = a.Cout * a.Cin * kk2;
  const int64_t c = a.k / 2, T = num_taps(a.k);
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * kThreads) {
    const int64_t o = e / (a.Cin * kk2), r = e - o * a.Cin * kk2;
    const int64_t ci = r / kk2, r2 = r - ci * kk2, i = r2 / a.k, j = r2 - i * a.k;
    Acc v = Acc(0);
    if (is_kept(o, ci, i, j, a)) {
      const int64_t t = (i == c && j == c) ? T : (i < c ? i * a.k + j : c * a.k + j);
      for (int64_t s = 0; s < splits; ++s) v += work[((s * (T + 1) + t) * a.Cout + o) * a.Cin + ci];
    }
    DScalar<S>::store(
        static_cast<S*>(a.gw) + o * a.gw_st[0] + ci * a.gw_st[1] + i * a.gw_st[2] + j * a.gw_st[3],
        v);
  }
}

// grad_bias[o] = sum over (b, h, w) of grad_y[b, o, h, w]; one block per o, fixed tree
template <typename S, typename Acc>
__global__ void __launch_bounds__(kThreads) db_kernel(const Args a) {
  __shared__ Acc part[kThreads];
  const int64_t o = blockIdx.x;
  const int64_t HW = a.H * a.W;
  Acc s = Acc(0);
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t q = threadIdx.x; q < HW; q += kThreads) {
      const int64_t h = q / a.W, w = q - h * a.W;
      s += Acc(ld<S>(a.gy, b * a.gy_st[0] + o * a.gy_st[1] + h * a.gy_st[2] + w * a.gy_st[3]));
    }
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) DScalar<S>::store(static_cast<S*>(a.gb) + o * a.gb_st, part[0]);
}

struct DwPlan {
  int64_t splits = 0, steps_per_split = 0, n_o = 0, n_ci = 0, taps = 0;
};

DwPlan dw_plan(const Args& a) {
  DwPlan p;
  p.n_o = (a.Cout + kBM - 1) / kBM;
  p.n_ci = (a.Cin + kBN - 1) / kBN;
  p.taps = num_taps(a.k) + 1;
  const int64_t nk = (a.B * a.H * a.W + kBK - 1) / kBK;
  const int64_t base = p.taps * p.n_o * p.n_ci;
  int64_t splits = (kSplitTarget + base - 1) / base;
  if (splits > nk) splits = nk;
  if (splits > kMaxGridYZ) splits = kMaxGridYZ;
  if (splits < 1) splits = 1;
  p.steps_per_split = (nk + splits - 1) / splits;
  p.splits = (nk + p.steps_per_split - 1) / p.steps_per_split;
  return p;
}

int64_t acc_size(const Args& a) { return a.dtype == DType::kFloat64 ? 8 : 4; }

int grid_1d(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return int(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

template <typename S>
void forward_launch(const Args& a, cudaStream_t stream) {
  using Acc = typename DScalar<S>::acc;
  const int64_t npix = a.B * a.H * a.W;
  const int64_t gy = (a.Cout + kBM - 1) / kBM;
  if (gy > kMaxGridYZ) throw std::invalid_argument("masked_conv2d cuda: too many output channels");
  dim3 grid(unsigned((npix + kBN - 1) / kBN), unsigned(gy));
  igemm_kernel<S, Acc, false><<<grid, kThreads, 0, stream>>>(a);
  check_launch("forward");
}

template <typename S>
void backward_launch(const Args& a, cudaStream_t stream) {
  using Acc = typename DScalar<S>::acc;
  const int64_t npix = a.B * a.H * a.W;
  if (a.gx != nullptr) {
    const int64_t gy = (a.Cin + kBM - 1) / kBM;
    if (gy > kMaxGridYZ) throw std::invalid_argument("masked_conv2d cuda: too many input channels");
    dim3 grid(unsigned((npix + kBN - 1) / kBN), unsigned(gy));
    igemm_kernel<S, Acc, true><<<grid, kThreads, 0, stream>>>(a);
    check_launch("grad_x");
  }
  if (a.gw != nullptr) {
    if (a.work == nullptr)
      throw std::invalid_argument("masked_conv2d cuda: grad_weight needs a workspace");
    const DwPlan p = dw_plan(a);
    if (p.n_o * p.n_ci > 0x7fffffffLL || p.taps > kMaxGridYZ)
      throw std::invalid_argument("masked_conv2d cuda: weight too large");
    Acc* work = static_cast<Acc*>(a.work);
    dim3 grid(unsigned(p.n_o * p.n_ci), unsigned(p.taps), unsigned(p.splits));
    dw_kernel<S, Acc><<<grid, kThreads, 0, stream>>>(a, p.steps_per_split, p.n_ci, work);
    check_launch("grad_weight");
    dw_reduce_kernel<S, Acc>
        <<<grid_1d(a.Cout * a.Cin * a.k * a.k), kThreads, 0, stream>>>(a, p.splits, work);
    check_launch("grad_weight reduction");
  }
  if (a.gb != nullptr) {
    if (a.Cout > 0x7fffffffLL) throw std::invalid_argument("masked_conv2d cuda: Cout too large");
    db_kernel<S, Acc><<<unsigned(a.Cout), kThreads, 0, stream>>>(a);
    check_launch("grad_bias");
  }
}

template <template <typename> class F>
void dispatch(const Args& a, cudaStream_t stream) {
  visit_dtype<__half, __nv_bfloat16>(a.dtype, "masked_conv2d cuda kernels",
                                     [&](auto t) { F<decltype(t)>::run(a, stream); });
}

template <typename S>
struct Fwd {
  static void run(const Args& a, cudaStream_t s) { forward_launch<S>(a, s); }
};
template <typename S>
struct Bwd {
  static void run(const Args& a, cudaStream_t s) { backward_launch<S>(a, s); }
};

}  // namespace

void forward_cuda(const Args& a, void* stream) {
  dispatch<Fwd>(a, static_cast<cudaStream_t>(stream));
}

void backward_cuda(const Args& a, void* stream) {
  dispatch<Bwd>(a, static_cast<cudaStream_t>(stream));
}

int64_t backward_cuda_workspace(const Args& a) {
  if (a.gw == nullptr) return 0;
  const DwPlan p = dw_plan(a);
  return p.splits * p.taps * a.Cout * a.Cin * acc_size(a);
}

}  // namespace masked_conv2d
}  // namespace dqk
