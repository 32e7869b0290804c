"""The ``cuda`` backend of the dmol ops: csrc/dmol/dmol_cuda*.cu through dqkernels._C,
launched on the current PyTorch stream of the tensors' device."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream, tensor_arg


def nll_forward(x, params, out, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_nll_forward_cuda(
            tensor_arg(x),
            tensor_arg(params),
            tensor_arg(out),
            num_levels,
            min_log_scale,
            cuda_stream(params.device),
        )


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_nll_backward_cuda(
            tensor_arg(x),
            tensor_arg(params),
            tensor_arg(grad_out),
            tensor_arg(grad_params),
            num_levels,
            min_log_scale,
            cuda_stream(params.device),
        )


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_sample_cuda(
            tensor_arg(params),
            tensor_arg(u),
            tensor_arg(out),
            num_levels,
            min_log_scale,
            cuda_stream(params.device),
        )
