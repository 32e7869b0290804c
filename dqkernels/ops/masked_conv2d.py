"""PixelCNN masked convolution: ``masked_conv2d``.

Odd square kernels, "same" padding, stride 1; taps after the centre in raster order are
masked, and the centre tap is masked by channel blocks (type "A" or "B", ``groups``
blocks); see :mod:`dqkernels.reference.masked_conv2d` for the definition. The kernels
skip masked taps instead of multiplying them by zero, so the masked entries of
``weight`` are never read: whatever they hold (NaN included) does not reach the output,
and their gradient is exactly zero.

Custom ops ``torch.ops.dqk.masked_conv2d`` and ``torch.ops.dqk.masked_conv2d_backward``
with fake implementations and autograd.
"""

from __future__ import annotations

from typing import Optional

import torch

from dqkernels.ops._checks import check_bias, check_int, check_like, check_same, check_tensor
from dqkernels.ops._common import check_backend, kernels, new_output, resolve_backend
from dqkernels.ops._second_order import refuse_second_order
from dqkernels.reference.masked_conv2d import MASK_TYPES

__all__ = ["masked_conv2d"]

_FAMILY = "masked_conv2d"  # the op family: dqkernels/kernels/masked_conv2d/

_OP = "masked_conv2d"  # the public function; its messages name it
_BACKWARD = "masked_conv2d_backward"


def _empty(t: torch.Tensor) -> torch.Tensor:
    """The placeholder for a gradient nobody asked for."""
    return t.new_empty((0,))


@torch.library.custom_op("dqk::masked_conv2d", mutates_args=())
def _forward_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask_type: str,
    groups: int,
    backend: str,
) -> torch.Tensor:
    _check(_OP, x, weight, bias, mask_type, groups)
    check_backend(_OP, backend, x.device, x.dtype, _FAMILY)
    B, _, H, W = x.shape
    y = new_output((B, weight.shape[0], H, W), x.dtype, x.device)
    if y.numel():
        kernels(backend, _FAMILY).forward(x, weight, bias, y, mask_type, groups)
    return y


@_forward_op.register_fake
def _(x, weight, bias, mask_type, groups, backend):
    _check_tensors(_OP, x, weight, bias)
    B, _, H, W = x.shape
    return x.new_empty((B, weight.shape[0], H, W))


