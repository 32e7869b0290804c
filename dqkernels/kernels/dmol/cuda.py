"""The ``cuda`` backend of the dmol ops: csrc/dmol/dmol_cuda*.cu through dqkernels._C,
launched on the current PyTorch stream of the tensors' device."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cuda


def nll_forward(x, params, out, num_levels, min_log_scale):
    call_cuda("dmol_nll_forward", x, params, out, num_levels, min_log_scale)


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    call_cuda("dmol_nll_backward", x, params, grad_out, grad_params, num_levels, min_log_scale)


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    call_cuda("dmol_sample", params, u, out, num_levels, min_log_scale)
