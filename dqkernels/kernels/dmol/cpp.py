"""The ``cpp`` backend of the dmol ops: csrc/dmol/dmol_cpu.cpp through dqkernels._C."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cpu


def nll_forward(x, params, out, num_levels, min_log_scale):
    call_cpu("dmol_nll_forward", x, params, out, num_levels, min_log_scale)


def nll_backward(x, params, grad_out, grad_params, num_levels, min_log_scale):
    call_cpu("dmol_nll_backward", x, params, grad_out, grad_params, num_levels, min_log_scale)


def nll_forward_backward(x, params, out, grad_unit, num_levels, min_log_scale):
    """The NLL into ``out`` and its gradient for a unit upstream gradient into
    ``grad_unit``, in one sweep (see ops.dmol: used when the forward will be
    differentiated)."""
    call_cpu("dmol_nll_forward_backward", x, params, out, grad_unit, num_levels, min_log_scale)


def sample(params, u, out, num_channels, num_levels, min_log_scale):
    # the channel count is out's
    call_cpu("dmol_sample", params, u, out, num_levels, min_log_scale)
