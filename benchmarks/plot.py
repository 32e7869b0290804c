#!/usr/bin/env python
"""Redraw the speedup chart of a benchmark results JSON.

    python benchmarks/plot.py benchmarks/results/nvidia-h100-80gb-hbm3/dmol.json
    python benchmarks/plot.py results.json -o speedup.png

Writes next to the JSON (same name, .png) unless ``-o`` is given. ``--md`` also rewrites
the markdown table from the JSON. Takes the JSON of every schema version up to the
current one (``dqkernels.bench.report.read_result``).
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import dqkernels  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dqkernels.bench.report import markdown_table, plot_results, read_result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", help="a results JSON written by dqk bench")
    parser.add_argument("-o", "--out", default=None, help="PNG path (default: beside the JSON)")
    parser.add_argument("--md", action="store_true", help="also rewrite the markdown table")
    args = parser.parse_args(argv)
    result = read_result(args.json)
    stem = os.path.splitext(args.json)[0]
    out = args.out or stem + ".png"
    plot_results(result, out)
    print(f"wrote {out}")
    if args.md:
        with open(stem + ".md", "w") as f:
            f.write(markdown_table(result))
        print(f"wrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
