"""Plain-PyTorch reference of the discretized logistic mixture (PixelCNN++ likelihood).

This file is the readable definition every backend is tested against. It is written
with differentiable torch ops only, so autograd of it is the reference gradient, and it
runs in float64 for the tests' gold values.

Layout of ``params`` (``[B, P, H, W]``, ``P = M * (1 + J*C)``, ``J = 3 if C == 3 else 2``)::

    channel i < M                    mixture logits
    channel M + c*J*M + j*M + m      channel c, mixture m; j=0 mean, j=1 log-scale,
                                     j=2 raw coupling coefficient (C == 3 only)

``x`` holds values on the grid ``2k/(L-1) - 1``. The level ``k`` of each value is found by
rounding (``x`` is *snapped* to the grid), so inputs in low precision (bf16 cannot hold
all 256 levels exactly) are evaluated at their exact level.

With ``d = 1/(L-1)``, ``s = exp(max(log_s, min_log_scale))``, ``a = (x + d - mean)/s`` and
``b = (x - d - mean)/s``, the log mass of a bin is, exactly in log space::

    lowest bin  (k = 0):    log sigmoid(a)
    highest bin (k = L-1):  log (1 - sigmoid(b))      = log sigmoid(-b)
    interior:               log(sigmoid(a) - sigmoid(b))
                          = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(-delta)),
                            delta = a - b = 2d/s, computed as exp(log(2d) - log_s)

with ``log sigmoid(t) = min(t, 0) - log1p(exp(-|t|))`` (``F.logsigmoid``), exact to rounding
for every ``t`` (``-softplus(-t)`` is not: PyTorch's softplus returns its argument above a
threshold of 20, an absolute error up to ``exp(-20) = 2e-9``).

For C == 3 the means are coupled to the (snapped) values of earlier channels::

    mean_1 += tanh(r_0) * x_0;   mean_2 += tanh(r_1) * x_0 + tanh(r_2) * x_1

where ``r_c`` is channel c's j=2 slot. The per-pixel NLL in nats is
``-logsumexp_m(log_softmax(logits)_m + sum_c log P(x_c | m))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Below this, exp(-delta) rounds to 1 in any float type we use and log(1 - exp(-delta))
# equals log(delta) to far better than float64 precision (the next term is -delta/2).
TINY_DELTA = 1e-30


def params_per_mixture(num_channels: int) -> int:
    """Channels of ``params`` per mixture component: ``1 + J*C``."""
    return 1 + (3 if num_channels == 3 else 2) * num_channels


def log1mexp(delta: torch.Tensor, log_delta: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-delta))`` for ``delta > 0``, accurate over the whole range.

    ``log_delta`` must equal ``log(delta)``; it is used where ``delta`` is so small that
    it may have underflowed. Each branch is evaluated on a clamped argument so that the
    branches not taken stay finite and their zero gradients do not turn into NaN.
    """
    ln2 = math.log(2.0)
    small = torch.log(-torch.expm1(-delta.clamp(TINY_DELTA, ln2)))
    large = torch.log1p(-torch.exp(-delta.clamp(min=ln2)))
    out = torch.where(delta > ln2, large, small)
    return torch.where(delta > TINY_DELTA, out, log_delta)


