"""The ``triton`` backend of the affine coupling (Glow parametrisation).

Same interface and math as :mod:`dqkernels.kernels.affine.torch` (see docs/INTERNALS.md,
"Coupling kernels"); :mod:`dqkernels.reference.affine_coupling` is the definition.

Design
------
* One elementwise kernel per direction (forward, backward); ``inverse`` is a
  ``constexpr``. Every input is read once and every output written once.
* Tensors are seen as ``[B, n1, n2, n3]`` (:func:`dqkernels.kernels._layout.element_layout`)
  with per-tensor strides, 0 included. A program handles a ``[ROWS, BN]`` tile: ``ROWS``
  batch rows by ``BN`` consecutive elements of a row (``ROWS > 1`` only when a row is
  shorter than the tile). Offsets are int64; when every tensor merges to one inner dim
  (the contiguous case, and any common permutation or batch broadcast) the ``FLAT`` path
  forms them without index division, and Triton's specialisation of unit strides lets the
  loads vectorise.
* The logdet is deterministic: each program writes one fp32 partial sum per (row, column
  block) into a small ``[B, n_blocks]`` buffer, summed by torch afterwards.
* ``u = scale_logit + 2``, one ``e = exp(-|u|)``: ``log s = min(u, 0) - log1p(e)`` (a
  short series, not ``tl.log`` near 1), ``s`` and ``1 - s = sigmoid(-u)`` without
  cancellation, ``1 / s = 1 + exp(-u)``. Computed in fp32, stored in the input dtype.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dqkernels.kernels._layout import element_layout
from dqkernels.kernels.dmol.triton import _log1p_mid, _to_store

# (elements per tile, most elements of a row per tile, num_warps). Not yet timed on a
# GPU: tune here.
_TILE = 1024
_MAX_BN = 1024
_NUM_WARPS = 4

# ----------------------------------------------------------------------------- math


@triton.jit
def _scale_terms(l):
    """For ``u = l + 2``: ``(log s, s, 1 - s, 1 / s)``, ``s = sigmoid(u)``."""
    u = l + 2.0
    e = tl.exp(-tl.abs(u))  # in (0, 1]
    ope = 1.0 + e
    pos = u >= 0.0
    log_s = tl.where(pos, 0.0, u) - _log1p_mid(e)
    s = tl.where(pos, 1.0, e) / ope
    oms = tl.where(pos, e, 1.0) / ope
    inv_s = tl.where(pos, ope, ope / e)
    return log_s, s, oms, inv_s


@triton.jit
def _tile(B, N, nbn, ROWS: tl.constexpr, BN: tl.constexpr):
    """Rows ``[ROWS]`` (int64), columns ``[BN]`` (int32), the tile mask and the column
    block index of this program."""
    pid = tl.program_id(0)
    rb = pid // nbn
    cb = pid - rb * nbn
    rows = rb.to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    cols = cb * BN + tl.arange(0, BN)
    mask = (rows < B)[:, None] & (cols < N)[None, :]
    return rows, cols, mask, cb


@triton.jit
def _split(cols, n2, n3, FLAT: tl.constexpr):
    """``(i1, i2, i3)`` (int64) of the flat in-row index ``cols`` of ``[n1, n2, n3]``."""
    if FLAT:
        i3 = cols.to(tl.int64)
        i1 = i3 * 0
        i2 = i1
    else:
        i12 = cols // n3
        i3 = (cols - i12 * n3).to(tl.int64)
        i1i = i12 // n2
        i2 = (i12 - i1i * n2).to(tl.int64)
        i1 = i1i.to(tl.int64)
    return i1, i2, i3


@triton.jit
def _offsets(rows, i1, i2, i3, sb, s1, s2, s3, FLAT: tl.constexpr):
    """``[ROWS, BN]`` int64 element offsets of a tensor with strides ``(sb, s1, s2, s3)``."""
    if FLAT:
        inner = i3 * s3
    else:
        inner = i1 * s1 + i2 * s2 + i3 * s3
    return (rows * sb)[:, None] + inner[None, :]


@triton.jit
def _load(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _affine_fwd_kernel(
    x_ptr,
    sh_ptr,
    sl_ptr,
    y_ptr,
    part_ptr,
    B,
    N,
    n2,
    n3,
    nbn,
    sxb,
    sx1,
    sx2,
    sx3,
    shb,
    sh1,
    sh2,
    sh3,
    slb,
    sl1,
    sl2,
    sl3,
    INVERSE: tl.constexpr,
    FLAT: tl.constexpr,
    ROWS: tl.constexpr,
    BN: tl.constexpr,
):
    rows, cols, mask, cb = _tile(B, N, nbn, ROWS, BN)
    i1, i2, i3 = _split(cols, n2, n3, FLAT)
    x = _load(x_ptr, _offsets(rows, i1, i2, i3, sxb, sx1, sx2, sx3, FLAT), mask)
    sh = _load(sh_ptr, _offsets(rows, i1, i2, i3, shb, sh1, sh2, sh3, FLAT), mask)
    l = _load(sl_ptr, _offsets(rows, i1, i2, i3, slb, sl1, sl2, sl3, FLAT), mask)
    log_s, s, _oms, inv_s = _scale_terms(l)
    if INVERSE:
        y = x * inv_s - sh
        ld = -log_s
    else:
        y = (x + sh) * s
        ld = log_s
    out = (rows * N)[:, None] + cols[None, :]
    tl.store(y_ptr + out, _to_store(y, y_ptr), mask=mask)
    part = tl.sum(tl.where(mask, ld, 0.0), axis=1)
    tl.store(part_ptr + (rows * nbn + cb), part, mask=rows < B)


@triton.jit
def _affine_bwd_kernel(
    x_ptr,
    sh_ptr,
    sl_ptr,
    gy_ptr,
    gld_ptr,
    gx_ptr,
    gsh_ptr,
    gsl_ptr,
    B,
    N,
    n2,
    n3,
    nbn,
    sxb,
    sx1,
    sx2,
    sx3,
    shb,
    sh1,
    sh2,
    sh3,
    slb,
    sl1,
    sl2,
    sl3,
    sgb,
    sg1,
    sg2,
    sg3,
    sgld,
    INVERSE: tl.constexpr,
    FLAT: tl.constexpr,
    ROWS: tl.constexpr,
    BN: tl.constexpr,
):
    rows, cols, mask, _cb = _tile(B, N, nbn, ROWS, BN)
    i1, i2, i3 = _split(cols, n2, n3, FLAT)
    x = _load(x_ptr, _offsets(rows, i1, i2, i3, sxb, sx1, sx2, sx3, FLAT), mask)
    l = _load(sl_ptr, _offsets(rows, i1, i2, i3, slb, sl1, sl2, sl3, FLAT), mask)
    gy = _load(gy_ptr, _offsets(rows, i1, i2, i3, sgb, sg1, sg2, sg3, FLAT), mask)
    gld = tl.load(gld_ptr + rows * sgld, mask=rows < B, other=0.0).to(tl.float32)[:, None]
    _log_s, s, oms, inv_s = _scale_terms(l)
    if INVERSE:  # y = x / s - shift, logdet = -sum log s
        gx = gy * inv_s
        gsh = -gy
        gsl = -(gy * x * inv_s + gld) * oms
    else:  # y = (x + shift) s, logdet = sum log s
        sh = _load(sh_ptr, _offsets(rows, i1, i2, i3, shb, sh1, sh2, sh3, FLAT), mask)
        gx = gy * s
        gsh = gx
        gsl = (gy * (x + sh) * s + gld) * oms
    out = (rows * N)[:, None] + cols[None, :]
    tl.store(gx_ptr + out, _to_store(gx, gx_ptr), mask=mask)
    tl.store(gsh_ptr + out, _to_store(gsh, gsh_ptr), mask=mask)
    tl.store(gsl_ptr + out, _to_store(gsl, gsl_ptr), mask=mask)


# ----------------------------------------------------------------------------- wrappers


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _geometry(B: int, N: int):
    """``(ROWS, BN, n_column_blocks, grid)``."""
    if N >= 2**31 or B >= 2**31:
        raise ValueError(
            f"triton affine coupling: at most 2^31 - 1 rows and elements per "
            f"row; got B={B}, {N} elements per row"
        )
    bn = min(_MAX_BN, triton.next_power_of_2(N))
    rows = max(1, min(_TILE // bn, triton.next_power_of_2(B)))
    nbn = triton.cdiv(N, bn)
    return rows, bn, nbn, (triton.cdiv(B, rows) * nbn,)


def _check_out(t: torch.Tensor, name: str):
    if not t.is_contiguous():
        raise ValueError(f"triton affine coupling: {name} must be contiguous")


def forward(x, shift, scale_logit, y, logdet, inverse):
    _check_out(y, "y")
    (x, shift, scale_logit), sizes, strides = element_layout([x, shift, scale_logit])
    B, n1, n2, n3 = sizes
    N = n1 * n2 * n3
    rows, bn, nbn, grid = _geometry(B, N)
    part = torch.empty((B, nbn), dtype=torch.float32, device=x.device)
    with _device_guard(x):
        _affine_fwd_kernel[grid](
            x,
            shift,
            scale_logit,
            y,
            part,
            B,
            N,
            n2,
            n3,
            nbn,
            *strides[0],
            *strides[1],
            *strides[2],
            INVERSE=bool(inverse),
            FLAT=(n1 == 1 and n2 == 1),
            ROWS=rows,
            BN=bn,
            num_warps=_NUM_WARPS,
        )
    logdet.copy_(part.sum(dim=1))


def backward(
    x, shift, scale_logit, grad_y, grad_logdet, grad_x, grad_shift, grad_scale_logit, inverse
):
    for t, name in (
        (grad_x, "grad_x"),
        (grad_shift, "grad_shift"),
        (grad_scale_logit, "grad_scale_logit"),
    ):
        _check_out(t, name)
    (x, shift, scale_logit, grad_y), sizes, strides = element_layout(
        [x, shift, scale_logit, grad_y]
    )
    B, n1, n2, n3 = sizes
    N = n1 * n2 * n3
    rows, bn, nbn, grid = _geometry(B, N)
    with _device_guard(x):
        _affine_bwd_kernel[grid](
            x,
            shift,
            scale_logit,
            grad_y,
            grad_logdet,
            grad_x,
            grad_shift,
            grad_scale_logit,
            B,
            N,
            n2,
            n3,
            nbn,
            *strides[0],
            *strides[1],
            *strides[2],
            *strides[3],
            grad_logdet.stride(0),
            INVERSE=bool(inverse),
            FLAT=(n1 == 1 and n2 == 1),
            ROWS=rows,
            BN=bn,
            num_warps=_NUM_WARPS,
        )
