"""The ``torch`` backend of the dmol ops: the reference math in plain PyTorch, computed in
the accumulate dtype, with an analytic backward (autograd does not run inside a custom
op, and an explicit formula is itself checked against autograd of the reference)."""

from __future__ import annotations

import math

import torch

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.dmol import (
    bin_log_prob,
    coupled_means,
    dmol_nll_reference,
    dmol_sample_reference,
    snap_to_grid,
    split_params,
)


def nll_forward(x, params, out, num_levels, min_log_scale):
    acc = accumulate_dtype(params.dtype)
    out.copy_(dmol_nll_reference(x.to(acc), params.to(acc), num_levels, min_log_scale))


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    acc = accumulate_dtype(params.dtype)
    p = params.to(acc)
    C = x.shape[1]
    L = num_levels
    logits, means_raw, log_scales_raw, coeffs = split_params(p, C)
    k, xs = snap_to_grid(x.to(acc), L)
    means = coupled_means(means_raw, coeffs, xs)
    log_s = log_scales_raw.clamp(min=min_log_scale)
    kk, xx = k.unsqueeze(2), xs.unsqueeze(2)
    lp = bin_log_prob(kk, xx, means, log_s, L)  # [B,C,M,H,W]
    log_pi = torch.log_softmax(logits, dim=1)
    post = torch.softmax(log_pi + lp.sum(dim=1), dim=1)  # [B,M,H,W]
    g = grad_out.to(acc).unsqueeze(1)  # [B,1,H,W]

    d = 1.0 / (L - 1)
    inv_s = torch.exp(-log_s)
    a = (xx - means + d) * inv_s
    b = (xx - means - d) * inv_s
    sa = torch.sigmoid(-a)
    sb = torch.sigmoid(b)
    delta = torch.exp(math.log(2.0 * d) - log_s)
    # delta / expm1(delta): 1 as delta -> 0, 0 once expm1 overflows (no inf/inf)
    safe = delta.clamp(min=torch.finfo(delta.dtype).tiny, max=torch.finfo(delta.dtype).max)
    ratio = torch.where(delta > 0, safe / torch.expm1(safe), torch.ones_like(delta))
    low, high = kk == 0, kk == L - 1
    dmean = torch.where(low, -sa, torch.where(high, sb, sb - sa)) * inv_s
    dlogs = torch.where(low, -a * sa, torch.where(high, b * sb, -a * sa + b * sb - ratio))
    coef = -(g * post).unsqueeze(1)  # dNLL/dlp, [B,1,M,H,W]
    gmean = coef * dmean
    glogs = coef * dlogs * (log_scales_raw >= min_log_scale)

    B, P, H, W = params.shape
    M = logits.shape[1]
    J = 3 if C == 3 else 2
    out = torch.empty((B, C, J, M, H, W), dtype=acc, device=params.device)
    out[:, :, 0] = gmean
    out[:, :, 1] = glogs
    if C == 3:
        t = torch.tanh(coeffs)
        dt = 1.0 - t * t
        x0, x1 = xx[:, 0], xx[:, 1]
        out[:, 0, 2] = gmean[:, 1] * dt[:, 0] * x0
        out[:, 1, 2] = gmean[:, 2] * dt[:, 1] * x0
        out[:, 2, 2] = gmean[:, 2] * dt[:, 2] * x1
    grad_params[:, :M].copy_(g * (torch.exp(log_pi) - post))
    grad_params[:, M:].copy_(out.reshape(B, P - M, H, W))


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    acc = accumulate_dtype(params.dtype)
    out.copy_(
        dmol_sample_reference(params.to(acc), u.to(acc), num_channels, num_levels, min_log_scale)
    )
