"""Flipped-bit Bernoulli log-likelihood (Tokui–Sato, LEG): ``bernoulli_flip_loglik``.

For a linear Bernoulli layer ``p(x | z) = prod_d Bern(x_d; sigmoid(l_d))``, ``l = z W^T + c``,
the log-likelihood with bit ``h`` of ``z`` flipped, for every ``h`` in one pass::

    l'[b, h, d] = logits[b, d] + (1 - 2 z[b, h]) weight[d, h]
    out[b, h]   = sum_d x log sigmoid(l') + (1 - x) log sigmoid(-l')

without a ``[B, H, D]`` tensor. Custom ops ``torch.ops.dqk.bernoulli_flip_loglik`` and
``torch.ops.dqk.bernoulli_flip_loglik_backward`` with fake implementations and autograd;
the math is defined in :mod:`dqkernels.reference.bernoulli_flip`. With
``r = x - sigmoid(l')`` and ``s = 1 - 2 z`` the gradients are (``d/dl' = r``,
``d/dx = log sigmoid(l') - log sigmoid(-l') = l'``)::

    grad_logits[b, d] = sum_h g[b, h] r[b, h, d]
    grad_weight[d, h] = sum_b g[b, h] s[b, h] r[b, h, d]
    grad_x[b, d]      = logits[b, d] sum_h g[b, h] + sum_h g[b, h] s[b, h] weight[d, h]

``z`` is a sample and is not differentiated: a backward that needs its gradient raises.
"""

from __future__ import annotations

import torch

from dqkernels.ops._checks import check_like, check_same, check_tensor
from dqkernels.ops._common import (
    accumulate_dtype,
    check_backend,
    kernels,
    new_output,
    resolve_backend,
)
from dqkernels.ops._second_order import refuse_second_order

__all__ = ["bernoulli_flip_loglik"]

_FAMILY = "bernoulli_flip"  # the op family: dqkernels/kernels/bernoulli_flip/

_OP = "bernoulli_flip_loglik"  # the public function; its messages name it
_BACKWARD = "bernoulli_flip_loglik_backward"


@torch.library.custom_op("dqk::bernoulli_flip_loglik", mutates_args=())
def _forward_op(
    x: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, z: torch.Tensor, backend: str
) -> torch.Tensor:
    _check(_OP, x, logits, weight, z)
    check_backend(_OP, backend, x.device, x.dtype, _FAMILY)
    (batch, features), hidden = x.shape, weight.shape[1]
    out = new_output((batch, hidden), accumulate_dtype(x.dtype), x.device)
    if batch == 0 or hidden == 0:
        return out
    if features == 0:
        return out.zero_()
    kernels(backend, _FAMILY).forward(x, logits, weight, z, out)
    return out


@_forward_op.register_fake
def _(x, logits, weight, z, backend):
    _check(_OP, x, logits, weight, z)
    return x.new_empty((x.shape[0], weight.shape[1]), dtype=accumulate_dtype(x.dtype))


