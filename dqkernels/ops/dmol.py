"""Discretized logistic mixture likelihood (PixelCNN++): ``dmol_nll`` and ``dmol_sample``.

Both are ``torch.library`` custom ops (``torch.ops.dqk.dmol_nll``,
``torch.ops.dqk.dmol_nll_backward``, ``torch.ops.dqk.dmol_nll_fused``,
``torch.ops.dqk.dmol_sample``) with fake
implementations, so they trace under ``torch.compile`` without graph breaks and pass
``torch.library.opcheck``. The backend is resolved in the Python wrapper and passed to
the op as a string. The math is defined in :mod:`dqkernels.reference.dmol`.
"""

from __future__ import annotations

import torch

from dqkernels.ops._checks import (
    check_finite_float,
    check_int,
    check_like,
    check_same,
    check_tensor,
)
from dqkernels.ops._common import (
    accumulate_dtype,
    check_backend,
    kernels,
    new_output,
    resolve_backend,
)
from dqkernels.ops._second_order import refuse_if_differentiated, refuse_second_order
from dqkernels.reference.dmol import params_per_mixture

__all__ = ["dmol_nll", "dmol_sample", "num_mixtures"]

_FAMILY = "dmol"  # the op family: dqkernels/kernels/dmol/

_LAYOUT = "[B, C, H, W]"


def num_mixtures(num_params: int, num_channels: int) -> int:
    """Mixture count M for a ``params`` channel count, or a ValueError naming the fit."""
    per = params_per_mixture(num_channels)
    if num_params <= 0 or num_params % per:
        j = 3 if num_channels == 3 else 2
        raise ValueError(
            f"params has {num_params} channels, which fits no mixture count for "
            f"C={num_channels}: expected a positive multiple of {per} "
            f"(M * (1 + {j}*{num_channels}))"
        )
    return num_params // per


def _check_params(op: str, params, num_channels: int) -> int:
    check_tensor(op, "params", params, 4, "[B, P, H, W]")
    try:
        return num_mixtures(params.shape[1], num_channels)
    except ValueError as exc:
        raise ValueError(f"{op}: {exc}") from None


def _check_channels(op: str, name: str, c) -> int:
    if c not in (1, 3):
        raise ValueError(f"{op}: {name} must be 1 or 3; got {c}")
    return c


# The checks of the public functions, run again at the top of each custom op's body (a direct
# ``torch.ops.dqk`` call gets the same messages) and, the tensor checks, in the fake
# implementations (so does ``torch.compile``). Scalars are checked apart: under
# ``torch.compile`` an op's int arguments may reach the fake implementation as SymInts.


def _check_nll(op: str, x, params) -> None:
    """x [B, C, H, W] and params [B, P, H, W] that agree."""
    check_tensor(op, "x", x, 4, _LAYOUT)
    C = _check_channels(op, "x's channel count C (dimension 1)", x.shape[1])
    _check_params(op, params, C)
    check_same(op, "x", x, "params", params)
    if params.shape[0] != x.shape[0] or params.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"{op}: x and params must agree in batch and spatial size [B, *, H, W]; got x "
            f"{tuple(x.shape)} and params {tuple(params.shape)}"
        )


def _check_scalars(op: str, num_levels, min_log_scale) -> tuple[int, float]:
    return (
        check_int(op, "num_levels", num_levels, 2),
        check_finite_float(op, "min_log_scale", min_log_scale),
    )


def _check_sample_params(op: str, params, num_channels) -> int:
    """params [B, P, H, W] of a mixture over ``num_channels`` (an int >= 1) channels."""
    C = _check_channels(op, "num_channels", num_channels)
    _check_params(op, params, C)
    return C


def _check_sample(op: str, params, u, num_channels) -> None:
    """params and the uniforms u [B, 1 + C, H, W] of the dmol_sample op."""
    C = _check_sample_params(op, params, num_channels)
    B, _, H, W = params.shape
    acc = accumulate_dtype(params.dtype)
    check_like(op, "u", u, (B, 1 + C, H, W), acc, params.device, "the uniforms [B, 1 + C, H, W]")


def _check_nll_op(op: str, x, params, num_levels, min_log_scale, backend) -> None:
    """Everything a dmol_nll op's body checks before a kernel runs."""
    _check_nll(op, x, params)
    _check_scalars(op, num_levels, min_log_scale)
    check_backend(op, backend, params.device, params.dtype, _FAMILY)


