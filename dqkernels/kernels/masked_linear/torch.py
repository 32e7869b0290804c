"""The ``torch`` backend of the masked linear layer: the dense masked reference in plain
PyTorch, in the accumulate dtype (float32 for fp16/bf16, float64 for float64).

Readable baseline, not a fast path: it builds the full mask and the masked weight
(``torch.where``, so a NaN in a masked weight never reaches an output) and runs dense
matmuls. Backward: ``gx = gy @ Wm``, ``gW = M * (gy^T @ x)``, ``gb = sum_rows gy``.
"""

from __future__ import annotations

import torch

from dqkernels.ops._common import accumulate_dtype
from dqkernels.reference.masked_linear import linear_mask


def _masked_weight(weight, in_deg, out_deg, strict, acc):
    mask = linear_mask(in_deg, out_deg, strict)
    return mask, torch.where(mask, weight.to(acc), torch.zeros((), dtype=acc, device=weight.device))


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    acc = accumulate_dtype(x.dtype)
    _, wm = _masked_weight(weight, in_deg, out_deg, strict, acc)
    out = x.to(acc) @ wm.T
    if bias is not None:
        out = out + bias.to(acc)
    y.copy_(out)


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    acc = accumulate_dtype(x.dtype)
    gy = grad_y.to(acc)
    mask, wm = _masked_weight(weight, in_deg, out_deg, strict, acc)
    if grad_x is not None:
        grad_x.copy_(gy @ wm)
    if grad_weight is not None:
        gw = gy.T @ x.to(acc)
        grad_weight.copy_(torch.where(mask, gw, torch.zeros((), dtype=acc, device=gw.device)))
    if grad_bias is not None:
        grad_bias.copy_(gy.sum(dim=0))
