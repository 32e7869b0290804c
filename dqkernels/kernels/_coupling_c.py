"""Calling the compiled coupling kernels (csrc/coupling) from the ``cpp`` and ``cuda``
backends of the affine and mixture-of-logistics couplings: every tensor crosses as its
merged ``[B, n1, n2, n3]`` (per element) or ``[B, n1, n2, n3, K]`` (per component) view
(:mod:`dqkernels.kernels._layout`); the entry point (``_cpu`` or ``_cuda``) follows the
tensors' device. Outputs must be contiguous (they are never copied)."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, cuda_stream, strided_arg, tensor_arg
from dqkernels.kernels._layout import element_layout
from dqkernels.ops._common import accumulate_dtype

# Elements of one batch row that one CUDA block sums into a logdet partial (forward
# kernels only).
CUDA_CHUNK = {"affine_coupling_forward": 4096, "mixlogcdf_forward": 256}

# Tests set this to run the CPU kernels' scalar path (the math the CUDA kernels share)
# on float32 too.
cpu_scalar_only = False


def _views(elem: list[torch.Tensor], per_k: list[torch.Tensor] = ()):
    """The kernel views of ``elem`` then ``per_k``, and the sizes ``[B, n1, n2, n3(, K)]``."""
    tensors, sizes, strides = element_layout(elem, per_k)
    n = len(elem)
    return [
        strided_arg(t, sizes[:4] if i < n else sizes, s)
        for i, (t, s) in enumerate(zip(tensors, strides))
    ], sizes


def _launch(entry: str, x: torch.Tensor, sizes: list[int], args: tuple) -> None:
    if x.device.type == "cpu":
        getattr(_C, entry + "_cpu")(*args, cpu_threads(), cpu_scalar_only)
        return
    chunk = CUDA_CHUNK.get(entry, 0)
    with torch.cuda.device(x.device):
        if chunk:
            per_row = sizes[1] * sizes[2] * sizes[3]
            work = torch.empty(
                (sizes[0], -(-per_row // chunk)), dtype=accumulate_dtype(x.dtype), device=x.device
            )
            args += (tensor_arg(work), chunk)
        getattr(_C, entry + "_cuda")(*args, cuda_stream(x.device))


def affine_forward(x, shift, scale_logit, y, logdet, inverse):
    views, sizes = _views([x, shift, scale_logit, y])
    _launch("affine_coupling_forward", x, sizes, (*views, tensor_arg(logdet), inverse))


def affine_backward(
    x, shift, scale_logit, grad_y, grad_logdet, grad_x, grad_shift, grad_scale_logit, inverse
):
    (xv, sv, lv, gyv, gxv, gsv, glv), sizes = _views(
        [x, shift, scale_logit, grad_y, grad_x, grad_shift, grad_scale_logit]
    )
    _launch(
        "affine_coupling_backward",
        x,
        sizes,
        (xv, sv, lv, gyv, tensor_arg(grad_logdet), gxv, gsv, glv, inverse),
    )


def mix_forward(x, logits, means, log_scales, a, b, y, logdet, inverse=False):
    (xv, av, bv, yv, lg, mn, ls), sizes = _views([x, a, b, y], [logits, means, log_scales])
    _launch(
        "mixlogcdf_forward", x, sizes, (xv, lg, mn, ls, av, bv, yv, tensor_arg(logdet), inverse)
    )


def mix_backward(x, logits, means, log_scales, a, b, grad_out, grad_logdet, grads, inverse):
    """``grads``: the outputs (grad_in, grad_logits, grad_means, grad_log_scales, grad_a,
    grad_b), written in place."""
    grad_in, grad_logits, grad_means, grad_log_scales, grad_a, grad_b = grads
    (xv, av, bv, gov, giv, gav, gbv, lg, mn, ls, glg, gmn, gls), sizes = _views(
        [x, a, b, grad_out, grad_in, grad_a, grad_b],
        [logits, means, log_scales, grad_logits, grad_means, grad_log_scales],
    )
    _launch(
        "mixlogcdf_backward",
        x,
        sizes,
        (
            xv,
            lg,
            mn,
            ls,
            av,
            bv,
            gov,
            tensor_arg(grad_logdet),
            giv,
            glg,
            gmn,
            gls,
            gav,
            gbv,
            inverse,
        ),
    )
