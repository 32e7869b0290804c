"""The ``cuda`` backend of the masked linear layer: csrc/masked through dqkernels._C
(same calling convention as the ``cpp`` backend, which dispatches by device)."""
from dqkernels.kernels.cpp_masked_linear import backward, forward

__all__ = ["backward", "forward"]