@torch.library.custom_op("dqk::bernoulli_flip_loglik_backward", mutates_args=())
def _backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor,
    need_x: bool,
    need_logits: bool,
    need_weight: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_logits, grad_weight)``; one not asked for is an empty ``[0]`` tensor."""
    _check_backward(grad_out, x, logits, weight, z)
    check_backend(_BACKWARD, backend, x.device, x.dtype, _FAMILY)
    gx = new_output(x.shape, x.dtype, x.device) if need_x else x.new_empty((0,))
    gl = new_output(logits.shape, x.dtype, x.device) if need_logits else x.new_empty((0,))
    gw = new_output(weight.shape, x.dtype, x.device) if need_weight else x.new_empty((0,))
    if x.numel() == 0 or weight.numel() == 0:
        # no flip or no feature: every gradient is a sum over nothing
        return gx.zero_(), gl.zero_(), gw.zero_()
    kernels(backend, _FAMILY).backward(
        x,
        logits,
        weight,
        z,
        grad_out,
        gx if need_x else None,
        gl if need_logits else None,
        gw if need_weight else None,
    )
    return gx, gl, gw


@_backward_op.register_fake
def _(grad_out, x, logits, weight, z, need_x, need_logits, need_weight, backend):
    _check_backward(grad_out, x, logits, weight, z)
    return (
        x.new_empty(x.shape if need_x else (0,)),
        x.new_empty(logits.shape if need_logits else (0,)),
        x.new_empty(weight.shape if need_weight else (0,)),
    )


def _setup_context(ctx, inputs, output):
    x, logits, weight, z, backend = inputs
    ctx.save_for_backward(x, logits, weight, z)
    ctx.backend = backend


def _backward(ctx, grad_out):
    need = ctx.needs_input_grad
    if need[3]:
        raise RuntimeError(
            f"{_OP}: z is a sample in {{0, 1}} and is not differentiated; pass z.detach() "
            "(the gradient flows to x, logits and weight)"
        )
    if not any(need[:3]):
        return None, None, None, None, None
    x, logits, weight, z = ctx.saved_tensors
    gx, gl, gw = _backward_op(
        grad_out.to(accumulate_dtype(x.dtype)),
        x,
        logits,
        weight,
        z,
        bool(need[0]),
        bool(need[1]),
        bool(need[2]),
        ctx.backend,
    )
    return (
        gx if need[0] else None,
        gl if need[1] else None,
        gw if need[2] else None,
        None,
        None,
    )


_forward_op.register_autograd(_backward, setup_context=_setup_context)
refuse_second_order(_backward_op, _OP)


def _check(op: str, x, logits, weight, z) -> None:
    """The checks of the public function, run again at the top of each custom op's body (a
    direct ``torch.ops.dqk`` call gets the same messages) and in the fake implementations
    (so does ``torch.compile``)."""
    check_tensor(op, "x", x, 2, "[B, D]")
    check_tensor(op, "logits", logits, 2, "[B, D]")
    check_tensor(op, "weight", weight, 2, "[D, H]")
    check_tensor(op, "z", z, 2, "[B, H]")
    for name, t in (("logits", logits), ("weight", weight), ("z", z)):
        check_same(op, "x", x, name, t)
    if logits.shape != x.shape:
        raise ValueError(
            f"{op}: logits must have x's shape [B, D] = {tuple(x.shape)}; got {tuple(logits.shape)}"
        )
    batch, features = x.shape
    if weight.shape[0] != features:
        raise ValueError(
            f"{op}: weight must have x's D = {features} rows [D, H]; got shape "
            f"{tuple(weight.shape)}"
        )
    want = (batch, weight.shape[1])
    if tuple(z.shape) != want:
        raise ValueError(
            f"{op}: z must have shape [B, H] = {want} (x's batch, weight's columns); got "
            f"{tuple(z.shape)}"
        )


def _check_backward(grad_out, x, logits, weight, z) -> None:
    """The backward op's inputs and grad_out, the upstream gradient of ``out [B, H]``."""
    _check(_BACKWARD, x, logits, weight, z)
    shape = (x.shape[0], weight.shape[1])
    check_like(_BACKWARD, "grad_out", grad_out, shape, accumulate_dtype(x.dtype), x.device,
               "out's")  # fmt: skip


def bernoulli_flip_loglik(
    x: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """The log-likelihood of a linear Bernoulli layer with one bit of ``z`` flipped, for every
    bit: ``out[b, h] = sum_d x log sigmoid(l') + (1 - x) log sigmoid(-l')``,
    ``l' = logits[b, d] + (1 - 2 z[b, h]) weight[d, h]``, never forming ``[B, H, D]``.

    Args:
        x: ``[B, D]`` data in [0, 1] (binary; a probability gives the cross-entropy), any float
            dtype (float64 on the ``torch`` and ``cpp`` backends), any strides.
        logits: ``[B, D]``, the layer's logits at ``z`` (``z @ weight.T + bias``).
        weight: ``[D, H]``, the layer's weight (``torch.nn.Linear(H, D).weight``).
        z: ``[B, H]``, the latent sample in {0, 1} (``s = 1 - 2 z`` is used as given).
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    All four tensors share one dtype and device.

    Returns:
        ``out [B, H]`` in float32 (float64 for float64 inputs), accumulated in that dtype;
        ``log sigmoid`` in the ``min(t, 0) - log1p(exp(-|t|))`` form, finite for any finite
        ``l'``. Differentiable in ``x`` (``d/dx = l'``), ``logits`` and ``weight``; not in
        ``z`` (detach it). Extra memory ``O(B H + B D)`` beyond the inputs (the ``torch``
        backend: chunks of at most 2^22 elements).
    """
    op = _OP
    _check(op, x, logits, weight, z)
    name = resolve_backend(op, x.device, x.dtype, backend, _FAMILY)
    return _forward_op(x, logits, weight, z, name)
