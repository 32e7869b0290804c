"""The ``cpp`` backend of the mixture-of-logistics CDF coupling: csrc/coupling through
dqkernels._C (the inverse's root search runs inside one kernel call)."""

from dqkernels.kernels._coupling_c import mix_backward as backward
from dqkernels.kernels._coupling_c import mix_forward


def forward(x, logits, means, log_scales, a, b, y, logdet):
    mix_forward(x, logits, means, log_scales, a, b, y, logdet)


def inverse(y, logits, means, log_scales, a, b, x, logdet):
    mix_forward(y, logits, means, log_scales, a, b, x, logdet, inverse=True)


__all__ = ["forward", "inverse", "backward"]
