"""The ``cpp`` backend of ``masked_conv2d``: csrc/masked/masked_conv2d_cpu.cpp through
``dqkernels._C`` (implicit GEMM over the kept taps, OpenMP)."""

from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, tensor_arg


def forward(x, weight, bias, y, mask_type, groups):
    _C.masked_conv2d_forward_cpu(
        tensor_arg(x),
        tensor_arg(weight),
        tensor_arg(bias),
        tensor_arg(y),
        mask_type == "B",
        groups,
        cpu_threads(),
    )


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    _C.masked_conv2d_backward_cpu(
        tensor_arg(x),
        tensor_arg(weight),
        tensor_arg(grad_y),
        tensor_arg(grad_x),
        tensor_arg(grad_weight),
        tensor_arg(grad_bias),
        mask_type == "B",
        groups,
        cpu_threads(),
    )
