"""dmol kernels: the discretized logistic mixture NLL and sampling (:mod:`dqkernels.ops.dmol`).

Each backend module has the functions of ``INTERFACE`` (docs/INTERNALS.md, "Backend kernel
interface"); ``cpp`` also has ``nll_forward_backward`` (see
``ops.dmol.FUSED_BACKWARD_BACKENDS``)."""

from dqkernels.kernels.registry import (
    FLOATS,
    FLOATS_BELOW_64,
    cpp_kernels,
    cuda_kernels,
    torch_kernels,
    triton_kernels,
)

#: what every backend module of the family provides
INTERFACE = ("nll_forward", "nll_backward", "sample")
#: what each backend's kernels run on (dqkernels.kernels.registry)
KERNELS = (
    torch_kernels(FLOATS),
    cpp_kernels(FLOATS),
    cuda_kernels(FLOATS),
    triton_kernels(FLOATS_BELOW_64),
)
