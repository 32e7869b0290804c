"""The writers of a result document: JSON (:mod:`.jsonio`, with the reader), markdown
(:mod:`.markdown`) and PNG (:mod:`.plot`); :func:`write_outputs` writes all three."""

from __future__ import annotations

import os
import sys

from dqkernels.bench.records import short_error
from dqkernels.bench.report.jsonio import read_result, upgrade, write_json
from dqkernels.bench.report.markdown import markdown_table
from dqkernels.bench.report.plot import plot_results

__all__ = [
    "markdown_table",
    "plot_results",
    "read_result",
    "upgrade",
    "write_json",
    "write_outputs",
]


def write_outputs(result: dict, out_dir: str) -> dict[str, str | None]:
    """Write ``<out>/<slug>/<op>.json``, ``.md`` and ``.png``; returns their paths (the
    PNG's is None with a warning if matplotlib is missing or fails)."""
    slug = result["environment"]["device_slug"]
    folder = os.path.join(out_dir, slug)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, result["op"])
    paths: dict[str, str | None] = {
        "json": stem + ".json",
        "md": stem + ".md",
        "png": stem + ".png",
    }
    write_json(result, stem + ".json")
    with open(stem + ".md", "w") as f:
        f.write(markdown_table(result))
    try:
        plot_results(result, stem + ".png")
    except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose results
        print(f"[dqk bench] plot not written: {short_error(exc)}", file=sys.stderr)
        paths["png"] = None
    return paths
