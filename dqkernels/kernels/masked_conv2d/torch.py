"""The ``torch`` backend of ``masked_conv2d``: the dense masked convolution of
:mod:`dqkernels.reference.masked_conv2d` in the accumulate dtype, with the analytic
backward of docs/INTERNALS.md ("Masked conv2d") through ``aten.convolution_backward``.

The mask is applied with ``torch.where`` rather than a product, so the masked entries of
``weight`` are not read into the result (a NaN there stays out of ``y``), as in the
compiled kernels. On CUDA, cuDNN's TF32 is switched off for the call: float32 means IEEE
float32 here, as in the other backends.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.masked_conv2d import conv2d_mask


def _ieee(t: torch.Tensor):
    if not t.is_cuda:
        return contextlib.nullcontext()
    cudnn = torch.backends.cudnn
    return cudnn.flags(
        enabled=cudnn.enabled,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=False,
    )


def _masked_weight(weight, mask_type, groups, acc):
    cout, cin, k, _ = weight.shape
    mask = conv2d_mask(cout, cin, k, mask_type, groups, device=weight.device)
    return mask, torch.where(mask, weight.to(acc), torch.zeros((), dtype=acc, device=weight.device))


def forward(x, weight, bias, y, mask_type, groups):
    acc = accumulate_dtype(x.dtype)
    _, wm = _masked_weight(weight, mask_type, groups, acc)
    with _ieee(x):
        out = F.conv2d(
            x.to(acc), wm, None if bias is None else bias.to(acc), padding=weight.shape[-1] // 2
        )
    y.copy_(out)


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    acc = accumulate_dtype(x.dtype)
    mask, wm = _masked_weight(weight, mask_type, groups, acc)
    p = weight.shape[-1] // 2
    with _ieee(x):
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_y.to(acc),
            x.to(acc),
            wm,
            [weight.shape[0]],
            [1, 1],
            [p, p],
            [1, 1],
            False,
            [0, 0],
            1,
            [grad_x is not None, grad_weight is not None, grad_bias is not None],
        )
    if grad_x is not None:
        grad_x.copy_(gx)
    if grad_weight is not None:
        grad_weight.copy_(torch.where(mask, gw, torch.zeros((), dtype=acc, device=gw.device)))
    if grad_bias is not None:
        grad_bias.copy_(gb)
