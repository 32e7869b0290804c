"""The ``triton`` backend of the masked linear layer.

Same interface and math as :mod:`dqkernels.kernels.masked_linear.torch`;
:mod:`dqkernels.reference.masked_linear` is the definition (docs/INTERNALS.md, "Masked
linear").

Design
------
* One ``tl.dot`` GEMM kernel, ``C[m, n] = sum_k A[m, k] B[k, n]``, used three ways
  (A and B are strided views, so nothing is transposed in memory)::

      forward  C = y   [rows, out]  A = x [rows, in]     B[k, n] = W[n, k]   mask on B
      grad x   C = gx  [rows, in]   A = gy [rows, out]   B[k, n] = W[k, n]   mask on B
      grad W   C = gW  [out, in]    A[m, k] = gy[k, m]   B = x [rows, in]    mask on C

* Skipping. The degree range (min, max) of every tile of rows/columns is computed on the
  host side with torch (a few small ops on the degree vectors, on the device, no sync;
  nothing is cached). Mask on B: for each column tile, the list of K tiles that are not
  entirely masked (tile (k, n) is live iff ``keep(max out, min in)`` over it) is passed
  as an index table plus a count, and the program loops over exactly those (``for t in
  range(count)``: no branch in the loop, so the loads pipeline); inside a live tile the
  mask is applied elementwise in the load mask of W (a masked weight is never read).
  Mask on C: a program whose output tile is entirely masked runs zero K iterations and
  stores zeros; a partly masked one selects at the store.
* fp32 accumulation. fp32 inputs use ``input_precision="ieee"`` (no TF32), so results
  are fp32-exact; fp16/bf16 inputs go to the tensor cores. (Under the interpreter, whose
  ``tl.dot`` mishandles bf16, bf16 tiles are upcast to fp32 first: exact, same sums.)
* The bias gradient is a column sum done by torch (fp32 accumulation).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from dqkernels import backends
from dqkernels.kernels.dmol.triton import _to_store

# Tile shape (not yet timed on a GPU: tune here). BM shrinks for short problems.
_BM = 64
_BN = 64
_BK = 32
_NUM_WARPS = 4
_NUM_STAGES = 3

_I64_MAX = torch.iinfo(torch.int64).max
_I64_MIN = torch.iinfo(torch.int64).min


@triton.jit
def _keep(hi, lo, STRICT: tl.constexpr):
    if STRICT:
        return hi > lo
    else:
        return hi >= lo


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # bf16 under the interpreter, whose tl.dot mishandles it (exact upcast)
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _dot_k_tile(
    acc, a_rows, b_cols, offs_k, K, sak, sbk, m_ok, b_ok, IEEE: tl.constexpr, UPCAST: tl.constexpr
):
    """``acc + a[:, offs_k] @ b[offs_k, :]`` for the row pointers ``a_rows`` ``[BM, 1]`` and
    column pointers ``b_cols`` ``[1, BN]``: ``k >= K`` reads as zeros, and so do the
    entries of ``b`` where the ``[1 or BK, BN]`` mask ``b_ok`` is false."""
    k_ok = offs_k < K
    ok = offs_k.to(tl.int64)
    a = tl.load(a_rows + ok[None, :] * sak, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    b = tl.load(b_cols + ok[:, None] * sbk, mask=k_ok[:, None] & b_ok, other=0.0)
    return _dot(a, b, acc, IEEE, UPCAST)


@triton.jit
def _masked_mm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    dr_ptr,
    dn_ptr,
    tiles_ptr,
    counts_ptr,
    status_ptr,
    M,
    N,
    K,
    sam,
    sak,
    sbk,
    sbn,
    ldc,
    sbias,
    KT,
    SIDE_C: tl.constexpr,
    STRICT: tl.constexpr,
    N_IS_HI: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    m_ok = offs_m < M
    n_ok = offs_n < N
    om = offs_m.to(tl.int64)
    on = offs_n.to(tl.int64)
    dn = tl.load(dn_ptr + offs_n, mask=n_ok, other=0)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    a_rows = a_ptr + om[:, None] * sam
    b_cols = b_ptr + on[None, :] * sbn
    if SIDE_C:
        # whole output tile masked: no K iterations (the zeros are stored below)
        st = tl.load(status_ptr + pid_m * tl.num_programs(1) + pid_n)
        k_end = tl.where(st != 0, K, 0)
        for k0 in range(0, k_end, BK):
            offs_k = k0 + tl.arange(0, BK)
            acc = _dot_k_tile(
                acc, a_rows, b_cols, offs_k, K, sak, sbk, m_ok, n_ok[None, :], IEEE, UPCAST
            )
        dm = tl.load(dr_ptr + offs_m, mask=m_ok, other=0)
        if N_IS_HI:
            keep = _keep(dn[None, :], dm[:, None], STRICT)
        else:
            keep = _keep(dm[:, None], dn[None, :], STRICT)
        acc = tl.where(keep, acc, 0.0)
    else:
        count = tl.load(counts_ptr + pid_n)
        for t in range(count):
            kt = tl.load(tiles_ptr + pid_n * KT + t)
            offs_k = kt * BK + tl.arange(0, BK)
            dk = tl.load(dr_ptr + offs_k, mask=offs_k < K, other=0)
            if N_IS_HI:
                keep = _keep(dn[None, :], dk[:, None], STRICT)
            else:
                keep = _keep(dk[:, None], dn[None, :], STRICT)
            b_ok = n_ok[None, :] & keep
            acc = _dot_k_tile(acc, a_rows, b_cols, offs_k, K, sak, sbk, m_ok, b_ok, IEEE, UPCAST)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + on * sbias, mask=n_ok, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    tl.store(
        c_ptr + om[:, None] * ldc + on[None, :],
        _to_store(acc, c_ptr),
        mask=m_ok[:, None] & n_ok[None, :],
    )


# ----------------------------------------------------------------------------- host side


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _keep_t(hi: torch.Tensor, lo: torch.Tensor, strict: bool) -> torch.Tensor:
    return hi > lo if strict else hi >= lo


def tile_ranges(d: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of ``d`` over consecutive tiles of ``tile`` entries (the last one short)."""
    n = d.shape[0]
    tiles = triton.cdiv(n, tile)
    pad = tiles * tile - n
    d = d.to(torch.int64)
    lo = torch.cat([d, d.new_full((pad,), _I64_MAX)]).view(tiles, tile).amin(dim=1)
    hi = torch.cat([d, d.new_full((pad,), _I64_MIN)]).view(tiles, tile).amax(dim=1)
    return lo, hi


