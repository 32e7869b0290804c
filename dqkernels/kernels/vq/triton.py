"""The ``triton`` backend of the VQ ops (fp32, fp16, bf16 inputs).

Same interface and semantics as :mod:`dqkernels.kernels.vq.torch` (the kernel module
interface is in :mod:`dqkernels.ops.vq`); :mod:`dqkernels.reference.vq` is the definition.

Design
------
* nearest, a fused GEMM-argmin (nothing of size ``N x K`` is ever stored):

  1. ``_sqnorm_kernel``: the code norms ``|e_k|^2`` in fp32 into a ``[K]`` buffer.
  2. ``_nearest_kernel``: one program per ``BLOCK_N`` rows loops over code tiles of
     ``BLOCK_K``; per tile ``z.e`` is a ``tl.dot`` over ``BLOCK_D`` chunks (fp32 inputs with
     ``input_precision="ieee"``: no TF32; fp16/bf16 on the tensor cores with fp32
     accumulation), the score is ``s = |e|^2 - 2 z.e`` and the program keeps, per row, the
     best score, its index and the second-best score (within a tile the smallest index
     attaining the minimum; across tiles a strict ``<``, so ties go to the lowest index).
     When D fits one chunk the z tile is loaded once, before the code loop.
     A row is *flagged* unless ``second - best > 2 gamma (max|e|^2 + 2 |z| max|e|)`` with
     ``gamma = (D+2)u / (1 - (D+2)u)``: that is a bound on the rounding error of the gap
     between two computed scores (fp32 sums of D+2 terms), so an unflagged row's winner is
     the exact argmin. ``u = 2^-24`` for fp32; ``2^-22`` for fp16/bf16, whose products are
     exact in fp32 but whose tensor-core accumulation need not round to nearest. The
     comparison is written so that a NaN gap (scores overflowed to inf) also flags.
     Flagged rows are appended to a row list (one atomic add per program reserves the
     slots); every row gets ``sqdist = sum((z - e_best)^2)`` from explicit differences in
     fp32.
  3. ``_rescore_kernel``: the flagged rows, ``BLOCK_R`` per program, scored against every
     code from explicit differences in fp64 (exact for fp16/bf16/fp32 inputs up to the
     final rounding), first minimum wins; it overwrites the index and ``sqdist`` (the fp64
     distance rounded to fp32) of those rows. Its grid covers N rows, but a program past
     the list's length (read on the device: no host sync) runs no iterations, so the cost
     follows the number of flagged rows. Exact ties (duplicated codes) and near-ties
     always land here; for random data they are rare.

* sample: one program per (``BLOCK_N`` rows, ``BLOCK_S`` draws). Pass 1 over the code
  tiles: distances ``|z|^2 + |e|^2 - 2 z.e`` (fp32, clamped at 0), the running minimum
  ``m`` and ``Z = sum exp(-(d - m) / T)`` rescaled whenever ``m`` falls. Pass 2: weights
  ``w = exp(-(d - m) / T)``, their cumulative sums ``tl.cumsum`` plus the carry from the
  previous tiles; a target ``t = u Z`` is found in this tile iff the carry is ``<= t``
  and some cumulative weight of the tile exceeds ``t``; it takes the first such code.
  Targets that no cumulative weight exceeds (rounding) take the last code of positive
  weight. Every output element is written exactly once (a NaN target takes that last
  code). The GEMM is computed twice (once per pass).

* ema_update: the decay is torch's in-place ``mul_``; the accumulation is
  ``_ema_kernel``, one program per (``BLOCK_N`` rows, ``BLOCK_D`` columns), ``tl.atomic_add``
  of ``z * (1 - decay) / S`` into ``embed_sum`` and of ``(1 - decay) / S`` into
  ``cluster_size``, in the state's dtype (float32, or float64 where the GPU's fp64 atomic
  add is used). The order of the atomic adds is not fixed, so the state's last bits are
  not run-to-run deterministic.

Under the interpreter (CPU tests) tiles are tiny and fixed; bf16 ``tl.dot`` tiles are
widened to fp32 there (its ``tl.dot`` mishandles bf16; the widening is exact).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dqkernels import backends
from dqkernels.kernels.masked_linear.triton import _device_guard, _dot

# GPU launch configurations, per kernel and input dtype class: (BLOCK_N, BLOCK_K, BLOCK_D,
# largest D kept as one resident z tile, num_warps, num_stages). fp32 runs the ieee dot on
# the FMA units. Chosen so that the sm_90 build (triton 3.9, AOT) has no register spills
# (nearest: 164-241 registers, sample: 170-255); not yet timed on a GPU: tune here.
_GPU_CONFIGS = {
    ("nearest", "fp32"): (64, 64, 32, 32, 8, 3),
    ("nearest", "half"): (128, 64, 32, 64, 8, 3),
    ("sample", "fp32"): (64, 64, 32, 32, 8, 3),
    ("sample", "half"): (128, 64, 32, 64, 8, 3),
}
# Under the interpreter: the smallest tiles tl.dot takes, so that small test shapes still
# span several row, code and D tiles.
_INTERP_CONFIG = (16, 16, 16, 16, 1, 1)
# re-score (fp64 explicit differences, a [BLOCK_R, BLOCK_K, BLOCK_D] fp64 tile) and EMA
_RESCORE = (16, 16, 16, 4)  # BLOCK_R, BLOCK_K, BLOCK_D, num_warps
_EMA = (32, 64, 4)  # BLOCK_N, BLOCK_D, num_warps
_SQNORM = (32, 64, 4)  # BLOCK_N, BLOCK_D, num_warps
_MAX_BLOCK_S = 16  # draws per sample program (more: more programs)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _sqnorm_kernel(x_ptr, out_ptr, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """``out[n] = sum_d x[n, d]^2`` in fp32."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    r64 = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(
            x_ptr + r64[:, None] * D + dd[None, :],
            mask=r_ok[:, None] & (dd < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    tl.store(out_ptr + rows, acc, mask=r_ok)


@triton.jit
def _row_sqnorm(z_ptr, r64, r_ok, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        z = tl.load(
            z_ptr + r64[:, None] * D + dd[None, :],
            mask=r_ok[:, None] & (dd < D)[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(z * z, axis=1)
    return acc


@triton.jit
def _load_z(z_ptr, r64, r_ok, D, d0, BLOCK_D: tl.constexpr):
    """The ``[BLOCK_N, BLOCK_D]`` z tile of columns ``d0 ...`` (zeros outside)."""
    dd = d0 + tl.arange(0, BLOCK_D)
    return tl.load(
        z_ptr + r64[:, None] * D + dd[None, :], mask=r_ok[:, None] & (dd < D)[None, :], other=0.0
    )


@triton.jit
def _load_et(e_ptr, c64, c_ok, D, d0, BLOCK_D: tl.constexpr):
    """The transposed ``[BLOCK_D, BLOCK_K]`` codebook tile of columns ``d0 ...``."""
    dd = d0 + tl.arange(0, BLOCK_D)
    return tl.load(
        e_ptr + c64[None, :] * D + dd[:, None], mask=c_ok[None, :] & (dd < D)[:, None], other=0.0
    )


@triton.jit
def _zdote(
    z_ptr,
    e_ptr,
    r64,
    r_ok,
    c64,
    c_ok,
    z_res,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RESIDENT: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``[BLOCK_N, BLOCK_K]`` fp32 tile of ``z_n . e_k`` (``z_res``: the resident z tile
    when ``RESIDENT``, i.e. D <= BLOCK_D)."""
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if RESIDENT:
        acc = _dot(z_res, _load_et(e_ptr, c64, c_ok, D, 0, BLOCK_D), acc, IEEE, UPCAST)
    else:
        for d0 in range(0, D, BLOCK_D):
            acc = _dot(
                _load_z(z_ptr, r64, r_ok, D, d0, BLOCK_D),
                _load_et(e_ptr, c64, c_ok, D, d0, BLOCK_D),
                acc,
                IEEE,
                UPCAST,
            )
    return acc


@triton.jit
def _nearest_kernel(
    z_ptr,
    e_ptr,
    nrm_ptr,
    idx_ptr,
    dist_ptr,
    list_ptr,
    count_ptr,
    N,
    K,
    D,
    gamma,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RESIDENT: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    r64 = rows.to(tl.int64)
    z_res = 0.0
    if RESIDENT:
        z_res = _load_z(z_ptr, r64, r_ok, D, 0, BLOCK_D)
    best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    second = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    best_i = tl.zeros([BLOCK_N], dtype=tl.int32)
    emax = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        c_ok = cols < K
        dots = _zdote(
            z_ptr,
            e_ptr,
            r64,
            r_ok,
            cols.to(tl.int64),
            c_ok,
            z_res,
            D,
            BLOCK_N,
            BLOCK_K,
            BLOCK_D,
            RESIDENT,
            IEEE,
            UPCAST,
        )
        nrm = tl.load(nrm_ptr + cols, mask=c_ok, other=0.0)
        emax = tl.maximum(emax, nrm)
        s = nrm[None, :] - 2.0 * dots
        s = tl.where(c_ok[None, :] & (s == s), s, float("inf"))  # NaN counts as +inf
        t_min = tl.min(s, axis=1)
        t_arg = tl.min(tl.where(s == t_min[:, None], cols[None, :], K), axis=1)
        t_second = tl.min(tl.where(cols[None, :] == t_arg[:, None], float("inf"), s), axis=1)
        better = t_min < best
        second = tl.where(better, tl.minimum(best, t_second), tl.minimum(second, t_min))
        best_i = tl.where(better, t_arg, best_i)
        best = tl.where(better, t_min, best)
    # rounding bound of the gap between two scores; a NaN gap flags too
    e_max = tl.max(emax, axis=0)
    zn = _row_sqnorm(z_ptr, r64, r_ok, D, BLOCK_N, BLOCK_D)
    bound = 2.0 * gamma * (e_max + 2.0 * tl.sqrt(zn * e_max))
    flag = (~((second - best) > bound)) & r_ok
    fl = flag.to(tl.int32)
    nflag = tl.sum(fl, axis=0)
    base = tl.atomic_add(count_ptr, nflag, mask=nflag > 0)
    tl.store(list_ptr + (base + tl.cumsum(fl, axis=0) - 1), rows, mask=flag)
    # sqdist of the chosen code from explicit differences
    b64 = best_i.to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        m2 = r_ok[:, None] & (dd < D)[None, :]
        z = tl.load(z_ptr + r64[:, None] * D + dd[None, :], mask=m2, other=0.0)
        e = tl.load(e_ptr + b64[:, None] * D + dd[None, :], mask=m2, other=0.0)
        diff = z.to(tl.float32) - e.to(tl.float32)
        acc += tl.sum(diff * diff, axis=1)
    tl.store(idx_ptr + rows, b64, mask=r_ok)
    tl.store(dist_ptr + rows, acc, mask=r_ok)


@triton.jit
def _rescore_kernel(
    z_ptr,
    e_ptr,
    idx_ptr,
    dist_ptr,
    list_ptr,
    count_ptr,
    K,
    D,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """First argmin of ``sum((z - e_k)^2)`` in fp64 for the listed rows."""
    count = tl.load(count_ptr)
    start = tl.program_id(0) * BLOCK_R
    j = start + tl.arange(0, BLOCK_R)
    j_ok = j < count
    r64 = tl.load(list_ptr + j, mask=j_ok, other=0).to(tl.int64)
    k_end = tl.where(start < count, K, 0)
    best = tl.full([BLOCK_R], float("inf"), dtype=tl.float64)
    best_i = tl.zeros([BLOCK_R], dtype=tl.int32)
    for k0 in range(0, k_end, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        c_ok = cols < K
        c64 = cols.to(tl.int64)
        acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float64)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            d_ok = dd < D
            z = tl.load(
                z_ptr + r64[:, None] * D + dd[None, :],
                mask=j_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float64)
            e = tl.load(
                e_ptr + c64[:, None] * D + dd[None, :],
                mask=c_ok[:, None] & d_ok[None, :],
                other=0.0,
            ).to(tl.float64)
            diff = z[:, None, :] - e[None, :, :]
            acc += tl.sum(diff * diff, axis=2)
        acc = tl.where(c_ok[None, :] & (acc == acc), acc, float("inf"))  # NaN as +inf
        t_min = tl.min(acc, axis=1)
        t_arg = tl.min(tl.where(acc == t_min[:, None], cols[None, :], K), axis=1)
        better = t_min < best
        best_i = tl.where(better, t_arg, best_i)
        best = tl.where(better, t_min, best)
    # best stays inf only for rows with NaN (no finite input overflows fp64 here)
    dist = tl.where(best == float("inf"), float("nan"), best).to(tl.float32)
    tl.store(idx_ptr + r64, best_i.to(tl.int64), mask=j_ok)
    tl.store(dist_ptr + r64, dist, mask=j_ok)


@triton.jit
def _dist_tile(
    z_ptr,
    e_ptr,
    nrm_ptr,
    r64,
    r_ok,
    zn,
    z_res,
    k0,
    K,
    D,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RESIDENT: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """``(cols, c_ok, d)``: squared distances of a code tile, inf for columns past K and
    for NaN distances (the NaN rule: such a code is never drawn)."""
    cols = k0 + tl.arange(0, BLOCK_K)
    c_ok = cols < K
    dots = _zdote(
        z_ptr,
        e_ptr,
        r64,
        r_ok,
        cols.to(tl.int64),
        c_ok,
        z_res,
        D,
        BLOCK_N,
        BLOCK_K,
        BLOCK_D,
        RESIDENT,
        IEEE,
        UPCAST,
    )
    nrm = tl.load(nrm_ptr + cols, mask=c_ok, other=0.0)
    d = zn[:, None] + nrm[None, :] - 2.0 * dots
    # NaN test before the clamp: the GPU's max returns the non-NaN operand
    keep = c_ok[None, :] & (d == d)
    return cols, c_ok, tl.where(keep, tl.maximum(d, 0.0), float("inf"))


@triton.jit
def _weights(m, d, inv_t):
    """``exp(-(d - m) / T)``, 0 where that is NaN (``d`` and ``m`` infinite, or ``1/T``
    rounded to 0 against an infinite ``d``)."""
    x = (m[:, None] - d) * inv_t
    return tl.where(x <= 0.0, tl.exp(x), 0.0)


@triton.jit
def _sample_kernel(
    z_ptr,
    e_ptr,
    nrm_ptr,
    u_ptr,
    out_ptr,
    N,
    K,
    D,
    S,
    inv_t,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    RESIDENT: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    r64 = rows.to(tl.int64)
    s_lo = tl.program_id(1) * BLOCK_S
    z_res = 0.0
    if RESIDENT:
        z_res = _load_z(z_ptr, r64, r_ok, D, 0, BLOCK_D)
    zn = _row_sqnorm(z_ptr, r64, r_ok, D, BLOCK_N, BLOCK_D)
    # pass 1: m = min_k d_k and Z = sum_k exp(-(d_k - m) / T)
    m = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    Z = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols, c_ok, d = _dist_tile(
            z_ptr,
            e_ptr,
            nrm_ptr,
            r64,
            r_ok,
            zn,
            z_res,
            k0,
            K,
            D,
            BLOCK_N,
            BLOCK_K,
            BLOCK_D,
            RESIDENT,
            IEEE,
            UPCAST,
        )
        m_new = tl.minimum(m, tl.min(d, axis=1))
        scale = tl.where(Z > 0.0, tl.exp((m_new - m) * inv_t), 0.0)
        Z = Z * scale + tl.sum(_weights(m_new, d, inv_t), axis=1)
        m = m_new
    # pass 2: the first code whose cumulative weight exceeds t = u * Z
    sl = tl.arange(0, BLOCK_S)
    s_ok = (s_lo + sl) < S
    u = tl.load(
        u_ptr + r64[:, None] * S + (s_lo + sl)[None, :],
        mask=r_ok[:, None] & s_ok[None, :],
        other=0.0,
    )
    t_all = u * Z[:, None]
    s_cnt = tl.minimum(S - s_lo, BLOCK_S)
    carry = tl.zeros([BLOCK_N], dtype=tl.float32)
    last_pos = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols, c_ok, d = _dist_tile(
            z_ptr,
            e_ptr,
            nrm_ptr,
            r64,
            r_ok,
            zn,
            z_res,
            k0,
            K,
            D,
            BLOCK_N,
            BLOCK_K,
            BLOCK_D,
            RESIDENT,
            IEEE,
            UPCAST,
        )
        w = _weights(m, d, inv_t)
        cum = carry[:, None] + tl.cumsum(w, axis=1)
        for s in range(s_cnt):
            t = tl.sum(tl.where(sl[None, :] == s, t_all, 0.0), axis=1)
            first = tl.min(tl.where((cum > t[:, None]) & c_ok[None, :], cols[None, :], K), axis=1)
            found = (carry <= t) & (first < K) & r_ok
            tl.store(out_ptr + r64 * S + s_lo + s, first.to(tl.int64), mask=found)
        lp = tl.max(tl.where((w > 0.0) & c_ok[None, :], cols[None, :], -1), axis=1)
        last_pos = tl.where(lp >= 0, lp, last_pos)
        carry = tl.max(cum, axis=1)
    for s in range(s_cnt):
        t = tl.sum(tl.where(sl[None, :] == s, t_all, 0.0), axis=1)
        left = (~(carry > t)) & r_ok
        tl.store(out_ptr + r64 * S + s_lo + s, last_pos.to(tl.int64), mask=left)


@triton.jit
def _ema_kernel(
    cs_ptr, es_ptr, z_ptr, idx_ptr, alpha_ptr, N, D, S, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr
):
    """``embed_sum[idx] += alpha z`` and ``cluster_size[idx] += alpha`` per sample."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < N
    r64 = rows.to(tl.int64)
    dd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m2 = r_ok[:, None] & (dd < D)[None, :]
    alpha = tl.load(alpha_ptr)
    z = tl.load(z_ptr + r64[:, None] * D + dd[None, :], mask=m2, other=0.0)
    za = z.to(alpha.dtype) * alpha
    ones = tl.zeros([BLOCK_N], dtype=alpha.dtype) + alpha
    for s in range(S):
        k = tl.load(idx_ptr + r64 * S + s, mask=r_ok, other=0)
        tl.atomic_add(es_ptr + k[:, None] * D + dd[None, :], za, mask=m2)
        if tl.program_id(1) == 0:
            tl.atomic_add(cs_ptr + k, ones, mask=r_ok)


# ----------------------------------------------------------------------------- host side


def _config(kind: str, dtype: torch.dtype, D: int):
    """``(BLOCK_N, BLOCK_K, BLOCK_D, RESIDENT, num_warps, num_stages)``."""
    if backends.triton_interpreting():
        bn, bk, bd, max_res, warps, stages = _INTERP_CONFIG
    else:
        cls = "fp32" if dtype == torch.float32 else "half"
        bn, bk, bd, max_res, warps, stages = _GPU_CONFIGS[(kind, cls)]
    resident = D <= max_res
    if resident:
        bd = max(16, triton.next_power_of_2(D))
    return bn, bk, bd, resident, warps, stages


def _dot_flags(dtype: torch.dtype):
    """(IEEE, UPCAST) for ``_dot``."""
    return (dtype == torch.float32, dtype == torch.bfloat16 and backends.triton_interpreting())


def _check_sizes(op: str, N: int, K: int, D: int) -> None:
    if N >= 2**31 or K >= 2**31 or D >= 2**31:
        raise ValueError(f"triton {op}: sizes must be below 2^31; got N={N}, K={K}, D={D}")


def _code_norms(codebook: torch.Tensor) -> torch.Tensor:
    K, D = codebook.shape
    bn, bd, warps = _SQNORM
    if backends.triton_interpreting():
        bd = 16
    out = torch.empty(K, dtype=torch.float32, device=codebook.device)
    _sqnorm_kernel[(triton.cdiv(K, bn),)](
        codebook, out, K, D, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps
    )
    return out


def _gamma(D: int, dtype: torch.dtype) -> float:
    u = 2.0**-24 if dtype == torch.float32 else 2.0**-22
    return (D + 2) * u / (1.0 - (D + 2) * u)


def nearest(z, codebook, indices, sqdist):
    N, D = z.shape
    K = codebook.shape[0]
    _check_sizes("vq_nearest", N, K, D)
    bn, bk, bd, resident, warps, stages = _config("nearest", z.dtype, D)
    ieee, upcast = _dot_flags(z.dtype)
    with _device_guard(z):
        norms = _code_norms(codebook)
        rows = torch.empty(N, dtype=torch.int32, device=z.device)
        count = torch.zeros(1, dtype=torch.int32, device=z.device)
        _nearest_kernel[(triton.cdiv(N, bn),)](
            z,
            codebook,
            norms,
            indices,
            sqdist,
            rows,
            count,
            N,
            K,
            D,
            _gamma(D, z.dtype),
            BLOCK_N=bn,
            BLOCK_K=bk,
            BLOCK_D=bd,
            RESIDENT=resident,
            IEEE=ieee,
            UPCAST=upcast,
            num_warps=warps,
            num_stages=stages,
        )
        br, rk, rd, rwarps = _RESCORE
        _rescore_kernel[(triton.cdiv(N, br),)](
            z,
            codebook,
            indices,
            sqdist,
            rows,
            count,
            K,
            D,
            BLOCK_R=br,
            BLOCK_K=rk,
            BLOCK_D=rd,
            num_warps=rwarps,
        )


def sample(z, codebook, u, inv_temperature, out):
    N, D = z.shape
    K = codebook.shape[0]
    S = u.shape[1]
    _check_sizes("vq_sample", N, K, D)
    bn, bk, bd, resident, warps, stages = _config("sample", z.dtype, D)
    ieee, upcast = _dot_flags(z.dtype)
    bs = min(_MAX_BLOCK_S, triton.next_power_of_2(S))
    grid = (triton.cdiv(N, bn), triton.cdiv(S, bs))
    if grid[1] > 65535:
        raise ValueError(f"triton vq_sample: at most {65535 * bs} samples; got {S}")
    with _device_guard(z):
        norms = _code_norms(codebook)
        _sample_kernel[grid](
            z,
            codebook,
            norms,
            u,
            out,
            N,
            K,
            D,
            S,
            float(inv_temperature),
            BLOCK_N=bn,
            BLOCK_K=bk,
            BLOCK_D=bd,
            BLOCK_S=bs,
            RESIDENT=resident,
            IEEE=ieee,
            UPCAST=upcast,
            num_warps=warps,
            num_stages=stages,
        )


def ema_update(cluster_size, embed_sum, z, indices, decay):
    N, D = z.shape
    S = indices.shape[1]
    bn, bd, warps = _EMA
    if backends.triton_interpreting():
        bn, bd = 16, 16
    grid = (triton.cdiv(N, bn), triton.cdiv(D, bd))
    if grid[1] > 65535:
        raise ValueError(f"triton vq_ema_update: D must be below {65535 * bd}; got {D}")
    alpha = torch.full((1,), (1.0 - decay) / S, dtype=embed_sum.dtype, device=z.device)
    with _device_guard(z):
        cluster_size.mul_(decay)
        embed_sum.mul_(decay)
        _ema_kernel[grid](
            cluster_size,
            embed_sum,
            z,
            indices,
            alpha,
            N,
            D,
            S,
            BLOCK_N=bn,
            BLOCK_D=bd,
            num_warps=warps,
        )
