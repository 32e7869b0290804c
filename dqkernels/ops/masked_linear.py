"""Masked autoregressive linear layer (MADE): ``masked_linear``.

``y = x @ (weight * M).T + bias`` with ``M[j, i] = out_degrees[j] > in_degrees[i]``
(``strict=True``) or ``>=`` (``strict=False``). Custom ops ``torch.ops.dqk.masked_linear``
and ``torch.ops.dqk.masked_linear_backward`` with fake implementations and autograd; the
math is defined in :mod:`dqkernels.reference.masked_linear`. The kernels skip the tiles of
``M`` that are entirely zero (the staircase of ascending degrees) and select inside the
tiles that are partly masked, so a masked weight is never read into a sum.
"""

from __future__ import annotations

import torch

from dqkernels.ops._checks import (
    check_bias,
    check_bool,
    check_int_tensor,
    check_like,
    check_same,
    check_same_device,
    check_tensor,
)
from dqkernels.ops._common import (
    accumulate_dtype,
    check_backend,
    kernels,
    leading_size,
    new_output,
    resolve_backend,
)
from dqkernels.ops._second_order import refuse_second_order

__all__ = ["masked_linear"]

_FAMILY = "masked_linear"  # the op family: dqkernels/kernels/masked_linear/

DEGREE_DTYPES = (torch.int32, torch.int64)

_OP = "masked_linear"  # the public function; its messages name it
_BACKWARD = "masked_linear_backward"


@torch.library.custom_op("dqk::masked_linear", mutates_args=())
def _forward_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool,
    backend: str,
) -> torch.Tensor:
    _check(_OP, x, weight, bias, in_degrees, out_degrees, strict)
    check_backend(_OP, backend, x.device, x.dtype, _FAMILY)
    n_out, n_in = weight.shape
    y = new_output((*x.shape[:-1], n_out), x.dtype, x.device)
    rows = leading_size(x)
    if rows == 0 or n_out == 0:
        return y
    y2 = y.view(rows, n_out)
    if n_in == 0:
        if bias is None:
            y2.zero_()
        else:
            y2.copy_(bias.expand(rows, n_out))
        return y
    kernels(backend, _FAMILY).forward(
        x.reshape(rows, n_in), weight, bias, in_degrees, out_degrees, strict, y2
    )
    return y


