"""Which cases a sweep runs: one :class:`Selection`, which every way of choosing feeds.

A selection is a list of fnmatch patterns over ``op/case`` names (``vq_*/n65536-d64-*``;
an ``op`` pattern alone means all its cases), the tier (the tiny ``--quick`` cases, or the
others) and, as filters of the rows, the dtypes and dqkernels backends. ``dqk bench
--select`` gives the patterns directly; ``--ops A,B`` and ``--cases P,Q`` (or
``$DQK_BENCH_CASES`` when ``--cases`` is not given) are shorthands for their product
``A/P, A/Q, B/P, B/Q``. A case that names a device runs only on that device.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch

from dqkernels.bench.spec import BenchOp, Case

#: environment variable read for ``--cases`` when the flag is not given
CASES_ENV = "DQK_BENCH_CASES"


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@dataclass
class Selection:
    patterns: list[str] = field(default_factory=lambda: ["*"])  # over "op/case"
    quick: bool = False  # the --quick tier
    dtypes: list[torch.dtype] = field(default_factory=lambda: [torch.float32, torch.bfloat16])
    backends: list[str] | None = None  # None: every available one

    @classmethod
    def from_flags(
        cls,
        ops: list[str] | None = None,
        cases: list[str] | None = None,
        select: list[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **filters,
    ) -> "Selection":
        """The selection of ``--select`` or of ``--ops`` x ``--cases`` (``cases`` None:
        ``$DQK_BENCH_CASES``, comma-separated, when set); ``filters``: the other fields."""
        if select:
            if ops or cases:
                raise ValueError("--select replaces --ops and --cases; give one or the other")
            return cls(patterns=list(select), **filters)
        if cases is None:
            env = os.environ if environ is None else environ
            cases = _csv(env.get(CASES_ENV)) or None
        patterns = [f"{o}/{c}" for o in (ops or ["*"]) for c in (cases or ["*"])]
        return cls(patterns=patterns, **filters)

    def _parts(self) -> list[tuple[str, str]]:
        """(op pattern, case pattern) of each pattern."""
        out = []
        for p in self.patterns:
            op, _, case = p.partition("/")
            out.append((op, case or "*"))
        return out

    def op_names(self, known: list[str]) -> list[str]:
        """The ops of ``known`` that some pattern names, in the patterns' order."""
        out: list[str] = []
        for op_pattern, _ in self._parts():
            out += [n for n in known if fnmatch.fnmatchcase(n, op_pattern) and n not in out]
        return out

    def tier(self, op: BenchOp, device_type: str) -> list[Case]:
        """The op's cases of this tier on this device, before the patterns."""
        return [c for c in op.cases() if c.quick == self.quick and c.device in (None, device_type)]

    def cases(self, op: BenchOp, device_type: str) -> list[Case]:
        """The op's cases that this selection runs on ``device_type``, in the op's order."""
        parts = [c for o, c in self._parts() if fnmatch.fnmatchcase(op.name, o)]
        return [
            c
            for c in self.tier(op, device_type)
            if any(fnmatch.fnmatchcase(c.name, p) for p in parts)
        ]

    def case_patterns(self) -> list[str] | None:
        """The case-name parts of the patterns (None: every case), as the results'
        ``settings.cases`` has recorded them since before ``op/case`` patterns."""
        out: list[str] = []
        for _, c in self._parts():
            if c not in out:
                out.append(c)
        return None if out == ["*"] else out
