"""The ``dqk`` command: ``dqk info``, ``dqk bench``, ``dqk train``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when used, so ``dqk info`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "info": ("dqkernels.info", "versions, what was built, which backends run here and why not"),
    "bench": ("dqkernels.bench", "benchmark ops against eager and torch.compile references"),
    "train": ("dqkernels.train", "train a model (on scikit-learn's digits by default)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dqk", description="dqkernels: fused kernels for generative models of discrete data"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
