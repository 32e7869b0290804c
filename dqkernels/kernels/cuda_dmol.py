"""The ``cuda`` backend of the dmol ops: csrc/dmol/dmol_cuda*.cu through dqkernels._C,
launched on the current PyTorch stream of the tensors' device."""
from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream, dtype_code, ptr, strides
from dqkernels.kernels.cpp_dmol import _sizes


def nll_forward(x, params, out, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_nll_forward_cuda(dtype_code(params.dtype), _sizes(params, x.shape[1], num_levels),
                                 min_log_scale, ptr(x), strides(x), ptr(params), strides(params),
                                 ptr(out), strides(out), cuda_stream(params.device))


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_nll_backward_cuda(dtype_code(params.dtype), _sizes(params, x.shape[1], num_levels),
                                  min_log_scale, ptr(x), strides(x), ptr(params), strides(params),
                                  ptr(grad_out), strides(grad_out), ptr(grad_params),
                                  strides(grad_params), cuda_stream(params.device))


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    with torch.cuda.device(params.device):
        _C.dmol_sample_cuda(dtype_code(params.dtype), _sizes(params, num_channels, num_levels),
                            min_log_scale, ptr(params), strides(params), ptr(u), strides(u),
                            ptr(out), strides(out), cuda_stream(params.device))
