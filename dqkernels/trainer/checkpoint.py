"""Checkpoint files: ``<out>/checkpoint-<step>.pt``, written atomically, the newest
:data:`KEEP_CHECKPOINTS` kept, read back without running code and verified.

A file holds ``{"envelope": 1, "sha256": hex, "payload": uint8 tensor}`` (``torch.save``;
loadable with ``torch.load(weights_only=True)``), ``payload`` holding the ``torch.save``
bytes of the checkpoint's dict (a tensor: stored as raw bytes, where a pickled ``bytes``
object grows by half) and ``sha256`` their digest. :func:`read_checkpoint` verifies the digest
and the dict's structure (:func:`check_structure`) and raises :class:`CheckpointError`,
whose message starts with the file's path, for anything else. Files written before the
envelope (a bare dict, checkpoint formats 1 and 2) are still read, reported as unverified.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from typing import Any

import torch

from dqkernels._atomic import atomic_write
from dqkernels.trainer.task import one_line

__all__ = [
    "KEEP_CHECKPOINTS",
    "CheckpointError",
    "check_structure",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint",
    "save_atomic",
    "write_checkpoint",
]

KEEP_CHECKPOINTS = 2
ENVELOPE = 1
_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")

# what a checkpoint's dict holds, and the run state in it ("run"; format 1: the top level)
_TOP_KEYS = {
    "task": str,
    "args": dict,
    "model": dict,
    "optimizer": dict,
    "scheduler": dict,
    "steps_per_epoch": int,
}
_RUN_KEYS = {
    "step": int,
    "epoch": int,
    "batch": int,
    "shuffle_state": torch.Tensor,
    "accumulators": dict,
    "history": list,
    "elapsed_s": (int, float),
    "rng": list,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, failing its checksum, or not
    holding what a checkpoint holds); the message starts with the file's path."""


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


def read_checkpoint(path: str) -> tuple[dict, bool]:
    """``(checkpoint, verified)``: the checkpoint's dict, loaded on the CPU with
    ``weights_only=True`` (no code runs), its digest checked (``verified`` False for a file
    written before checkpoints carried one) and its structure too; else
    :class:`CheckpointError`."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(exc)})") from None
    verified = isinstance(obj, dict) and "payload" in obj
    if verified:
        payload, digest = obj.get("payload"), obj.get("sha256")
        if (
            obj.get("envelope") != ENVELOPE
            or not isinstance(payload, torch.Tensor)
            or payload.dtype != torch.uint8
            or payload.dim() != 1
        ):
            raise CheckpointError(f"{path}: not a checkpoint of this version of dqkernels")
        data = payload.numpy()
        if not isinstance(digest, str) or hashlib.sha256(data).hexdigest() != digest:
            raise CheckpointError(f"{path}: checksum mismatch (the file is damaged)")
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(exc)})") from None
    problem = check_structure(obj)
    if problem:
        raise CheckpointError(f"{path}: not a trainer checkpoint: {problem}")
    return obj, verified


def load_checkpoint(path: str) -> dict:
    """A trainer checkpoint, verified (see :func:`read_checkpoint`)."""
    return read_checkpoint(path)[0]


def check_structure(ckpt: Any) -> str | None:
    """What is wrong with ``ckpt`` as a checkpoint's dict, or None: the entries the trainer
    reads, their types, and a position (step, epoch, batch) that a run can have."""
    if not isinstance(ckpt, dict):
        return f"a {type(ckpt).__name__}, not a dict"
    run = ckpt.get("run", ckpt)  # (format 1: the run state at the top level)
    if not isinstance(run, dict):
        return f"'run' is a {type(run).__name__}, not a dict"
    for where, keys in ((ckpt, _TOP_KEYS), (run, _RUN_KEYS)):
        for key, kind in keys.items():
            if key not in where:
                return f"no {key!r}"
            value = where[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                return f"{key!r} is a {type(value).__name__}"
    spe = ckpt["steps_per_epoch"]
    step, epoch, batch = run["step"], run["epoch"], run["batch"]
    if spe < 1 or step < 0 or epoch < 0 or not 0 <= batch <= spe or step != epoch * spe + batch:
        return (
            f"an impossible position: step {step}, epoch {epoch}, batch {batch} of {spe} per epoch"
        )
    if not all(isinstance(r, dict) for r in run["rng"]) or not run["rng"]:
        return "'rng' is not a list of every process's RNG states"
    return None


def write_checkpoint(out_dir: str, step: int, payload: dict, keep: int = KEEP_CHECKPOINTS) -> str:
    """Write ``payload`` as ``checkpoint-<step>.pt`` atomically (in its checksummed
    envelope), then delete the older
    checkpoints (lower steps) but the newest ``keep - 1``; returns its path. The file
    just written is never deleted, nor are checkpoints of higher steps (a later point of
    the run, when it was resumed from an earlier checkpoint): the run folder holds this
    run's checkpoints only (see :mod:`dqkernels.trainer.rundir`)."""
    path = checkpoint_path(out_dir, step)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getbuffer()
    envelope = {
        "envelope": ENVELOPE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "payload": torch.frombuffer(data, dtype=torch.uint8),
    }
    save_atomic(envelope, path)
    older = [p for s, p in list_checkpoints(out_dir) if s < step]
    for old in older[: max(0, len(older) - (keep - 1))]:
        try:
            os.unlink(old)
        except FileNotFoundError:
            pass
    return path
