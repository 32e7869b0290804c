"""Datasets of discrete images, held as integer levels ``k = 0 .. L-1``.

Every loader returns a :class:`LevelDataset`: ``uint8`` tensors ``[N, C, H, W]`` of
levels plus ``num_levels`` (L); as a trainer dataset (see :mod:`dqkernels.data.examples`)
its splits hand out int64 levels. Models see grid values ``2k/(L-1) - 1`` in ``[-1, 1]``
(the grid of :func:`dqkernels.ops.dmol_nll`); :func:`levels_to_grid` and
:func:`grid_to_levels` convert between the two.

* :func:`digits` -- scikit-learn's bundled 8x8 digits (1,797 images, 17 levels), no
  download. A fixed, seeded train/test split.
* :func:`binarized_mnist` -- the standard fixed binarization of MNIST from the
  ``binarized_mnist_{train,valid,test}.amat`` files (plain or gzipped), 2 levels.
* :func:`cifar10` -- CIFAR-10 from its standard files, either the python version
  (``data_batch_1..5`` + ``test_batch`` pickles, read through a restricted unpickler that
  only rebuilds numpy arrays and plain data) or the binary version (``data_batch_1..5.bin``
  + ``test_batch.bin``), 256 levels, ``[N, 3, 32, 32]``.
* :func:`mnist` -- MNIST from the idx files (``train-images-idx3-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``), 256 levels, ``[N, 1, 28, 28]``.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from dqkernels.data.examples import DataFileError, TensorSplits
from dqkernels.data.files import open_data_file, read_bounded
from dqkernels.data.safepickle import UnsafePickleError, brief, load_batch_pickle

__all__ = [
    "LevelDataset",
    "DATASETS",
    "default_data_dir",
    "DEFAULT_BINARIZED_MNIST_DIR",
    "DEFAULT_CIFAR10_DIR",
    "DEFAULT_MNIST_DIR",
    "UnsafePickleError",
    "digits",
    "binarized_mnist",
    "cifar10",
    "mnist",
    "read_amat",
    "read_cifar_pickle",
    "read_cifar_binary",
    "read_idx",
    "load_dataset",
    "levels_to_grid",
    "grid_to_levels",
]


def default_data_dir(name: str) -> str:
    """``../shared/data/<name>``: relative to the current directory, as the project
    checkout sits beside ``shared/``."""
    return os.path.join("..", "shared", "data", name)


DEFAULT_BINARIZED_MNIST_DIR = default_data_dir("binarized_mnist")
DEFAULT_CIFAR10_DIR = default_data_dir("cifar10")
DEFAULT_MNIST_DIR = default_data_dir("mnist")

DATASETS = ("digits", "binarized_mnist", "cifar10", "mnist")


@dataclass
class LevelDataset(TensorSplits):
    """Integer-level images: ``train``/``test`` (and optionally ``valid``) are ``uint8``
    tensors ``[N, C, H, W]`` with values in ``0 .. num_levels-1``."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    num_levels: int
    valid: torch.Tensor | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.train.shape[1:])

    @property
    def num_dims(self) -> int:
        """Dimensions per image, ``C*H*W`` (the denominator of bits/dim)."""
        c, h, w = self.image_shape
        return c * h * w

    # the trainer's view (see dqkernels.data.examples): splits of int64 levels
    noun = ("images", "img")
    example_dtype = torch.int64

    def describe(self) -> str:
        c, h, w = self.image_shape
        return f"images of {c}x{h}x{w}, {self.num_levels} levels"

    def info(self) -> dict:
        return {
            "kind": "images",
            "num_levels": self.num_levels,
            "image_shape": list(self.image_shape),
        }


# ----------------------------------------------------------------------- conversions


