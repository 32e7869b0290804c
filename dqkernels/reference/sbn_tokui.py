"""A plain-PyTorch reference of Tokui & Sato's estimator that re-simulates the network on
``B * H_l`` copies of the sample, one per unit of layer ``l`` with that bit flipped and the
layers above re-sampled with the same uniforms, the way its public code (beam2d/sbn,
Chainer) lays out the computation: the terms of ``f = log p(x, z) - log q(z | x)`` that
involve layer ``l - 1`` and up are evaluated on every copy (for ``l = 1`` that is x's
784-wide likelihood on ``B * H_1`` copies); the terms below cancel and are left out.
(The public code also replaces ``-log q`` by marginalised entropies; this reference keeps
``-log q``, so it gives exactly the coefficients of ``models.sbn_estimators.Tokui``.)

``Tokui`` computes the same ``F(flip) - f`` with the fused flip op for the layer below and
rank-one logit changes above (docs/INTERNALS.md, "Sigmoid belief networks"); this is its
oracle in the tests and the eager row of ``dqk bench sbn_train_step``."""

from __future__ import annotations

import torch

from dqkernels.models.sbn import SBN, PosteriorSample, bernoulli_log_prob
from dqkernels.models.sbn_estimators import Tokui

__all__ = ["TokuiResimulate", "flip_minus_sample_resimulated"]


def _terms_from_layer(model: SBN, zs: list, rec_logits_l: torch.Tensor, l: int) -> torch.Tensor:
    """The terms of ``f`` that involve layers ``>= l``, per row of ``zs = [z_0 .. z_L]``:
    ``log p(z_{l-1} | z_l)`` and, for ``k >= l``, ``log p(z_k | z_{k+1}) - log q(z_k | z_{k-1})``
    (``q``'s logits of layer ``l`` given: they do not depend on layer ``l`` itself)."""
    L = model.num_layers
    total = bernoulli_log_prob(zs[l - 1], model.gen[l - 1](zs[l])).sum(-1)
    for k in range(l, L + 1):
        p = model.generative_logits(k, zs[k + 1] if k < L else None)
        q = rec_logits_l if k == l else model.rec[k - 1](zs[k - 1])
        total = total + (
            bernoulli_log_prob(zs[k], p.expand_as(zs[k])) - bernoulli_log_prob(zs[k], q)
        ).sum(-1)
    return total


def flip_minus_sample_resimulated(model: SBN, s: PosteriorSample, l: int) -> torch.Tensor:
    """``[B, H_l]``: ``f`` of the sample with bit ``h`` of layer ``l`` flipped and layers
    ``l+1..L`` re-sampled with the sample's uniforms, minus the sample's own ``f``, from the
    terms of layers ``>= l - 1`` evaluated on all ``B * H_l`` copies."""
    z = s.z[l]
    B, H = z.shape
    eye = torch.eye(H, dtype=z.dtype, device=z.device)
    copies = (z[:, None, :] + eye * (1 - 2 * z)[:, None, :]).reshape(B * H, H)
    below = s.z[l - 1].repeat_interleave(H, dim=0)
    above, _ = model.resimulate(copies, l, s.u)
    zs = [None] * (l - 1) + [below, copies, *above]
    a_l = s.logits[l].detach()
    f_flip = _terms_from_layer(model, zs, a_l.repeat_interleave(H, dim=0), l)
    f = _terms_from_layer(model, list(s.z), a_l, l)
    return f_flip.view(B, H) - f[:, None]


class TokuiResimulate(Tokui):
    """:class:`~dqkernels.models.sbn_estimators.Tokui` with ``F(flip) - f`` computed by
    :func:`flip_minus_sample_resimulated` (same draws, same coefficients, same gradients)."""

    name = "tokui"

    def _flip_minus_sample(self, model, s, l):
        return flip_minus_sample_resimulated(model, s, l)
