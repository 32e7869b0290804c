#!/usr/bin/env python
"""Run the benchmark sweep: the same entry point as ``dqk bench`` (same arguments).

    python benchmarks/run.py --device cuda            # full sweep
    python benchmarks/run.py --device cpu --quick     # smoke run
    python benchmarks/run.py --device cpu --ops vq_nearest --dtypes fp32 \\
        --cases 'n65536-d64-*'                        # some shapes of one op
    python benchmarks/run.py --list --select 'vq_*/n65536-d64-*'   # what that would run

``--cases`` takes comma-separated fnmatch patterns on the case names (the ``case``
column of the results), ``--select`` patterns on ``op/case`` names; ``DQK_BENCH_CASES``
stands for ``--cases`` when the flag is not given.

Works from a source checkout without installing (the repository root is put on the
path when ``dqkernels`` is not importable).
"""

from __future__ import annotations

import os
import sys

try:
    import dqkernels  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dqkernels.bench import main  # noqa: E402


def run(argv: list[str] | None = None) -> int:
    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
