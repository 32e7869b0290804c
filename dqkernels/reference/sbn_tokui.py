"""The plain-PyTorch reference of Tokui & Sato's estimator, computed the way its public code
(beam2d/sbn) does: for every unit of every layer, the whole sample is copied with that bit
flipped, the layers above are re-sampled with the same uniforms, and the full ``f = log p(x,
z) - log q(z | x)`` of the network is evaluated on the ``B * H_l`` copies, ``x``'s 784-wide
likelihood included. ``dqkernels.models.sbn_estimators.Tokui`` computes the same
coefficients without the copies' unchanged terms and with the fused flip op for the layer
below; this is its oracle in the tests and the eager baseline of ``dqk bench
sbn_train_step``."""

from __future__ import annotations

import torch

from dqkernels.models.sbn import SBN, PosteriorSample
from dqkernels.models.sbn_estimators import Tokui

__all__ = ["TokuiResimulate", "flip_minus_sample_resimulated"]


def flip_minus_sample_resimulated(model: SBN, s: PosteriorSample, l: int) -> torch.Tensor:
    """``[B, H_l]``: ``f`` of the sample with bit ``h`` of layer ``l`` flipped and layers
    ``l+1..L`` re-sampled with the sample's uniforms, minus the sample's own ``f``; every
    term of ``f`` evaluated on all ``B * H_l`` copies."""
    z = s.z[l]
    B, H = z.shape
    eye = torch.eye(H, dtype=z.dtype, device=z.device)
    copies = (z[:, None, :] + eye * (1 - 2 * z)[:, None, :]).reshape(B * H, H)
    below = [zk.repeat_interleave(H, dim=0) for zk in s.z[:l]]
    above, _ = model.resimulate(copies, l, s.u)
    zs = [*below, copies, *above]
    f_flip = model.log_joint(zs) - model.log_posterior(zs)
    f = model.log_joint(s.z) - model.log_posterior(s.z)
    return f_flip.view(B, H) - f[:, None]


class TokuiResimulate(Tokui):
    """:class:`~dqkernels.models.sbn_estimators.Tokui` with ``F(flip) - f`` computed by
    :func:`flip_minus_sample_resimulated` (same draws, same coefficients, same gradients)."""

    name = "tokui"

    def _flip_minus_sample(self, model, s, l):
        return flip_minus_sample_resimulated(model, s, l)