def _check_grad_out(op: str, x, params, grad_out) -> None:
    B, _, H, W = x.shape
    acc = accumulate_dtype(params.dtype)
    check_like(op, "grad_out", grad_out, (B, H, W), acc, params.device, "the NLL's")


# ----------------------------------------------------------------------------- ops


@torch.library.custom_op("dqk::dmol_nll", mutates_args=())
def _nll_op(
    x: torch.Tensor, params: torch.Tensor, num_levels: int, min_log_scale: float, backend: str
) -> torch.Tensor:
    _check_nll_op("dmol_nll", x, params, num_levels, min_log_scale, backend)
    B, _, H, W = x.shape
    out = new_output((B, H, W), accumulate_dtype(params.dtype), params.device)
    if out.numel():
        kernels(backend, _FAMILY).nll_forward(x, params, out, num_levels, min_log_scale)
    return out


@_nll_op.register_fake
def _(x, params, num_levels, min_log_scale, backend):
    _check_nll("dmol_nll", x, params)
    B, _, H, W = x.shape
    return params.new_empty((B, H, W), dtype=accumulate_dtype(params.dtype))


@torch.library.custom_op("dqk::dmol_nll_backward", mutates_args=())
def _nll_backward_op(
    x: torch.Tensor,
    params: torch.Tensor,
    grad_out: torch.Tensor,
    num_levels: int,
    min_log_scale: float,
    backend: str,
) -> torch.Tensor:
    op = "dmol_nll_backward"
    _check_nll_op(op, x, params, num_levels, min_log_scale, backend)
    _check_grad_out(op, x, params, grad_out)
    grad = new_output(params.shape, params.dtype, params.device)
    if grad.numel():
        kernels(backend, _FAMILY).nll_backward(x, params, grad_out, grad, num_levels, min_log_scale)
    return grad


@_nll_backward_op.register_fake
def _(x, params, grad_out, num_levels, min_log_scale, backend):
    _check_nll("dmol_nll_backward", x, params)
    _check_grad_out("dmol_nll_backward", x, params, grad_out)
    return torch.empty_like(params)


def _setup_context(ctx, inputs, output):
    x, params, num_levels, min_log_scale, backend = inputs
    ctx.save_for_backward(x, params)
    ctx.args = (num_levels, min_log_scale, backend)


def _backward(ctx, grad_out):
    x, params = ctx.saved_tensors
    grad_out = grad_out.to(accumulate_dtype(params.dtype))
    grad = _nll_backward_op(x, params, grad_out, *ctx.args) if ctx.needs_input_grad[1] else None
    return None, grad, None, None, None


_nll_op.register_autograd(_backward, setup_context=_setup_context)
refuse_second_order(_nll_backward_op, "dmol_nll")


# Backends whose kernels can produce the gradient in the forward sweep. On CPUs the
# kernels are compute-bound, so computing the NLL and the unit-upstream gradient together
# and scaling in the backward beats recomputing the forward there; on GPUs they are
# memory-bound and recomputation moves fewer bytes. The extra memory held between forward
# and backward is one gradient-sized tensor.
FUSED_BACKWARD_BACKENDS = ("cpp",)


