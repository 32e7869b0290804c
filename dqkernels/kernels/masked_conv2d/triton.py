"""The ``triton`` backend of ``masked_conv2d``: implicit GEMM with ``tl.dot`` over the
kept taps only.

Same interface as :mod:`dqkernels.kernels.masked_conv2d.torch`; the mask rule is
:mod:`dqkernels.reference.masked_conv2d` (and docs/INTERNALS.md, "Masked conv2d").

Design
------
* Pixels are flattened over ``(b, h, w)`` and are the fast axis of every tile (coalesced
  for NCHW tensors, few per-pixel index registers per thread). The forward runs one
  program per (block of ``BP`` pixels, block of ``BO`` output channels) with an fp32
  ``[BO, BP]`` accumulator; it loops over the ``(k*k - 1) / 2`` fully kept taps (a
  runtime loop: tap ``t`` -> ``(i, j)``) and, per tap, over input-channel blocks of
  ``BC``: the ``[BO, BC]`` weight slice ``w[o, ci, i, j]`` times a ``[BC, BP]`` tile of
  shifted input pixels (zero outside the image: "same" padding). The centre tap then
  runs only over the input channels ``[0, n)`` the block's last output channel sees,
  and its weight loads are masked per entry (``ci < centre_inputs(o)``): masked weights
  are never read.
* ``grad_x`` is the same with the roles swapped: program per (pixel block, input-channel
  block), reduction over output channels of ``grad_y`` shifted the other way
  (``(h + c - i, w + c - j)``); at the centre only the output channels
  ``[centre_min_output(first ci of the block), Cout)``.
* ``grad_w`` runs one program per (tap, output-channel block, input-channel block,
  pixel split): ``grad_y [BO, BP] @ x_shifted^T [BP, BC]`` summed over its share of the
  pixel blocks into an fp32 partial ``[splits, T+1, Cout, Cin]``; torch sums the splits
  in a fixed order (deterministic, no atomics) and scatters the taps into
  ``[Cout, Cin, k, k]``, zero at masked entries. ``grad_b`` is a torch sum of
  ``grad_y`` in fp32.
* fp32 inputs use ``input_precision="ieee"`` (no TF32); fp16/bf16 tiles go to the tensor
  cores as they are, accumulating in fp32.
* Offsets: the batch term is int64, the rest (inside one batch element, and the weight)
  int32; the wrappers check that every tensor spans fewer than 2^31 elements there and
  that ``B*H*W + BP < 2^31``.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dqkernels.backends import triton_interpreting
from dqkernels.reference.masked_conv2d import centre_counts, kept_taps

# Tiles: (largest output-channel block, largest input-channel block, num_warps) per kernel
# and operand width; BP pixels per program. Chosen so that the kernels compile for sm_90
# without register spills (ptxas 13.4 through triton 3.9: 147 to 232 registers); not yet
# timed on a GPU: tune here. fp32 tiles run IEEE FMA dots, which hold more registers.
_BP = 64
_NUM_STAGES = 2
_TILES = {  # kernel -> {is_fp32: (BO cap, BC cap, num_warps)}
    "fwd": {True: (64, 32, 8), False: (64, 32, 4)},  # BO rows of acc, BC reduction
    "dx": {True: (32, 64, 8), False: (32, 64, 4)},  # BO reduction, BC rows of acc
    "dw": {True: (64, 32, 4), False: (64, 32, 4)},  # BO x BC acc, BP reduction
}
_SPLIT_TARGET = 528  # grad_w programs to aim for (4 per SM of an H100)


@triton.jit
def _block_start(block, C, G):
    return (block * C + G - 1) // G


@triton.jit
def _tap(t, KS: tl.constexpr):
    """Row and column of fully kept tap ``t`` (raster order)."""
    C: tl.constexpr = KS // 2
    above = t < C * KS
    i = tl.where(above, t // KS, C)
    j = tl.where(above, t % KS, t - C * KS)
    return i, j


@triton.jit
def _dot(a, b, acc, UPCAST: tl.constexpr):
    """``acc + a @ b`` in fp32 (IEEE for fp32 tiles). ``UPCAST``: widen the tiles to fp32
    first; set only for bfloat16 under the interpreter, whose bf16 ``tl.dot`` multiplies
    the raw bit patterns (triton 3.9; triton-lang/triton#11584, not supported there)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _pixels(pid, NPIX, H, W, BP: tl.constexpr):
    """Batch index, row, column (int32; the wrapper keeps ``NPIX + BP < 2^31``) and
    validity of the ``BP`` pixels of pixel block ``pid``."""
    p = pid * BP + tl.arange(0, BP)
    hw = H * W
    b = p // hw
    r = p - b * hw
    h = r // W
    return b, h, r - h * W, p < NPIX


@triton.jit
def _fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    y_ptr,
    NPIX,
    Cin,
    Cout,
    H,
    W,
    G,
    sxb,
    sxc,
    sxh,
    sxw,
    swo,
    swi,
    swh,
    sww,
    sbias,
    syb,
    syc,
    syh,
    syw,
    KS: tl.constexpr,
    TYPE_B: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BP: tl.constexpr,
    BO: tl.constexpr,
    BC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # acc[o, p] = sum_tap sum_ci w[o, ci, tap] x[ci, p + shift(tap)]: pixels are the fast
    # axis of every tile (coalesced for NCHW, few per-pixel values per thread)
    C: tl.constexpr = KS // 2
    b, h, w, pmask = _pixels(tl.program_id(0), NPIX, H, W, BP)
    o = tl.program_id(1) * BO + tl.arange(0, BO)
    omask = o < Cout
    rc = tl.arange(0, BC)
    acc = tl.zeros((BO, BP), dtype=tl.float32)
    xb = x_ptr + b.to(tl.int64) * sxb
    for t in range(C * (KS + 1)):
        i, j = _tap(t, KS)
        hh = h + (i - C)
        ww = w + (j - C)
        valid = pmask & (hh >= 0) & (ww >= 0) & (ww < W)
        xp = (xb + hh * sxh + ww * sxw)[None, :] + (rc * sxc)[:, None]  # [BC, BP]
        wp = w_ptr + ((o * swo + i * swh + j * sww)[:, None] + (rc * swi)[None, :])  # [BO, BC]
        for c0 in range(0, Cin, BC):
            cmask = (c0 + rc) < Cin
            xt = tl.load(xp, mask=cmask[:, None] & valid[None, :], other=0.0)
            wt = tl.load(wp, mask=omask[:, None] & cmask[None, :], other=0.0)
            acc = _dot(wt, xt, acc, UPCAST)
            xp += BC * sxc
            wp += BC * swi
    # centre tap: input channels [0, n_o) for output channel o (a prefix)
    o_last = tl.minimum(tl.program_id(1) * BO + BO, Cout) - 1
    n_max = _block_start(o_last * G // Cout + TYPE_B, Cin, G)
    n_o = _block_start(o * G // Cout + TYPE_B, Cin, G)
    xp = (xb + h * sxh + w * sxw)[None, :] + (rc * sxc)[:, None]
    wp = w_ptr + ((o * swo + C * swh + C * sww)[:, None] + (rc * swi)[None, :])
    for c0 in range(0, n_max, BC):
        ci = c0 + rc
        xt = tl.load(xp, mask=(ci < n_max)[:, None] & pmask[None, :], other=0.0)
        wt = tl.load(wp, mask=omask[:, None] & (ci[None, :] < n_o[:, None]), other=0.0)
        acc = _dot(wt, xt, acc, UPCAST)
        xp += BC * sxc
        wp += BC * swi
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o * sbias, mask=omask, other=0.0).to(tl.float32)[:, None]
    out = (b.to(tl.int64) * syb + h * syh + w * syw)[None, :] + (o * syc)[:, None]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=omask[:, None] & pmask[None, :])


@triton.jit
def _dx_kernel(
    gy_ptr,
    w_ptr,
    gx_ptr,
    NPIX,
    Cin,
    Cout,
    H,
    W,
    G,
    sgb,
    sgc,
    sgh,
    sgw,
    swo,
    swi,
    swh,
    sww,
    sxb,
    sxc,
    sxh,
    sxw,
    KS: tl.constexpr,
    TYPE_B: tl.constexpr,
    BP: tl.constexpr,
    BO: tl.constexpr,
    BC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # acc[ci, p] = sum_tap sum_o w[o, ci, tap] grad_y[o, p - shift(tap)]
    C: tl.constexpr = KS // 2
    b, h, w, pmask = _pixels(tl.program_id(0), NPIX, H, W, BP)
    ci = tl.program_id(1) * BC + tl.arange(0, BC)
    cmask = ci < Cin
    ro = tl.arange(0, BO)
    acc = tl.zeros((BC, BP), dtype=tl.float32)
    gb = gy_ptr + b.to(tl.int64) * sgb
    for t in range(C * (KS + 1)):
        i, j = _tap(t, KS)
        hh = h + (C - i)
        ww = w + (C - j)
        valid = pmask & (hh < H) & (ww >= 0) & (ww < W)
        gp = (gb + hh * sgh + ww * sgw)[None, :] + (ro * sgc)[:, None]  # [BO, BP]
        wp = w_ptr + ((ci * swi + i * swh + j * sww)[:, None] + (ro * swo)[None, :])  # [BC, BO]
        for o0 in range(0, Cout, BO):
            omask = (o0 + ro) < Cout
            gt = tl.load(gp, mask=omask[:, None] & valid[None, :], other=0.0)
            wt = tl.load(wp, mask=cmask[:, None] & omask[None, :], other=0.0)
            acc = _dot(wt, gt, acc, UPCAST)
            gp += BO * sgc
            wp += BO * swo
    # centre tap: output channels [m_ci, Cout) see input channel ci (a suffix)
    m_min = _block_start((tl.program_id(1) * BC) * G // Cin + (1 - TYPE_B), Cout, G)
    m_ci = _block_start(ci * G // Cin + (1 - TYPE_B), Cout, G)
    gp = (gb + h * sgh + w * sgw)[None, :] + ((m_min + ro) * sgc)[:, None]
    wp = w_ptr + ((ci * swi + C * swh + C * sww)[:, None] + ((m_min + ro) * swo)[None, :])
    for o0 in range(m_min, Cout, BO):
        o = o0 + ro
        omask = o < Cout
        gt = tl.load(gp, mask=omask[:, None] & pmask[None, :], other=0.0)
        wt = tl.load(
            wp, mask=cmask[:, None] & omask[None, :] & (o[None, :] >= m_ci[:, None]), other=0.0
        )
        acc = _dot(wt, gt, acc, UPCAST)
        gp += BO * sgc
        wp += BO * swo
    out = (b.to(tl.int64) * sxb + h * sxh + w * sxw)[None, :] + (ci * sxc)[:, None]
    tl.store(gx_ptr + out, acc.to(gx_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _dw_kernel(
    x_ptr,
    gy_ptr,
    part_ptr,
    NPIX,
    Cin,
    Cout,
    H,
    W,
    G,
    blocks_per_split,
    n_cblocks,
    sxb,
    sxc,
    sxh,
    sxw,
    sgb,
    sgc,
    sgh,
    sgw,
    KS: tl.constexpr,
    TYPE_B: tl.constexpr,
    BP: tl.constexpr,
    BO: tl.constexpr,
    BC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # acc[o, ci] = sum_p grad_y[o, p] x[ci, p + shift(tap)] over this split's pixels
    C: tl.constexpr = KS // 2
    T: tl.constexpr = C * (KS + 1)
    t = tl.program_id(0)  # T = the centre tap
    ob = tl.program_id(1) // n_cblocks
    cb = tl.program_id(1) - ob * n_cblocks
    split = tl.program_id(2)
    o = ob * BO + tl.arange(0, BO)
    ci = cb * BC + tl.arange(0, BC)
    omask = o < Cout
    cmask = ci < Cin
    i, j = _tap(t, KS)
    centre = t == T
    i = tl.where(centre, C, i)
    j = tl.where(centre, C, j)
    # at the centre, input channels past what the block's last output channel sees are
    # masked for the whole block: nothing to sum
    o_last = tl.minimum(ob * BO + BO, Cout) - 1
    n_max = _block_start(o_last * G // Cout + TYPE_B, Cin, G)
    active = (t < T) | (cb * BC < n_max)
    acc = tl.zeros((BO, BC), dtype=tl.float32)
    if active:
        for pb in range(split * blocks_per_split, (split + 1) * blocks_per_split):
            b, h, w, pmask = _pixels(pb, NPIX, H, W, BP)
            hh = h + (i - C)
            ww = w + (j - C)
            valid = pmask & (hh >= 0) & (ww >= 0) & (ww < W)
            b64 = b.to(tl.int64)
            gt = tl.load(
                gy_ptr + (b64 * sgb + h * sgh + w * sgw)[None, :] + (o * sgc)[:, None],
                mask=omask[:, None] & pmask[None, :],
                other=0.0,
            )  # [BO, BP]
            xt = tl.load(
                x_ptr + (b64 * sxb + hh * sxh + ww * sxw)[None, :] + (ci * sxc)[:, None],
                mask=cmask[:, None] & valid[None, :],
                other=0.0,
            )  # [BC, BP]
            acc = _dot(gt, tl.trans(xt), acc, UPCAST)
    base = (split.to(tl.int64) * (T + 1) + t) * Cout * Cin
    tl.store(
        part_ptr + base + (o * Cin)[:, None] + ci[None, :],
        acc,
        mask=omask[:, None] & cmask[None, :],
    )


# ----------------------------------------------------------------------------- wrappers


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _upcast(x: torch.Tensor) -> bool:
    return x.dtype == torch.bfloat16 and not x.is_cuda and triton_interpreting()


def _tiles(kernel: str, x: torch.Tensor, Cin: int, Cout: int) -> tuple[int, int, int]:
    """(BO, BC, num_warps): the caps of _TILES, shrunk to the channel counts (at least
    16, tl.dot's smallest operand side)."""
    bo_cap, bc_cap, warps = _TILES[kernel][x.dtype == torch.float32]
    bo = max(16, min(bo_cap, triton.next_power_of_2(Cout)))
    bc = max(16, min(bc_cap, triton.next_power_of_2(Cin)))
    return bo, bc, warps


def _check_span(name: str, t: torch.Tensor, first: int) -> None:
    """Offsets inside one batch element (and in the weight) are int32 in the kernels,
    the batch offset int64."""
    span = sum((n - 1) * abs(st) for n, st in zip(t.shape[first:], t.stride()[first:]))
    if span >= 2**31:
        raise ValueError(
            f"triton masked_conv2d: {name} spans 2^31 or more elements "
            f"{'inside one batch element' if first else ''}; the kernels "
            f"use 32-bit offsets there"
        )


def _common(x, weight, mask_type):
    B, Cin, H, W = x.shape
    Cout, _, k, _ = weight.shape
    if B * H * W + _BP >= 2**31:
        raise ValueError(
            f"triton masked_conv2d: at most 2^31 - {_BP + 1} pixels (B*H*W); got {B * H * W}"
        )
    _check_span("x", x, 1)
    _check_span("weight", weight, 0)
    return B, Cin, H, W, Cout, k, int(mask_type == "B")


def forward(x, weight, bias, y, mask_type, groups):
    B, Cin, H, W, Cout, k, type_b = _common(x, weight, mask_type)
    _check_span("y", y, 1)
    npix = B * H * W
    bo, bc, warps = _tiles("fwd", x, Cin, Cout)
    grid = (triton.cdiv(npix, _BP), triton.cdiv(Cout, bo))
    has_bias = bias is not None
    with _device_guard(x):
        _fwd_kernel[grid](
            x,
            weight,
            bias if has_bias else weight,
            y,
            npix,
            Cin,
            Cout,
            H,
            W,
            groups,
            *x.stride(),
            *weight.stride(),
            bias.stride(0) if has_bias else 0,
            *y.stride(),
            KS=k,
            TYPE_B=type_b,
            HAS_BIAS=has_bias,
            BP=_BP,
            BO=bo,
            BC=bc,
            UPCAST=_upcast(x),
            num_warps=warps,
            num_stages=_NUM_STAGES,
        )


def _splits(npix: int, base_programs: int) -> tuple[int, int]:
    """(splits, pixel blocks per split) of the grad_w reduction."""
    nblocks = triton.cdiv(npix, _BP)
    target = 2 if triton_interpreting() else _SPLIT_TARGET
    splits = max(1, min(nblocks, triton.cdiv(target, base_programs)))
    per = triton.cdiv(nblocks, splits)
    return triton.cdiv(nblocks, per), per


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    B, Cin, H, W, Cout, k, type_b = _common(x, weight, mask_type)
    npix = B * H * W
    c = k // 2
    taps = kept_taps(k)
    _check_span("grad_y", grad_y, 1)
    if grad_x is not None:
        _check_span("grad_x", grad_x, 1)
    with _device_guard(x):
        if grad_x is not None:
            bo, bc, warps = _tiles("dx", x, Cin, Cout)
            grid = (triton.cdiv(npix, _BP), triton.cdiv(Cin, bc))
            _dx_kernel[grid](
                grad_y,
                weight,
                grad_x,
                npix,
                Cin,
                Cout,
                H,
                W,
                groups,
                *grad_y.stride(),
                *weight.stride(),
                *grad_x.stride(),
                KS=k,
                TYPE_B=type_b,
                BP=_BP,
                BO=bo,
                BC=bc,
                UPCAST=_upcast(x),
                num_warps=warps,
                num_stages=_NUM_STAGES,
            )
        if grad_weight is not None:
            bo, bc, warps = _tiles("dw", x, Cin, Cout)
            n_ob, n_cb = triton.cdiv(Cout, bo), triton.cdiv(Cin, bc)
            ntap = len(taps) + 1
            splits, per = _splits(npix, ntap * n_ob * n_cb)
            part = torch.empty((splits, ntap, Cout, Cin), dtype=torch.float32, device=x.device)
            _dw_kernel[(ntap, n_ob * n_cb, splits)](
                x,
                grad_y,
                part,
                npix,
                Cin,
                Cout,
                H,
                W,
                groups,
                per,
                n_cb,
                *x.stride(),
                *grad_y.stride(),
                KS=k,
                TYPE_B=type_b,
                BP=_BP,
                BO=bo,
                BC=bc,
                UPCAST=_upcast(x),
                num_warps=warps,
                num_stages=_NUM_STAGES,
            )
            dw = part.sum(dim=0)  # [T + 1, Cout, Cin], fixed order
            full = torch.zeros((Cout, Cin, k, k), dtype=torch.float32, device=x.device)
            if taps:
                ii = torch.tensor([t[0] for t in taps], device=x.device)
                jj = torch.tensor([t[1] for t in taps], device=x.device)
                full[:, :, ii, jj] = dw[:-1].permute(1, 2, 0)
            n_o = torch.tensor(centre_counts(Cin, Cout, mask_type, groups), device=x.device)
            seen = torch.arange(Cin, device=x.device)[None, :] < n_o[:, None]
            full[:, :, c, c] = torch.where(seen, dw[-1], torch.zeros((), device=x.device))
            grad_weight.copy_(full)
    if grad_bias is not None:
        grad_bias.copy_(grad_y.sum(dim=(0, 2, 3), dtype=torch.float32))
