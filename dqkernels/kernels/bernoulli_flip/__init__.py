"""Flipped-bit Bernoulli log-likelihood kernels (:mod:`dqkernels.ops.bernoulli_flip`;
docs/INTERNALS.md, "Bernoulli flips")."""

from dqkernels.kernels.registry import every_backend

#: what every backend module of the family provides
INTERFACE = ("forward", "backward")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = every_backend()  # torch, cpp, cuda: FLOATS; triton: FLOATS_BELOW_64