@torch.library.custom_op("dqk::dmol_nll_fused", mutates_args=())
def _nll_fused_op(
    x: torch.Tensor, params: torch.Tensor, num_levels: int, min_log_scale: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_nll_op("dmol_nll", x, params, num_levels, min_log_scale, backend)
    if backend not in FUSED_BACKWARD_BACKENDS:
        raise ValueError(
            f"dmol_nll_fused: backend must be one of {', '.join(FUSED_BACKWARD_BACKENDS)} (the "
            f"backends whose kernels fuse the gradient into the forward); got {backend!r}"
        )
    B, _, H, W = x.shape
    out = new_output((B, H, W), accumulate_dtype(params.dtype), params.device)
    grad_unit = new_output(params.shape, params.dtype, params.device)
    if out.numel():
        kernels(backend, _FAMILY).nll_forward_backward(
            x, params, out, grad_unit, num_levels, min_log_scale
        )
    return out, grad_unit


@_nll_fused_op.register_fake
def _(x, params, num_levels, min_log_scale, backend):
    _check_nll("dmol_nll", x, params)
    B, _, H, W = x.shape
    return (
        params.new_empty((B, H, W), dtype=accumulate_dtype(params.dtype)),
        torch.empty_like(params),
    )


# The second output (grad_unit, the gradient for a unit upstream) is internal: dmol_nll returns
# only the NLL. A gradient arriving for it is ignored (opcheck differentiates every output);
# differentiating the gradient dmol_nll returns is refused in _fused_backward.
def _fused_setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _fused_backward(ctx, grad_out, _grad_of_grad_unit):
    (grad_unit,) = ctx.saved_tensors
    # scale in the accumulate dtype, round once to params' dtype
    grad = (grad_unit * grad_out.unsqueeze(1)).to(grad_unit.dtype)
    # grad_unit is a constant of the forward sweep: differentiating this product would
    # silently give a zero second derivative in params, so it is refused like the unfused
    # backward op refuses it
    return None, refuse_if_differentiated(grad, "dmol_nll"), None, None, None


_nll_fused_op.register_autograd(_fused_backward, setup_context=_fused_setup_context)


@torch.library.custom_op("dqk::dmol_sample", mutates_args=())
def _sample_op(
    params: torch.Tensor,
    u: torch.Tensor,
    num_channels: int,
    num_levels: int,
    min_log_scale: float,
    backend: str,
) -> torch.Tensor:
    op = "dmol_sample"
    check_int(op, "num_channels", num_channels, 1)
    _check_sample(op, params, u, num_channels)
    _check_scalars(op, num_levels, min_log_scale)
    check_backend(op, backend, params.device, params.dtype, _FAMILY)
    B, _, H, W = params.shape
    out = new_output((B, num_channels, H, W), params.dtype, params.device)
    if out.numel():
        kernels(backend, _FAMILY).sample(params, u, out, num_channels, num_levels, min_log_scale)
    return out


@_sample_op.register_fake
def _(params, u, num_channels, num_levels, min_log_scale, backend):
    _check_sample("dmol_sample", params, u, num_channels)
    B, _, H, W = params.shape
    return params.new_empty((B, num_channels, H, W))


# ----------------------------------------------------------------------------- API


def dmol_nll(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    num_levels: int = 256,
    min_log_scale: float = -7.0,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-pixel negative log-likelihood (nats) of ``x`` under a discretized logistic mixture.

    Args:
        x: ``[B, C, H, W]``, C in {1, 3}, values on the grid ``2k/(L-1) - 1``; each value
            is snapped to its nearest level, so low-precision inputs are evaluated exactly.
        params: ``[B, M*(1 + J*C), H, W]`` (J = 3 if C == 3 else 2) in PixelCNN++'s layout:
            M mixture logits, then per channel c and j in (mean, log-scale[, coefficient])
            a block of M. Same dtype and device as ``x``.
        num_levels: L, the number of levels (>= 2): 256 for 8-bit images.
        min_log_scale: log-scales are clamped below at this value.
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    Returns:
        ``[B, H, W]`` NLL in float32 (float64 for float64 inputs). Differentiable with
        respect to ``params``.
    """
    op = "dmol_nll"
    _check_nll(op, x, params)
    num_levels, min_log_scale = _check_scalars(op, num_levels, min_log_scale)
    name = resolve_backend(op, params.device, params.dtype, backend, _FAMILY)
    if name in FUSED_BACKWARD_BACKENDS and params.requires_grad and torch.is_grad_enabled():
        return _nll_fused_op(x, params, num_levels, min_log_scale, name)[0]
    return _nll_op(x, params, num_levels, min_log_scale, name)


def dmol_sample(
    params: torch.Tensor,
    num_channels: int,
    *,
    num_levels: int = 256,
    min_log_scale: float = -7.0,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Draw ``[B, C, H, W]`` grid values from the discretized logistic mixture ``params``.

    One component is drawn per pixel, then each channel in order from its logistic,
    binned exactly as :func:`dmol_nll` bins it (edge bins open), with the coupled means
    of C == 3 using the values already drawn. The uniforms come from ``torch.rand`` with
    ``generator``, so every backend draws the same samples from the same generator state.
    Not differentiable.
    """
    op = "dmol_sample"
    C = _check_sample_params(op, params, check_int(op, "num_channels", num_channels, 1))
    num_levels, min_log_scale = _check_scalars(op, num_levels, min_log_scale)
    params = params.detach()
    name = resolve_backend(op, params.device, params.dtype, backend, _FAMILY)
    B, _, H, W = params.shape
    u = torch.rand(
        (B, 1 + C, H, W),
        generator=generator,
        device=params.device,
        dtype=accumulate_dtype(params.dtype),
    )
    return _sample_op(params, u, C, num_levels, min_log_scale, name)
