"""Loads the compiled extension ``dqkernels._C``, remembering why it is missing.

``DQK_EXT_PATH=<file>`` loads the module from that file instead of the package's own
``_C`` (how `.ci/asan` runs the tests against a sanitizer build of it). A file given
that way must load: an error there is raised, never taken for "not built".
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

_C = None
LOAD_ERROR: str | None = None


def _load_from(path: str) -> ModuleType:
    """The module ``dqkernels._C`` from the extension file ``path``."""
    spec = importlib.util.spec_from_file_location("dqkernels._C", path)
    if spec is None or spec.loader is None or not os.path.isfile(path):
        raise ImportError(f"DQK_EXT_PATH={path!r}: not an extension module file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dqkernels._C"] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        del sys.modules["dqkernels._C"]
        raise ImportError(f"DQK_EXT_PATH={path!r}: {exc}") from exc
    return module


if os.environ.get("DQK_EXT_PATH"):
    _C = _load_from(os.environ["DQK_EXT_PATH"])
else:
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
