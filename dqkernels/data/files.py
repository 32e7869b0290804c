"""Reading data files within bounds.

Every loader of this package reads its files through :func:`open_data_file` and
:func:`read_at_most`: a ``.gz`` file is decompressed as a stream that stops one byte past
the most the format can hold, so a small compressed file cannot make a loader allocate
more than that (a gzip of zeros expands about a thousand times); a plain file larger than
that is refused from its size, before it is read. What the file cannot give (a truncated
or corrupt gzip stream, an unreadable file, more bytes than allowed) raises
:class:`~dqkernels.data.DataFileError` with a message that starts with the file's path; a
missing file stays a :class:`FileNotFoundError`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Iterator

from dqkernels.data.examples import DataFileError

__all__ = ["open_data_file", "read_at_most", "read_bounded"]


def _is_gzip(path: str) -> bool:
    return path.endswith(".gz")


@contextmanager
def open_data_file(path: str) -> Iterator[BinaryIO]:
    """``path`` opened for reading bytes, decompressed as it is read when it ends in
    ``.gz``. Errors of the file while the block reads it (a truncated or corrupt gzip
    stream, an unreadable file) become :class:`DataFileError` naming the file."""
    try:
        with gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb") as f:
            yield f  # type: ignore[misc]  # GzipFile reads bytes like a BinaryIO
    except FileNotFoundError:
        raise
    except EOFError:
        raise DataFileError(
            f"{path}: truncated: the gzip stream ends before its end-of-stream marker"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(f"{path}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise DataFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


_CHUNK = 1 << 20  # bytes decompressed per read of a gzip stream


def read_at_most(f: BinaryIO, limit: int, path: str, what: str) -> bytes:
    """The rest of ``f`` (opened by :func:`open_data_file`), refused with
    :class:`DataFileError` when it holds more than ``limit`` bytes: a plain file from its
    size, before reading; a gzipped one after decompressing at most ``limit + 1`` bytes,
    a chunk at a time (nothing is allocated for the limit up front).
    ``what`` names what the limit is, e.g. ``"50,000 rows of 784 0/1 values"``."""
    if not isinstance(f, gzip.GzipFile):
        size = os.fstat(f.fileno()).st_size - f.tell()
        if size <= limit:
            data = f.read(size + 1)  # one more: a file that grew since is caught below
            if len(data) <= limit:
                return data
        raise DataFileError(
            f"{path}: {max(size, limit + 1):,} bytes, more than the {limit:,} that {what} can take"
        )
    chunks, total = [], 0
    while total <= limit:
        chunk = f.read(min(_CHUNK, limit + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise DataFileError(
        f"{path}: decompresses to more than the {limit:,} bytes that {what} can take "
        f"(stopped reading there)"
    )


def read_bounded(path: str, limit: int, what: str) -> bytes:
    """All of the file ``path`` (decompressed when it ends in ``.gz``), at most ``limit``
    bytes of it (see :func:`read_at_most`)."""
    with open_data_file(path) as f:
        return read_at_most(f, limit, path, what)