@_forward_op.register_fake
def _(x, weight, bias, in_degrees, out_degrees, strict, backend):
    _check(_OP, x, weight, bias, in_degrees, out_degrees, strict)
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("dqk::masked_linear_backward", mutates_args=())
def _backward_op(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight, grad_bias)``; one not asked for is an empty ``[0]`` tensor."""
    _check_backward(x, weight, in_degrees, out_degrees, strict, grad_y)
    check_backend(_BACKWARD, backend, x.device, x.dtype, _FAMILY)
    n_out, n_in = weight.shape
    gx = new_output(x.shape, x.dtype, x.device) if need_x else x.new_empty((0,))
    gw = new_output(weight.shape, weight.dtype, x.device) if need_weight else x.new_empty((0,))
    gb = new_output((n_out,), x.dtype, x.device) if need_bias else x.new_empty((0,))
    rows = leading_size(x)
    if rows == 0 or n_in == 0 or n_out == 0:
        # nothing to multiply: zeros (or empty tensors), and the bias gradient is a sum
        if need_x:
            gx.zero_()
        if need_weight:
            gw.zero_()
        if need_bias:
            if rows == 0 or n_out == 0:
                gb.zero_()
            else:
                gb.copy_(grad_y.reshape(rows, n_out).sum(dim=0, dtype=accumulate_dtype(x.dtype)))
        return gx, gw, gb
    kernels(backend, _FAMILY).backward(
        grad_y.reshape(rows, n_out),
        x.reshape(rows, n_in),
        weight,
        in_degrees,
        out_degrees,
        strict,
        gx.view(rows, n_in) if need_x else None,
        gw if need_weight else None,
        gb if need_bias else None,
    )
    return gx, gw, gb


@_backward_op.register_fake
def _(grad_y, x, weight, in_degrees, out_degrees, strict, need_x, need_weight, need_bias, backend):
    _check_backward(x, weight, in_degrees, out_degrees, strict, grad_y)
    return (
        x.new_empty(x.shape if need_x else (0,)),
        x.new_empty(weight.shape if need_weight else (0,)),
        x.new_empty((weight.shape[0],) if need_bias else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_degrees, out_degrees, strict, backend = inputs
    ctx.save_for_backward(x, weight, in_degrees, out_degrees)
    ctx.args = (strict, backend, bias is not None)


def _backward(ctx, grad_y):
    need = ctx.needs_input_grad
    if not any(need[:3]):
        return None, None, None, None, None, None, None
    x, weight, in_degrees, out_degrees = ctx.saved_tensors
    strict, backend, has_bias = ctx.args
    gx, gw, gb = _backward_op(
        grad_y.to(x.dtype),
        x,
        weight,
        in_degrees,
        out_degrees,
        strict,
        bool(need[0]),
        bool(need[1]),
        bool(need[2] and has_bias),
        backend,
    )
    return (
        gx if need[0] else None,
        gw if need[1] else None,
        gb if need[2] and has_bias else None,
        None,
        None,
        None,
        None,
    )


_forward_op.register_autograd(_backward, setup_context=_setup_context)
refuse_second_order(_backward_op, "masked_linear")


def _check_degrees(op: str, name: str, d, length: int, what: str, x: torch.Tensor) -> None:
    check_int_tensor(op, name, d, DEGREE_DTYPES)
    if d.dim() != 1:
        raise ValueError(f"{op}: {name} must be 1-D; got shape {tuple(d.shape)}")
    if d.shape[0] != length:
        raise ValueError(
            f"{op}: {name} must have length {length} (weight's {what}); got {d.shape[0]}"
        )
    check_same_device(op, "x", x, name, d)


def _check(op: str, x, weight, bias, in_degrees, out_degrees, strict) -> None:
    """The checks of the public function, run again at the top of each custom op's body (a
    direct ``torch.ops.dqk`` call gets the same messages) and in the fake implementations
    (so does ``torch.compile``)."""
    check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(
            f"{op}: x must have at least one dimension [..., in_features]; got a 0-d tensor"
        )
    check_tensor(op, "weight", weight, 2, "[out_features, in_features]")
    check_same(op, "x", x, "weight", weight)
    n_out, n_in = weight.shape
    if x.shape[-1] != n_in:
        raise ValueError(
            f"{op}: x's last dimension must equal weight's in_features {n_in}; "
            f"got x {tuple(x.shape)} and weight {tuple(weight.shape)}"
        )
    check_bias(op, bias, x, n_out, "weight's out_features")
    _check_degrees(op, "in_degrees", in_degrees, n_in, "in_features", x)
    _check_degrees(op, "out_degrees", out_degrees, n_out, "out_features", x)
    check_bool(op, "strict", strict)


def _check_backward(x, weight, in_degrees, out_degrees, strict, grad_y) -> None:
    """The backward op's inputs and grad_y, the upstream gradient [..., out_features]."""
    _check(_BACKWARD, x, weight, None, in_degrees, out_degrees, strict)
    shape = (*x.shape[:-1], weight.shape[0])
    check_like(_BACKWARD, "grad_y", grad_y, shape, x.dtype, x.device, "y's")


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    *,
    strict: bool,
    backend: str | None = None,
) -> torch.Tensor:
    """MADE's masked linear layer ``y = x @ (weight * M).T + bias``.

    Args:
        x: ``[..., in_features]``, any float dtype (float64 on the ``torch``, ``cpp`` and
            ``cuda`` backends), any strides.
        weight: ``[out_features, in_features]``, x's dtype and device, any strides.
        bias: ``[out_features]`` or None.
        in_degrees, out_degrees: 1-D int32/int64 tensors of lengths ``in_features`` and
            ``out_features`` on x's device, in any order (ascending degrees give the
            staircase the kernels skip best).
        strict: ``M[j, i] = out_degrees[j] > in_degrees[i]`` if True (MADE's output
            layer), ``>=`` if False (its input and hidden layers).
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    Returns:
        ``y`` of shape ``[..., out_features]`` in x's dtype (contiguous), accumulated in
        float32 (float64 for float64 inputs). Differentiable in x, weight and bias; the
        weight gradient is exactly zero where ``M`` is 0.
    """
    op = _OP
    _check(op, x, weight, bias, in_degrees, out_degrees, strict)
    name = resolve_backend(op, x.device, x.dtype, backend, _FAMILY)
    return _forward_op(x, weight, bias, in_degrees, out_degrees, strict, name)
