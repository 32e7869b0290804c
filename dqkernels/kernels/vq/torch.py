"""The ``torch`` backend of the VQ ops: plain PyTorch in float64, in tiles of
``ROWS x CODES`` so that no ``N x K`` matrix is ever built (extra memory is bounded by
the tile, whatever N and K are).

nearest: per tile, scores ``|e_k|^2 - 2 z.e_k`` by a float64 matmul; the running best and
second-best score per row. Where the two are closer than the float64 rounding bound of
the scores, the row is re-scored from explicit differences ``sum((z - e_k)^2)`` (exact
ties such as duplicated codebook rows then compare equal, and the first index wins).

sample: two passes over the codes per row tile: (1) the minimum distance ``m`` and
``Z = sum_k exp(-(d_k - m) / T)``; (2) cumulative weights, where each sorted target
``u_s * Z`` finds the first code whose cumulative weight exceeds it (``searchsorted``).

ema_update: the in-place decay, then ``index_add_`` of ``(1 - decay) / S`` per sample into
the counts and of the rows times it into the sums, in the state's dtype.
"""

from __future__ import annotations

import math

import torch

ROWS = 1024
CODES = 2048
SAMPLE_ROWS = 512  # the sampler holds several float64 tiles at once: smaller ones
EXACT_ELEMS = 1 << 22  # elements of one (rows x codes x D) difference block in a re-score
_U64 = 2.0**-53


def _rows(N: int, step: int = ROWS):
    for r0 in range(0, N, step):
        yield r0, min(N, r0 + step)


def _codes(K: int, step: int = CODES):
    for c0 in range(0, K, step):
        yield c0, min(K, c0 + step)


