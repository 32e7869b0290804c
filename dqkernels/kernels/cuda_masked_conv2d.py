"""The ``cuda`` backend of ``masked_conv2d``: csrc/masked/masked_conv2d_cuda.cu through
``dqkernels._C`` (tiled implicit GEMM over the kept taps), launched on PyTorch's current
stream. The grad_weight reduction's scratch (split-K partial sums) is allocated here,
through PyTorch's caching allocator."""
from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream
from dqkernels.kernels.cpp_masked_conv2d import (BIAS, GRAD_BIAS, GRAD_WEIGHT, GRAD_X, GRAD_Y,
                                                 Y, pack)


def forward(x, weight, bias, y, mask_type, groups):
    with torch.cuda.device(x.device):
        _C.masked_conv2d_forward_cuda(*pack(x, weight, mask_type, groups, {BIAS: bias, Y: y}),
                                      cuda_stream(x.device))


def backward(x, weight, grad_y, grad_x, grad_weight, grad_bias, mask_type, groups):
    args = pack(x, weight, mask_type, groups, {GRAD_Y: grad_y, GRAD_X: grad_x,
                                               GRAD_WEIGHT: grad_weight, GRAD_BIAS: grad_bias})
    with torch.cuda.device(x.device):
        nbytes = _C.masked_conv2d_backward_cuda_workspace(*args)
        work = torch.empty((max(nbytes, 1),), dtype=torch.uint8, device=x.device)
        _C.masked_conv2d_backward_cuda(*args, work.data_ptr(), cuda_stream(x.device))
