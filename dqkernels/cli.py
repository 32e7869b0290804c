"""The ``dqk`` command: ``dqk info``, ``dqk bench``, ``dqk train``, ``dqk sbn-variance``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when used, so ``dqk info`` stays fast.

Every error of the command line is one line naming the argument, exit status 2, no
traceback: the parser's own (:class:`Parser`, with the range-checked types below:
:func:`int_in`, :func:`float_in`, :data:`SEED`), a bad ``DQK_BACKEND``, and the
subcommands' (``dqk train``'s :class:`~dqkernels.trainer.UsageError`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Callable


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``PROG: error: MESSAGE (see PROG
    --help)``), without the usage dump; sub-parsers inherit it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_in(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int within ``[low, high]`` (None: unbounded)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bound = (
                f"in [{low}, {high}]"
                if low is not None and high is not None
                else f">= {low}"
                if low is not None
                else f"<= {high}"
            )
            raise argparse.ArgumentTypeError(f"must be {bound}; got {value}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = True) -> Callable[[str], float]:
    """An argparse type: a finite float in ``(low, high]`` (``[low, high]`` with
    ``low_open=False``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        above = value > low if low_open else value >= low
        if not (math.isfinite(value) and above and value <= high):
            bound = f"{'>' if low_open else '>='} {low:g}" + (
                f" and <= {high:g}" if math.isfinite(high) else ""
            )
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}; got {text}")
        return value

    parse.__name__ = "float"
    return parse


#: ``--seed``: what every generator the runs seed accepts (torch's, numpy's, Python's)
SEED = int_in(0, 2**63 - 1)

SUBCOMMANDS = {
    "info": ("dqkernels.info", "versions, what was built, which backends run here and why not"),
    "bench": ("dqkernels.bench", "benchmark ops against eager and torch.compile references"),
    "train": ("dqkernels.train", "train a model (on scikit-learn's digits by default)"),
    "sbn-variance": (
        "dqkernels.sbn_variance",
        "gradient variance of every sigmoid-belief-network estimator at the same parameters",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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
    if os.environ.get("DQK_BACKEND"):
        from dqkernels import backends

        try:
            backends.environment_backend()
        except ValueError as exc:
            print(f"dqk: error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
