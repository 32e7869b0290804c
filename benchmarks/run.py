#!/usr/bin/env python
"""Run the benchmark sweep: the same entry point as ``dqk bench`` (same arguments), plus
``--cases`` to pick shape cases by name.

    python benchmarks/run.py --device cuda            # full sweep
    python benchmarks/run.py --device cpu --quick     # smoke run
    python benchmarks/run.py --device cpu --ops vq_nearest --dtypes fp32 \\
        --cases 'n65536-d64-*'                        # some shapes of one op

``--cases`` takes comma-separated fnmatch patterns on the case names (the ``case``
column of the results); it sets ``DQK_BENCH_CASES``, which the harness reads, so the
same selection works for ``dqk bench`` through that variable.

Works from a source checkout without installing (the repository root is put on the
path when ``dqkernels`` is not importable).
"""
from __future__ import annotations

import argparse
import os
import sys

try:
    import dqkernels  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dqkernels.bench import main  # noqa: E402


def run(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--cases", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.cases is not None:
        os.environ["DQK_BENCH_CASES"] = known.cases
    return main(rest)


if __name__ == "__main__":
    sys.exit(run())
