"""Loads the compiled extension ``dqkernels._C``, remembering why it is missing."""

from __future__ import annotations

import importlib

_C = None
LOAD_ERROR: str | None = None

try:  # pragma: no cover - depends on how the package was built
    _C = importlib.import_module("dqkernels._C")
except ImportError as exc:  # not built (no compiler, DQK_BUILD_EXT=0) or broken
    LOAD_ERROR = f"dqkernels._C could not be imported ({exc})"


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and bool(_C.built_with_cuda())


def build_info() -> dict:
    """What the compiled module says about itself (empty if it is not built)."""
    if _C is None:
        return {}
    return dict(_C.build_info())
