"""The ``cuda`` backend of ``bernoulli_flip_loglik``: csrc/bernoulli_flip/bernoulli_flip_cuda.cu
through dqkernels._C, launched on PyTorch's current stream."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cuda

__all__ = ["backward", "forward"]


def forward(x, logits, weight, z, out):
    call_cuda("bernoulli_flip_forward", x, logits, weight, z, out)


def backward(x, logits, weight, z, grad_out, grad_x, grad_logits, grad_weight):
    call_cuda("bernoulli_flip_backward", x, logits, weight, z, grad_out, grad_x, grad_logits,
              grad_weight)  # fmt: skip
