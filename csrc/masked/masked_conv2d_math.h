// The PixelCNN mask rule shared by the CPU and CUDA kernels of masked_conv2d
// (dqkernels/reference/masked_conv2d.py is the Python statement of the same rule).
//
// Kernel k = 2c + 1. The fully kept taps, in raster order, are numbered t = 0 .. T-1 with
// T = c (k + 1) = (k*k - 1) / 2: t < c*k are the c rows above the centre (i = t / k,
// j = t % k), the last c are the centre row left of the centre (i = c, j = t - c*k). The
// centre tap (c, c) is kept for the channel pairs (o, ci) with ci < centre_inputs(o),
// equivalently o >= centre_min_output(ci). Everything else is masked.
#pragma once

#include <stdint.h>

#include "../common/macros.h"
#include "masked_conv2d.h"

namespace dqk {
namespace masked_conv2d {

DQK_HD int64_t num_taps(int64_t k) { return (k / 2) * (k + 1); }

// row and column of fully kept tap t
DQK_HD void tap_ij(int64_t t, int64_t k, int64_t* i, int64_t* j) {
  const int64_t c = k / 2;
  if (t < c * k) {
    *i = t / k;
    *j = t - (t / k) * k;
  } else {
    *i = c;
    *j = t - c * k;
  }
}

// first channel of block `block` of C channels in G blocks: ceil(block * C / G)
DQK_HD int64_t block_start(int64_t block, int64_t C, int64_t G) { return (block * C + G - 1) / G; }

// input channels [0, n) that output channel o sees at the centre tap
DQK_HD int64_t centre_inputs(int64_t o, int64_t Cin, int64_t Cout, int64_t G, bool type_b) {
  return block_start(o * G / Cout + (type_b ? 1 : 0), Cin, G);
}

// output channels [m, Cout) that see input channel ci at the centre tap (m = Cout: none)
DQK_HD int64_t centre_min_output(int64_t ci, int64_t Cin, int64_t Cout, int64_t G, bool type_b) {
  return block_start(ci * G / Cin + (type_b ? 0 : 1), Cout, G);
}

// is weight entry (o, ci, i, j) kept?
DQK_HD bool is_kept(int64_t o, int64_t ci, int64_t i, int64_t j, const Args& a) {
  const int64_t c = a.k / 2;
  if (i < c || (i == c && j < c)) return true;
  if (i == c && j == c) return ci < centre_inputs(o, a.Cin, a.Cout, a.groups, a.type_b);
  return false;
}

}  // namespace masked_conv2d
}  // namespace dqk
