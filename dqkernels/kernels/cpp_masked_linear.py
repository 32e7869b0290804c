"""The ``cpp`` backend of the masked linear layer: csrc/masked through dqkernels._C.

Also the calling convention the ``cuda`` backend shares (:func:`call_forward`,
:func:`call_backward` pick the CPU or CUDA entry point by the tensors' device). The
kernels take int64 degrees; int32 ones are converted here (a copy of two short vectors).
"""
from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, cuda_stream, dtype_code

__all__ = ["backward", "cpu_isa", "forward"]

# Tests set this to force one CPU GEMM path (1 generic, 2 AVX2, 3 AVX-512, 4 AVX-512 with
# bf16 inputs multiplied as bf16 pairs by vdpbf16ps; 0 = the best this CPU runs).
cpu_isa = 0


def supported_isas() -> list[int]:
    """The CPU GEMM paths that run on this machine."""
    bits = _C.masked_linear_cpu_isas()
    return [i for i in (1, 2, 3, 4) if bits >> i & 1]


def _deg(d: torch.Tensor) -> torch.Tensor:
    return d.to(torch.int64).contiguous()


def _addr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _strides(t: torch.Tensor | None) -> list[int]:
    return [0, 0] if t is None else list(t.stride())


def _contiguous_out(t: torch.Tensor | None, name: str) -> None:
    if t is not None and not t.is_contiguous():
        raise ValueError(f"masked_linear kernels: {name} must be contiguous")


def forward(x, weight, bias, in_deg, out_deg, strict, y):
    _contiguous_out(y, "y")
    rows, n_in = x.shape
    n_out = weight.shape[0]
    ideg, odeg = _deg(in_deg), _deg(out_deg)
    args = (dtype_code(x.dtype), [rows, n_in, n_out], bool(strict), ideg.data_ptr(),
            odeg.data_ptr(), x.data_ptr(), list(x.stride()), weight.data_ptr(),
            list(weight.stride()), _addr(bias), 0 if bias is None else bias.stride(0),
            y.data_ptr())
    if x.device.type == "cpu":
        _C.masked_linear_forward_cpu(*args, cpu_threads(), cpu_isa)
    else:
        with torch.cuda.device(x.device):
            _C.masked_linear_forward_cuda(*args, cuda_stream(x.device))


def backward(grad_y, x, weight, in_deg, out_deg, strict, grad_x, grad_weight, grad_bias):
    for t, name in ((grad_x, "grad_x"), (grad_weight, "grad_weight"), (grad_bias, "grad_bias")):
        _contiguous_out(t, name)
    rows, n_in = x.shape
    n_out = weight.shape[0]
    ideg, odeg = _deg(in_deg), _deg(out_deg)
    args = (dtype_code(x.dtype), [rows, n_in, n_out], bool(strict), ideg.data_ptr(),
            odeg.data_ptr(), x.data_ptr(), list(x.stride()), weight.data_ptr(),
            list(weight.stride()), grad_y.data_ptr(), list(grad_y.stride()), _addr(grad_x),
            _addr(grad_weight), _addr(grad_bias))
    if x.device.type == "cpu":
        _C.masked_linear_backward_cpu(*args, cpu_threads(), cpu_isa)
    else:
        with torch.cuda.device(x.device):
            _C.masked_linear_backward_cuda(*args, cuda_stream(x.device))
