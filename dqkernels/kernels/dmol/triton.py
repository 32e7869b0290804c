"""The ``triton`` backend of the dmol ops (discretized logistic mixture, PixelCNN++).

Same interface and math as :mod:`dqkernels.kernels.dmol.torch` (see docs/INTERNALS.md);
:mod:`dqkernels.reference.dmol` is the definition.

Design
------
* One program handles ``BLOCK_N`` pixels. Every parameter group (the logits, and per
  channel the means, log-scales and coupling coefficients) is loaded once as a 2-D tile
  ``[BLOCK_M, BLOCK_N]`` (mixtures x pixels, pixels the fast axis so that loads from the
  usual NCHW layout coalesce), ``BLOCK_M = next_power_of_2(M)``; padded mixture lanes
  get logit ``-inf`` and finite dummy parameters, so they contribute exact zeros.
* Tensors may have any strides (0 included): a flat pixel index ``n`` is split into
  ``(b, h, w)`` and every offset is formed from the strides in int64.
* The backward recomputes the forward in registers (nothing is saved between the
  passes) and writes every element of ``grad_params`` exactly once.
* Everything is computed in fp32, except the sums that form a coupled mean (C == 3),
  which are formed in fp64 and rounded once. No ``log1p``/``expm1``/``tanh`` from the
  language is used: they are written here as short polynomials that do not depend on
  ``tl.log`` being accurate near 1 (on NVIDIA GPUs Triton lowers fp32 ``exp`` to
  ``ex2.approx(x * log2 e)`` and divisions to ``div.full``; the few places whose errors
  are amplified by ``1/s``, up to e^7, use an exact-rounding exp and division instead).
* The distance from a bin edge to the mean, ``x_k +- d - mean``, is formed so that it
  is accurate to an ulp of itself (see ``_edges``): fp32 evaluation of the reference
  formula loses up to an ulp of 1 there, which ``1/s`` turns into errors of ~1e-4.
* Rounding to the grid is round-half-even (like ``torch.round``), and the grid value is
  ``k / half - 1`` with a correctly rounded division, as in the reference.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

# Launch configurations: (elements per [BLOCK_M, BLOCK_N] tile, most pixels per program,
# num_warps), per kernel and channel count. Chosen so that ptxas (sm_90, triton 3.9)
# reports no register spills for M in {1, 3, 10, 100}; the C == 3 backward keeps nine
# gradient tiles live through the softmax and gets a smaller tile. Not yet timed on a
# GPU: tune here.
_CONFIGS = {
    ("fwd", 1): (2048, 512, 4),
    ("fwd", 3): (2048, 512, 8),
    ("bwd", 1): (2048, 512, 8),
    ("bwd", 3): (1024, 512, 8),
    ("sample", 1): (2048, 512, 4),
    ("sample", 3): (2048, 512, 4),
}

# ----------------------------------------------------------------------------- math


@triton.jit
def _exp_acc(x):
    """``exp(x)`` to about 1 ulp from adds and multiplies (Cody-Waite reduction and a
    Taylor polynomial). On NVIDIA GPUs ``tl.exp`` is ``ex2.approx(x * log2(e))`` whose
    relative error grows with |x| (the rounding of the product); used for ``1/s``, which
    multiplies distances by up to e^7 and so passes any relative error on to ``a``, ``b``.
    """
    xc = tl.where(x < -174.0, -174.0, tl.where(x > 176.0, 176.0, x))
    n = tl.floor(xc * 1.4426950408889634 + 0.5)  # |n| <= 254
    r = (xc - n * 0.693145751953125) - n * 1.428606765330187e-06  # n * ln2_hi is exact
    p = 0.0001984126984126984  # 1/7!
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    ni = n.to(tl.int32)
    n1 = ni >> 1  # 2^n = 2^n1 * 2^n2,
    n2 = ni - n1  # both normal
    s1 = ((n1 + 127) << 23).to(tl.float32, bitcast=True)
    s2 = ((n2 + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(x != x, x, p * s1 * s2)


@triton.jit
def _log1p_mid(z):
    """``log(1 + z)`` for ``z`` in [-0.5, 1], accurate to a few ulp relative.

    ``log1p(z) = 2 atanh(w)``, ``w = z / (2 + z)`` in [-1/3, 1/3]; the odd series of
    atanh is cut after ``w^15`` (truncation < 2e-9 relative).
    """
    w = z / (2.0 + z)
    w2 = w * w
    p = 0.06666666666666667  # 1/15
    p = p * w2 + 0.07692307692307693  # 1/13
    p = p * w2 + 0.09090909090909091  # 1/11
    p = p * w2 + 0.1111111111111111  # 1/9
    p = p * w2 + 0.14285714285714285  # 1/7
    p = p * w2 + 0.2  # 1/5
    p = p * w2 + 0.3333333333333333  # 1/3
    p = p * w2 + 1.0
    return 2.0 * w * p


@triton.jit
def _expm1_neg_over(delta):
    """``h(delta) - 1`` where ``h(delta) = (1 - exp(-delta)) / delta``, for delta in
    [0, ln 2]: ``sum_{n>=1} (-delta)^n / (n+1)!`` cut after n = 9 (< 1e-9)."""
    p = -2.755731922398589e-07  # -1/10!
    p = p * delta + 2.755731922398589e-06  # 1/9!
    p = p * delta - 2.48015873015873e-05  # -1/8!
    p = p * delta + 0.0001984126984126984  # 1/7!
    p = p * delta - 0.001388888888888889  # -1/6!
    p = p * delta + 0.008333333333333333  # 1/5!
    p = p * delta - 0.041666666666666664  # -1/4!
    p = p * delta + 0.16666666666666666  # 1/3!
    p = p * delta - 0.5  # -1/2!
    return p * delta


@triton.jit
def _log1mexp_terms(log_delta):
    """For ``delta = exp(log_delta) > 0``: ``(log(1 - exp(-delta)), delta / expm1(delta))``.

    delta <= ln 2:  log_delta + log1p(h - 1)   with h = (1 - exp(-delta)) / delta from a
                    polynomial (so tiny or underflowed delta gives exactly log_delta, as
                    the reference's ``delta < 1e-30`` branch does), ratio = exp(-delta)/h
    delta >  ln 2:  log1p(-exp(-delta)),  ratio = delta exp(-delta) / (1 - exp(-delta))
    """
    delta = tl.exp(log_delta)
    e = tl.exp(-delta)
    small = delta <= 0.6931471805599453
    ds = tl.where(small, delta, 0.6931471805599453)
    hm1 = _expm1_neg_over(ds)  # in [-0.28, 0]
    z = tl.where(small, hm1, -e)  # in [-0.5, 0]: one log1p for both branches
    l1me = tl.where(small, log_delta, 0.0) + _log1p_mid(z)
    ratio = tl.where(small, e, delta * e) / (1.0 + z)
    return l1me, ratio


@triton.jit
def _tanh_and_grad(r):
    """``(tanh(r), 1 - tanh(r)^2)``, the first to about 2 ulp, the second without
    cancellation.

    |r| < 0.55: ``r + r * r^2 P(r^2)`` (Taylor to r^19, truncation < 1e-9 relative);
    otherwise ``1 - 2 e / (1 + e)`` with ``e = exp(-2|r|) < 1/3``.
    """
    ar = tl.abs(r)
    e2 = _exp_acc(-2.0 * ar)  # accurate exp and division: t * x_k is part of
    ope = 1.0 + e2  # a coupled mean, where errors are amplified by 1/s
    big = 1.0 - tl.div_rn(2.0 * e2, ope)
    r2 = r * r
    p = -0.00023912911424355248  # Taylor coefficients of tanh(r)/r - 1, in r^2
    p = p * r2 + 0.000590027440945586
    p = p * r2 - 0.0014558343870513183
    p = p * r2 + 0.003592128036572481
    p = p * r2 - 0.008863235529902197
    p = p * r2 + 0.021869488536155203
    p = p * r2 - 0.05396825396825397
    p = p * r2 + 0.13333333333333333
    p = p * r2 - 0.3333333333333333
    t = tl.where(ar < 0.55, r + r * (r2 * p), tl.where(r < 0.0, -big, big))
    dt = 4.0 * e2 / (ope * ope)
    return t, dt


@triton.jit
def _round_half_even(v):
    """``torch.round`` for finite or NaN ``v`` (NaN stays NaN)."""
    f = tl.floor(v)
    frac = v - f
    odd = (f - 2.0 * tl.floor(0.5 * f)) == 1.0
    up = (frac > 0.5) | ((frac == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@triton.jit
def _snap(x, half, top):
    """``(k, x_k)``: the level of ``x`` (round half even, clamped to [0, L-1]) and its grid
    value ``k / half - 1``. NaN stays NaN (the clamps are NaN-preserving ``where``s)."""
    v = (x + 1.0) * half
    v = tl.where(v < 0.0, 0.0, v)
    v = tl.where(v > top, top, v)
    k = _round_half_even(v)
    return k, tl.div_rn(k, half) - 1.0


@triton.jit
def _edges(k, mean, lvl, dh, dl):
    """``(x_k + d - mean, x_k - d - mean)``, accurate to an ulp of themselves.

    The bin edges ``x_k +- d = q / (L-1)``, with the integers ``q = 2k - L + 2`` (upper)
    and ``q = 2k - L`` (lower), are formed as ``q*dh + q*dl`` where ``dh + dl = 1/(L-1)``
    and ``q*dh`` is exact, and the mean is subtracted from the exact part first. This is
    what keeps ``a`` and ``b`` accurate when ``s`` is small (1/s amplifies any error in
    the distance from the edge to the mean)."""
    qa = 2.0 * k - lvl + 2.0
    qb = 2.0 * k - lvl
    return (qa * dh - mean) + qa * dl, (qb * dh - mean) + qb * dl


@triton.jit
def _grid64(k, lvl, d64):
    """Per pixel, in float64: ``(x_k, x_k + d, x_k - d)`` as ``q / (L-1)`` ([1, BLOCK_N])."""
    q = 2.0 * k - lvl  # an exact integer in fp32
    return (
        ((q + 1.0).to(tl.float64) * d64)[None, :],
        ((q + 2.0).to(tl.float64) * d64)[None, :],
        (q.to(tl.float64) * d64)[None, :],
    )


@triton.jit
def _edges_coupled(ea64, eb64, mean, coup64):
    """``_edges`` for a coupled channel, whose mean is ``mean + coup``: formed in float64
    from the exact edges ``ea64``, ``eb64`` (see ``_grid64``) and rounded once, as the
    rounding of the coupled mean to fp32 (an ulp of ~1) would be amplified by 1/s."""
    mc = mean.to(tl.float64) + coup64
    return (ea64 - mc).to(tl.float32), (eb64 - mc).to(tl.float32)


@triton.jit
def _bin_core(k, cen_a, cen_b, ls_raw, log2d, top, min_ls):
    """Shared part of the bin log mass: returns everything the forward and the backward
    need. ``k`` is [1, BLOCK_N]; ``cen_a = x_k + d - mean``, ``cen_b = x_k - d - mean``
    (see ``_edges``) and ``ls_raw`` are [BLOCK_M, BLOCK_N]."""
    ls = tl.where(ls_raw < min_ls, min_ls, ls_raw)  # NaN-preserving clamp
    inv_s = _exp_acc(-ls)
    a = cen_a * inv_s
    b = cen_b * inv_s
    ea = tl.exp(-tl.abs(a))
    eb = tl.exp(-tl.abs(b))
    sp_na = tl.where(a < 0.0, -a, 0.0) + _log1p_mid(ea)  # softplus(-a)
    sp_b = tl.where(b > 0.0, b, 0.0) + _log1p_mid(eb)  # softplus(b)
    l1me, ratio = _log1mexp_terms(log2d - ls)
    low = k == 0.0
    high = k == top
    lp = tl.where(low, -sp_na, tl.where(high, -sp_b, l1me - sp_na - sp_b))
    return lp, low, high, a, b, ea, eb, inv_s, ratio


@triton.jit
def _bin_lp(k, cen_a, cen_b, ls_raw, log2d, top, min_ls):
    lp, low, high, a, b, ea, eb, inv_s, ratio = _bin_core(
        k, cen_a, cen_b, ls_raw, log2d, top, min_ls
    )
    return lp


@triton.jit
def _bin_lp_grad(k, cen_a, cen_b, ls_raw, log2d, top, min_ls):
    """``(lp, dlp/dmean, dlp/dlog_s_raw)``; the last is zero where the clamp is active."""
    lp, low, high, a, b, ea, eb, inv_s, ratio = _bin_core(
        k, cen_a, cen_b, ls_raw, log2d, top, min_ls
    )
    sig_na = tl.where(a >= 0.0, ea, 1.0) / (1.0 + ea)  # sigmoid(-a)
    sig_b = tl.where(b >= 0.0, 1.0, eb) / (1.0 + eb)  # sigmoid(b)
    dmean = tl.where(low, -sig_na, tl.where(high, sig_b, sig_b - sig_na)) * inv_s
    ta = -a * sig_na
    tb = b * sig_b
    dlogs = tl.where(low, ta, tl.where(high, tb, ta + tb - ratio))
    dlogs = tl.where(ls_raw >= min_ls, dlogs, 0.0)
    return lp, dmean, dlogs


@triton.jit
def _to_store(v, ptr):
    """``v`` (fp32) converted to ``ptr``'s element type, rounding to nearest even. (For
    bf16 the rounding is done on the bits first: the interpreter truncates fp32 -> bf16;
    on a GPU the conversion of the already rounded value is exact.)"""
    ty = ptr.dtype.element_ty
    if ty == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        bits = (bits >> 16) << 16
        v = tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
    return v.to(ty)


@triton.jit
def _load_group(ptr, m64, start, stride_c, pix, mask):
    """The [BLOCK_M, BLOCK_N] tile of channels ``start + m`` as fp32."""
    offs = ((m64 + start) * stride_c)[:, None] + pix[None, :]
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_group(ptr, val, m64, start, stride_c, pix, mask):
    offs = ((m64 + start) * stride_c)[:, None] + pix[None, :]
    tl.store(ptr + offs, _to_store(val, ptr), mask=mask)


@triton.jit
def _pixels(N, HW, W, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    n_ok = n < N
    bi = n // HW
    rem = n - bi * HW
    hi = rem // W
    wi = rem - hi * W
    return n_ok, bi, hi, wi


@triton.jit
def _load_logits(p_ptr, m64, m_ok, spc, p_pix, mask):
    l = tl.load(p_ptr + ((m64 * spc)[:, None] + p_pix[None, :]), mask=mask, other=0.0).to(
        tl.float32
    )
    return tl.where(m_ok[:, None], l, float("-inf"))


@triton.jit
def _max0(v):
    """Max over mixtures; a column of all ``-inf`` gives 0 (no ``-inf - -inf``)."""
    vmax = tl.max(v, axis=0)
    return tl.where(vmax == float("-inf"), 0.0, vmax)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _dmol_nll_fwd_kernel(
    x_ptr,
    p_ptr,
    out_ptr,
    N,
    HW,
    W,
    M,
    sxb,
    sxc,
    sxh,
    sxw,
    spb,
    spc,
    sph,
    spw,
    sob,
    soh,
    sow,
    half,
    top,
    lvl,
    dh,
    dl,
    log2d,
    min_ls,
    C: tl.constexpr,
    J: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    n_ok, bi, hi, wi = _pixels(N, HW, W, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    m64 = m.to(tl.int64)
    mask = m_ok[:, None] & n_ok[None, :]
    p_pix = bi * spb + hi * sph + wi * spw
    x_pix = bi * sxb + hi * sxh + wi * sxw

    l = _load_logits(p_ptr, m64, m_ok, spc, p_pix, mask)

    x0 = tl.load(x_ptr + x_pix, mask=n_ok, other=0.0).to(tl.float32)
    k0, xk0 = _snap(x0, half, top)
    mean0 = _load_group(p_ptr, m64, M, spc, p_pix, mask)
    ls0 = _load_group(p_ptr, m64, M + M, spc, p_pix, mask)
    ca, cb = _edges(k0[None, :], mean0, lvl, dh, dl)
    lp = _bin_lp(k0[None, :], ca, cb, ls0, log2d, top, min_ls)
    bad = x0 != x0
    if C == 3:
        x1 = tl.load(x_ptr + (x_pix + sxc), mask=n_ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + (x_pix + sxc + sxc), mask=n_ok, other=0.0).to(tl.float32)
        k1, xk1 = _snap(x1, half, top)
        k2, xk2 = _snap(x2, half, top)
        bad = bad | (x1 != x1) | (x2 != x2)
        d64 = 1.0 / (tl.cast(lvl, tl.float64) - 1.0)
        x0_64, ea0, eb0 = _grid64(k0, lvl, d64)  # exact grid values and bin edges
        x1_64, ea1, eb1 = _grid64(k1, lvl, d64)
        x2_64, ea2, eb2 = _grid64(k2, lvl, d64)
        # group (c, j) starts at channel M + (c*J + j)*M; J == 3
        t0, dt0 = _tanh_and_grad(_load_group(p_ptr, m64, 3 * M, spc, p_pix, mask))
        mean1 = _load_group(p_ptr, m64, 4 * M, spc, p_pix, mask)
        ls1 = _load_group(p_ptr, m64, 5 * M, spc, p_pix, mask)
        ca, cb = _edges_coupled(ea1, eb1, mean1, t0.to(tl.float64) * x0_64)
        lp += _bin_lp(k1[None, :], ca, cb, ls1, log2d, top, min_ls)
        t1, dt1 = _tanh_and_grad(_load_group(p_ptr, m64, 6 * M, spc, p_pix, mask))
        t2, dt2 = _tanh_and_grad(_load_group(p_ptr, m64, 9 * M, spc, p_pix, mask))
        mean2 = _load_group(p_ptr, m64, 7 * M, spc, p_pix, mask)
        ls2 = _load_group(p_ptr, m64, 8 * M, spc, p_pix, mask)
        ca, cb = _edges_coupled(
            ea2, eb2, mean2, t1.to(tl.float64) * x0_64 + t2.to(tl.float64) * x1_64
        )
        lp += _bin_lp(k2[None, :], ca, cb, ls2, log2d, top, min_ls)

    # NLL = log sum_j exp(l_j - lmax) - logsumexp_m((l_m - lmax) + lp_m)
    ls_ = l - _max0(l)[None, :]
    lse_l = tl.log(tl.sum(tl.exp(ls_), axis=0))
    v = ls_ + lp
    vmax = _max0(v)
    lse_v = vmax + tl.log(tl.sum(tl.exp(v - vmax[None, :]), axis=0))
    nll = lse_l - lse_v
    nll = tl.where(bad, float("nan"), nll)
    tl.store(out_ptr + (bi * sob + hi * soh + wi * sow), nll, mask=n_ok)


@triton.jit
def _dmol_nll_bwd_kernel(
    x_ptr,
    p_ptr,
    go_ptr,
    gp_ptr,
    N,
    HW,
    W,
    M,
    sxb,
    sxc,
    sxh,
    sxw,
    spb,
    spc,
    sph,
    spw,
    sgob,
    sgoh,
    sgow,
    sgb,
    sgc,
    sgh,
    sgw,
    half,
    top,
    lvl,
    dh,
    dl,
    log2d,
    min_ls,
    C: tl.constexpr,
    J: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    n_ok, bi, hi, wi = _pixels(N, HW, W, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    m64 = m.to(tl.int64)
    mask = m_ok[:, None] & n_ok[None, :]
    p_pix = bi * spb + hi * sph + wi * spw
    x_pix = bi * sxb + hi * sxh + wi * sxw
    g_pix = bi * sgb + hi * sgh + wi * sgw

    l = _load_logits(p_ptr, m64, m_ok, spc, p_pix, mask)
    g = tl.load(go_ptr + (bi * sgob + hi * sgoh + wi * sgow), mask=n_ok, other=0.0).to(tl.float32)

    x0 = tl.load(x_ptr + x_pix, mask=n_ok, other=0.0).to(tl.float32)
    k0, xk0 = _snap(x0, half, top)
    mean0 = _load_group(p_ptr, m64, M, spc, p_pix, mask)
    ls0 = _load_group(p_ptr, m64, M + M, spc, p_pix, mask)
    ca, cb = _edges(k0[None, :], mean0, lvl, dh, dl)
    lp, dm0, dl0 = _bin_lp_grad(k0[None, :], ca, cb, ls0, log2d, top, min_ls)
    if C == 3:
        x1 = tl.load(x_ptr + (x_pix + sxc), mask=n_ok, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + (x_pix + sxc + sxc), mask=n_ok, other=0.0).to(tl.float32)
        k1, xk1 = _snap(x1, half, top)
        k2, xk2 = _snap(x2, half, top)
        d64 = 1.0 / (tl.cast(lvl, tl.float64) - 1.0)
        x0_64, ea0, eb0 = _grid64(k0, lvl, d64)  # exact grid values and bin edges
        x1_64, ea1, eb1 = _grid64(k1, lvl, d64)
        x2_64, ea2, eb2 = _grid64(k2, lvl, d64)
        t0, dt0 = _tanh_and_grad(_load_group(p_ptr, m64, 3 * M, spc, p_pix, mask))
        mean1 = _load_group(p_ptr, m64, 4 * M, spc, p_pix, mask)
        ls1 = _load_group(p_ptr, m64, 5 * M, spc, p_pix, mask)
        ca, cb = _edges_coupled(ea1, eb1, mean1, t0.to(tl.float64) * x0_64)
        lp1, dm1, dl1 = _bin_lp_grad(k1[None, :], ca, cb, ls1, log2d, top, min_ls)
        t1, dt1 = _tanh_and_grad(_load_group(p_ptr, m64, 6 * M, spc, p_pix, mask))
        t2, dt2 = _tanh_and_grad(_load_group(p_ptr, m64, 9 * M, spc, p_pix, mask))
        mean2 = _load_group(p_ptr, m64, 7 * M, spc, p_pix, mask)
        ls2 = _load_group(p_ptr, m64, 8 * M, spc, p_pix, mask)
        ca, cb = _edges_coupled(
            ea2, eb2, mean2, t1.to(tl.float64) * x0_64 + t2.to(tl.float64) * x1_64
        )
        lp2, dm2, dl2 = _bin_lp_grad(k2[None, :], ca, cb, ls2, log2d, top, min_ls)
        lp = lp + lp1 + lp2
        # what reaches the raw coefficients, per unit of gradient on the coupled means
        q0 = dm1 * dt0 * xk0[None, :]
        q1 = dm2 * dt1 * xk0[None, :]
        q2 = dm2 * dt2 * xk1[None, :]

    # pi = softmax(l), w = softmax(l + lp) (the posterior)
    ls_ = l - _max0(l)[None, :]
    el = tl.exp(ls_)
    pi = el / tl.sum(el, axis=0)[None, :]
    v = ls_ + lp
    ev = tl.exp(v - _max0(v)[None, :])
    post = ev / tl.sum(ev, axis=0)[None, :]
    g2 = g[None, :]
    coef = -g2 * post  # dNLL/dlp_cm, same for every c

    _store_group(gp_ptr, g2 * (pi - post), m64, 0, sgc, g_pix, mask)
    _store_group(gp_ptr, coef * dm0, m64, M, sgc, g_pix, mask)
    _store_group(gp_ptr, coef * dl0, m64, M + M, sgc, g_pix, mask)
    if C == 3:
        _store_group(gp_ptr, coef * q0, m64, 3 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * dm1, m64, 4 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * dl1, m64, 5 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * q1, m64, 6 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * dm2, m64, 7 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * dl2, m64, 8 * M, sgc, g_pix, mask)
        _store_group(gp_ptr, coef * q2, m64, 9 * M, sgc, g_pix, mask)


@triton.jit
def _gather(ptr, pix, msel64, start, stride_c, n_ok):
    """Per pixel, channel ``start + msel`` as fp32 ([BLOCK_N])."""
    return tl.load(ptr + (pix + (msel64 + start) * stride_c), mask=n_ok, other=0.0).to(tl.float32)


@triton.jit
def _draw_level(mean, ls_raw, uc, half, top, min_ls):
    """Inverse-CDF draw from logistic(mean, exp(ls)) binned to the grid value."""
    ls = tl.where(ls_raw < min_ls, min_ls, ls_raw)
    # log(u) - log1p(-u): 1 - u is exact for u > 0.5; a series otherwise
    log1m = tl.where(uc > 0.5, tl.log(1.0 - uc), _log1p_mid(-tl.where(uc > 0.5, 0.5, uc)))
    y = mean + tl.exp(ls) * (tl.log(uc) - log1m)
    k, xk = _snap(y, half, top)  # clamp-then-round == round-then-clamp (integer bounds)
    return xk


@triton.jit
def _dmol_sample_kernel(
    p_ptr,
    u_ptr,
    out_ptr,
    N,
    HW,
    W,
    M,
    spb,
    spc,
    sph,
    spw,
    sub,
    suc,
    suh,
    suw,
    sob,
    soc,
    soh,
    sow,
    half,
    top,
    min_ls,
    C: tl.constexpr,
    J: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    n_ok, bi, hi, wi = _pixels(N, HW, W, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    m_ok = m < M
    m64 = m.to(tl.int64)
    mask = m_ok[:, None] & n_ok[None, :]
    p_pix = bi * spb + hi * sph + wi * spw
    u_pix = bi * sub + hi * suh + wi * suw
    o_pix = bi * sob + hi * soh + wi * sow

    # component: smallest m with cumsum(exp(l - lmax))_m > u0 * total, clamped to M-1
    l = _load_logits(p_ptr, m64, m_ok, spc, p_pix, mask)
    e = tl.exp(l - _max0(l)[None, :])
    cum = tl.cumsum(e, axis=0)
    total = tl.max(cum, axis=0)  # cum is non-decreasing: its last entry
    u0 = tl.load(u_ptr + u_pix, mask=n_ok, other=0.0).to(tl.float32)
    target = u0 * total
    below = m_ok[:, None] & (cum <= target[None, :])
    cnt = tl.sum(tl.where(below, 1, 0), axis=0)
    msel = tl.where(cnt > M - 1, M - 1, cnt).to(tl.int64)

    u_c = u_pix + suc
    uc = tl.load(u_ptr + u_c, mask=n_ok, other=0.5).to(tl.float32)
    mean = _gather(p_ptr, p_pix, msel, M, spc, n_ok)
    ls = _gather(p_ptr, p_pix, msel, 2 * M, spc, n_ok)
    xs0 = _draw_level(mean, ls, uc, half, top, min_ls)
    tl.store(out_ptr + o_pix, _to_store(xs0, out_ptr), mask=n_ok)
    if C == 3:
        r0 = _gather(p_ptr, p_pix, msel, 3 * M, spc, n_ok)
        r1 = _gather(p_ptr, p_pix, msel, 6 * M, spc, n_ok)
        r2 = _gather(p_ptr, p_pix, msel, 9 * M, spc, n_ok)
        t0, dt0 = _tanh_and_grad(r0)
        t1, dt1 = _tanh_and_grad(r1)
        t2, dt2 = _tanh_and_grad(r2)

        u_c += suc
        uc = tl.load(u_ptr + u_c, mask=n_ok, other=0.5).to(tl.float32)
        mean = _gather(p_ptr, p_pix, msel, 4 * M, spc, n_ok) + t0 * xs0
        ls = _gather(p_ptr, p_pix, msel, 5 * M, spc, n_ok)
        xs1 = _draw_level(mean, ls, uc, half, top, min_ls)
        tl.store(out_ptr + (o_pix + soc), _to_store(xs1, out_ptr), mask=n_ok)

        u_c += suc
        uc = tl.load(u_ptr + u_c, mask=n_ok, other=0.5).to(tl.float32)
        mean = _gather(p_ptr, p_pix, msel, 7 * M, spc, n_ok) + t1 * xs0 + t2 * xs1
        ls = _gather(p_ptr, p_pix, msel, 8 * M, spc, n_ok)
        xs2 = _draw_level(mean, ls, uc, half, top, min_ls)
        tl.store(out_ptr + (o_pix + soc + soc), _to_store(xs2, out_ptr), mask=n_ok)


# ----------------------------------------------------------------------------- wrappers


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _geometry(kind: str, num_params: int, num_channels: int):
    """``(J, M, BLOCK_M, BLOCK_N, num_warps)`` for kernel ``kind``."""
    J = 3 if num_channels == 3 else 2
    M = num_params // (1 + J * num_channels)
    tile, max_n, num_warps = _CONFIGS[(kind, 3 if num_channels == 3 else 1)]
    block_m = triton.next_power_of_2(M)
    block_n = max(1, min(max_n, tile // block_m))
    return J, M, block_m, block_n, num_warps


def _level_consts(num_levels: int):
    """``(half, L-1, L, dh, dl, log(2d))`` with ``dh + dl = d = 1/(L-1)``; ``dh`` keeps few
    enough bits that ``q * dh`` is exact in fp32 for every integer ``|q| <= L``."""
    L = num_levels
    d = 1.0 / (L - 1)
    bits = max(1, 24 - L.bit_length())
    mant, exp = math.frexp(d)
    dh = math.ldexp(math.floor(math.ldexp(mant, bits)), exp - bits)
    return (L - 1) / 2.0, float(L - 1), float(L), dh, d - dh, math.log(2.0 * d)


def _launch(kernel, kind: str, params, tensors, num_channels, consts, min_log_scale):
    """Run ``kernel`` (``kind`` of :data:`_CONFIGS`) with one program per ``BLOCK_N`` of
    the ``B*H*W`` pixels of ``params [B, P, H, W]``; its arguments: ``tensors``, the pixel
    geometry ``(N, H*W, W, M)``, every tensor's strides in order, ``consts`` (from
    :func:`_level_consts`) and ``min_log_scale``."""
    B, P, H, W = params.shape
    J, M, block_m, block_n, num_warps = _geometry(kind, P, num_channels)
    N = B * H * W
    strides = [s for t in tensors for s in t.stride()]
    args = (*tensors, N, H * W, W, M, *strides, *consts, float(min_log_scale))
    meta = dict(C=num_channels, J=J, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps)
    with _device_guard(params):
        kernel[(triton.cdiv(N, block_n),)](*args, **meta)


def nll_forward(x, params, out, num_levels, min_log_scale):
    tensors = (x, params, out)
    consts = _level_consts(num_levels)
    _launch(_dmol_nll_fwd_kernel, "fwd", params, tensors, x.shape[1], consts, min_log_scale)


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    tensors = (x, params, grad_out, grad_params)
    consts = _level_consts(num_levels)
    _launch(_dmol_nll_bwd_kernel, "bwd", params, tensors, x.shape[1], consts, min_log_scale)


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    tensors = (params, u, out)
    consts = _level_consts(num_levels)[:2]  # half, top
    _launch(_dmol_sample_kernel, "sample", params, tensors, num_channels, consts, min_log_scale)
