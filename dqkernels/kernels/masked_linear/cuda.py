"""The ``cuda`` backend of the masked linear layer: csrc/masked/masked_linear_cuda.cu
through dqkernels._C, launched on PyTorch's current stream."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cuda
from dqkernels.kernels.masked_linear.cpp import degrees


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    degs = (degrees(in_deg), degrees(out_deg))
    call_cuda("masked_linear_forward", x, weight, bias, *degs, y, strict)


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    degs, grads = (degrees(in_deg), degrees(out_deg)), (grad_x, grad_weight, grad_bias)
    call_cuda("masked_linear_backward", grad_y, x, weight, *degs, *grads, strict)