def _exact_argmin(z64: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """First argmin of ``sum((z - e_k)^2)`` from explicit differences, in blocks; a NaN
    distance counts as +inf (code 0 where no distance is finite)."""
    F, D = z64.shape
    K = codebook.shape[0]
    step = max(1, EXACT_ELEMS // max(1, F * D))
    best = torch.full((F,), math.inf, dtype=torch.float64, device=z64.device)
    best_i = torch.zeros(F, dtype=torch.int64, device=z64.device)
    for c0, c1 in _codes(K, step):
        d = _nan_to_inf(((z64[:, None, :] - codebook[c0:c1].double()[None]) ** 2).sum(-1))
        v, i = d.min(dim=1)  # first minimum within the block
        better = v < best  # strict: an equal later block keeps the lower index
        best = torch.where(better, v, best)
        best_i = torch.where(better, i + c0, best_i)
    return best_i


def _nan_to_inf(t: torch.Tensor) -> torch.Tensor:
    """``t`` with NaN read as +inf, in place: the NaN rule of the VQ ops (a code at NaN
    distance is never chosen over one at finite distance)."""
    return t.masked_fill_(torch.isnan(t), math.inf)


def _norms(codebook):
    """``|e_k|^2`` in float64, ``[K]``, a code tile at a time."""
    K = codebook.shape[0]
    norms = torch.empty(K, dtype=torch.float64, device=codebook.device)
    for c0, c1 in _codes(K):
        e = codebook[c0:c1].double()
        norms[c0:c1] = (e * e).sum(1)
    return norms


def nearest(z, codebook, indices, sqdist):
    N, D = z.shape
    K = codebook.shape[0]
    dev = z.device
    norms = _norms(codebook)
    finite = torch.isfinite(norms)
    # codes of NaN or infinite norm score NaN or +inf (read as +inf): the bound is over the
    # others
    emax = float(norms[finite].max()) if bool(finite.any()) else 0.0
    gamma = (D + 2) * _U64 / (1 - (D + 2) * _U64)
    for r0, r1 in _rows(N):
        zr = z[r0:r1].double()
        zn = (zr * zr).sum(1)
        best = torch.full((r1 - r0,), math.inf, dtype=torch.float64, device=dev)
        second = best.clone()
        best_i = torch.zeros(r1 - r0, dtype=torch.int64, device=dev)
        for c0, c1 in _codes(K):
            s = torch.addmm(norms[c0:c1][None], zr, codebook[c0:c1].double().T, alpha=-2.0)
            _nan_to_inf(s)
            v, i = s.min(dim=1)
            if c1 - c0 > 1:
                s.scatter_(1, i[:, None], math.inf)
                v2 = s.min(dim=1).values
            else:
                v2 = torch.full_like(v, math.inf)
            better = v < best
            second = torch.where(better, torch.minimum(best, v2), torch.minimum(second, v))
            best_i = torch.where(better, i + c0, best_i)
            best = torch.where(better, v, best)
        # rounding bound of a score |e|^2 - 2 z.e, for the two compared scores
        bound = 2 * gamma * (emax + 2 * torch.sqrt(zn * emax))
        # rows with no finite score (NaN or overflowing codes, or z) are re-scored too
        close = ((second - best) <= bound) | ~torch.isfinite(best)
        if bool(close.any()):
            rows = close.nonzero()[:, 0]
            best_i[rows] = _exact_argmin(zr[rows], codebook)
        indices[r0:r1] = best_i
        diff = zr - codebook.index_select(0, best_i).double()
        sqdist[r0:r1] = (diff * diff).sum(1).to(sqdist.dtype)


def _sqdist_tile(zr, zn, codebook, norms, c0, c1):
    e = codebook[c0:c1].double()
    d = torch.addmm(norms[c0:c1][None] + zn[:, None], zr, e.T, alpha=-2.0)
    return _nan_to_inf(d).clamp_min_(0.0)


def _weights(d, m, inv_temperature):
    """``exp(-(d - m) / T)``; 0 where that is NaN (a code at infinite distance when ``m`` is
    infinite too, or when ``1/T`` rounds to 0)."""
    return torch.exp(-(d - m[:, None]) * inv_temperature).nan_to_num_(0.0)


def sample(z, codebook, u, inv_temperature, out):
    N, D = z.shape
    K = codebook.shape[0]
    S = u.shape[1]
    dev = z.device
    norms = _norms(codebook)
    for r0, r1 in _rows(N, SAMPLE_ROWS):
        R = r1 - r0
        zr = z[r0:r1].double()
        zn = (zr * zr).sum(1)
        # pass 1: m = min_k d_k and Z = sum_k exp(-(d_k - m) / T), rescaled as m falls
        m = torch.full((R,), math.inf, dtype=torch.float64, device=dev)
        Z = torch.zeros(R, dtype=torch.float64, device=dev)
        for c0, c1 in _codes(K, CODES // 2):
            d = _sqdist_tile(zr, zn, codebook, norms, c0, c1)
            m_new = torch.minimum(m, d.min(1).values)
            Z = Z * torch.exp(-(m - m_new) * inv_temperature).nan_to_num(0.0) + _weights(
                d, m_new, inv_temperature
            ).sum(1)
            m = m_new
        # pass 2: the first code whose cumulative weight exceeds u_s * Z
        t = u[r0:r1].double() * Z[:, None]
        got = torch.full((R, S), -1, dtype=torch.int64, device=dev)
        last_pos = torch.zeros(R, dtype=torch.int64, device=dev)
        c_prev = torch.zeros(R, dtype=torch.float64, device=dev)
        for c0, c1 in _codes(K, CODES // 2):
            w = _weights(_sqdist_tile(zr, zn, codebook, norms, c0, c1), m, inv_temperature)
            cum = c_prev[:, None] + torch.cumsum(w, 1)
            k = torch.searchsorted(cum, t.contiguous(), right=True)
            new = (got < 0) & (k < c1 - c0)
            got = torch.where(new, k + c0, got)
            pos = w > 0
            has = pos.any(1)
            lastk = (c1 - c0 - 1) - pos.flip(1).to(torch.int8).argmax(1)
            last_pos = torch.where(has, lastk + c0, last_pos)
            c_prev = cum[:, -1]
        out[r0:r1] = torch.where(got < 0, last_pos[:, None], got)


def ema_update(cluster_size, embed_sum, z, indices, decay):
    S = indices.shape[1]
    alpha = (1.0 - decay) / S
    cluster_size.mul_(decay)
    embed_sum.mul_(decay)
    for r0, r1 in _rows(indices.shape[0]):
        zr = z[r0:r1].to(embed_sum.dtype)
        ones = torch.full((r1 - r0,), alpha, dtype=cluster_size.dtype, device=z.device)
        for s in range(S):
            idx = indices[r0:r1, s]
            cluster_size.index_add_(0, idx, ones)
            embed_sum.index_add_(0, idx, zr, alpha=alpha)
