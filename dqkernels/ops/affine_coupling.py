"""Affine coupling (Glow parametrisation): ``affine_coupling``.

``scale = sigmoid(scale_logit + 2)``; forward ``y = (x + shift) * scale``, inverse
``y = x / scale - shift``; ``logdet[b] = +-sum(log scale)`` over the non-batch dims.
Custom ops ``torch.ops.dqk.affine_coupling`` and ``torch.ops.dqk.affine_coupling_backward``
with fake implementations and autograd (in both directions); the math is defined in
:mod:`dqkernels.reference.affine_coupling`.
"""

from __future__ import annotations

import torch

from dqkernels.ops._checks import check_bool, check_like, check_same, check_tensor
from dqkernels.ops._common import (
    accumulate_dtype,
    check_backend,
    kernels,
    new_output,
    resolve_backend,
)
from dqkernels.ops._second_order import refuse_second_order

__all__ = ["affine_coupling"]

_FAMILY = "affine"  # the op family: dqkernels/kernels/affine/


# The checks of the public function, run again at the top of each custom op's body (a direct
# ``torch.ops.dqk`` call gets the same messages) and in the fake implementations (so does
# ``torch.compile``).


def _check(op: str, x, shift, scale_logit, inverse) -> None:
    check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have a batch dimension [B, ...]; got a 0-d tensor")
    for name, t in (("shift", shift), ("scale_logit", scale_logit)):
        check_tensor(op, name, t)
        check_same(op, "x", x, name, t)
        if t.shape != x.shape:
            raise ValueError(
                f"{op}: {name} must have x's shape {tuple(x.shape)}; got {tuple(t.shape)}"
            )
    check_bool(op, "inverse", inverse)


def _check_grads(op: str, x, grad_y, grad_logdet) -> None:
    """The upstream gradients of the backward op: grad_y like y, grad_logdet [B]."""
    check_like(op, "grad_y", grad_y, x.shape, x.dtype, x.device, "y's")
    acc = accumulate_dtype(x.dtype)
    check_like(op, "grad_logdet", grad_logdet, (x.shape[0],), acc, x.device, "logdet's")


@torch.library.custom_op("dqk::affine_coupling", mutates_args=())
def _forward_op(
    x: torch.Tensor, shift: torch.Tensor, scale_logit: torch.Tensor, inverse: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    _check("affine_coupling", x, shift, scale_logit, inverse)
    check_backend("affine_coupling", backend, x.device, x.dtype, _FAMILY)
    y = new_output(x.shape, x.dtype, x.device)
    logdet = new_output((x.shape[0],), accumulate_dtype(x.dtype), x.device)
    if x.numel():
        kernels(backend, _FAMILY).forward(x, shift, scale_logit, y, logdet, inverse)
    else:
        logdet.zero_()
    return y, logdet


@_forward_op.register_fake
def _(x, shift, scale_logit, inverse, backend):
    _check("affine_coupling", x, shift, scale_logit, inverse)
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        (x.shape[0],), dtype=accumulate_dtype(x.dtype)
    )


@torch.library.custom_op("dqk::affine_coupling_backward", mutates_args=())
def _backward_op(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale_logit: torch.Tensor,
    grad_y: torch.Tensor,
    grad_logdet: torch.Tensor,
    inverse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    op = "affine_coupling_backward"
    _check(op, x, shift, scale_logit, inverse)
    _check_grads(op, x, grad_y, grad_logdet)
    check_backend(op, backend, x.device, x.dtype, _FAMILY)
    grads = [new_output(x.shape, x.dtype, x.device) for _ in range(3)]
    if x.numel():
        kernels(backend, _FAMILY).backward(
            x, shift, scale_logit, grad_y, grad_logdet, *grads, inverse
        )
    gx, gshift, gscale_logit = grads
    return gx, gshift, gscale_logit


@_backward_op.register_fake
def _(x, shift, scale_logit, grad_y, grad_logdet, inverse, backend):
    _check("affine_coupling_backward", x, shift, scale_logit, inverse)
    _check_grads("affine_coupling_backward", x, grad_y, grad_logdet)
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(3))


def _setup_context(ctx, inputs, output):
    x, shift, scale_logit, inverse, backend = inputs
    ctx.save_for_backward(x, shift, scale_logit)
    ctx.args = (inverse, backend)


def _backward(ctx, grad_y, grad_logdet):
    x, shift, scale_logit = ctx.saved_tensors
    if not any(ctx.needs_input_grad[:3]):
        return None, None, None, None, None
    inverse, backend = ctx.args
    gx, gs, gl = _backward_op(
        x,
        shift,
        scale_logit,
        grad_y.to(x.dtype),
        grad_logdet.to(accumulate_dtype(x.dtype)),
        inverse,
        backend,
    )
    need = ctx.needs_input_grad
    return (gx if need[0] else None, gs if need[1] else None, gl if need[2] else None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)
refuse_second_order(_backward_op, "affine_coupling")


def affine_coupling(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale_logit: torch.Tensor,
    *,
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Glow's affine coupling, elementwise, with its log-determinant per batch element.

    Args:
        x: ``[B, ...]``, any float dtype (float64 on the ``torch``, ``cpp`` and ``cuda``
            backends), any strides (a stride-0 ``expand`` broadcasts).
        shift, scale_logit: the shape, dtype and device of ``x``.
        inverse: False: ``y = (x + shift) * sigmoid(scale_logit + 2)``; True: the inverse
            map ``y = x / sigmoid(scale_logit + 2) - shift``.
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    Returns:
        ``(y, logdet)``: ``y`` like ``x`` (contiguous), ``logdet`` ``[B]`` in float32
        (float64 for float64 inputs), ``+sum(log scale)`` forward and ``-sum`` inverse.
        Differentiable in all three inputs, in both directions.
    """
    op = "affine_coupling"
    _check(op, x, shift, scale_logit, inverse)
    name = resolve_backend(op, x.device, x.dtype, backend, _FAMILY)
    return _forward_op(x, shift, scale_logit, inverse, name)
