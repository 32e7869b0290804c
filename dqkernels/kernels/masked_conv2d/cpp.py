"""The ``cpp`` backend of ``masked_conv2d``: csrc/masked/masked_conv2d_cpu.cpp through
``dqkernels._C`` (implicit GEMM over the kept taps, OpenMP)."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cpu


def forward(x, weight, bias, y, mask_type, groups):
    call_cpu("masked_conv2d_forward", x, weight, bias, y, mask_type == "B", groups)


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    grads = (grad_y, grad_x, grad_weight, grad_bias)
    call_cpu("masked_conv2d_backward", x, weight, *grads, mask_type == "B", groups)
