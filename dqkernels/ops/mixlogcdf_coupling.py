"""Mixture-of-logistics CDF coupling (Flow++): ``mixlogcdf_coupling``.

Forward ``y = logit(F(x)) * exp(a) + b`` with ``F`` a K-component logistic mixture CDF,
and ``logdet[b] = sum log dy/dx``; the inverse solves ``F(x) = sigmoid((y - b) exp(-a))``
for every element inside one kernel launch. Custom ops ``torch.ops.dqk.mixlogcdf_coupling``,
``torch.ops.dqk.mixlogcdf_coupling_inverse`` and ``torch.ops.dqk.mixlogcdf_coupling_backward``
with fake implementations and autograd. The inverse is differentiated through the implicit
function theorem (never through its iterations): with ``h`` the forward map at the root,
``dx/dy = 1/h_x`` and ``dx/dtheta = -h_theta / h_x``. The math is defined in
:mod:`dqkernels.reference.mixlogcdf_coupling`; docs/INTERNALS.md has the gradients.
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

__all__ = ["mixlogcdf_coupling"]

_FAMILY = "mixlog"  # the op family: dqkernels/kernels/mixlog/

_NAMES = ("logits", "means", "log_scales", "a", "b")

_OP = "mixlogcdf_coupling"  # the public function; its messages name it


def _outputs(x):
    return (
        new_output(x.shape, x.dtype, x.device),
        new_output((x.shape[0],), accumulate_dtype(x.dtype), x.device),
    )


def _fake_outputs(x):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty((x.shape[0],), dtype=accumulate_dtype(x.dtype)),
    )


@torch.library.custom_op("dqk::mixlogcdf_coupling", mutates_args=())
def _forward_op(
    x: torch.Tensor,
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_op(x, logits, means, log_scales, a, b, backend)
    y, logdet = _outputs(x)
    if x.numel():
        kernels(backend, _FAMILY).forward(x, logits, means, log_scales, a, b, y, logdet)
    else:
        logdet.zero_()
    return y, logdet


@_forward_op.register_fake
def _(x, logits, means, log_scales, a, b, backend):
    _check(_OP, x, logits, means, log_scales, a, b)
    return _fake_outputs(x)


@torch.library.custom_op("dqk::mixlogcdf_coupling_inverse", mutates_args=())
def _inverse_op(
    y: torch.Tensor,
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_op(y, logits, means, log_scales, a, b, backend)
    x, logdet = _outputs(y)
    if y.numel():
        kernels(backend, _FAMILY).inverse(y, logits, means, log_scales, a, b, x, logdet)
    else:
        logdet.zero_()
    return x, logdet


@_inverse_op.register_fake
def _(y, logits, means, log_scales, a, b, backend):
    _check(_OP, y, logits, means, log_scales, a, b)
    return _fake_outputs(y)


@torch.library.custom_op("dqk::mixlogcdf_coupling_backward", mutates_args=())
def _backward_op(
    x: torch.Tensor,
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    grad_out: torch.Tensor,
    grad_logdet: torch.Tensor,
    inverse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for ``(input, logits, means, log_scales, a, b)``. ``x`` is the forward's
    input, or for ``inverse=True`` the inverse's output (the root)."""
    op = "mixlogcdf_coupling_backward"
    _check(op, x, logits, means, log_scales, a, b)
    _check_grads(op, x, grad_out, grad_logdet, inverse)
    check_backend(op, backend, x.device, x.dtype, _FAMILY)
    grads = [new_output(t.shape, t.dtype, t.device) for t in (x, logits, means, log_scales, a, b)]
    if x.numel():
        kernels(backend, _FAMILY).backward(
            x, logits, means, log_scales, a, b, grad_out, grad_logdet, grads, inverse
        )
    gx, glogits, gmeans, glog_scales, ga, gb = grads
    return gx, glogits, gmeans, glog_scales, ga, gb


@_backward_op.register_fake
def _(x, logits, means, log_scales, a, b, grad_out, grad_logdet, inverse, backend):
    _check("mixlogcdf_coupling_backward", x, logits, means, log_scales, a, b)
    _check_grads("mixlogcdf_coupling_backward", x, grad_out, grad_logdet, inverse)
    return tuple(
        torch.empty_like(t, memory_format=torch.contiguous_format)
        for t in (x, logits, means, log_scales, a, b)
    )


def _make_autograd(inverse: bool):
    def setup_context(ctx, inputs, output):
        x, logits, means, log_scales, a, b, backend = inputs
        point = output[0] if inverse else x  # where the forward map is differentiated
        ctx.save_for_backward(point, logits, means, log_scales, a, b)
        ctx.backend = backend

    def backward(ctx, grad_out, grad_logdet):
        if not any(ctx.needs_input_grad[:6]):
            return (None,) * 7
        point, *theta = ctx.saved_tensors
        grads = _backward_op(
            point,
            *theta,
            grad_out.to(point.dtype),
            grad_logdet.to(accumulate_dtype(point.dtype)),
            inverse,
            ctx.backend,
        )
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad[:6])) + (
            None,
        )

    return backward, setup_context


