"""The ``cuda`` backend of the masked linear layer: csrc/masked/masked_linear_cuda.cu
through dqkernels._C, launched on PyTorch's current stream."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream, tensor_arg
from dqkernels.kernels.masked_linear.cpp import degrees


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    with torch.cuda.device(x.device):
        _C.masked_linear_forward_cuda(
            tensor_arg(x),
            tensor_arg(weight),
            tensor_arg(bias),
            degrees(in_deg),
            degrees(out_deg),
            tensor_arg(y),
            strict,
            cuda_stream(x.device),
        )


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    with torch.cuda.device(x.device):
        _C.masked_linear_backward_cuda(
            tensor_arg(grad_y),
            tensor_arg(x),
            tensor_arg(weight),
            degrees(in_deg),
            degrees(out_deg),
            tensor_arg(grad_x),
            tensor_arg(grad_weight),
            tensor_arg(grad_bias),
            strict,
            cuda_stream(x.device),
        )
