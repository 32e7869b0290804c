"""The result document as JSON: :func:`write_json` and :func:`read_result`, which also
takes the documents of older versions of the harness (every schema version up to
:data:`~dqkernels.bench.records.SCHEMA_VERSION`)."""

from __future__ import annotations

import json
import math
from typing import Any

from dqkernels._atomic import atomic_write
from dqkernels.bench.records import RECORD_KEYS, SCHEMA_VERSION


def write_json(result: dict, path: str) -> None:
    """Write ``result`` (atomically); non-finite floats become ``"inf"`` / ``"-inf"`` /
    null."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    def write(f) -> None:
        json.dump(clean(result), f, indent=1)
        f.write("\n")

    atomic_write(path, write, binary=False)


def read_result(path: str) -> dict:
    """A result JSON as the writers expect it (see :func:`upgrade`)."""
    with open(path) as f:
        return upgrade(json.load(f))


def upgrade(result: dict[str, Any]) -> dict[str, Any]:
    """Fill in what older documents lack, in place: ``mode`` (from ``forward_only``;
    neither: forward+backward) and every record key (None). A newer schema is refused."""
    version = result.get("schema", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(
            f"benchmark result schema {version!r} is newer than this reader "
            f"(up to {SCHEMA_VERSION})"
        )
    if "mode" not in result:
        result["mode"] = "forward" if result.get("forward_only") else "forward+backward"
    result.setdefault("forward_only", result["mode"] in ("forward", "state-update"))
    for r in result.get("records", []):
        for k in RECORD_KEYS:
            r.setdefault(k, None)
    return result
