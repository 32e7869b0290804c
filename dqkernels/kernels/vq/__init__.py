"""Vector-quantisation kernels (:mod:`dqkernels.ops.vq`, whose docstring gives the
interface)."""

from dqkernels.kernels.registry import every_backend

#: what every backend module of the family provides
INTERFACE = ("nearest", "sample", "ema_update")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = every_backend()  # torch, cpp, cuda: FLOATS; triton: FLOATS_BELOW_64
