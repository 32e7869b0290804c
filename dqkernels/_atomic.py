"""Atomic file writes, shared by the trainer's run folders and ``dqk bench``'s results.

:func:`atomic_write` writes to ``.<name>.<pid>.<hex>.tmp`` beside the target, then
``os.replace``: a reader never sees a half-written file and a crash leaves the old one
intact. A killed writer leaves its temporary file behind; :func:`remove_temp_files` deletes
such leftovers (only names of that pattern) on the next run into the folder.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import IO, Callable

__all__ = ["TEMP_RE", "atomic_write", "remove_temp_files"]

#: the temporary files of :func:`atomic_write`: ``.<name>.<pid>.<8 hex digits>.tmp``
TEMP_RE = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call ``write(f)`` on a new temporary file in ``path``'s folder, flush it to disk,
    then move it onto ``path``; the temporary file is removed if anything fails."""
    directory, name = os.path.split(os.path.abspath(path))
    # open(..., "x") rather than mkstemp, so the file gets the usual umask permissions
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb" if binary else "x") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_temp_files(directory: str, any_writer: bool = False) -> list[str]:
    """Delete the leftovers of interrupted :func:`atomic_write` calls in ``directory``:
    those whose writing process is gone, or all of them with ``any_writer`` (the caller
    holds the folder's lock, so no one else writes there). Returns the paths deleted."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        m = TEMP_RE.match(name)
        if m is None or (not any_writer and _alive(int(m.group(1)))):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass
    return removed
