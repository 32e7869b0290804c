"""The ``cpp`` backend of the affine coupling: csrc/coupling through dqkernels._C."""

from dqkernels.kernels._coupling_c import affine_backward as backward
from dqkernels.kernels._coupling_c import affine_forward as forward

__all__ = ["forward", "backward"]
