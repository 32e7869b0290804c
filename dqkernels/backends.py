"""Backend registry and selection.

Backends: ``torch`` (the readable reference, any device, float64 capable), ``cpp``
(compiled kernels on CPU), ``cuda`` (compiled kernels on NVIDIA GPUs), ``triton`` (GPU; on
CPU only under ``TRITON_INTERPRET=1``, for tests). ``auto`` picks the fastest one that
can run on the tensors at hand.

The backend used by an op is, in order of precedence: the op's ``backend=`` argument,
the innermost :func:`use_backend` context, :func:`set_backend`, the environment variable
``DQK_BACKEND``, and finally ``auto``.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import os

import torch

from dqkernels import _ext

BACKENDS = ("torch", "cpp", "cuda", "triton")
CHOICES = BACKENDS + ("auto",)

# What ``auto`` tries, fastest first, by device type. The triton interpreter is a test
# tool, never an automatic choice.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}

_HALF = (torch.float16, torch.bfloat16, torch.float32)
# dtypes each backend's kernels are compiled or written for
DTYPES = {
    "torch": _HALF + (torch.float64,),
    "cpp": _HALF + (torch.float64,),
    "cuda": _HALF + (torch.float64,),
    "triton": _HALF,
}


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run; the message lists every backend and why."""


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(CHOICES)}; got {name!r}")
    return name


_global_default: str | None = None
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("dqk_backend", default=None)


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` goes back to ``DQK_BACKEND``/auto)."""
    global _global_default
    _global_default = None if name is None else _check_name(name, "backend")


def get_backend() -> str:
    """The backend name in force here (before ``auto`` is resolved)."""
    ctx = _context.get()
    if ctx is not None:
        return ctx
    if _global_default is not None:
        return _global_default
    env = os.environ.get("DQK_BACKEND")
    if env:
        return _check_name(env, "environment variable DQK_BACKEND")
    return "auto"


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ops inside use ``name`` unless a call says otherwise."""
    token = _context.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _context.reset(token)


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def why_unavailable(backend: str, device: torch.device | str, dtype: torch.dtype) -> str | None:
    """``None`` if ``backend`` can run an op on tensors of ``device`` and ``dtype``,
    otherwise the reason, in words."""
    device = torch.device(device)
    if dtype not in DTYPES[backend]:
        names = ", ".join(str(d).replace("torch.", "") for d in DTYPES[backend])
        return f"dtype {str(dtype).replace('torch.', '')} is not supported (it takes {names})"
    if backend == "torch":
        return None
    if backend == "cpp":
        if not _ext.has_cpu_kernels():
            return f"not built: {_ext.LOAD_ERROR}"
        if device.type != "cpu":
            return f"runs on CPU tensors only; these are on {device}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"runs on CUDA tensors only; these are on {device}"
        if not _ext.has_cpu_kernels():
            return f"not built: {_ext.LOAD_ERROR}"
        if not _ext.has_cuda_kernels():
            return ("dqkernels._C was built without CUDA kernels (nvcc was not found, or "
                    "DQK_CUDA=0 at build time)")
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed"
        if device.type == "cuda":
            return None
        if device.type == "cpu":
            if triton_interpreting():
                return None
            return "needs a GPU; on CPU it runs only under TRITON_INTERPRET=1 (for tests)"
        return f"does not run on {device.type} tensors"
    raise ValueError(f"unknown backend {backend!r}")


def available(device: torch.device | str, dtype: torch.dtype) -> list[str]:
    """Every backend that can run on tensors of ``device`` and ``dtype``."""
    return [b for b in BACKENDS if why_unavailable(b, device, dtype) is None]


def _rejections(device, dtype) -> str:
    lines = []
    for b in BACKENDS:
        why = why_unavailable(b, device, dtype)
        lines.append(f"  {b}: {why if why else 'available'}")
    return "\n".join(lines)


def resolve(op: str, device: torch.device, dtype: torch.dtype, backend: str | None = None) -> str:
    """Turn a requested backend (or the one in force) into one that can run, or raise
    :class:`BackendUnavailableError` explaining every backend."""
    name = get_backend() if backend is None else _check_name(backend, "backend")
    device = torch.device(device)
    if name == "auto":
        for b in AUTO_ORDER.get(device.type, ("torch",)):
            if why_unavailable(b, device, dtype) is None:
                return b
        raise BackendUnavailableError(
            f"{op}: no backend can run on {device} tensors of dtype {dtype}:\n"
            + _rejections(device, dtype))
    why = why_unavailable(name, device, dtype)
    if why is not None:
        raise BackendUnavailableError(
            f"{op}: backend {name!r} cannot run on {device} tensors of dtype "
            f"{str(dtype).replace('torch.', '')}: {why}.\nAll backends here:\n"
            + _rejections(device, dtype))
    return name
