"""The run folder (``--out``) belongs to one run.

* While a run writes there it holds ``<out>/.lock`` (``fcntl.flock``, rank 0 under
  torchrun; the file records the holder's pid): a second run into the same folder is
  refused at once.
* Every run has an identity, a random run id made when a run starts afresh (or branches
  into an empty folder from another folder's checkpoint), kept in every checkpoint and in
  the run record ``<out>/run.json``. A fresh run refuses a folder that holds a run's
  outputs (checkpoints, a non-empty ``metrics.jsonl``) and ``--resume`` refuses one that
  holds another run's, unless ``--overwrite`` (:meth:`Run._resume_checkpoint`
  in :mod:`.loop` applies the rules).
* Holding the lock, a run deletes the temporary files that killed writes left there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time

import torch

from dqkernels._atomic import atomic_write, remove_temp_files
from dqkernels.trainer.checkpoint import list_checkpoints
from dqkernels.trainer.dist import Dist
from dqkernels.trainer.task import UsageError

__all__ = ["LOCK_NAME", "RECORD_NAME", "RunDir", "locked_run_dir", "new_run_id"]

LOCK_NAME = ".lock"
RECORD_NAME = "run.json"
METRICS_NAME = "metrics.jsonl"


def new_run_id() -> str:
    return secrets.token_hex(8)


class RunDir:
    """``--out`` of a run: :meth:`acquire` creates it if needed and takes its lock."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        """Create the folder if needed, lock it (or raise :class:`UsageError` naming the
        holder), then delete leftover temporary files."""
        path = self.path
        if os.path.exists(path) and not os.path.isdir(path):
            raise UsageError(f"--out {path!r} is not a folder")
        if not os.path.isdir(path):
            try:
                os.makedirs(path)
                self._created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise UsageError(f"--out {path!r}: cannot create it ({exc.strerror})") from None
        try:
            fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(f"--out {path!r}: cannot write there ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise UsageError(
                f"--out {path!r} is in use by another run{pid}; wait for it to end, "
                "or choose another --out"
            ) from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        remove_temp_files(path, any_writer=True)

    def release(self) -> None:
        """Unlock; a folder this run created and left empty (it failed before writing
        anything) is removed."""
        if self._fd is None:
            return
        try:
            if self._created and os.listdir(self.path) == [LOCK_NAME]:
                os.unlink(os.path.join(self.path, LOCK_NAME))
                os.rmdir(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    # ------------------------------------------------------------------ what it holds

    def outputs(self) -> tuple[str, str] | None:
        """What of a run's outputs the folder holds and the file that shows it, e.g.
        ``("checkpoints", "checkpoint-6.pt")``, or None when it holds none."""
        found = list_checkpoints(self.path)
        if found:
            return "checkpoints", os.path.basename(found[-1][1])
        metrics = os.path.join(self.path, METRICS_NAME)
        if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
            return "metrics", METRICS_NAME
        return None

    def owner(self) -> str | None:
        """The run id of the run record, or None (none, or unreadable)."""
        try:
            with open(os.path.join(self.path, RECORD_NAME)) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        run_id = record.get("run_id") if isinstance(record, dict) else None
        return run_id if isinstance(run_id, str) else None

    def is_folder_of(self, path: str) -> bool:
        """Whether ``path`` (a checkpoint) lies in this folder."""
        return os.path.realpath(os.path.dirname(os.path.abspath(path))) == os.path.realpath(
            self.path
        )

    def clear(self, keep: str | None = None) -> None:
        """Delete the checkpoints (all but ``keep``) and empty ``metrics.jsonl``
        (``--overwrite``)."""
        for _, old in list_checkpoints(self.path):
            if keep is None or os.path.realpath(old) != os.path.realpath(keep):
                os.unlink(old)
        with open(os.path.join(self.path, METRICS_NAME), "w"):
            pass

    def write_record(self, run_id: str, task: str) -> None:
        """``run.json``: whose folder this is."""
        record = {"run_id": run_id, "task": task, "pid": os.getpid(), "started": time.time()}
        atomic_write(
            os.path.join(self.path, RECORD_NAME),
            lambda f: f.write(json.dumps(record) + "\n"),
            binary=False,
        )


@contextlib.contextmanager
def locked_run_dir(path: str, dist: Dist, device: torch.device):
    """The :class:`RunDir` of ``path``, locked by rank 0 for the duration of the block;
    every rank raises the :class:`UsageError` when rank 0 cannot take it."""
    run_dir = RunDir(path)
    error = None
    if dist.main:
        try:
            run_dir.acquire()
        except UsageError as exc:
            error = exc
    if dist.any(error is not None, device):
        raise error or UsageError(f"--out {path!r}: rank 0 could not take the folder")
    try:
        yield run_dir
    finally:
        run_dir.release()
