"""dmol kernels: the discretized logistic mixture NLL and sampling (:mod:`dqkernels.ops.dmol`).

Each backend module has the functions of ``INTERFACE`` (docs/INTERNALS.md, "Backend kernel
interface"); ``cpp`` also has ``nll_forward_backward`` (see
``ops.dmol.FUSED_BACKWARD_BACKENDS``)."""

from dqkernels.kernels.registry import every_backend

#: what every backend module of the family provides
INTERFACE = ("nll_forward", "nll_backward", "sample")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = every_backend()  # torch, cpp, cuda: FLOATS; triton: FLOATS_BELOW_64
