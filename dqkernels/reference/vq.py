"""Plain-PyTorch reference of the vector-quantisation ops, for tests (float64 gold values).

These build the full ``N x K`` distance matrix on purpose: they are the readable
definition, not a kernel (the ``torch`` backend in ``dqkernels/kernels/vq/torch.py``
computes the same things in bounded memory).

* nearest: ``k*(n) = argmin_k |z_n - e_k|^2`` (first minimum: ties go to the lowest index)
  and ``|z_n - e_k*|^2``.
* sampling: ``P(k | z_n) = softmax_k(-|z_n - e_k|^2 / T)``; with uniforms ``u`` the
  inverse-CDF draw is the first ``k`` whose cumulative probability exceeds ``u``.
* the NaN rule (both): a NaN distance (a NaN in the code or in ``z``) counts as ``+inf``, so
  such a code is never chosen nor drawn while some code has a finite distance, and a row
  in which no code has a finite distance (every distance NaN or ``+inf``) gets code 0.
* EMA: ``cluster_size <- decay * cluster_size + (1 - decay) * counts`` and
  ``embed_sum <- decay * embed_sum + (1 - decay) * sums``, where a row of ``z`` with ``S``
  sampled indices adds ``1/S`` to each sampled code's count and ``z_n / S`` to its sum.
"""

from __future__ import annotations

import torch

__all__ = [
    "sqdist_matrix",
    "vq_nearest_reference",
    "vq_probs_reference",
    "vq_sample_reference",
    "vq_ema_update_reference",
]


def sqdist_matrix(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` squared distances in float64 from explicit differences (no expansion)."""
    z64, e64 = z.reshape(-1, z.shape[-1]).double(), codebook.double()
    return ((z64[:, None, :] - e64[None, :, :]) ** 2).sum(-1)


def _nan_as_inf(d: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isnan(d), torch.inf, d)


def vq_nearest_reference(z: torch.Tensor, codebook: torch.Tensor):
    """``(indices int64 [N], sqdist float64 [N])`` for ``z [N, D]``, ``codebook [K, D]``."""
    d = sqdist_matrix(z, codebook)
    # documented: the first minimal value on ties (code 0 in a row of +inf: the NaN rule)
    idx = torch.argmin(_nan_as_inf(d), dim=1)
    return idx, d.gather(1, idx[:, None])[:, 0]


def vq_probs_reference(
    z: torch.Tensor, codebook: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``[N, K]`` float64 probabilities ``softmax(-d / T)`` (0 for a code at NaN or infinite
    distance; a row with no finite distance is all zeros)."""
    d = _nan_as_inf(sqdist_matrix(z, codebook))
    m = d.min(dim=1, keepdim=True).values
    w = torch.exp(-(d - m) / temperature).nan_to_num(0.0)  # inf - inf: no finite distance
    total = w.sum(dim=1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 0.0)


def vq_sample_reference(
    z: torch.Tensor, codebook: torch.Tensor, u: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Inverse-CDF draws ``[N, S]`` for uniforms ``u [N, S]`` in ``[0, 1)``: the first
    ``k`` with ``cumsum(p)[k] > u`` (clamped to the last code of positive probability;
    code 0 in a row without one)."""
    p = vq_probs_reference(z, codebook, temperature)
    cdf = torch.cumsum(p, dim=1)
    cdf = cdf / cdf[:, -1:]
    k = torch.searchsorted(cdf, u.double().contiguous(), right=True)
    last = (p > 0).double().cumsum(1).argmax(1, keepdim=True)  # last positive code
    return torch.minimum(k, last.expand_as(k))


def vq_ema_update_reference(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    z: torch.Tensor,
    indices: torch.Tensor,
    decay: float,
):
    """New ``(cluster_size, embed_sum)`` (float64 copies; the inputs are not modified).
    ``indices`` is ``[N]`` or ``[N, S]``."""
    K, D = embed_sum.shape
    idx = indices.reshape(z.reshape(-1, D).shape[0], -1)
    S = idx.shape[1]
    onehot = torch.zeros(idx.shape[0], K, dtype=torch.float64, device=z.device)
    for s in range(S):
        onehot[torch.arange(idx.shape[0], device=z.device), idx[:, s]] += 1.0 / S
    counts = onehot.sum(0)
    sums = onehot.T @ z.reshape(-1, D).double()
    return (
        decay * cluster_size.double() + (1 - decay) * counts,
        decay * embed_sum.double() + (1 - decay) * sums,
    )