def snap_to_grid(x: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(k, x_k)``: the level index of each value and its exact grid value."""
    half = (num_levels - 1) / 2.0
    k = torch.round((x + 1.0) * half).clamp(0, num_levels - 1)
    return k, k / half - 1.0


def split_params(params: torch.Tensor, num_channels: int):
    """Views ``(logits [B,M,H,W], means, log_scales, coeffs)``; the last three are
    ``[B, C, M, H, W]`` (``coeffs`` is None unless C == 3)."""
    B, P, H, W = params.shape
    C = num_channels
    J = 3 if C == 3 else 2
    M = P // (1 + J * C)
    logits = params[:, :M]
    rest = params[:, M:].reshape(B, C, J, M, H, W)
    coeffs = rest[:, :, 2] if C == 3 else None
    return logits, rest[:, :, 0], rest[:, :, 1], coeffs


def coupled_means(means: torch.Tensor, coeffs, xs: torch.Tensor) -> torch.Tensor:
    """Apply PixelCNN++'s channel coupling. ``means`` [B,C,M,H,W], ``xs`` [B,C,H,W]."""
    if coeffs is None:
        return means
    t = torch.tanh(coeffs)
    x0 = xs[:, 0:1]
    x1 = xs[:, 1:2]
    m0 = means[:, 0]
    m1 = means[:, 1] + t[:, 0] * x0
    m2 = means[:, 2] + t[:, 1] * x0 + t[:, 2] * x1
    return torch.stack([m0, m1, m2], dim=1)


def bin_log_prob(k, xs, means, log_scales, num_levels: int) -> torch.Tensor:
    """Log mass of the bin of ``xs`` (level ``k``) under logistic(means, exp(log_scales)).

    ``log_scales`` must already be clamped. Shapes broadcast.
    """
    d = 1.0 / (num_levels - 1)
    inv_s = torch.exp(-log_scales)
    centered = xs - means
    a = (centered + d) * inv_s
    b = (centered - d) * inv_s
    log_cdf_a = F.logsigmoid(a)  # log sigmoid(a): the lowest bin
    log_sf_b = F.logsigmoid(-b)  # log (1 - sigmoid(b)): the highest bin
    log_delta = math.log(2.0 * d) - log_scales
    interior = log_cdf_a + log_sf_b + log1mexp(torch.exp(log_delta), log_delta)
    return torch.where(k == 0, log_cdf_a, torch.where(k == num_levels - 1, log_sf_b, interior))


def dmol_nll_reference(
    x: torch.Tensor, params: torch.Tensor, num_levels: int = 256, min_log_scale: float = -7.0
) -> torch.Tensor:
    """Per-pixel NLL in nats, ``[B, H, W]``, in the dtype of ``params`` (differentiable)."""
    C = x.shape[1]
    logits, means, log_scales, coeffs = split_params(params, C)
    k, xs = snap_to_grid(x.to(params.dtype), num_levels)
    means = coupled_means(means, coeffs, xs)
    log_scales = log_scales.clamp(min=min_log_scale)
    lp = bin_log_prob(k.unsqueeze(2), xs.unsqueeze(2), means, log_scales, num_levels)
    return -torch.logsumexp(torch.log_softmax(logits, dim=1) + lp.sum(dim=1), dim=1)


def dmol_sample_reference(
    params: torch.Tensor,
    u: torch.Tensor,
    num_channels: int,
    num_levels: int = 256,
    min_log_scale: float = -7.0,
) -> torch.Tensor:
    """Draw ``[B, C, H, W]`` grid values given uniforms ``u`` in [0, 1) of ``[B, 1+C, H, W]``.

    ``u[:, 0]`` picks the mixture component by inverting the CDF of ``softmax(logits)``
    (the smallest m whose cumulative weight exceeds ``u0 * total``); ``u[:, 1+c]`` draws
    channel c from its logistic by the inverse CDF, and the draw is binned into the
    level whose bin holds it. Coupled means use the already drawn (grid) values, so the
    samples follow exactly the distribution that ``dmol_nll_reference`` evaluates.
    """
    C = num_channels
    logits, means, log_scales, coeffs = split_params(params, C)
    M = logits.shape[1]
    w = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    cum = torch.cumsum(w, dim=1)
    target = u[:, 0:1] * cum[:, -1:]
    m = (cum <= target).sum(dim=1, keepdim=True).clamp(max=M - 1)  # [B,1,H,W]
    half = (num_levels - 1) / 2.0
    xs = []
    for c in range(C):
        mean = means[:, c].gather(1, m)
        ls = log_scales[:, c].gather(1, m).clamp(min=min_log_scale)
        if c >= 1 and coeffs is not None:
            t = torch.tanh(coeffs.gather(2, m.unsqueeze(1).expand(-1, C, -1, -1, -1)))[:, :, 0]
            if c == 1:
                mean = mean + t[:, 0:1] * xs[0]
            else:
                mean = mean + t[:, 1:2] * xs[0] + t[:, 2:3] * xs[1]
        uc = u[:, 1 + c : 2 + c].to(params.dtype)
        y = mean + torch.exp(ls) * (torch.log(uc) - torch.log1p(-uc))
        k = torch.round(((y + 1.0) * half).clamp(0, num_levels - 1))
        xs.append(k / half - 1.0)
    return torch.cat(xs, dim=1)


def dmol_level_log_probs(
    params: torch.Tensor, num_channels: int, num_levels: int, min_log_scale: float = -7.0
) -> torch.Tensor:
    """Exact log-probability of every joint outcome of every pixel, for tests.

    Returns ``[B, L**C, H, W]``; outcome index ``sum_c k_c * L**(C-1-c)``. Only for small
    ``L**C``.
    """
    B, _, H, W = params.shape
    C, L = num_channels, num_levels
    grid = torch.arange(L, dtype=params.dtype, device=params.device) * (2.0 / (L - 1)) - 1.0
    combos = torch.cartesian_prod(*([grid] * C)).reshape(-1, C)  # [L**C, C]
    out = []
    for row in combos:
        x = row.view(1, C, 1, 1).expand(B, C, H, W)
        out.append(-dmol_nll_reference(x, params, L, min_log_scale))
    return torch.stack(out, dim=1)