def live_k_tiles(
    dk: torch.Tensor, dn: torch.Tensor, n_is_hi: bool, strict: bool, bk: int, bn: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask on B: per column tile, the K tiles that are not entirely masked, first in a
    ``[n_tiles, k_tiles]`` int32 table (ascending, the rest of the row unspecified), and
    their count per column tile."""
    klo, khi = tile_ranges(dk, bk)
    nlo, nhi = tile_ranges(dn, bn)
    if n_is_hi:
        live = _keep_t(nhi[:, None], klo[None, :], strict)
    else:
        live = _keep_t(khi[None, :], nlo[:, None], strict)
    order = torch.sort((~live).to(torch.int8), dim=1, stable=True).indices
    return order.to(torch.int32).contiguous(), live.sum(dim=1).to(torch.int32)


def live_c_tiles(
    dm: torch.Tensor, dn: torch.Tensor, n_is_hi: bool, strict: bool, bm: int, bn: int
) -> torch.Tensor:
    """Mask on C: ``[m_tiles, n_tiles]`` int32, 1 where the output tile is not entirely
    masked."""
    mlo, mhi = tile_ranges(dm, bm)
    nlo, nhi = tile_ranges(dn, bn)
    if n_is_hi:
        live = _keep_t(nhi[None, :], mlo[:, None], strict)
    else:
        live = _keep_t(mhi[:, None], nlo[None, :], strict)
    return live.to(torch.int32).contiguous()


def _bm(M: int) -> int:
    return max(16, min(_BM, triton.next_power_of_2(M)))


def _launch(A, sa, B, sb, C, M, N, K, dr, dn, *, side_c, n_is_hi, strict, bias=None):
    """``C`` (contiguous [M, N]) = the masked product; ``sa``/``sb``: (stride of m, stride
    of k) of A and (stride of k, stride of n) of B."""
    if M >= 2**31 or N >= 2**31 or K >= 2**31:
        raise ValueError(f"triton masked_linear: sizes must be below 2^31; got M={M}, N={N}, K={K}")
    bm, bn, bk = _bm(M), _BN, _BK
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    if grid[1] > 65535:
        raise ValueError(f"triton masked_linear: at most {65535 * bn} output columns; got {N}")
    dr = dr.to(torch.int64).contiguous()
    dn = dn.to(torch.int64).contiguous()
    dummy = dn  # unused pointer arguments
    if side_c:
        status = live_c_tiles(dr, dn, n_is_hi, strict, bm, bn)
        tiles, counts, kt = dummy, dummy, 1
    else:
        tiles, counts = live_k_tiles(dr, dn, n_is_hi, strict, bk, bn)
        status, kt = dummy, tiles.shape[1]
    with _device_guard(C):
        _masked_mm_kernel[grid](
            A,
            B,
            C,
            bias if bias is not None else C,
            dr,
            dn,
            tiles,
            counts,
            status,
            M,
            N,
            K,
            sa[0],
            sa[1],
            sb[0],
            sb[1],
            N,
            0 if bias is None else bias.stride(0),
            kt,
            SIDE_C=side_c,
            STRICT=bool(strict),
            N_IS_HI=n_is_hi,
            HAS_BIAS=bias is not None,
            IEEE=A.dtype == torch.float32,
            UPCAST=A.dtype == torch.bfloat16 and backends.triton_interpreting(),
            BM=bm,
            BN=bn,
            BK=bk,
            num_warps=_NUM_WARPS,
            num_stages=_NUM_STAGES,
        )


def _check_out(t, name):
    if t is not None and not t.is_contiguous():
        raise ValueError(f"triton masked_linear: {name} must be contiguous")


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    _check_out(y, "y")
    rows, n_in = x.shape
    n_out = weight.shape[0]
    _launch(
        x,
        x.stride(),
        weight,
        (weight.stride(1), weight.stride(0)),
        y,
        rows,
        n_out,
        n_in,
        in_deg,
        out_deg,
        side_c=False,
        n_is_hi=True,
        strict=strict,
        bias=bias,
    )


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    for t, name in ((grad_x, "grad_x"), (grad_weight, "grad_weight"), (grad_bias, "grad_bias")):
        _check_out(t, name)
    rows, n_in = x.shape
    n_out = weight.shape[0]
    if grad_x is not None:
        _launch(
            grad_y,
            grad_y.stride(),
            weight,
            weight.stride(),
            grad_x,
            rows,
            n_in,
            n_out,
            out_deg,
            in_deg,
            side_c=False,
            n_is_hi=False,
            strict=strict,
        )
    if grad_weight is not None:
        _launch(
            grad_y,
            (grad_y.stride(1), grad_y.stride(0)),
            x,
            x.stride(),
            grad_weight,
            n_out,
            n_in,
            rows,
            out_deg,
            in_deg,
            side_c=True,
            n_is_hi=False,
            strict=strict,
        )
    if grad_bias is not None:
        grad_bias.copy_(grad_y.sum(dim=0, dtype=torch.float32))
