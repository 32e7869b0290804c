"""Checkpoint files: ``<out>/checkpoint-<step>.pt``, written atomically, the newest
:data:`KEEP_CHECKPOINTS` kept, read back without running code."""

from __future__ import annotations

import os
import re

import torch

from dqkernels._atomic import atomic_write

__all__ = [
    "KEEP_CHECKPOINTS",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_atomic",
    "write_checkpoint",
]

KEEP_CHECKPOINTS = 2
_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file in ``path``'s directory, then ``os.replace``:
    a reader never sees a half-written file, and a crash leaves the old one intact (its
    temporary file is removed by the next run into the folder)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def checkpoint_path(out_dir: str, step: int) -> str:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"a checkpoint's step must be an int >= 0; got {step!r}")
    return os.path.join(out_dir, f"checkpoint-{step}.pt")


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>.pt`` in ``out_dir``, oldest first."""
    try:
        names = os.listdir(out_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(out_dir, n)) for n in names if (m := _CKPT_RE.match(n))]
    return sorted(found)


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint with the highest step in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str) -> dict:
    """A trainer checkpoint, loaded on the CPU with ``weights_only=True`` (no code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_checkpoint(out_dir: str, step: int, payload: dict, keep: int = KEEP_CHECKPOINTS) -> str:
    """Write ``payload`` as ``checkpoint-<step>.pt`` atomically, then delete the older
    checkpoints (lower steps) but the newest ``keep - 1``; returns its path. The file
    just written is never deleted, nor are checkpoints of higher steps (a later point of
    the run, when it was resumed from an earlier checkpoint): the run folder holds this
    run's checkpoints only (see :mod:`dqkernels.trainer.rundir`)."""
    path = checkpoint_path(out_dir, step)
    save_atomic(payload, path)
    older = [p for s, p in list_checkpoints(out_dir) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    return path
