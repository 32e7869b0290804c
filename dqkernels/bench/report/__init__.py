"""The writers of a result document: JSON (:mod:`.jsonio`, with the reader), markdown
(:mod:`.markdown`) and PNG (:mod:`.plot`); :func:`write_outputs` writes all three."""

from __future__ import annotations

import json
import os
import sys

from dqkernels._atomic import atomic_write, remove_temp_files
from dqkernels.bench.records import short_error
from dqkernels.bench.report.jsonio import read_result, upgrade, write_json
from dqkernels.bench.report.markdown import markdown_table
from dqkernels.bench.report.plot import plot_results

__all__ = [
    "ShrinkingResult",
    "markdown_table",
    "plot_results",
    "read_result",
    "records_held",
    "result_path",
    "upgrade",
    "write_json",
    "write_outputs",
]


class ShrinkingResult(Exception):
    """Writing a result would replace a file holding more records (``--replace`` allows
    it)."""


def result_path(out_dir: str, slug: str, op: str) -> str:
    """Where the result JSON of ``op`` on the device ``slug`` goes."""
    return os.path.join(out_dir, slug, op + ".json")


def records_held(path: str) -> list[dict]:
    """The records of the result JSON at ``path``; none when it is missing or unreadable
    (an unreadable file holds nothing to keep)."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return []
    records = doc.get("records") if isinstance(doc, dict) else None
    return records if isinstance(records, list) else []


def write_outputs(result: dict, out_dir: str, replace: bool = False) -> dict[str, str | None]:
    """Write ``<out>/<slug>/<op>.json``, ``.md`` and ``.png``, each atomically; returns
    their paths (the PNG's is None with a warning if matplotlib is missing or fails).
    Raises :class:`ShrinkingResult` (writing nothing) when the JSON there holds more
    records than ``result``, unless ``replace``. Leftover temporary files of killed
    writers are removed first."""
    path = result_path(out_dir, result["environment"]["device_slug"], result["op"])
    folder, stem = os.path.dirname(path), path[: -len(".json")]
    held = len(records_held(path))
    if not replace and len(result["records"]) < held:
        raise ShrinkingResult(
            f"not replacing {path} ({held} records) with {len(result['records'])} records; "
            "pass --replace to replace it, or another --out"
        )
    os.makedirs(folder, exist_ok=True)
    remove_temp_files(folder)
    paths: dict[str, str | None] = {"json": path, "md": stem + ".md", "png": stem + ".png"}
    write_json(result, path)
    atomic_write(stem + ".md", lambda f: f.write(markdown_table(result)), binary=False)
    try:
        atomic_write(stem + ".png", lambda f: plot_results(result, f))
    except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose results
        print(f"[dqk bench] plot not written: {short_error(exc)}", file=sys.stderr)
        paths["png"] = None
    return paths
