"""The ``cpp`` backend of ``masked_conv2d``: csrc/masked/masked_conv2d_cpu.cpp through
``dqkernels._C`` (implicit GEMM over the kept taps, OpenMP). Also holds the argument
packing shared with the ``cuda`` backend: 8 (address, element strides) slots, see
python/bindings_masked_conv2d.cpp."""
from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, dtype_code

X, WEIGHT, BIAS, Y, GRAD_Y, GRAD_X, GRAD_WEIGHT, GRAD_BIAS = range(8)


def pack(x: torch.Tensor, weight: torch.Tensor, mask_type: str, groups: int,
         tensors: dict[int, torch.Tensor | None]):
    """``(dtype code, sizes, type_b, groups, ptrs, strides)`` for the compiled kernels."""
    B, Cin, H, W = x.shape
    ptrs, strides = [0] * 8, [[] for _ in range(8)]
    for slot, t in {X: x, WEIGHT: weight, **tensors}.items():
        if t is not None:
            ptrs[slot], strides[slot] = t.data_ptr(), list(t.stride())
    sizes = [B, Cin, weight.shape[0], H, W, weight.shape[-1]]
    return dtype_code(x.dtype), sizes, mask_type == "B", int(groups), ptrs, strides


def forward(x, weight, bias, y, mask_type, groups):
    _C.masked_conv2d_forward_cpu(*pack(x, weight, mask_type, groups, {BIAS: bias, Y: y}),
                                 cpu_threads())


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    _C.masked_conv2d_backward_cpu(
        *pack(x, weight, mask_type, groups, {GRAD_Y: grad_y, GRAD_X: grad_x,
                                             GRAD_WEIGHT: grad_weight, GRAD_BIAS: grad_bias}),
        cpu_threads())
