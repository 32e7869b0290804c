"""PixelCNN masked convolution kernels (:mod:`dqkernels.ops.masked_conv2d`;
docs/INTERNALS.md, "Masked conv2d")."""

from dqkernels.kernels.registry import every_backend

#: what every backend module of the family provides
INTERFACE = ("forward", "backward")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = every_backend()  # torch, cpp, cuda: FLOATS; triton: FLOATS_BELOW_64
