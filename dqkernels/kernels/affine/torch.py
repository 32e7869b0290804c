"""The ``torch`` backend of the affine coupling: the reference math in plain PyTorch in
the accumulate dtype, with the analytic backward of docs/INTERNALS.md."""

from __future__ import annotations

import torch

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.affine_coupling import SCALE_OFFSET, affine_coupling_reference


def forward(x, shift, scale_logit, y, logdet, inverse):
    acc = accumulate_dtype(x.dtype)
    out, ld = affine_coupling_reference(x.to(acc), shift.to(acc), scale_logit.to(acc), inverse)
    y.copy_(out)
    logdet.copy_(ld)


def backward(
    x, shift, scale_logit, grad_y, grad_logdet, grad_x, grad_shift, grad_scale_logit, inverse
):
    acc = accumulate_dtype(x.dtype)
    x, shift, sl, gy = (t.to(acc) for t in (x, shift, scale_logit, grad_y))
    gld = grad_logdet.to(acc).reshape((-1,) + (1,) * (x.dim() - 1))
    s = torch.sigmoid(sl + SCALE_OFFSET)
    one_minus_s = torch.sigmoid(-(sl + SCALE_OFFSET))
    if inverse:  # y = x / s - shift, logdet = -sum log s
        grad_x.copy_(gy / s)
        grad_shift.copy_(-gy)
        grad_scale_logit.copy_(-(gy * x / s + gld) * one_minus_s)
    else:  # y = (x + shift) * s, logdet = sum log s
        grad_x.copy_(gy * s)
        grad_shift.copy_(gy * s)
        grad_scale_logit.copy_((gy * (x + shift) * s + gld) * one_minus_s)
