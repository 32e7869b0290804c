"""Plain-PyTorch reference of the mixture-of-logistics CDF coupling (Flow++).

Per element, with ``K`` components (the last dimension of ``logits``, ``means`` and
``log_scales``), ``w = softmax(logits)`` and ``z_k = (x - means_k) * exp(-log_scales_k)``::

    F(x)   = sum_k w_k sigmoid(z_k)
    g(x)   = logit F(x) = log F - log(1 - F)
    y      = g(x) * exp(a) + b
    logdet = sum over non-batch dims of  log dy/dx
           = log F'(x) - log F - log(1 - F) + a,   F'(x) = sum_k w_k s_k(z_k) / scale_k

with every logarithm formed in log space::

    log F       = logsumexp_k(log w_k + log sigmoid(z_k))
    log (1 - F) = logsumexp_k(log w_k + log sigmoid(-z_k))
    log F'      = logsumexp_k(log w_k + log sigmoid(z_k) + log sigmoid(-z_k) - log_scales_k)

so ``y`` and ``logdet`` stay finite for arguments far in the tails. Far in a tail ``log F'``
and ``log(1 - F)`` (or ``log F``) are both of size ``|z|`` and their difference would lose
``eps |z|``, so ``log F' - log(1 - F)`` is formed on the side of the larger of ``F`` and
``1 - F`` from the posteriors of the smaller one, with no cancellation (docs/INTERNALS.md)::

    F >= 1/2:  log F' - log(1 - F) = logsumexp_k(log q_k + log sigmoid(z_k) - log_scales_k)
    F <  1/2:  log F' - log F      = logsumexp_k(log p_k + log sigmoid(-z_k) - log_scales_k)

    q = softmax_k(log w_k + log sigmoid(-z_k)),   p = softmax_k(log w_k + log sigmoid(z_k))
 ``y`` is strictly
increasing in ``x``, and because ``F`` lies between the smallest and largest component
CDF, the root of ``g(x) = t`` lies in ``[min_k(means_k + scale_k t), max_k(...)]``
(the *bracket*). The inverse here is bisection in that bracket: in float64, 100 halvings
of any bracket of finite floats reach adjacent floats, and it is the eager baseline the
benchmarks time. The inverse's logdet is minus the forward logdet at the returned point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BISECTION_STEPS = 100


def _logsigmoid_pair(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.logsigmoid(z), F.logsigmoid(-z)


def _cdf_logs(x, logits, means, log_scales):
    """``(z, lw, lsz, lsnz, log F, log(1 - F))``."""
    z = (x.unsqueeze(-1) - means) * torch.exp(-log_scales)
    lw = torch.log_softmax(logits, dim=-1)
    lsz, lsnz = _logsigmoid_pair(z)
    log_f = torch.logsumexp(lw + lsz, dim=-1)
    log_1mf = torch.logsumexp(lw + lsnz, dim=-1)
    return z, lw, lsz, lsnz, log_f, log_1mf


def logit_f(x, logits, means, log_scales):
    """``g = logit F(x)`` alone (what the bisection compares)."""
    *_, log_f, log_1mf = _cdf_logs(x, logits, means, log_scales)
    return log_f - log_1mf


def mixture_logs(x, logits, means, log_scales):
    """The per-element quantities ``(z, lw, lsz, lsnz, log F, log(1 - F), l)``: ``z``,
    ``log_softmax(logits)`` and the log sigmoids per component, and
    ``l = log F' - log F - log(1 - F)`` formed without cancellation in the tails."""
    z, lw, lsz, lsnz, log_f, log_1mf = _cdf_logs(x, logits, means, log_scales)
    upper = log_f >= log_1mf  # F >= 1/2: the posteriors of 1 - F, times sigmoid(z)
    side = upper.unsqueeze(-1)
    post = torch.log_softmax(torch.where(side, lw + lsnz, lw + lsz), dim=-1)
    other = torch.where(side, lsz, lsnz)
    dlog = torch.logsumexp(post + other - log_scales, dim=-1) - torch.where(upper, log_f, log_1mf)
    return z, lw, lsz, lsnz, log_f, log_1mf, dlog


def logit_cdf(x, logits, means, log_scales):
    """``(g, elementwise log dy/dx - a)``: ``g = logit F(x)`` and ``log F' - log F - log(1-F)``."""
    _, _, _, _, log_f, log_1mf, dlog = mixture_logs(x, logits, means, log_scales)
    return log_f - log_1mf, dlog


def _batch_sum(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(dim=1)


def mixlogcdf_forward_reference(x, logits, means, log_scales, a, b):
    """``(y, logdet)``; differentiable in every argument."""
    g, dlog = logit_cdf(x, logits, means, log_scales)
    y = g * torch.exp(a) + b
    return y, _batch_sum(dlog + a)


def bracket(t, means, log_scales):
    """``(lo, hi)`` holding the root of ``logit F(x) = t``."""
    xk = means + torch.exp(log_scales) * t.unsqueeze(-1)
    return xk.amin(dim=-1), xk.amax(dim=-1)


@torch.no_grad()
def mixlogcdf_inverse_bisection(
    y, logits, means, log_scales, a, b, steps: int = BISECTION_STEPS
) -> torch.Tensor:
    """The root ``x`` of ``forward(x) = y`` by ``steps`` bisections of the bracket."""
    t = (y - b) * torch.exp(-a)
    lo, hi = bracket(t, means, log_scales)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        below = logit_f(mid, logits, means, log_scales) < t
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def mixlogcdf_inverse_reference(y, logits, means, log_scales, a, b, steps: int = BISECTION_STEPS):
    """``(x, logdet)`` of the inverse, differentiable by the implicit function theorem.

    The root ``x0`` comes from bisection (no graph); then ``x = x0 - (forward(x0) - y) /
    dy/dx(x0)`` with the denominator held constant has the value ``x0`` (one Newton
    correction, below rounding) and the first derivatives ``dx/dy = 1/(dy/dx)`` and
    ``dx/dtheta = -(dy/dtheta)/(dy/dx)``. The logdet is minus the forward logdet at ``x``.
    """
    x0 = mixlogcdf_inverse_bisection(
        y.detach(),
        logits.detach(),
        means.detach(),
        log_scales.detach(),
        a.detach(),
        b.detach(),
        steps,
    )
    g0, dlog0 = logit_cdf(x0, logits, means, log_scales)
    dydx = torch.exp(dlog0 + a).detach()
    x = x0 - (g0 * torch.exp(a) + b - y) / dydx
    _, ld = mixlogcdf_forward_reference(x, logits, means, log_scales, a, b)
    return x, -ld
