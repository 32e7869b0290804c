"""Mixture-of-logistics CDF coupling kernels (:mod:`dqkernels.ops.mixlogcdf_coupling`):
``cpp`` and ``cuda`` share csrc/coupling through :mod:`dqkernels.kernels._coupling_c`."""

from dqkernels.kernels.registry import (
    FLOATS,
    FLOATS_BELOW_64,
    cpp_kernels,
    cuda_kernels,
    torch_kernels,
    triton_kernels,
)

#: what every backend module of the family provides
INTERFACE = ("forward", "inverse", "backward")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = (
    torch_kernels(FLOATS),
    cpp_kernels(FLOATS),
    cuda_kernels(FLOATS),
    triton_kernels(FLOATS_BELOW_64),
)
