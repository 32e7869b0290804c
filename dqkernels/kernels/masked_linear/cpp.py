"""The ``cpp`` backend of the masked linear layer: csrc/masked through dqkernels._C.

The kernels take int64 degrees; int32 ones are converted here (a copy of two short
vectors), as in the ``cuda`` backend.
"""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, tensor_arg

__all__ = ["backward", "cpu_isa", "forward"]

# Tests set this to force one CPU GEMM path (1 generic, 2 AVX2, 3 AVX-512, 4 AVX-512 with
# bf16 inputs multiplied as bf16 pairs by vdpbf16ps; 0 = the best this CPU runs).
cpu_isa = 0


def supported_isas() -> list[int]:
    """The CPU GEMM paths that run on this machine."""
    bits = _C.masked_linear_cpu_isas()
    return [i for i in (1, 2, 3, 4) if bits >> i & 1]


def degrees(d: torch.Tensor):
    """The degrees as the kernels take them: contiguous int64."""
    return tensor_arg(d.to(torch.int64).contiguous())


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    _C.masked_linear_forward_cpu(
        tensor_arg(x),
        tensor_arg(weight),
        tensor_arg(bias),
        degrees(in_deg),
        degrees(out_deg),
        tensor_arg(y),
        strict,
        cpu_threads(),
        cpu_isa,
    )


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    _C.masked_linear_backward_cpu(
        tensor_arg(grad_y),
        tensor_arg(x),
        tensor_arg(weight),
        degrees(in_deg),
        degrees(out_deg),
        tensor_arg(grad_x),
        tensor_arg(grad_weight),
        tensor_arg(grad_bias),
        strict,
        cpu_threads(),
        cpu_isa,
    )
