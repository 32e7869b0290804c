#!/usr/bin/env python
"""Run the benchmark sweep: the same entry point as ``dqk bench`` (same arguments).

    python benchmarks/run.py --device cuda            # full sweep
    python benchmarks/run.py --device cpu --quick     # smoke run

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

if __name__ == "__main__":
    sys.exit(main())
