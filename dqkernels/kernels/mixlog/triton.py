"""The ``triton`` backend of the mixture-of-logistics CDF coupling (Flow++).

Same interface and math as :mod:`dqkernels.kernels.mixlog.torch` (see docs/INTERNALS.md,
"Coupling kernels"); :mod:`dqkernels.reference.mixlogcdf_coupling` is the definition.

Design
------
* One program handles ``BLOCK`` elements x ``KP`` components as a 2-D tile
  (``KP = next_power_of_2(K)``, components the fast axis, as in the usual ``[..., K]``
  layout). Padded lanes get logit ``-inf`` and finite dummy means and log-scales, so they
  contribute exact zeros to every sum and are never stored.
* The elements of a tile are ``ROWS`` batch rows by ``BN`` consecutive elements of a row
  (``ROWS > 1`` only when a row is shorter than the tile), so that the logdet is written
  deterministically: one fp32 partial per (row, column block) into a ``[B, n_blocks]``
  buffer that torch sums afterwards. Tensors may have any strides (0 included), seen as
  ``[B, n1, n2, n3(, K)]`` through :func:`dqkernels.kernels._layout.element_layout`;
  offsets are int64, and a ``FLAT`` path (every tensor merges to one inner dim) skips the
  index division.
* Per element and component, ``z = (x - mean) exp(-log_scale)`` (the exp to ~1 ulp,
  since ``1/s`` up to e^7 multiplies distances), one ``e = exp(-|z|)`` and one
  ``log1p(e)`` (a short series) give both log sigmoids; ``log F``, ``log(1 - F)``,
  ``log F'`` and ``N = logsumexp(logits)`` are max-shifted log-sum-exps over the tile's
  component axis (all in log space, nothing underflows in the tails). ``log F'`` is
  summed relative to the shifted terms of the larger of ``F``, ``1 - F``, so that
  ``l = log F' - log F - log(1 - F)`` does not lose ``eps |z|`` to cancellation in the
  tails (see ``_mixture_logs``).
* The backward recomputes everything in registers; the tile holds all K components, so
  ``l_x = sum_k B_k / s_k`` is known before any per-component gradient is written, and
  one kernel serves ``inverse=False`` and ``inverse=True``.
* The inverse runs the whole root search in one launch: safeguarded Newton on
  ``g(x) = logit F(x)`` toward ``t = (y - b) exp(-a)`` inside the bracket
  ``[min_k(mean_k + s_k t), max_k(...)]``, started at the softmax-weighted mean of the
  per-component roots (clamped to the bracket). Each evaluation shrinks the bracket by the
  sign of ``g - t``; a Newton step is replaced by bisection when it is not finite, leaves
  the open bracket, or is larger than half the step before last (``rtsafe``'s rule, so
  the bracket at least halves every two steps). An element stops when ``|g - t|`` is at
  the rounding level of ``g``, ``8 eps (1 + |log F| + |log(1-F)|)`` (a last Newton step
  is taken only if it is shorter than ``2^-10 (1 + |x|)``: where ``g`` is flat, a step
  on a residual that is all rounding could go far), or when the step taken or the
  bracket is below ``2^-21 |x|`` (a few ulps). The loop runs while any element of the tile is
  active, at most ``_MAX_ITERS`` times. ``g`` and ``log g'`` are then evaluated once more
  at the returned point for the logdet.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dqkernels.kernels._layout import element_layout
from dqkernels.kernels.affine.triton import _split
from dqkernels.kernels.dmol.triton import _exp_acc, _log1p_mid, _to_store

# Launch configurations: (elements x padded components per tile, most elements of a row
# per tile, num_warps). Not yet timed on a GPU: tune here.
_CONFIGS = {
    "fwd": (1024, 512, 4),
    "inv": (1024, 512, 4),
    "bwd": (1024, 512, 4),
}
_MAX_ITERS = 100  # hard cap of the root search (bisection alone needs < 64)

_EPS = 1.1920928955078125e-07  # fp32 machine epsilon
_TOL_X = 4.76837158203125e-07  # 2^-21: a step or bracket below this times |x| stops
_TOL_X_ABS = 1e-30
_TOL_G = 8.0 * _EPS  # |g - t| <= _TOL_G * (1 + |log F| + |log(1-F)|) stops
_FINAL_STEP = 2.0**-10  # longest last Newton step there, times (1 + |x|)

# ----------------------------------------------------------------------------- layout


@triton.jit
def _elements(B, N, nbn, ROWS: tl.constexpr, BN: tl.constexpr):
    """The tile's elements: ``(rows [BLOCK] int64, cols [BLOCK] int32, ok [BLOCK],
    rows of the tile [ROWS] int64, column block)``, ``BLOCK = ROWS * BN``."""
    pid = tl.program_id(0)
    rb = pid // nbn
    cb = pid - rb * nbn
    e = tl.arange(0, ROWS * BN)
    r = e // BN
    rows = rb.to(tl.int64) * ROWS + r.to(tl.int64)
    cols = cb * BN + (e - r * BN)
    ok = (rows < B) & (cols < N)
    trows = rb.to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    return rows, cols, ok, trows, cb


@triton.jit
def _off(rows, i1, i2, i3, sb, s1, s2, s3, FLAT: tl.constexpr):
    """int64 element offsets ``[BLOCK]`` of a tensor with strides ``(sb, s1, s2, s3)``."""
    if FLAT:
        return rows * sb + i3 * s3
    else:
        return rows * sb + i1 * s1 + i2 * s2 + i3 * s3


@triton.jit
def _load_e(ptr, offs, ok):
    return tl.load(ptr + offs, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _load_k(ptr, offs, k64, sk, mask, other):
    return tl.load(ptr + (offs[:, None] + (k64 * sk)[None, :]), mask=mask, other=other).to(
        tl.float32
    )


@triton.jit
def _row_sums(v, ok, ROWS: tl.constexpr, BN: tl.constexpr):
    """Per tile row, the sum of ``v`` over the valid elements ([ROWS])."""
    return tl.sum(tl.reshape(tl.where(ok, v, 0.0), (ROWS, BN)), axis=1)


# ----------------------------------------------------------------------------- math


@triton.jit
def _max0(v):
    """Max over the component axis; a row of all ``-inf`` gives 0 (no ``-inf - -inf``)."""
    m = tl.max(v, axis=1)
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _lse(v):
    """Max-shifted log-sum-exp over the component axis: ``(lse, v - max, exp(v - max),
    sum)``. A row of all ``-inf`` gives ``-inf``."""
    m = _max0(v)
    d = v - m[:, None]
    ev = tl.exp(d)
    s = tl.sum(ev, axis=1)
    return m + tl.log(s), d, ev, s


@triton.jit
def _log_sigmoids(x, mean, inv_s):
    """``(z, e, log sigmoid(z), log sigmoid(-z))`` per component, ``e = exp(-|z|)``."""
    z = (x[:, None] - mean) * inv_s
    e = tl.exp(-tl.abs(z))
    lp = _log1p_mid(e)
    lsz = tl.where(z < 0.0, z, 0.0) - lp
    lsnz = tl.where(z > 0.0, -z, 0.0) - lp
    return z, e, lsz, lsnz


@triton.jit
def _mixture_logs(x, lg, mean, inv_s, ls, nrm):
    """Everything the kernels need of the mixture at ``x`` ([BLOCK]); ``lg`` are the raw
    logits and ``nrm = logsumexp(lg)``. Returns ``(g, l, lF, l1F, z, e, (p, s1), (q, s2),
    (r, s3))`` with ``g = lF - l1F`` (logit F), ``l = ldF - lF - l1F + N`` (log g'), and the
    unnormalised posteriors of F, 1 - F and F' with their sums.

    ``ldF`` is formed relative to the larger of ``F`` and ``1 - F`` (``1 - F`` where
    ``F >= 1/2``): ``ldF - l1F = log sum_k exp((v2_k - m2) + lsz_k - ls_k) - log s2``, with
    the shifted exponents ``v2_k - m2`` of the ``1 - F`` sum. In a tail the three sums
    are all of size ``exp(-|z|)``; forming ``l`` from their logs would cancel ``|z|`` and
    lose ``eps |z|``, this loses ``eps |l|``. Still max-shifted, so ``F'`` far below ``F``
    and ``1 - F`` (between far-apart components) stays finite in log space."""
    z, e, lsz, lsnz = _log_sigmoids(x, mean, inv_s)
    lf, d1, e1, s1 = _lse(lg + lsz)
    l1f, d2, e2, s2 = _lse(lg + lsnz)
    right = lf >= l1f
    rt = right[:, None]
    u = tl.where(rt, d2 + lsz, d1 + lsnz) - ls
    mu = _max0(u)
    e3 = tl.exp(u - mu[:, None])
    s3 = tl.sum(e3, axis=1)
    l = (mu + tl.log(s3 / tl.where(right, s2, s1))) + (nrm - tl.where(right, lf, l1f))
    return lf - l1f, l, lf, l1f, z, e, e1, s1, e2, s2, e3, s3


@triton.jit
def _logit_cdf(x, lg, mean, inv_s, ls, nrm):
    """``(g, l, log F + N, log(1-F) + N)``: ``g = logit F(x)``, ``l = log g'(x)``."""
    g, l, lf, l1f, _z, _e, _e1, _s1, _e2, _s2, _e3, _s3 = _mixture_logs(x, lg, mean, inv_s, ls, nrm)
    return g, l, lf, l1f


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _mixlog_fwd_kernel(
    x_ptr,
    a_ptr,
    b_ptr,
    lg_ptr,
    mu_ptr,
    ls_ptr,
    y_ptr,
    part_ptr,
    B,
    N,
    n2,
    n3,
    nbn,
    K,
    sxb,
    sx1,
    sx2,
    sx3,
    sab,
    sa1,
    sa2,
    sa3,
    sbb,
    sb1,
    sb2,
    sb3,
    slgb,
    slg1,
    slg2,
    slg3,
    slgk,
    smub,
    smu1,
    smu2,
    smu3,
    smuk,
    slsb,
    sls1,
    sls2,
    sls3,
    slsk,
    INVERSE: tl.constexpr,
    FLAT: tl.constexpr,
    MAX_ITERS: tl.constexpr,
    TOL_X: tl.constexpr,
    TOL_X_ABS: tl.constexpr,
    TOL_G: tl.constexpr,
    FINAL_STEP: tl.constexpr,
    ROWS: tl.constexpr,
    BN: tl.constexpr,
    KP: tl.constexpr,
):
    """Forward (``x_ptr`` is x, ``y_ptr`` receives y) or, with ``INVERSE``, the inverse
    (``x_ptr`` is y, ``y_ptr`` receives the root)."""
    rows, cols, ok, trows, cb = _elements(B, N, nbn, ROWS, BN)
    i1, i2, i3 = _split(cols, n2, n3, FLAT)
    k = tl.arange(0, KP)
    k_ok = k < K
    k64 = k.to(tl.int64)
    mask = ok[:, None] & k_ok[None, :]

    xin = _load_e(x_ptr, _off(rows, i1, i2, i3, sxb, sx1, sx2, sx3, FLAT), ok)
    a = _load_e(a_ptr, _off(rows, i1, i2, i3, sab, sa1, sa2, sa3, FLAT), ok)
    b = _load_e(b_ptr, _off(rows, i1, i2, i3, sbb, sb1, sb2, sb3, FLAT), ok)
    lg = _load_k(lg_ptr, _off(rows, i1, i2, i3, slgb, slg1, slg2, slg3, FLAT), k64, slgk, mask, 0.0)
    lg = tl.where(k_ok[None, :], lg, float("-inf"))
    mean = _load_k(
        mu_ptr, _off(rows, i1, i2, i3, smub, smu1, smu2, smu3, FLAT), k64, smuk, mask, 0.0
    )
    ls = _load_k(ls_ptr, _off(rows, i1, i2, i3, slsb, sls1, sls2, sls3, FLAT), k64, slsk, mask, 0.0)
    inv_s = _exp_acc(-ls)
    nrm, _d, ew, sw = _lse(lg)

    if INVERSE:
        t = (xin - b) * _exp_acc(-a)
        xk = mean + _exp_acc(ls) * t[:, None]  # per-component roots
        lo = tl.min(tl.where(k_ok[None, :], xk, float("inf")), axis=1)
        hi = tl.max(tl.where(k_ok[None, :], xk, float("-inf")), axis=1)
        w = ew / sw[:, None]
        xs = tl.sum(tl.where(k_ok[None, :], w * xk, 0.0), axis=1)
        x = tl.where(xs < lo, lo, tl.where(xs > hi, hi, xs))
        width = hi - lo
        active = (
            ok
            & (width >= 0.0)
            & (tl.abs(lo) < float("inf"))
            & (tl.abs(hi) < float("inf"))
            & (x == x)
        )
        dx = width
        dxold = width
        it = 0
        go = tl.max(active.to(tl.int32), axis=0) > 0
        while go:
            g, l, lf, l1f = _logit_cdf(x, lg, mean, inv_s, ls, nrm)
            r = g - t
            lo = tl.where(active & (r < 0.0), x, lo)
            hi = tl.where(active & (r > 0.0), x, hi)
            ns = r * tl.exp(-l)  # Newton step, x_new = x - ns
            xn = x - ns
            newton = (xn > lo) & (xn < hi) & (2.0 * tl.abs(ns) <= tl.abs(dxold))
            xb = 0.5 * lo + 0.5 * hi
            step = tl.where(newton, ns, x - xb)
            xnew = tl.where(newton, xn, xb)
            tol_x = TOL_X * tl.abs(x) + TOL_X_ABS
            at_root = tl.abs(r) <= TOL_G * (1.0 + tl.abs(lf) + tl.abs(l1f))
            done = at_root | (tl.abs(step) <= tol_x) | (hi - lo <= tol_x)
            # at the root's rounding level only a short Newton step is still taken: it
            # gains accuracy where g' is moderate, while where g is flat r / g' may be
            # rounding over a tiny slope and could go a long way
            short = newton & (tl.abs(ns) <= FINAL_STEP * (1.0 + tl.abs(x)))
            move = active & ((at_root == 0) | short)
            x = tl.where(move, xnew, x)
            dxold = tl.where(move, dx, dxold)
            dx = tl.where(move, step, dx)
            active = active & (done == 0)
            it += 1
            go = (tl.max(active.to(tl.int32), axis=0) > 0) & (it < MAX_ITERS)
        x = tl.where(t == t, x, float("nan"))
        g, l, lf, l1f = _logit_cdf(x, lg, mean, inv_s, ls, nrm)
        out = x
        ld = -(l + a)
    else:
        g, l, lf, l1f = _logit_cdf(xin, lg, mean, inv_s, ls, nrm)
        out = g * _exp_acc(a) + b
        ld = l + a

    tl.store(y_ptr + (rows * N + cols), _to_store(out, y_ptr), mask=ok)
    tl.store(part_ptr + (trows * nbn + cb), _row_sums(ld, ok, ROWS, BN), mask=trows < B)


@triton.jit
def _mixlog_bwd_kernel(
    x_ptr,
    a_ptr,
    go_ptr,
    lg_ptr,
    mu_ptr,
    ls_ptr,
    gld_ptr,
    gin_ptr,
    ga_ptr,
    gb_ptr,
    glg_ptr,
    gmu_ptr,
    gls_ptr,
    B,
    N,
    n2,
    n3,
    nbn,
    K,
    sxb,
    sx1,
    sx2,
    sx3,
    sab,
    sa1,
    sa2,
    sa3,
    sgob,
    sgo1,
    sgo2,
    sgo3,
    slgb,
    slg1,
    slg2,
    slg3,
    slgk,
    smub,
    smu1,
    smu2,
    smu3,
    smuk,
    slsb,
    sls1,
    sls2,
    sls3,
    slsk,
    sgld,
    INVERSE: tl.constexpr,
    FLAT: tl.constexpr,
    ROWS: tl.constexpr,
    BN: tl.constexpr,
    KP: tl.constexpr,
):
    rows, cols, ok, _trows, _cb = _elements(B, N, nbn, ROWS, BN)
    i1, i2, i3 = _split(cols, n2, n3, FLAT)
    k = tl.arange(0, KP)
    k_ok = k < K
    k64 = k.to(tl.int64)
    mask = ok[:, None] & k_ok[None, :]

    x = _load_e(x_ptr, _off(rows, i1, i2, i3, sxb, sx1, sx2, sx3, FLAT), ok)
    a = _load_e(a_ptr, _off(rows, i1, i2, i3, sab, sa1, sa2, sa3, FLAT), ok)
    gout = _load_e(go_ptr, _off(rows, i1, i2, i3, sgob, sgo1, sgo2, sgo3, FLAT), ok)
    gld = tl.load(gld_ptr + rows * sgld, mask=ok, other=0.0).to(tl.float32)
    lg = _load_k(lg_ptr, _off(rows, i1, i2, i3, slgb, slg1, slg2, slg3, FLAT), k64, slgk, mask, 0.0)
    lg = tl.where(k_ok[None, :], lg, float("-inf"))
    mean = _load_k(
        mu_ptr, _off(rows, i1, i2, i3, smub, smu1, smu2, smu3, FLAT), k64, smuk, mask, 0.0
    )
    ls = _load_k(ls_ptr, _off(rows, i1, i2, i3, slsb, sls1, sls2, sls3, FLAT), k64, slsk, mask, 0.0)
    inv_s = _exp_acc(-ls)

    nrm, _d, ew, sw = _lse(lg)
    g, l, lf, l1f, z, e, e1, s1, e2, s2, e3, s3 = _mixture_logs(x, lg, mean, inv_s, ls, nrm)
    ope = 1.0 + e
    sz = tl.where(z >= 0.0, 1.0, e) / ope  # sigmoid(z)
    snz = tl.where(z >= 0.0, e, 1.0) / ope  # sigmoid(-z)
    w = ew / sw[:, None]  # softmax(logits)
    p = e1 / s1[:, None]  # posteriors, see INTERNALS.md
    q = e2 / s2[:, None]
    r = e3 / s3[:, None]
    psn = p * snz
    qs = q * sz
    A = psn + qs  # dg/dz_k
    Bk = r * (snz - sz) - psn + qs  # dl/dz_k
    g_x = tl.exp(l)  # dg/dx
    l_x = tl.sum(tl.where(k_ok[None, :], Bk * inv_s, 0.0), axis=1)  # dl/dx

    e_na = _exp_acc(-a)
    if INVERSE:
        total = gout - gld * l_x
        Gg = -total / g_x
        Gl = -gld
        gin = -Gg * e_na
        gb = Gg * e_na
    else:
        Gg = gout * _exp_acc(a)
        Gl = gld
        gin = Gg * g_x + Gl * l_x
        gb = gout
    ga = Gg * g + Gl

    out = rows * N + cols
    tl.store(gin_ptr + out, _to_store(gin, gin_ptr), mask=ok)
    tl.store(ga_ptr + out, _to_store(ga, ga_ptr), mask=ok)
    tl.store(gb_ptr + out, _to_store(gb, gb_ptr), mask=ok)

    Gg2 = Gg[:, None]
    Gl2 = Gl[:, None]
    dz = Gg2 * A + Gl2 * Bk
    outk = (out * K)[:, None] + k64[None, :]
    tl.store(gmu_ptr + outk, _to_store(-dz * inv_s, gmu_ptr), mask=mask)
    tl.store(gls_ptr + outk, _to_store(-dz * z - Gl2 * r, gls_ptr), mask=mask)
    if KP == 1:  # one component: the logit has no effect (exact zero, as softmax)
        glg = tl.zeros_like(dz)
    else:
        glg = Gg2 * (p - q) + Gl2 * (r - p - q + w)
    tl.store(glg_ptr + outk, _to_store(glg, glg_ptr), mask=mask)


# ----------------------------------------------------------------------------- wrappers


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _geometry(kind: str, B: int, N: int, K: int):
    """``(ROWS, BN, KP, n_column_blocks, grid, num_warps)``."""
    if N >= 2**31 or B >= 2**31:
        raise ValueError(
            f"triton mixlogcdf coupling: at most 2^31 - 1 rows and elements "
            f"per row; got B={B}, {N} elements per row"
        )
    tile, max_bn, num_warps = _CONFIGS[kind]
    kp = triton.next_power_of_2(K)
    if kp >= 64 and kind != "fwd":  # wide mixtures: no spills at K = 100, 256 (sm_90)
        num_warps = 8
    block = max(1, tile // kp)
    bn = min(block, max_bn, triton.next_power_of_2(N))
    rows = max(1, min(block // bn, triton.next_power_of_2(B)))
    nbn = triton.cdiv(N, bn)
    return rows, bn, kp, nbn, (triton.cdiv(B, rows) * nbn,), num_warps


def _check_out(*named):
    for name, t in named:
        if not t.is_contiguous():
            raise ValueError(f"triton mixlogcdf coupling: {name} must be contiguous")


def _run_fwd(inp, logits, means, log_scales, a, b, out, logdet, inverse):
    _check_out(("output", out))
    tensors, sizes, strides = element_layout([inp, a, b], [logits, means, log_scales])
    inp, a, b, logits, means, log_scales = tensors
    B, n1, n2, n3, K = sizes
    N = n1 * n2 * n3
    rows, bn, kp, nbn, grid, num_warps = _geometry("inv" if inverse else "fwd", B, N, K)
    part = torch.empty((B, nbn), dtype=torch.float32, device=inp.device)
    with _device_guard(inp):
        _mixlog_fwd_kernel[grid](
            inp,
            a,
            b,
            logits,
            means,
            log_scales,
            out,
            part,
            B,
            N,
            n2,
            n3,
            nbn,
            K,
            *strides[0],
            *strides[1],
            *strides[2],
            *strides[3],
            *strides[4],
            *strides[5],
            INVERSE=inverse,
            FLAT=(n1 == 1 and n2 == 1),
            MAX_ITERS=_MAX_ITERS,
            TOL_X=_TOL_X,
            TOL_X_ABS=_TOL_X_ABS,
            TOL_G=_TOL_G,
            FINAL_STEP=_FINAL_STEP,
            ROWS=rows,
            BN=bn,
            KP=kp,
            num_warps=num_warps,
        )
    logdet.copy_(part.sum(dim=1))


def forward(x, logits, means, log_scales, a, b, y, logdet):
    _run_fwd(x, logits, means, log_scales, a, b, y, logdet, False)


def inverse(y, logits, means, log_scales, a, b, x, logdet):
    _run_fwd(y, logits, means, log_scales, a, b, x, logdet, True)


def backward(x, logits, means, log_scales, a, b, grad_out, grad_logdet, grads, inverse):
    """``grads``: the outputs (grad_in, grad_logits, grad_means, grad_log_scales, grad_a,
    grad_b), written in place."""
    grad_in, grad_logits, grad_means, grad_log_scales, grad_a, grad_b = grads
    _check_out(
        ("grad_in", grad_in),
        ("grad_logits", grad_logits),
        ("grad_means", grad_means),
        ("grad_log_scales", grad_log_scales),
        ("grad_a", grad_a),
        ("grad_b", grad_b),
    )
    # b does not enter the gradients
    tensors, sizes, strides = element_layout([x, a, grad_out], [logits, means, log_scales])
    x, a, grad_out, logits, means, log_scales = tensors
    B, n1, n2, n3, K = sizes
    N = n1 * n2 * n3
    rows, bn, kp, nbn, grid, num_warps = _geometry("bwd", B, N, K)
    with _device_guard(x):
        _mixlog_bwd_kernel[grid](
            x,
            a,
            grad_out,
            logits,
            means,
            log_scales,
            grad_logdet,
            grad_in,
            grad_a,
            grad_b,
            grad_logits,
            grad_means,
            grad_log_scales,
            B,
            N,
            n2,
            n3,
            nbn,
            K,
            *strides[0],
            *strides[1],
            *strides[2],
            *strides[3],
            *strides[4],
            *strides[5],
            grad_logdet.stride(0),
            INVERSE=bool(inverse),
            FLAT=(n1 == 1 and n2 == 1),
            ROWS=rows,
            BN=bn,
            KP=kp,
            num_warps=num_warps,
        )
