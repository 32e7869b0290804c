"""The ``cpp`` backend of the masked linear layer: csrc/masked through dqkernels._C.

The kernels take int64 degrees; int32 ones are converted here (a copy of two short
vectors), as in the ``cuda`` backend.
"""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import call_cpu

__all__ = ["backward", "cpu_isa", "forward"]

# Tests set this to force one CPU GEMM path (1 generic, 2 AVX2, 3 AVX-512, 4 AVX-512 with
# bf16 inputs multiplied as bf16 pairs by vdpbf16ps; 0 = the best this CPU runs).
cpu_isa = 0


def supported_isas() -> list[int]:
    """The CPU GEMM paths that run on this machine."""
    bits = _C.masked_linear_cpu_isas()
    return [i for i in (1, 2, 3, 4) if bits >> i & 1]


def degrees(d: torch.Tensor) -> torch.Tensor:
    """The degrees as the kernels take them: contiguous int64."""
    return d.to(torch.int64).contiguous()


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    degs = (degrees(in_deg), degrees(out_deg))
    call_cpu("masked_linear_forward", x, weight, bias, *degs, y, strict, isa=cpu_isa)


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    degs, grads = (degrees(in_deg), degrees(out_deg)), (grad_x, grad_weight, grad_bias)
    call_cpu("masked_linear_backward", grad_y, x, weight, *degs, *grads, strict, isa=cpu_isa)
