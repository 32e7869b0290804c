"""The ``cuda`` backend of the mixture-of-logistics CDF coupling: the ``cpp`` module's
functions, which launch csrc/coupling's CUDA kernels for CUDA tensors (the inverse's root
search runs inside one kernel call)."""

from dqkernels.kernels.mixlog.cpp import backward, forward, inverse

__all__ = ["forward", "inverse", "backward"]
