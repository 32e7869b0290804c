"""A run's metrics files: ``metrics.jsonl`` (one JSON object per epoch) and
``learning_curve.png``."""

from __future__ import annotations

import json
import os

from dqkernels._atomic import atomic_write
from dqkernels.trainer.task import Units

__all__ = ["MetricsLog"]


class MetricsLog:
    """``<out>/metrics.jsonl``: one record per finished epoch, in order; kept consistent
    with the run's history across resumes (see :meth:`trim`)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.curve_path = os.path.join(out_dir, "learning_curve.png")

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def trim(self, history: list[dict], epochs: int) -> None:
        """On resume: keep the records of the ``epochs`` epochs the checkpoint has completed
        (a later epoch's record came from the part of the run that is being redone). If the
        file is missing or was edited, the checkpoint's own ``history`` is written."""
        kept = []
        if os.path.isfile(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if (
                        isinstance(rec, dict)
                        and isinstance(rec.get("epoch"), int)
                        and rec["epoch"] <= epochs
                    ):
                        kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(history):
            kept = [json.dumps(r) + "\n" for r in history]
        atomic_write(self.path, lambda f: f.writelines(kept), binary=False)

    def plot(self, history: list[dict], units: Units, title: str) -> None:
        """The learning curve: train and test ``units`` against the epoch."""
        from dqkernels.plots import save_learning_curve

        save_learning_curve(
            history,
            self.curve_path,
            title,
            units.baseline,
            key=units.key,
            label=units.label,
            baseline_label=units.baseline_label,
        )
