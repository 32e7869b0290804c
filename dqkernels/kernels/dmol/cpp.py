"""The ``cpp`` backend of the dmol ops: csrc/dmol/dmol_cpu.cpp through dqkernels._C."""

from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, tensor_arg


def nll_forward(x, params, out, num_levels, min_log_scale):
    _C.dmol_nll_forward_cpu(
        tensor_arg(x), tensor_arg(params), tensor_arg(out), num_levels, min_log_scale, cpu_threads()
    )


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    _C.dmol_nll_backward_cpu(
        tensor_arg(x),
        tensor_arg(params),
        tensor_arg(grad_out),
        tensor_arg(grad_params),
        num_levels,
        min_log_scale,
        cpu_threads(),
    )


def nll_forward_backward(x, params, out, grad_unit, num_levels, min_log_scale):
    """The NLL into ``out`` and its gradient for a unit upstream gradient into
    ``grad_unit``, in one sweep (see ops.dmol: used when the forward will be
    differentiated)."""
    _C.dmol_nll_forward_backward_cpu(
        tensor_arg(x),
        tensor_arg(params),
        tensor_arg(out),
        tensor_arg(grad_unit),
        num_levels,
        min_log_scale,
        cpu_threads(),
    )


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    # the channel count is out's
    _C.dmol_sample_cpu(
        tensor_arg(params), tensor_arg(u), tensor_arg(out), num_levels, min_log_scale, cpu_threads()
    )
