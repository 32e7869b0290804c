"""Vector-quantisation kernels (:mod:`dqkernels.ops.vq`, whose docstring gives the
interface)."""

from dqkernels.kernels.registry import (
    FLOATS,
    FLOATS_BELOW_64,
    cpp_kernels,
    cuda_kernels,
    torch_kernels,
    triton_kernels,
)

#: what every backend module of the family provides
INTERFACE = ("nearest", "sample", "ema_update")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = (
    torch_kernels(FLOATS),
    cpp_kernels(FLOATS),
    cuda_kernels(FLOATS),
    triton_kernels(FLOATS_BELOW_64),
)
