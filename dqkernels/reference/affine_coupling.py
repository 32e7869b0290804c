"""Plain-PyTorch reference of the affine coupling (Glow parametrisation).

``scale = sigmoid(scale_logit + 2)``::

    forward   y = (x + shift) * scale        logdet[b] = +sum(log scale) over non-batch dims
    inverse   y = x / scale - shift          logdet[b] = -sum(log scale)

``log scale = logsigmoid(scale_logit + 2)`` is computed in log space (``min(t, 0) -
log1p(exp(-|t|))``, exact to rounding; not ``-softplus(-t)``, whose threshold of 20 errs
by up to ``2e-9``), so it stays finite and accurate for any finite ``scale_logit``.
Differentiable torch ops only: autograd of this file is the reference gradient, and it
runs in float64 for the tests' gold values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCALE_OFFSET = 2.0


def log_scale(scale_logit: torch.Tensor) -> torch.Tensor:
    """``log sigmoid(scale_logit + 2)``."""
    return F.logsigmoid(scale_logit + SCALE_OFFSET)


def affine_coupling_reference(
    x: torch.Tensor, shift: torch.Tensor, scale_logit: torch.Tensor, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, logdet)`` with logdet ``[B]``; all tensors of ``x``'s shape, any dtype."""
    ls = log_scale(scale_logit)
    scale = torch.sigmoid(scale_logit + SCALE_OFFSET)
    if inverse:
        y = x / scale - shift
        ld = -ls
    else:
        y = (x + shift) * scale
        ld = ls
    return y, ld.reshape(ld.shape[0], -1).sum(dim=1)
