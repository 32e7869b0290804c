"""Turning torch tensors into the (address, sizes, element strides) the compiled kernels
take. Shared by the ``cpp`` and ``cuda`` backends."""
from __future__ import annotations

import torch

DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def dtype_code(dtype: torch.dtype) -> int:
    return DTYPE_CODES[dtype]


def ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def strides(t: torch.Tensor) -> list[int]:
    return list(t.stride())


def cpu_threads() -> int:
    return torch.get_num_threads()


def cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
