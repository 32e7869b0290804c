"""Second-order gradients of the ops: one refusal, the same on every backend.

The backward of ``affine_coupling``, ``mixlogcdf_coupling`` (both directions),
``masked_linear``, ``masked_conv2d``, ``bernoulli_flip_loglik`` and ``dmol_nll`` is a kernel of
its own (a ``*_backward`` custom op, or for ``dmol_nll`` on ``cpp`` a gradient computed in the
forward sweep), which is not itself differentiable. Differentiating it would silently give zeros
(a constant gradient tensor) or a generic PyTorch error; instead every such path raises
:func:`second_order_error` when the second backward reaches it. Taking a first gradient
with ``create_graph=True`` still works (it is refused only when differentiated).
``vq_nearest``'s backward is plain PyTorch and is differentiable (its second derivatives
are exact, tested against the reference).
"""

from __future__ import annotations

import torch


def second_order_error(op: str) -> RuntimeError:
    """The error every op raises when its gradient is differentiated."""
    return RuntimeError(
        f"{op}: second-order gradients are not supported; its backward is a kernel that is "
        f"not differentiable (for Hessians or gradient penalties, differentiate the float64 "
        f"reference in dqkernels.reference twice)"
    )


def refuse_second_order(backward_op, op: str) -> None:
    """Give the custom op ``backward_op`` (the backward kernel of ``op``) an autograd formula
    that raises :func:`second_order_error`: reached only by a second backward."""

    def setup_context(ctx, inputs, output) -> None:
        return None

    def backward(ctx, *grads):
        raise second_order_error(op)

    backward_op.register_autograd(backward, setup_context=setup_context)


class _Refuse(torch.autograd.Function):
    """Identity whose backward raises :func:`second_order_error`."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, op: str) -> torch.Tensor:
        ctx.op = op
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        raise second_order_error(ctx.op)


def refuse_if_differentiated(t: torch.Tensor, op: str) -> torch.Tensor:
    """``t`` (a gradient computed in a backward), made to raise :func:`second_order_error`
    if it is itself differentiated (only when grad mode is on, i.e. ``create_graph=True``)."""
    if torch.is_grad_enabled() and t.requires_grad:
        return _Refuse.apply(t, op)
    return t