@torch.library.custom_op("dqk::masked_conv2d_backward", mutates_args=())
def _backward_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    grad_y: torch.Tensor,
    mask_type: str,
    groups: int,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_weight, grad_bias)``; a gradient not needed is an empty ``[0]``."""
    _check(_BACKWARD, x, weight, None, mask_type, groups)
    _check_grad_y(x, weight, grad_y)
    check_backend(_BACKWARD, backend, x.device, x.dtype, _FAMILY)
    gx = new_output(x.shape, x.dtype, x.device) if need_x else _empty(x)
    gw = new_output(weight.shape, x.dtype, x.device) if need_weight else _empty(x)
    gb = new_output((weight.shape[0],), x.dtype, x.device) if need_bias else _empty(x)
    if grad_y.numel() == 0:  # no pixels: dW and db are sums over nothing
        if need_weight:
            gw.zero_()
        if need_bias:
            gb.zero_()
    elif need_x or need_weight or need_bias:
        kernels(backend, _FAMILY).backward(
            x,
            weight,
            grad_y,
            gx if need_x else None,
            gw if need_weight else None,
            gb if need_bias else None,
            mask_type,
            groups,
        )
    return gx, gw, gb


@_backward_op.register_fake
def _(x, weight, grad_y, mask_type, groups, need_x, need_weight, need_bias, backend):
    _check_tensors(_BACKWARD, x, weight, None)
    _check_grad_y(x, weight, grad_y)
    return (
        x.new_empty(x.shape) if need_x else _empty(x),
        x.new_empty(weight.shape) if need_weight else _empty(x),
        x.new_empty((weight.shape[0],)) if need_bias else _empty(x),
    )


def _setup_context(ctx, inputs, output):
    x, weight, _bias, mask_type, groups, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (mask_type, groups, backend)


def _backward(ctx, grad_y):
    x, weight = ctx.saved_tensors
    need = ctx.needs_input_grad
    if not any(need[:3]):
        return None, None, None, None, None, None
    mask_type, groups, backend = ctx.args
    gx, gw, gb = _backward_op(
        x,
        weight,
        grad_y.to(x.dtype),
        mask_type,
        groups,
        bool(need[0]),
        bool(need[1]),
        bool(need[2]),
        backend,
    )
    return (
        gx if need[0] else None,
        gw if need[1] else None,
        gb if need[2] else None,
        None,
        None,
        None,
    )


_forward_op.register_autograd(_backward, setup_context=_setup_context)
refuse_second_order(_backward_op, "masked_conv2d")


def check_masked_conv2d_args(
    op: str, in_channels: int, out_channels: int, kernel_size, mask_type, groups
) -> None:
    """Checks shared by :func:`masked_conv2d` and :class:`dqkernels.nn.MaskedConv2d`."""
    if not isinstance(mask_type, str):
        raise TypeError(
            f"{op}: mask_type must be a str, 'A' or 'B'; got {type(mask_type).__name__}"
        )
    if mask_type not in MASK_TYPES:
        raise ValueError(f"{op}: mask_type must be 'A' or 'B'; got {mask_type!r}")
    if kernel_size % 2 == 0:
        raise ValueError(
            f"{op}: the kernel size must be odd (centre tap at k // 2); got {kernel_size}"
        )
    check_int(op, "groups", groups, 1)
    limit = min(in_channels, out_channels)
    if groups > limit:
        raise ValueError(
            f"{op}: groups must be <= min(in_channels, out_channels) = "
            f"min({in_channels}, {out_channels}) = {limit}, so that every "
            f"channel block is non-empty; got {groups}"
        )


# The checks of the public function, run again at the top of each custom op's body (a direct
# ``torch.ops.dqk`` call gets the same messages) and, the tensor checks, in the fake
# implementations (so does ``torch.compile``; ``groups`` may be a SymInt there).


def _check_tensors(op: str, x, weight, bias) -> None:
    check_tensor(op, "x", x, 4, "[B, Cin, H, W]")
    check_tensor(op, "weight", weight, 4, "[Cout, Cin, k, k]")
    check_same(op, "x", x, "weight", weight)
    cout, cin, kh, kw = weight.shape
    if kh != kw:
        raise ValueError(
            f"{op}: weight must have a square kernel [Cout, Cin, k, k]; got "
            f"shape {tuple(weight.shape)} (kernel {kh}x{kw})"
        )
    if cin != x.shape[1]:
        raise ValueError(
            f"{op}: weight must have x's {x.shape[1]} input channels "
            f"(weight.shape[1] == x.shape[1]); got weight shape "
            f"{tuple(weight.shape)}"
        )
    if cout < 1:
        raise ValueError(
            f"{op}: weight must have at least one output channel; got shape {tuple(weight.shape)}"
        )
    check_bias(op, bias, x, cout, "Cout, weight's output channels")


def _check(op: str, x, weight, bias, mask_type, groups) -> None:
    _check_tensors(op, x, weight, bias)
    cout, cin, k, _ = weight.shape
    check_masked_conv2d_args(op, cin, cout, k, mask_type, groups)


def _check_grad_y(x, weight, grad_y) -> None:
    """The backward op's upstream gradient [B, Cout, H, W]."""
    B, _, H, W = x.shape
    shape = (B, weight.shape[0], H, W)
    check_like(_BACKWARD, "grad_y", grad_y, shape, x.dtype, x.device, "y's")


def masked_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    mask_type: str,
    groups: int = 1,
    backend: str | None = None,
) -> torch.Tensor:
    """PixelCNN masked 2-D convolution ("same" padding, stride 1).

    Args:
        x: ``[B, Cin, H, W]``, float16/bfloat16/float32 (float64 on the ``torch``, ``cpp``
            and ``cuda`` backends), any strides.
        weight: ``[Cout, Cin, k, k]`` with ``k`` odd, ``x``'s dtype and device. Masked
            entries are never read (they may hold anything) and get a zero gradient.
        bias: ``[Cout]`` or None.
        mask_type: ``"A"`` (the centre tap sees earlier channel blocks only: the first
            layer of a PixelCNN) or ``"B"`` (earlier blocks and its own).
        groups: channel blocks at the centre tap, ``1 <= groups <= min(Cin, Cout)``;
            channel ``c`` of ``C`` is in block ``c * groups // C``.
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one
            in force (see :mod:`dqkernels.backends`).

    Returns:
        ``y`` ``[B, Cout, H, W]`` (contiguous) in ``x``'s dtype, accumulated in float32
        (float64 for float64 inputs). Differentiable in ``x``, ``weight`` and ``bias``.
    """
    op = _OP
    _check(op, x, weight, bias, mask_type, groups)
    name = resolve_backend(op, x.device, x.dtype, backend, _FAMILY)
    return _forward_op(x, weight, bias, mask_type, groups, name)
