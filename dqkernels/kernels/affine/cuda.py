"""The ``cuda`` backend of the affine coupling: the ``cpp`` module's functions, which launch
csrc/coupling's CUDA kernels for CUDA tensors."""

from dqkernels.kernels.affine.cpp import backward, forward

__all__ = ["forward", "backward"]