for _op, _inverse in ((_forward_op, False), (_inverse_op, True)):
    _bw, _setup = _make_autograd(_inverse)
    _op.register_autograd(_bw, setup_context=_setup)
refuse_second_order(_backward_op, "mixlogcdf_coupling")


# The checks of the public function, run again at the top of each custom op's body (a direct
# ``torch.ops.dqk`` call gets the same messages) and in the fake implementations (so does
# ``torch.compile``).


def _check(op: str, x, logits, means, log_scales, a, b) -> None:
    check_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have a batch dimension [B, ...]; got a 0-d tensor")
    for name, t in zip(_NAMES, (logits, means, log_scales, a, b)):
        check_tensor(op, name, t)
        check_same(op, "x", x, name, t)
    for name, t in (("a", a), ("b", b)):
        if t.shape != x.shape:
            raise ValueError(
                f"{op}: {name} must have x's shape {tuple(x.shape)}; got {tuple(t.shape)}"
            )
    if logits.shape[:-1] != x.shape or logits.dim() != x.dim() + 1:
        raise ValueError(
            f"{op}: logits must have shape [*x.shape, K] = "
            f"{list(x.shape) + ['K']}; got {tuple(logits.shape)}"
        )
    K = logits.shape[-1]
    if K < 1:
        raise ValueError(
            f"{op}: the mixture needs K >= 1 components; got logits of shape {tuple(logits.shape)}"
        )
    for name, t in (("means", means), ("log_scales", log_scales)):
        if t.shape != logits.shape:
            what = (
                f"K mismatch: logits has K={K} components and {name} has {t.shape[-1]}"
                if t.shape[:-1] == logits.shape[:-1] and t.dim() == logits.dim()
                else f"expected logits' shape {tuple(logits.shape)}"
            )
            raise ValueError(
                f"{op}: {name} must have shape [*x.shape, K]; {what}; got {tuple(t.shape)}"
            )


def _check_op(x, logits, means, log_scales, a, b, backend: str) -> None:
    """What the forward and inverse ops check before a kernel runs."""
    _check(_OP, x, logits, means, log_scales, a, b)
    check_backend(_OP, backend, x.device, x.dtype, _FAMILY)


def _check_grads(op: str, x, grad_out, grad_logdet, inverse) -> None:
    """The upstream gradients of the backward op: grad_out like x, grad_logdet [B]."""
    check_like(op, "grad_out", grad_out, x.shape, x.dtype, x.device, "the output's")
    acc = accumulate_dtype(x.dtype)
    check_like(op, "grad_logdet", grad_logdet, (x.shape[0],), acc, x.device, "logdet's")
    check_bool(op, "inverse", inverse)


def mixlogcdf_coupling(
    x: torch.Tensor,
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    inverse: bool = False,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow++'s mixture-of-logistics CDF coupling, elementwise, with its log-determinant.

    Args:
        x: ``[B, ...]``: the input of the forward map, or with ``inverse=True`` its output.
        logits, means, log_scales: ``[B, ..., K]``: the mixture over the last dimension.
        a, b: ``[B, ...]``: ``y = logit(F(x)) * exp(a) + b``.
        inverse: solve for the input instead. The root is found per element inside the
            kernel by safeguarded Newton on ``logit F`` in the bracket
            ``[min_k(mean_k + scale_k t), max_k(...)]``, ``t = (y - b) exp(-a)`` (the
            ``torch`` backend bisects 100 times); every float32 result has forward error
            ``|x - x*| <= 1e-5 (1 + |x*|)`` or, where ``F`` is flat, backward error
            ``|forward(x) - y| <= 1e-4 (1 + |y|)``.
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    All tensors share one float dtype (float64 on ``torch``, ``cpp`` and ``cuda``) and
    device; any strides. Computation is in float32 for half inputs.

    Returns:
        ``(out, logdet)``: ``out`` like ``x`` (contiguous); ``logdet`` ``[B]`` in float32
        (float64 for float64 inputs): ``sum(log F' - log F - log(1-F) + a)`` forward and
        minus that at the returned point for the inverse. Differentiable in every input
        (the inverse through the implicit function theorem).
    """
    op = _OP
    _check(op, x, logits, means, log_scales, a, b)
    check_bool(op, "inverse", inverse)
    name = resolve_backend(op, x.device, x.dtype, backend, _FAMILY)
    fn = _inverse_op if inverse else _forward_op
    return fn(x, logits, means, log_scales, a, b, name)
