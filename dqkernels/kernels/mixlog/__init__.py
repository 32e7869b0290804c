"""Mixture-of-logistics CDF coupling kernels (:mod:`dqkernels.ops.mixlogcdf_coupling`):
``cpp`` and ``cuda`` share csrc/coupling through :mod:`dqkernels.kernels._coupling_c`."""

from dqkernels.kernels.registry import every_backend

#: what every backend module of the family provides
INTERFACE = ("forward", "inverse", "backward")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = every_backend()  # torch, cpp, cuda: FLOATS; triton: FLOATS_BELOW_64
