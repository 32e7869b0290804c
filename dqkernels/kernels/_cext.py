"""The one form in which tensors reach ``dqkernels._C``, and the launch arguments of its
entry points. Shared by the ``cpp`` and ``cuda`` backends of every op family.

Every binding takes each tensor as :func:`tensor_arg` makes it: the tuple ``(data address,
dtype code, device, sizes, element strides, tensor)`` (device: -1 for CPU, the CUDA device
index, -2 elsewhere; dtype codes from ``dqkernels._C.dtype_codes()``, -1 for a dtype the
kernels do not take; the tensor itself last, so that a temporary such as
``tensor_arg(t.contiguous())`` lives as long as the call), or None for an absent tensor.
The binding (python/binding.h) checks the tensors against each other and fills the
kernel's arguments from their own sizes. :func:`call_cpu` and :func:`call_cuda` make the
call of a ``cpp`` or ``cuda`` backend: ``_C.<entry>_cpu(args..., threads)`` and
``_C.<entry>_cuda(args..., stream)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dqkernels._ext import _C

#: torch dtype -> the code csrc/common/dtype.h gives it
DTYPE_CODES: dict[torch.dtype, int] = (
    {} if _C is None else {getattr(torch, name): code for name, code in _C.dtype_codes().items()}
)

TensorArg = tuple  # (int, int, int, tuple[int, ...], tuple[int, ...], torch.Tensor)


def _arg(t: torch.Tensor, sizes: tuple, strides: tuple) -> TensorArg:
    return (
        t.data_ptr(),
        DTYPE_CODES.get(t.dtype, -1),
        -1 if t.is_cpu else (t.get_device() if t.is_cuda else -2),
        sizes,
        strides,
        t,
    )


def tensor_arg(t: torch.Tensor | None) -> TensorArg | None:
    """``t`` as the bindings take it (None stays None)."""
    return None if t is None else _arg(t, t.shape, t.stride())


def strided_arg(t: torch.Tensor, sizes: Sequence[int], strides: Sequence[int]) -> TensorArg:
    """``t``'s memory seen with other ``sizes`` and element ``strides`` (a view, without
    making one): how the coupling kernels receive their merged layouts."""
    return _arg(t, tuple(sizes), tuple(strides))


def cpu_threads() -> int:
    return torch.get_num_threads()


def cuda_stream(device: torch.device) -> int:
    """The handle of torch's current stream on ``device``."""
    return torch.cuda.current_stream(device).cuda_stream


def c_args(args: Sequence) -> tuple:
    """``args`` with each tensor as :func:`tensor_arg` makes it (other values unchanged)."""
    return tuple(tensor_arg(a) if isinstance(a, torch.Tensor) else a for a in args)


def call_cpu(entry: str, *args, isa: int | None = None) -> None:
    """``_C.<entry>_cpu(*args, cpu_threads()[, isa])``, tensors passed as :func:`tensor_arg`
    (``isa``: the instruction-set path of the entry points that take one)."""
    tail = () if isa is None else (isa,)
    getattr(_C, entry + "_cpu")(*c_args(args), cpu_threads(), *tail)


def call_cuda(entry: str, *args) -> None:
    """``_C.<entry>_cuda(*args, stream)``, tensors passed as :func:`tensor_arg`, on the
    device of the first tensor in ``args`` (the binding checks that all are on it) and
    its current stream."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with torch.cuda.device(device):
        getattr(_C, entry + "_cuda")(*c_args(args), cuda_stream(device))
