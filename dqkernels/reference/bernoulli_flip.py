"""Plain-PyTorch reference of the flipped-bit Bernoulli log-likelihood (Tokui–Sato, LEG).

A linear Bernoulli layer ``p(x | z) = prod_d Bern(x_d; sigmoid(l_d))`` with logits
``l = z @ weight.T + bias``; flipping bit ``h`` of ``z`` moves every logit by
``(1 - 2 z_h) weight[:, h]``. For every ``h`` at once::

    l'[b, h, d]  = logits[b, d] + (1 - 2 z[b, h]) * weight[d, h]
    out[b, h]    = sum_d x[b, d] log sigmoid(l') + (1 - x[b, d]) log sigmoid(-l')

``log sigmoid(t) = min(t, 0) - log1p(exp(-|t|))`` (``F.logsigmoid``), exact to rounding for
any finite ``t`` (``|t|`` up to 1e4 and beyond); not ``x t - softplus(t)``, which cancels to
zero where the true value is ``-exp(-|t|)``. ``F.logsigmoid`` rather than that formula
written out: autograd of ``min`` and ``|t|`` is wrong at ``t = 0`` exactly (``2x - 1``
instead of ``x - 1/2``), which fp16/bf16 inputs reach (``logits = -s w``). The kernels
share one ``log1p(exp(-|t|))`` between the two terms:
``x min(t, 0) + (1 - x) min(-t, 0) - log1p(exp(-|t|))``.

The ``[B, H, D]`` logits are never held whole: the sum runs over chunks of the hidden units
whose ``[B, chunk, D]`` slices stay under ``max_elements`` (one hidden unit at least), so
the extra memory is ``O(B H + B D + max_elements)``. Differentiable torch ops only: autograd
of this file is the reference gradient (in ``x``, ``logits``, ``weight`` and ``z``), and it
runs in float64 for the tests' gold values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bernoulli_flip_loglik_reference", "flip_terms", "log_sigmoid"]

#: default bound on the elements of one chunk's [B, chunk, D] slice (32 MB in float64)
MAX_ELEMENTS = 1 << 22


def log_sigmoid(t: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(t) = min(t, 0) - log1p(exp(-|t|))``, exact to rounding."""
    return F.logsigmoid(t)


def flip_terms(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x log sigmoid(t) + (1 - x) log sigmoid(-t)`` elementwise."""
    return x * F.logsigmoid(t) + (1 - x) * F.logsigmoid(-t)


def chunk_size(batch: int, hidden: int, features: int, max_elements: int = MAX_ELEMENTS) -> int:
    """How many hidden units one chunk takes: at least 1, at most ``hidden``."""
    per_unit = max(1, batch * features)
    return max(1, min(hidden, max_elements // per_unit))


def bernoulli_flip_loglik_reference(
    x: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor,
    *,
    max_elements: int = MAX_ELEMENTS,
) -> torch.Tensor:
    """``out [B, H]``: the layer's log-likelihood of ``x [B, D]`` with bit ``h`` of ``z [B, H]``
    flipped, for logits ``[B, D]`` and weight ``[D, H]``; computed in the inputs' dtype."""
    batch, features = x.shape
    hidden = weight.shape[1]
    step = chunk_size(batch, hidden, features, max_elements)
    xb = x.unsqueeze(1)  # [B, 1, D]
    lb = logits.unsqueeze(1)  # [B, 1, D]
    sign = 1 - 2 * z  # [B, H]
    parts = []
    for h0 in range(0, hidden, step):
        h1 = min(hidden, h0 + step)
        t = lb + sign[:, h0:h1, None] * weight[:, h0:h1].T[None]  # [B, chunk, D]
        parts.append(flip_terms(xb, t).sum(dim=-1))
    if not parts:
        return x.new_zeros((batch, hidden))
    return torch.cat(parts, dim=1)
