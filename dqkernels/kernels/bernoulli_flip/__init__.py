"""Flipped-bit Bernoulli log-likelihood kernels (:mod:`dqkernels.ops.bernoulli_flip`;
docs/INTERNALS.md, "Bernoulli flips")."""

from dqkernels.kernels.registry import (
    FLOATS,
    FLOATS_BELOW_64,
    cpp_kernels,
    torch_kernels,
    triton_kernels,
)

#: what every backend module of the family provides
INTERFACE = ("forward", "backward")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = (torch_kernels(FLOATS), cpp_kernels(FLOATS), triton_kernels(FLOATS_BELOW_64))
