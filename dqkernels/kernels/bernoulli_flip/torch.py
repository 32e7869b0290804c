"""The ``torch`` backend of ``bernoulli_flip_loglik``: the chunked reference in plain
PyTorch, in the accumulate dtype (float32 for fp16/bf16, float64 for float64).

Readable baseline, not a fast path: chunks of hidden units whose ``[B, chunk, D]`` slices
stay under :data:`dqkernels.reference.bernoulli_flip.MAX_ELEMENTS`. Backward, with
``r = x - sigmoid(l')`` per chunk and ``s = 1 - 2 z``::

    grad_logits[b, d] = sum_h g[b, h] r[b, h, d]
    grad_weight[d, h] = sum_b g[b, h] s[b, h] r[b, h, d]
    grad_x[b, d]      = logits[b, d] sum_h g[b, h] + sum_h g[b, h] s[b, h] weight[d, h]
"""

from __future__ import annotations

import torch

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.bernoulli_flip import bernoulli_flip_loglik_reference, chunk_size


def forward(x, logits, weight, z, out):
    acc = accumulate_dtype(x.dtype)
    out.copy_(bernoulli_flip_loglik_reference(x.to(acc), logits.to(acc), weight.to(acc), z.to(acc)))


def backward(x, logits, weight, z, grad_out, grad_x, grad_logits, grad_weight):
    acc = accumulate_dtype(x.dtype)
    xa, la, wa, g = x.to(acc), logits.to(acc), weight.to(acc), grad_out.to(acc)
    gs = g * (1 - 2 * z.to(acc))  # [B, H]
    if grad_x is not None:
        grad_x.copy_(la * g.sum(dim=1, keepdim=True) + gs @ wa.T)
    if grad_logits is None and grad_weight is None:
        return
    batch, features = xa.shape
    hidden = wa.shape[1]
    step = chunk_size(batch, hidden, features)
    sign = 1 - 2 * z.to(acc)
    gl = torch.zeros_like(la) if grad_logits is not None else None
    for h0 in range(0, hidden, step):
        h1 = min(hidden, h0 + step)
        t = la[:, None, :] + sign[:, h0:h1, None] * wa[:, h0:h1].T[None]  # [B, chunk, D]
        r = xa[:, None, :] - torch.sigmoid(t)
        if gl is not None:
            gl += torch.einsum("bh,bhd->bd", g[:, h0:h1], r)
        if grad_weight is not None:
            grad_weight[:, h0:h1] = torch.einsum("bh,bhd->dh", gs[:, h0:h1], r)
    if grad_logits is not None:
        grad_logits.copy_(gl)
