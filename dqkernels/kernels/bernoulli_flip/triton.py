"""The ``triton`` backend of ``bernoulli_flip_loglik`` (fp16, bf16, fp32; fp32 arithmetic).

Same interface and math as :mod:`dqkernels.kernels.bernoulli_flip.torch`;
:mod:`dqkernels.reference.bernoulli_flip` is the definition.

Design
------
* Forward: a program computes a ``[BB, BH]`` tile of ``out`` (rows b, columns h) and streams
  d = 0..D-1: per d one column segment of logits and x (broadcast over h), one row segment
  of the weight (broadcast over b), then ``t = logits + s w``, one ``e = exp(-|t|)`` and
  ``x min(t, 0) - (1 - x) max(t, 0) - log1p(e)`` (``log1p`` by the atanh series of
  :func:`dqkernels.kernels.dmol.triton._log1p_mid`, ``e`` in (0, 1]) into fp32 sums.
* Backward: two kernels, no atomics, so the result is deterministic. ``_bwd_bd`` tiles
  ``[BB, BD]`` of (b, d) and streams h: ``grad_logits = sum_h g r`` and ``grad_x = logits
  sum_h g + sum_h g s w``; ``_bwd_dh`` tiles ``[BD, BH]`` of (d, h) and streams b:
  ``grad_weight = sum_b g s r``. Each recomputes ``r = x - sigmoid(t)`` (the exp twice: a
  GPU has the compute to spare for the bandwidth it saves).
* Inputs of any strides (int64 offsets); outputs contiguous. Not yet timed on a GPU: tile
  sizes are in ``_TILES``.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dqkernels.kernels.dmol.triton import _log1p_mid, _to_store

# (BB, BH, BD, num_warps); not yet timed on a GPU: tune here
_TILES = (32, 64, 32, 4)
_TILES_INTERPRETED = (16, 16, 16, 1)


@triton.jit
def _fwd_kernel(
    x_ptr, l_ptr, w_ptr, z_ptr, out_ptr, B, D, H,
    sxb, sxd, slb, sld, swd, swh, szb, szh,
    BB: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    pb = tl.program_id(0)
    ph = tl.program_id(1)
    rows = pb.to(tl.int64) * BB + tl.arange(0, BB).to(tl.int64)
    cols = ph.to(tl.int64) * BH + tl.arange(0, BH).to(tl.int64)
    mb = rows < B
    mh = cols < H
    m2 = mb[:, None] & mh[None, :]
    zv = tl.load(z_ptr + rows[:, None] * szb + cols[None, :] * szh, mask=m2, other=0.0)
    s = 1.0 - 2.0 * zv.to(tl.float32)
    acc = tl.zeros((BB, BH), dtype=tl.float32)
    for d in range(0, D):
        lv = tl.load(l_ptr + rows * slb + d * sld, mask=mb, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + rows * sxb + d * sxd, mask=mb, other=0.0).to(tl.float32)
        wv = tl.load(w_ptr + d * swd + cols * swh, mask=mh, other=0.0).to(tl.float32)
        t = lv[:, None] + s * wv[None, :]
        e = tl.exp(-tl.abs(t))
        xb = xv[:, None]
        acc += xb * tl.minimum(t, 0.0) - (1.0 - xb) * tl.maximum(t, 0.0) - _log1p_mid(e)
    tl.store(out_ptr + rows[:, None] * H + cols[None, :], acc, mask=m2)


@triton.jit
def _resid(xv, t):
    """``x - sigmoid(t)`` without cancellation in the tails."""
    e = tl.exp(-tl.abs(t))
    q = e / (1.0 + e)
    return tl.where(t >= 0.0, (xv - 1.0) + q, xv - q)


@triton.jit
def _bwd_bd_kernel(
    x_ptr, l_ptr, w_ptr, z_ptr, g_ptr, gx_ptr, gl_ptr, B, D, H,
    sxb, sxd, slb, sld, swd, swh, szb, szh, sgb, sgh,
    NEED_X: tl.constexpr, NEED_L: tl.constexpr, BB: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    pb = tl.program_id(0)
    pd = tl.program_id(1)
    rows = pb.to(tl.int64) * BB + tl.arange(0, BB).to(tl.int64)
    feats = pd.to(tl.int64) * BD + tl.arange(0, BD).to(tl.int64)
    mb = rows < B
    md = feats < D
    m2 = mb[:, None] & md[None, :]
    lv = tl.load(l_ptr + rows[:, None] * slb + feats[None, :] * sld, mask=m2, other=0.0)
    lv = lv.to(tl.float32)
    xv = tl.load(x_ptr + rows[:, None] * sxb + feats[None, :] * sxd, mask=m2, other=0.0)
    xv = xv.to(tl.float32)
    acc_l = tl.zeros((BB, BD), dtype=tl.float32)
    acc_x = tl.zeros((BB, BD), dtype=tl.float32)
    gsum = tl.zeros((BB,), dtype=tl.float32)
    for h in range(0, H):
        zv = tl.load(z_ptr + rows * szb + h * szh, mask=mb, other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + rows * sgb + h * sgh, mask=mb, other=0.0).to(tl.float32)
        wv = tl.load(w_ptr + feats * swd + h * swh, mask=md, other=0.0).to(tl.float32)
        s = 1.0 - 2.0 * zv
        gs = (gv * s)[:, None]
        if NEED_L:
            r = _resid(xv, lv + s[:, None] * wv[None, :])
            acc_l += gv[:, None] * r
        if NEED_X:
            acc_x += gs * wv[None, :]
            gsum += gv
    offs = rows[:, None] * D + feats[None, :]
    if NEED_L:
        tl.store(gl_ptr + offs, _to_store(acc_l, gl_ptr), mask=m2)
    if NEED_X:
        gx = lv * gsum[:, None] + acc_x
        tl.store(gx_ptr + offs, _to_store(gx, gx_ptr), mask=m2)


@triton.jit
def _bwd_dh_kernel(
    x_ptr, l_ptr, w_ptr, z_ptr, g_ptr, gw_ptr, B, D, H,
    sxb, sxd, slb, sld, swd, swh, szb, szh, sgb, sgh,
    BD: tl.constexpr, BH: tl.constexpr,
):  # fmt: skip
    pd = tl.program_id(0)
    ph = tl.program_id(1)
    feats = pd.to(tl.int64) * BD + tl.arange(0, BD).to(tl.int64)
    cols = ph.to(tl.int64) * BH + tl.arange(0, BH).to(tl.int64)
    md = feats < D
    mh = cols < H
    m2 = md[:, None] & mh[None, :]
    wv = tl.load(w_ptr + feats[:, None] * swd + cols[None, :] * swh, mask=m2, other=0.0)
    wv = wv.to(tl.float32)
    acc = tl.zeros((BD, BH), dtype=tl.float32)
    for b in range(0, B):
        lv = tl.load(l_ptr + b * slb + feats * sld, mask=md, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + b * sxb + feats * sxd, mask=md, other=0.0).to(tl.float32)
        zv = tl.load(z_ptr + b * szb + cols * szh, mask=mh, other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + b * sgb + cols * sgh, mask=mh, other=0.0).to(tl.float32)
        s = 1.0 - 2.0 * zv
        r = _resid(xv[:, None], lv[:, None] + s[None, :] * wv)
        acc += (gv * s)[None, :] * r
    tl.store(gw_ptr + feats[:, None] * H + cols[None, :], _to_store(acc, gw_ptr), mask=m2)


def _tiles(x: torch.Tensor):
    return _TILES if x.is_cuda else _TILES_INTERPRETED


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _strides(*ts):
    return [s for t in ts for s in t.stride()]


def _check_out(t, name: str) -> None:
    if t is not None and not t.is_contiguous():
        raise ValueError(f"triton bernoulli_flip_loglik: {name} must be contiguous")


def forward(x, logits, weight, z, out):
    _check_out(out, "out")
    B, D = x.shape
    H = weight.shape[1]
    BB, BH, _, warps = _tiles(x)
    grid = (triton.cdiv(B, BB), triton.cdiv(H, BH))
    with _device_guard(x):
        _fwd_kernel[grid](
            x, logits, weight, z, out, B, D, H, *_strides(x, logits, weight, z),
            BB=BB, BH=BH, num_warps=warps,
        )  # fmt: skip


def backward(x, logits, weight, z, grad_out, grad_x, grad_logits, grad_weight):
    for t, name in ((grad_x, "grad_x"), (grad_logits, "grad_logits"), (grad_weight, "grad_weight")):
        _check_out(t, name)
    B, D = x.shape
    H = weight.shape[1]
    BB, BH, BD, warps = _tiles(x)
    strides = _strides(x, logits, weight, z, grad_out)
    with _device_guard(x):
        if grad_x is not None or grad_logits is not None:
            dummy = grad_x if grad_x is not None else grad_logits
            _bwd_bd_kernel[(triton.cdiv(B, BB), triton.cdiv(D, BD))](
                x, logits, weight, z, grad_out,
                grad_x if grad_x is not None else dummy,
                grad_logits if grad_logits is not None else dummy,
                B, D, H, *strides,
                NEED_X=grad_x is not None, NEED_L=grad_logits is not None, BB=BB, BD=BD,
                num_warps=warps,
            )  # fmt: skip
        if grad_weight is not None:
            _bwd_dh_kernel[(triton.cdiv(D, BD), triton.cdiv(H, BH))](
                x, logits, weight, z, grad_out, grad_weight, B, D, H, *strides,
                BD=BD, BH=BH, num_warps=warps,
            )  # fmt: skip