def levels_to_grid(
    k: torch.Tensor, num_levels: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Integer levels ``k`` in ``0 .. L-1`` to grid values ``2k/(L-1) - 1`` in ``[-1, 1]``."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    return k.to(dtype) * (2.0 / (num_levels - 1)) - 1.0


def grid_to_levels(
    x: torch.Tensor, num_levels: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """Grid values to the nearest integer level in ``0 .. L-1`` (values off the grid are
    rounded to the nearest level and clamped into range)."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    half = (num_levels - 1) / 2.0
    return torch.round((x.double() + 1.0) * half).clamp(0, num_levels - 1).to(dtype)


# ----------------------------------------------------------------------------- digits


def digits(test_size: int = 360, seed: int = 0) -> LevelDataset:
    """scikit-learn's 8x8 digits as levels 0..16 (17 levels), ``[N, 1, 8, 8]`` uint8.

    The split is a fixed permutation drawn with ``numpy.random.RandomState(seed)``: the
    first ``test_size`` images of it are the test set (default 1,437 train / 360 test),
    so it is the same on every machine and every run.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    data = load_digits().data  # float64 [1797, 64], integers 0..16
    levels = np.rint(data).astype(np.uint8).reshape(-1, 1, 8, 8)
    n = levels.shape[0]
    if not 0 < test_size < n:
        raise ValueError(f"digits: test_size must be in 1..{n - 1}; got {test_size}")
    perm = np.random.RandomState(seed).permutation(n)
    test, train = levels[perm[:test_size]], levels[perm[test_size:]]
    return LevelDataset(
        "digits",
        torch.from_numpy(np.ascontiguousarray(train)),
        torch.from_numpy(np.ascontiguousarray(test)),
        num_levels=17,
    )


# ---------------------------------------------------------------------- binarized MNIST

_AMAT_SPLITS = ("train", "valid", "test")
_MNIST_PIXELS = 28 * 28
#: the rows of binarized MNIST's splits: the most a file of each may hold
_AMAT_ROWS = {"train": 50_000, "valid": 10_000, "test": 10_000}
#: bytes a file may take per value (decompressed): the standard layout takes 2 (a value and
#: a space or the newline); twice that leaves room for CRLF line ends and wider spacing
_AMAT_BYTES_PER_VALUE = 4


def _parse_amat_fast(content: bytes, num_values: int) -> np.ndarray | None:
    """The exact standard layout (``"v v ... v\\n"`` per row, v in 0/1): parsed with a
    few vectorised checks. None when the content is laid out any other way."""
    row = 2 * num_values  # values, separating spaces and the newline
    if not content or len(content) % row:
        return None
    a = np.frombuffer(content, dtype=np.uint8).reshape(-1, row)
    values = a[:, 0:row:2]
    if not (
        (a[:, 1 : row - 1 : 2] == ord(" ")).all()
        and (a[:, row - 1] == ord("\n")).all()
        and ((values == ord("0")) | (values == ord("1"))).all()
    ):
        return None
    return values - np.uint8(ord("0"))


def _parse_amat_slow(content: bytes, num_values: int, max_rows: int, path: str) -> np.ndarray:
    """Any whitespace, blank lines skipped; every row validated, errors name the line.
    Reads a line at a time: no line longer than a row can be is split into tokens, and
    no more than ``max_rows`` rows are kept."""
    rows: list[np.ndarray] = []
    max_line = _AMAT_BYTES_PER_VALUE * num_values
    lineno = 0
    for piece in io.BytesIO(content):  # pieces end in "\n"; splitlines() then splits at "\r"
        if len(piece) > max_line:
            raise DataFileError(
                f"{path}, line {lineno + 1}: longer than {max_line:,} bytes, the most a row "
                f"of {num_values} whitespace-separated 0/1 values takes"
            )
        for line in piece.splitlines():
            lineno += 1
            tokens = line.split()
            if not tokens:
                continue
            if len(rows) == max_rows:
                raise DataFileError(
                    f"{path}, line {lineno}: more than {max_rows:,} rows, the most this "
                    f"file may hold"
                )
            rows.append(_parse_amat_row(tokens, num_values, f"{path}, line {lineno}"))
    if not rows:
        raise DataFileError(f"{path}: no rows (expected lines of {num_values} 0/1 values)")
    return np.stack(rows)


def _parse_amat_row(tokens: list[bytes], num_values: int, where: str) -> np.ndarray:
    if len(tokens) != num_values:
        raise DataFileError(
            f"{where}: expected {num_values} space-separated 0/1 values, found {len(tokens)}"
        )
    try:
        vals = np.array([float(t) for t in tokens])
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise DataFileError(
            f"{where}: value {bad.decode(errors='replace')!r} is not a number (expected 0 or 1)"
        ) from None
    wrong = (vals != 0) & (vals != 1)
    if wrong.any():
        col = int(np.argmax(wrong))
        raise DataFileError(
            f"{where}: value {tokens[col].decode(errors='replace')!r} in column {col + 1} "
            f"is not 0 or 1"
        )
    return vals.astype(np.uint8)


def _is_float(token: bytes) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def read_amat(
    path: str, num_values: int = _MNIST_PIXELS, max_rows: int = _AMAT_ROWS["train"]
) -> torch.Tensor:
    """Read a binarized-MNIST ``.amat`` file (``.gz`` is decompressed): one image per
    line, ``num_values`` space-separated 0/1 values. Returns ``uint8 [N, num_values]``.

    At most ``max_rows`` rows (default 50,000, binarized MNIST's training set) are
    accepted, and at most ``4 * num_values * max_rows`` bytes are decompressed (twice the
    standard layout's size): a larger file is refused before more is read. Raises
    :class:`~dqkernels.data.DataFileError` naming the file (and the line, for a malformed
    row) for a file that is malformed, truncated or larger than that.
    """
    path = os.fspath(path)
    content = read_bounded(
        path,
        _AMAT_BYTES_PER_VALUE * num_values * max_rows,
        f"{max_rows:,} rows of {num_values} 0/1 values",
    )
    arr = _parse_amat_fast(content, num_values)
    if arr is None:
        arr = _parse_amat_slow(content, num_values, max_rows, path)
    elif arr.shape[0] > max_rows:
        raise DataFileError(
            f"{path}: {arr.shape[0]:,} rows, more than the {max_rows:,} this file may hold"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


def _find_data_file(data_dir: str, name: str, what: str, holds: str = "") -> str:
    """``data_dir/name`` or ``data_dir/name.gz``, whichever exists; else a FileNotFoundError
    that names the dataset (``what``) and, when given, what the directory must ``hold``."""
    base = os.path.join(data_dir, name)
    for candidate in (base, base + ".gz"):
        if os.path.isfile(candidate):
            return candidate
    where = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        must = f"; it must hold {holds}" if holds else ""
        raise FileNotFoundError(
            f"{what}: data directory {data_dir!r} (resolved to {where}) does not "
            f"exist{must}. Pass --data-dir DIR."
        )
    must = f"; the directory must hold {holds}." if holds else ""
    raise FileNotFoundError(
        f"{what}: neither {name} nor {name}.gz found in {data_dir!r} (resolved to {where}){must}"
    )


def _amat_path(data_dir: str, split: str) -> str:
    expected = ", ".join(f"binarized_mnist_{s}.amat[.gz]" for s in _AMAT_SPLITS)
    return _find_data_file(
        data_dir, f"binarized_mnist_{split}.amat", "binarized_mnist", holds=expected
    )


def binarized_mnist(data_dir: str | None = None) -> LevelDataset:
    """The standard binarized MNIST (50,000 train / 10,000 valid / 10,000 test) as
    ``uint8 [N, 1, 28, 28]`` levels 0/1 (``num_levels=2``).

    ``data_dir`` holds ``binarized_mnist_{train,valid,test}.amat`` or ``.amat.gz``; it
    defaults to ``../shared/data/binarized_mnist`` relative to the current directory.
    """
    data_dir = DEFAULT_BINARIZED_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    paths = {s: _amat_path(data_dir, s) for s in _AMAT_SPLITS}  # all checked up front
    splits = {
        s: read_amat(p, max_rows=_AMAT_ROWS[s]).reshape(-1, 1, 28, 28) for s, p in paths.items()
    }
    return LevelDataset(
        "binarized_mnist", splits["train"], splits["test"], num_levels=2, valid=splits["valid"]
    )


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN_BATCHES = 5
_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # binary version: one label byte, then the pixels
_CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")
#: images per batch file (5 training batches and the test batch): the most a file may hold
_CIFAR_BATCH_ROWS = 10_000
#: the most bytes a python batch's pickle may take: its pixels are 30.7 MB, which Python 3
#: under protocol 2 writes as a latin-1 string in UTF-8 (up to 2 bytes a pixel), plus the
#: labels and the file names (under 1 MB); three times the pixels leaves room for both
_CIFAR_PICKLE_MAX_BYTES = 3 * _CIFAR_BATCH_ROWS * _CIFAR_PIXELS


def _batch_field(batch: dict, key: str, path: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    present = ", ".join(brief(k) for k in list(batch)[:8])
    raise DataFileError(
        f"{path}: not a CIFAR-10 python batch: no {key.encode()!r} entry (entries: {present})"
    )


def read_cifar_pickle(path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of CIFAR-10's python version: a pickled dict with ``b"data"`` (uint8
    ``[N, 3072]``: 1024 red, 1024 green, 1024 blue values per image, each plane row-major)
    and ``b"labels"`` (a list of N ints in 0..9), N at most 10,000 (a batch's size).
    Returns ``(images uint8 [N, 3, 32, 32], labels int64 [N])``.

    The pickle is read by :func:`dqkernels.data.safepickle.load_batch_pickle` (numpy arrays
    and plain data only, nothing called that a file could make allocate more than its own
    size); anything else raises :class:`UnsafePickleError` before it can run. A file larger
    than a batch can be, or malformed content, raises
    :class:`~dqkernels.data.DataFileError` naming the file.
    """
    path = os.fspath(path)
    content = read_bounded(path, _CIFAR_PICKLE_MAX_BYTES, "a CIFAR-10 python batch")
    batch = load_batch_pickle(content, path)
    if type(batch) is not dict:
        raise DataFileError(
            f"{path}: not a CIFAR-10 python batch: expected a pickled dict, "
            f"found {type(batch).__name__}"
        )
    data = _batch_field(batch, "data", path)
    labels = _batch_field(batch, "labels", path)
    if not (
        type(data) is np.ndarray
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_PIXELS
    ):
        what = (
            f"a {data.dtype} array of shape {tuple(data.shape)}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DataFileError(
            f"{path}: b'data' must be a uint8 array [N, {_CIFAR_PIXELS}]; found {what}"
        )
    if not 0 < data.shape[0] <= _CIFAR_BATCH_ROWS:
        raise DataFileError(
            f"{path}: b'data' holds {data.shape[0]:,} images; a CIFAR-10 batch holds "
            f"1..{_CIFAR_BATCH_ROWS:,}"
        )
    # the arrays the unpickler builds are contiguous copies or views of the file's bytes;
    # checked again here, as what guards against a small buffer seen through strides
    if not (data.flags.c_contiguous or data.flags.f_contiguous) or data.nbytes > len(content):
        raise DataFileError(
            f"{path}: b'data' is not backed by {data.nbytes:,} bytes of the file "
            f"(strides {data.strides}, file of {len(content):,} bytes)"
        )
    n = data.shape[0]
    labels = _cifar_labels(labels, n, path)
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return torch.from_numpy(images), torch.from_numpy(labels)


def _cifar_labels(labels, n: int, path: str) -> np.ndarray:
    """The ``n`` labels of a batch as int64: a flat list (or tuple) of ints, or a 1-D
    integer array, in 0..9; only the flat structure is accepted, so nothing nested (which
    the memo can share, doubling the work of walking it per level) is ever walked."""
    if type(labels) is np.ndarray and labels.shape == (n,) and labels.dtype.kind in "iu":
        values = labels
    elif type(labels) in (list, tuple) and len(labels) == n:
        bad = next((x for x in labels if not isinstance(x, (int, np.integer))), None)
        if bad is not None:
            raise DataFileError(
                f"{path}: b'labels' must be {n} integers (one per row of b'data'); found "
                f"an element of type {type(bad).__name__}"
            )
        values = labels
    else:
        if isinstance(labels, np.ndarray):
            what = f"{labels.dtype} values of shape {labels.shape}"
        elif type(labels) in (list, tuple):
            what = f"a {type(labels).__name__} of {len(labels)}"
        else:
            what = f"a {type(labels).__name__}"
        raise DataFileError(
            f"{path}: b'labels' must be {n} integers (one per row of b'data'); found {what}"
        )
    low, high = min(values), max(values)  # n >= 1; Python ints of any size compare
    if low < 0 or high > 9:
        raise DataFileError(f"{path}: labels must be in 0..9; found {low}..{high}")
    return np.array(values, dtype=np.int64)


def read_cifar_binary(path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of CIFAR-10's binary version: records of 3073 bytes, a label byte (0..9)
    followed by the 3072 pixel bytes in the python version's order, at most 10,000
    records. Returns ``(images uint8 [N, 3, 32, 32], labels int64 [N])``. Raises
    :class:`~dqkernels.data.DataFileError` naming the file for any other size (a larger
    file is refused before it is read) or label."""
    path = os.fspath(path)
    content = read_bounded(
        path,
        _CIFAR_BATCH_ROWS * _CIFAR_RECORD,
        f"a CIFAR-10 binary batch ({_CIFAR_BATCH_ROWS:,} records)",
    )
    if not content or len(content) % _CIFAR_RECORD:
        raise DataFileError(
            f"{path}: size {len(content)} bytes is not a positive multiple of "
            f"{_CIFAR_RECORD} (one label byte + {_CIFAR_PIXELS} pixel bytes per "
            f"image); not a CIFAR-10 binary batch, or a truncated one"
        )
    records = np.frombuffer(content, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataFileError(
            f"{path}: record {bad} has label byte {labels[bad]}; CIFAR-10 labels "
            f"are 0..9 (is this CIFAR-100's binary version?)"
        )
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def _cifar_layout(data_dir: str) -> tuple[str, str]:
    """``(directory, suffix)`` of the CIFAR-10 files under ``data_dir``: suffix "" for the
    python version, ".bin" for the binary one; also looks in the archives' subdirectories."""
    where = os.path.abspath(data_dir)
    expected = (
        "the python version (data_batch_1..5 and test_batch) or the binary version "
        "(data_batch_1..5.bin and test_batch.bin)"
    )
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"cifar10: data directory {data_dir!r} (resolved to {where}) does not exist; it "
            f"must hold {expected}, or the archive's cifar-10-batches-py/ or "
            f"cifar-10-batches-bin/ directory. Pass --data-dir DIR."
        )
    for directory in (data_dir, *(os.path.join(data_dir, s) for s in _CIFAR_SUBDIRS)):
        for suffix in ("", ".bin"):
            if all(
                os.path.isfile(os.path.join(directory, f"{n}{suffix}"))
                for n in ("data_batch_1", "test_batch")
            ):
                return directory, suffix
    raise FileNotFoundError(
        f"cifar10: found neither {expected} in {data_dir!r} (resolved to {where}) nor in its "
        f"cifar-10-batches-py/ or cifar-10-batches-bin/ subdirectory."
    )


def cifar10(data_dir: str | None = None) -> LevelDataset:
    """CIFAR-10 as ``uint8 [N, 3, 32, 32]`` levels 0..255 (``num_levels=256``): 50,000
    training images (``data_batch_1..5``) and 10,000 test images (``test_batch``).

    ``data_dir`` (default ``../shared/data/cifar10``) holds the python version's pickles or
    the binary version's ``.bin`` files, directly or in the archive's
    ``cifar-10-batches-py/`` / ``cifar-10-batches-bin/`` subdirectory. The training
    batches present must run from ``data_batch_1`` without a gap (all five in the real
    data set; fewer are accepted, for subsets and tests).
    """
    data_dir = DEFAULT_CIFAR10_DIR if data_dir is None else os.fspath(data_dir)
    directory, suffix = _cifar_layout(data_dir)
    read = read_cifar_binary if suffix else read_cifar_pickle
    present = [
        k
        for k in range(1, _CIFAR_TRAIN_BATCHES + 1)
        if os.path.isfile(os.path.join(directory, f"data_batch_{k}{suffix}"))
    ]
    if present != list(range(1, len(present) + 1)):
        missing = next(k for k in range(1, present[-1]) if k not in present)
        raise FileNotFoundError(
            f"cifar10: data_batch_{missing}{suffix} is missing from {directory!r} while "
            f"data_batch_{present[-1]}{suffix} is there; the training batches are "
            f"data_batch_1..{_CIFAR_TRAIN_BATCHES}{suffix}"
        )
    train = [read(os.path.join(directory, f"data_batch_{k}{suffix}"))[0] for k in present]
    test, _ = read(os.path.join(directory, f"test_batch{suffix}"))
    return LevelDataset("cifar10", torch.cat(train), test, num_levels=256)


# -------------------------------------------------------------------------------- MNIST

_IDX_UBYTE = 0x08
#: the most data bytes :func:`read_idx` reads without an expected shape: MNIST's largest
#: file (60,000 images of 28x28)
_IDX_MAX_BYTES = 60_000 * _MNIST_PIXELS
#: MNIST's image files: the most images each may hold, and their size
_MNIST_IMAGES = {"train": 60_000, "t10k": 10_000}
_MNIST_SIZE = (28, 28)


def read_idx(path, ndim: int | None = None, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """An idx file of unsigned bytes (MNIST's format; ``.gz`` is decompressed as it is
    read): a 4-byte magic ``00 00 08 <ndim>``, ``ndim`` big-endian uint32 sizes, then the
    data. Returns a ``uint8`` tensor of those sizes; ``ndim``, when given, is checked.

    ``shape``, when given, is what the header must declare: ``shape[0]`` is the most items
    (e.g. 60,000 images), the other sizes are exact (e.g. 28, 28). Without it the data may
    take at most 47,040,000 bytes (MNIST's largest file). The header is checked before the
    data is read; a file whose header or size differs raises
    :class:`~dqkernels.data.DataFileError` naming the file.
    """
    path = os.fspath(path)
    with open_data_file(path) as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise DataFileError(
                f"{path}: not an idx file (its first bytes {magic.hex()} are "
                f"not the magic 0000<type><ndim>)"
            )
        if magic[2] != _IDX_UBYTE:
            raise DataFileError(
                f"{path}: idx element type 0x{magic[2]:02x}; only unsigned bytes "
                f"(0x08, what MNIST uses) are supported"
            )
        n = magic[3]
        if ndim is not None and n != ndim:
            raise DataFileError(f"{path}: idx file of {n} dimensions; expected {ndim}")
        header = 4 + 4 * n
        sizes = f.read(4 * n)
        if len(sizes) < 4 * n:
            raise DataFileError(
                f"{path}: truncated idx header ({4 + len(sizes)} bytes, need {header})"
            )
        dims = tuple(int(d) for d in np.frombuffer(sizes, dtype=">u4"))
        declared = "x".join(map(str, dims))
        if shape is not None and (
            len(dims) != len(shape) or dims[0] > shape[0] or dims[1:] != tuple(shape[1:])
        ):
            expected = "x".join(map(str, shape[1:]))
            raise DataFileError(
                f"{path}: idx sizes {declared}; expected at most {shape[0]:,} items"
                + (f" of {expected}" if expected else "")
            )
        count = math.prod(dims)
        limit = _IDX_MAX_BYTES if shape is None else math.prod(shape)
        if count > limit:
            raise DataFileError(
                f"{path}: idx sizes {declared} declare {count:,} bytes of data, more than "
                f"the {limit:,} this file may hold"
            )
        data = f.read(count + 1)
        if len(data) != count:
            size = f"{header + len(data)} bytes" if len(data) < count else "more bytes"
            raise DataFileError(
                f"{path}: size {size} does not match its header "
                f"(sizes {declared} need {header + count} bytes)"
            )
    arr = np.frombuffer(data, dtype=np.uint8).reshape(dims)
    return torch.from_numpy(arr.copy())


def _idx_path(data_dir: str, stem: str) -> str:
    # the canonical name, and the "train-images.idx3-ubyte" spelling some mirrors use
    names = [stem, stem.replace("-idx", ".idx")]
    for name in names:
        for candidate in (name, name + ".gz"):
            if os.path.isfile(os.path.join(data_dir, candidate)):
                return os.path.join(data_dir, candidate)
    where = os.path.abspath(data_dir)
    need = "train-images-idx3-ubyte[.gz] and t10k-images-idx3-ubyte[.gz]"
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"mnist: data directory {data_dir!r} (resolved to {where}) "
            f"does not exist; it must hold {need}. Pass --data-dir DIR."
        )
    raise FileNotFoundError(
        f"mnist: {stem}[.gz] not found in {data_dir!r} (resolved to "
        f"{where}); the directory must hold {need}."
    )


def mnist(data_dir: str | None = None) -> LevelDataset:
    """MNIST as ``uint8 [N, 1, 28, 28]`` levels 0..255 (``num_levels=256``): up to 60,000
    train and 10,000 test images of 28x28 from ``train-images-idx3-ubyte`` and
    ``t10k-images-idx3-ubyte`` (plain or ``.gz``) in ``data_dir`` (default
    ``../shared/data/mnist``); Fashion-MNIST ships the same files. A file declaring other
    sizes raises :class:`~dqkernels.data.DataFileError` before its data is read."""
    data_dir = DEFAULT_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    paths = {s: _idx_path(data_dir, f"{s}-images-idx3-ubyte") for s in _MNIST_IMAGES}
    train, test = (
        read_idx(paths[s], ndim=3, shape=(_MNIST_IMAGES[s], *_MNIST_SIZE)) for s in _MNIST_IMAGES
    )
    return LevelDataset("mnist", train[:, None], test[:, None], num_levels=256)


def load_dataset(name: str, data_dir: str | None = None) -> LevelDataset:
    """A dataset by name (one of :data:`DATASETS`); ``data_dir`` is for the file-based
    ones (digits ships with scikit-learn and ignores it)."""
    if name == "digits":
        return digits()
    if name == "binarized_mnist":
        return binarized_mnist(data_dir)
    if name == "cifar10":
        return cifar10(data_dir)
    if name == "mnist":
        return mnist(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
