"""The ``cpp`` backend of ``bernoulli_flip_loglik``: csrc/bernoulli_flip through
dqkernels._C (inputs of any strides and dtype are packed by the kernel itself)."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cpu

__all__ = ["backward", "forward"]


def forward(x, logits, weight, z, out):
    call_cpu("bernoulli_flip_forward", x, logits, weight, z, out)


def backward(x, logits, weight, z, grad_out, grad_x, grad_logits, grad_weight):
    call_cpu("bernoulli_flip_backward", x, logits, weight, z, grad_out, grad_x, grad_logits,
             grad_weight)  # fmt: skip
