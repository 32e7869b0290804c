"""The ``cuda`` backend of ``masked_conv2d``: csrc/masked/masked_conv2d_cuda.cu through
``dqkernels._C`` (tiled implicit GEMM over the kept taps), launched on PyTorch's current
stream. The grad_weight reduction's scratch (split-K partial sums) is allocated here,
through PyTorch's caching allocator."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import c_args, call_cuda, cuda_stream, tensor_arg


def forward(x, weight, bias, y, mask_type, groups):
    call_cuda("masked_conv2d_forward", x, weight, bias, y, mask_type == "B", groups)


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    grads = (grad_y, grad_x, grad_weight, grad_bias)
    args = c_args((x, weight, *grads, mask_type == "B", groups))
    with torch.cuda.device(x.device):
        nbytes = _C.masked_conv2d_backward_workspace_cuda(*args)
        work = torch.empty((max(nbytes, 1),), dtype=torch.uint8, device=x.device)
        _C.masked_conv2d_backward_cuda(*args, tensor_arg(work), cuda_stream(x.device))
