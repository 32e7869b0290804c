"""dqkernels: fused Triton and CUDA kernels for generative models of discrete data."""

from dqkernels import backends, ops
from dqkernels.backends import get_backend, set_backend, use_backend

__version__ = "0.1.0"
__all__ = ["backends", "ops", "get_backend", "set_backend", "use_backend", "__version__"]
