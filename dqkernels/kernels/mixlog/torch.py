"""The ``torch`` backend of the mixture-of-logistics CDF coupling: the reference math in
plain PyTorch in the accumulate dtype. The inverse is 100 bisections of the bracket (the
eager baseline of the benchmarks); the backward is the analytic one of docs/INTERNALS.md,
the readable specification of what the compiled and Triton backwards compute."""

from __future__ import annotations

import torch

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.mixlogcdf_coupling import (
    logit_cdf,
    mixlogcdf_forward_reference,
    mixlogcdf_inverse_bisection,
    mixture_logs,
)


def _acc(*ts):
    acc = accumulate_dtype(ts[0].dtype)
    return [t.to(acc) for t in ts]


def forward(x, logits, means, log_scales, a, b, y, logdet):
    out, ld = mixlogcdf_forward_reference(*_acc(x, logits, means, log_scales, a, b))
    y.copy_(out)
    logdet.copy_(ld)


def inverse(y, logits, means, log_scales, a, b, x, logdet):
    args = _acc(y, logits, means, log_scales, a, b)
    root = mixlogcdf_inverse_bisection(*args)
    _, ld = mixlogcdf_forward_reference(root, *args[1:])
    x.copy_(root)
    logdet.copy_(-ld)


def backward(x, logits, means, log_scales, a, b, grad_out, grad_logdet, grads, inverse):
    """``grads``: the outputs (grad_in, grad_logits, grad_means, grad_log_scales, grad_a,
    grad_b), written in place."""
    grad_in, grad_logits, grad_means, grad_log_scales, grad_a, grad_b = grads
    x, logits, means, log_scales, a, b, gout = _acc(x, logits, means, log_scales, a, b, grad_out)
    gld = grad_logdet.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    inv_s = torch.exp(-log_scales)
    z, lw, lsz, lsnz, log_f, log_1mf, dlog = mixture_logs(x, logits, means, log_scales)
    # the posteriors by softmax (exact where one component dominates far in a tail)
    p, q = torch.softmax(lw + lsz, dim=-1), torch.softmax(lw + lsnz, dim=-1)
    r = torch.softmax(lw + lsz + lsnz - log_scales, dim=-1)
    sz, snz = torch.sigmoid(z), torch.sigmoid(-z)
    A = p * snz + q * sz  # d g / d z_k,   g = logit F
    Bk = r * (snz - sz) - p * snz + q * sz  # d l / d z_k,   l = log F' - log F - log(1-F)
    g = log_f - log_1mf
    g_x = torch.exp(dlog)  # dg/dx = F' / (F (1 - F)), formed without cancellation
    l_x = (Bk * inv_s).sum(-1)  # dl/dx
    ea = torch.exp(a)
    if inverse:
        # x is the root; upstream gout is for x and gld for -sum(l + a)
        total = gout - gld * l_x  # d/dx of everything downstream of x
        Gg = -total / g_x  # upstream of g in the equivalent forward
        Gl = -gld
        grad_in.copy_(-Gg / ea)
        grad_b.copy_(Gg / ea)
    else:
        Gg = gout * ea
        Gl = gld.expand_as(x)
        grad_in.copy_(Gg * g_x + Gl * l_x)
        grad_b.copy_(gout)
    grad_a.copy_(Gg * g + Gl)
    Gg, Gl = Gg.unsqueeze(-1), Gl.unsqueeze(-1)
    dz = Gg * A + Gl * Bk
    grad_means.copy_(-dz * inv_s)
    grad_log_scales.copy_(-dz * z - Gl * r)
    grad_logits.copy_(Gg * (p - q) + Gl * (r - p - q) + torch.exp(lw) * Gl)


__all__ = ["forward", "inverse", "backward", "logit_cdf"]
