"""The ops' benchmark case modules, one per op: ``cases/<op>.py`` defines a
:class:`~dqkernels.bench.spec.BenchOp` and exposes it as ``OP``. A module found here is an
op of ``dqk bench`` under its module name (modules starting with ``_`` are helpers)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dqkernels.bench.spec import BenchOp


def op_names() -> list[str]:
    """Every op's name, sorted (found without importing the modules)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_op(name: str) -> "BenchOp":
    if name not in op_names():
        raise ValueError(f"unknown op {name!r}; known: {', '.join(op_names())}")
    op = importlib.import_module(f"{__name__}.{name}").OP
    if op.name != name:
        raise ValueError(f"{__name__}.{name}.OP is named {op.name!r}")
    return op
