"""The ``cpp`` backend of the dmol ops: csrc/dmol/dmol_cpu.cpp through dqkernels._C."""
from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, dtype_code, ptr, strides
from dqkernels.ops.dmol import num_mixtures


def _sizes(params, num_channels, num_levels):
    B, _, H, W = params.shape
    return [B, num_channels, H, W, num_mixtures(params.shape[1], num_channels), num_levels]


def nll_forward(x, params, out, num_levels, min_log_scale):
    _C.dmol_nll_forward_cpu(dtype_code(params.dtype), _sizes(params, x.shape[1], num_levels),
                            min_log_scale, ptr(x), strides(x), ptr(params), strides(params),
                            ptr(out), strides(out), cpu_threads())


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    _C.dmol_nll_backward_cpu(dtype_code(params.dtype), _sizes(params, x.shape[1], num_levels),
                             min_log_scale, ptr(x), strides(x), ptr(params), strides(params),
                             ptr(grad_out), strides(grad_out), ptr(grad_params),
                             strides(grad_params), cpu_threads())


def nll_forward_backward(x, params, out, grad_unit, num_levels, min_log_scale):
    """The NLL into ``out`` and its gradient for a unit upstream gradient into
    ``grad_unit``, in one sweep (see ops.dmol: used when the forward will be
    differentiated)."""
    _C.dmol_nll_forward_backward_cpu(
        dtype_code(params.dtype), _sizes(params, x.shape[1], num_levels),
        min_log_scale, ptr(x), strides(x), ptr(params), strides(params), ptr(out),
        strides(out), ptr(grad_unit), strides(grad_unit), cpu_threads())


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    _C.dmol_sample_cpu(dtype_code(params.dtype), _sizes(params, num_channels, num_levels),
                       min_log_scale, ptr(params), strides(params), ptr(u), strides(u),
                       ptr(out), strides(out), cpu_threads())
