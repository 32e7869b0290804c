"""Backend selection.

Backends: ``torch`` (the readable reference, any device, float64 capable), ``cpp``
(compiled kernels on CPU), ``cuda`` (compiled kernels on NVIDIA GPUs), ``triton`` (GPU; on
CPU only under ``TRITON_INTERPRET=1``, for tests). ``auto`` picks the fastest one that
can run on the tensors at hand.

What a backend can run is declared per op family beside its kernels
(:mod:`dqkernels.kernels.registry`; e.g. ``dqkernels/kernels/dmol/__init__.py``): devices,
dtypes and what else it needs. Every function here reads those declarations; given a
``family`` it answers for that op family (a family without, say, triton kernels has no
triton backend), without one for "any family".

The backend used by an op is, in order of precedence: the op's ``backend=`` argument,
the innermost :func:`use_backend` context, :func:`set_backend`, the environment variable
``DQK_BACKEND``, and finally ``auto``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from dqkernels.kernels import registry
from dqkernels.kernels.registry import BACKENDS, triton_installed, triton_interpreting

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "CHOICES",
    "BackendUnavailableError",
    "available",
    "environment_backend",
    "get_backend",
    "resolve",
    "set_backend",
    "triton_installed",
    "triton_interpreting",
    "use_backend",
    "why_unavailable",
]

CHOICES = BACKENDS + ("auto",)

# What ``auto`` tries, fastest first, by device type (backends a family does not declare
# are skipped). The triton interpreter is a test tool, never an automatic choice.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}


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
    return environment_backend() or "auto"


def environment_backend() -> str | None:
    """The backend named by the environment variable ``DQK_BACKEND`` (None when unset or
    empty); a ValueError naming the variable when it names none."""
    env = os.environ.get("DQK_BACKEND")
    return _check_name(env, "environment variable DQK_BACKEND") if env else None


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ops inside use ``name`` unless a call says otherwise."""
    token = _context.set(_check_name(name, "backend"))
    try:
        yield
    finally:
        _context.reset(token)


def _why(backend: str, device: torch.device, dtype: torch.dtype, family: str) -> str | None:
    kernels = registry.declared(family).get(backend)
    if kernels is None:
        return f"no {backend} kernels for {family}"
    return kernels.why_not(device, dtype)


def _why_any_family(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    reasons: dict[str, list[str]] = {}  # reason -> families
    for family, decls in registry.families().items():
        kernels = decls.get(backend)
        if kernels is None:
            continue
        why = kernels.why_not(device, dtype)
        if why is None:
            return None
        reasons.setdefault(why, []).append(family)
    if not reasons:
        return f"no {backend} kernels for any op family"
    if len(reasons) == 1:
        return next(iter(reasons))
    return "; ".join(f"{', '.join(fams)}: {why}" for why, fams in reasons.items())


def why_unavailable(
    backend: str, device: torch.device | str, dtype: torch.dtype, family: str | None = None
) -> str | None:
    """``None`` if ``backend`` can run op ``family``'s kernels (``None``: those of some op
    family) on tensors of ``device`` and ``dtype``, otherwise the reason, in words."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    device = torch.device(device)
    if family is None:
        return _why_any_family(backend, device, dtype)
    return _why(backend, device, dtype, family)


def available(
    device: torch.device | str, dtype: torch.dtype, family: str | None = None
) -> list[str]:
    """Every backend that can run on tensors of ``device`` and ``dtype`` (op ``family``'s
    kernels; ``None``: those of some op family)."""
    return [b for b in BACKENDS if why_unavailable(b, device, dtype, family) is None]


def _rejections(device: torch.device, dtype: torch.dtype, family: str | None) -> str:
    lines = []
    for b in BACKENDS:
        why = why_unavailable(b, device, dtype, family)
        lines.append(f"  {b}: {why if why else 'available'}")
    return "\n".join(lines)


def resolve(
    op: str,
    device: torch.device | str,
    dtype: torch.dtype,
    backend: str | None = None,
    family: str | None = None,
) -> str:
    """Turn a requested backend (or the one in force) into one that can run op ``family``'s
    kernels (``None``: those of some op family) on tensors of ``device`` and ``dtype``, or
    raise :class:`BackendUnavailableError` explaining every backend. ``op`` names the
    caller in messages."""
    name = get_backend() if backend is None else _check_name(backend, "backend")
    device = torch.device(device)
    if name == "auto":
        for b in AUTO_ORDER.get(device.type, ("torch",)):
            if family is None:
                if _why_any_family(b, device, dtype) is None:
                    return b
            elif b in registry.declared(family) and _why(b, device, dtype, family) is None:
                return b
        raise BackendUnavailableError(
            f"{op}: no backend can run on {device} tensors of dtype {dtype}:\n"
            + _rejections(device, dtype, family)
        )
    why = (
        _why_any_family(name, device, dtype)
        if family is None
        else _why(name, device, dtype, family)
    )
    if why is not None:
        raise BackendUnavailableError(
            f"{op}: backend {name!r} cannot run on {device} tensors of dtype "
            f"{str(dtype).replace('torch.', '')}: {why}.\nAll backends here:\n"
            + _rejections(device, dtype, family)
        )
    return name
