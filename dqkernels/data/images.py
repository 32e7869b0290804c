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

import gzip
import io
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from dqkernels.data.examples import TensorSplits

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


def _open_bytes(path: str) -> bytes:
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


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


def _parse_amat_slow(content: bytes, num_values: int, path: str) -> np.ndarray:
    """Any whitespace, blank lines skipped; every row validated, errors name the line."""
    rows = []
    for lineno, line in enumerate(content.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != num_values:
            raise ValueError(
                f"{path}, line {lineno}: expected {num_values} space-separated "
                f"0/1 values, found {len(tokens)}"
            )
        try:
            vals = np.array([float(t) for t in tokens])
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise ValueError(
                f"{path}, line {lineno}: value {bad.decode(errors='replace')!r} "
                f"is not a number (expected 0 or 1)"
            ) from None
        wrong = (vals != 0) & (vals != 1)
        if wrong.any():
            col = int(np.argmax(wrong))
            raise ValueError(
                f"{path}, line {lineno}: value "
                f"{tokens[col].decode(errors='replace')!r} in column {col + 1} "
                f"is not 0 or 1"
            )
        rows.append(vals.astype(np.uint8))
    if not rows:
        raise ValueError(f"{path}: no rows (expected lines of {num_values} 0/1 values)")
    return np.stack(rows)


def _is_float(token: bytes) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def read_amat(path: str, num_values: int = _MNIST_PIXELS) -> torch.Tensor:
    """Read a binarized-MNIST ``.amat`` file (``.gz`` is decompressed): one image per
    line, ``num_values`` space-separated 0/1 values. Returns ``uint8 [N, num_values]``.

    Raises ValueError naming the file and the line for a malformed row.
    """
    path = os.fspath(path)
    content = _open_bytes(path)
    arr = _parse_amat_fast(content, num_values)
    if arr is None:
        arr = _parse_amat_slow(content, num_values, path)
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
    splits = {s: read_amat(p).reshape(-1, 1, 28, 28) for s, p in paths.items()}
    return LevelDataset(
        "binarized_mnist", splits["train"], splits["test"], num_levels=2, valid=splits["valid"]
    )


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_TRAIN_BATCHES = 5
_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR_RECORD = 1 + _CIFAR_PIXELS  # binary version: one label byte, then the pixels
_CIFAR_SUBDIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the few a CIFAR-10 batch needs (it was refused,
    nothing from it ran). Also a ValueError, like every other malformed-file error."""


def _numpy_pickle_globals() -> dict:
    """The globals a pickled numpy array needs, under the module names numpy 1.x and 2.x
    write (``numpy.core`` became ``numpy._core``), mapped to the real objects, so that
    nothing is imported by name while unpickling."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        table[(core + ".multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(core + ".multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of arrays
            table[(core + ".numeric", "_frombuffer")] = numeric._frombuffer
    # Python 3 writes bytes objects under protocol 2 as _codecs.encode(str, "latin1")
    table[("_codecs", "encode")] = _latin1_encode
    return table


def _latin1_encode(text, encoding="latin1"):
    # only the codec pickle itself uses: no lookup of arbitrary codecs by name
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError(
            f"_codecs.encode called with encoding {encoding!r}; only "
            f"'latin1' (what pickle writes) is accepted"
        )
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dtypes and plain Python data (dicts, lists,
    bytes, str, numbers) and refuses every other global: a CIFAR-10 batch needs nothing
    else, and a pickle that asks for more (``os.system``, ``builtins.eval``, ...) is not one."""

    def __init__(self, file, path: str):
        # encoding="bytes": the official batches were pickled by Python 2, whose str
        # (the keys, the filenames and the array data) must come back as bytes
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _numpy_pickle_globals()

    def find_class(self, module: str, name: str):
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._path}: refused to unpickle the global {module}.{name}: a CIFAR-10 "
                f"batch holds only numpy arrays and plain data, so this file is not one (or "
                f"has been tampered with); nothing from it was run"
            )
        return obj


def _batch_field(batch: dict, key: str, path: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    present = ", ".join(repr(k) for k in list(batch)[:8])
    raise ValueError(
        f"{path}: not a CIFAR-10 python batch: no {key.encode()!r} entry (entries: {present})"
    )


def read_cifar_pickle(path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of CIFAR-10's python version: a pickled dict with ``b"data"`` (uint8
    ``[N, 3072]``: 1024 red, 1024 green, 1024 blue values per image, each plane row-major)
    and ``b"labels"`` (N ints in 0..9). Returns ``(images uint8 [N, 3, 32, 32], labels
    int64 [N])``.

    The pickle is read through a restricted unpickler (numpy arrays and plain data only);
    anything else raises :class:`UnsafePickleError` before it can run. Malformed content
    raises ValueError naming the file.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    try:
        batch = _CifarUnpickler(io.BytesIO(content), path).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch: unpickling failed ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(
            f"{path}: not a CIFAR-10 python batch: expected a pickled dict, "
            f"found {type(batch).__name__}"
        )
    data = _batch_field(batch, "data", path)
    labels = _batch_field(batch, "labels", path)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _CIFAR_PIXELS
    ):
        what = (
            f"a {data.dtype} array of shape {tuple(data.shape)}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise ValueError(
            f"{path}: b'data' must be a uint8 array [N, {_CIFAR_PIXELS}]; found {what}"
        )
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels' must be {data.shape[0]} integers (one per row of "
            f"b'data'); found {labels.dtype} values of shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must be in 0..9; found {labels.min()}..{labels.max()}")
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def read_cifar_binary(path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of CIFAR-10's binary version: records of 3073 bytes, a label byte (0..9)
    followed by the 3072 pixel bytes in the python version's order. Returns
    ``(images uint8 [N, 3, 32, 32], labels int64 [N])``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if not content or len(content) % _CIFAR_RECORD:
        raise ValueError(
            f"{path}: size {len(content)} bytes is not a positive multiple of "
            f"{_CIFAR_RECORD} (one label byte + {_CIFAR_PIXELS} pixel bytes per "
            f"image); not a CIFAR-10 binary batch, or a truncated one"
        )
    records = np.frombuffer(content, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(
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


def read_idx(path, ndim: int | None = None) -> torch.Tensor:
    """An idx file of unsigned bytes (MNIST's format; ``.gz`` is decompressed): a 4-byte
    magic ``00 00 08 <ndim>``, ``ndim`` big-endian uint32 sizes, then the data. Returns a
    ``uint8`` tensor of those sizes; ``ndim``, when given, is checked."""
    path = os.fspath(path)
    content = _open_bytes(path)
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{path}: not an idx file (its first bytes {content[:4].hex()} are "
            f"not the magic 0000<type><ndim>)"
        )
    if content[2] != _IDX_UBYTE:
        raise ValueError(
            f"{path}: idx element type 0x{content[2]:02x}; only unsigned bytes "
            f"(0x08, what MNIST uses) are supported"
        )
    n = content[3]
    if ndim is not None and n != ndim:
        raise ValueError(f"{path}: idx file of {n} dimensions; expected {ndim}")
    header = 4 + 4 * n
    if len(content) < header:
        raise ValueError(f"{path}: truncated idx header ({len(content)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=n, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(content) != expected:
        raise ValueError(
            f"{path}: size {len(content)} bytes does not match its header "
            f"(sizes {'x'.join(map(str, dims))} need {expected} bytes)"
        )
    arr = np.frombuffer(content, dtype=np.uint8, offset=header).reshape(dims)
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
    """MNIST as ``uint8 [N, 1, 28, 28]`` levels 0..255 (``num_levels=256``): 60,000 train
    and 10,000 test images from ``train-images-idx3-ubyte`` and ``t10k-images-idx3-ubyte``
    (plain or ``.gz``) in ``data_dir`` (default ``../shared/data/mnist``). Any image size
    in the files is accepted (Fashion-MNIST ships the same files)."""
    data_dir = DEFAULT_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    paths = {s: _idx_path(data_dir, f"{s}-images-idx3-ubyte") for s in ("train", "t10k")}
    train, test = (read_idx(paths[s], ndim=3) for s in ("train", "t10k"))
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"mnist: train images are {tuple(train.shape[1:])} but test images "
            f"are {tuple(test.shape[1:])}"
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
