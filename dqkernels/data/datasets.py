"""Datasets of discrete images, held as integer levels ``k = 0 .. L-1``.

Every loader returns a :class:`LevelDataset`: ``uint8`` tensors ``[N, C, H, W]`` of
levels plus ``num_levels`` (L). Models see grid values ``2k/(L-1) - 1`` in ``[-1, 1]``
(the grid of :func:`dqkernels.ops.dmol_nll`); :func:`levels_to_grid` and
:func:`grid_to_levels` convert between the two.

* :func:`digits` -- scikit-learn's bundled 8x8 digits (1,797 images, 17 levels), no
  download. A fixed, seeded train/test split.
* :func:`binarized_mnist` -- the standard fixed binarization of MNIST from the
  ``binarized_mnist_{train,valid,test}.amat`` files (plain or gzipped), 2 levels.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LevelDataset", "DATASETS", "DEFAULT_BINARIZED_MNIST_DIR", "digits",
           "binarized_mnist", "read_amat", "load_dataset", "levels_to_grid",
           "grid_to_levels"]

# Relative to the current directory: the project checkout sits beside ``shared/``.
DEFAULT_BINARIZED_MNIST_DIR = os.path.join("..", "shared", "data", "binarized_mnist")

DATASETS = ("digits", "binarized_mnist")


@dataclass
class LevelDataset:
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


# ----------------------------------------------------------------------- conversions


def levels_to_grid(k: torch.Tensor, num_levels: int, dtype: torch.dtype = torch.float32
                   ) -> torch.Tensor:
    """Integer levels ``k`` in ``0 .. L-1`` to grid values ``2k/(L-1) - 1`` in ``[-1, 1]``."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    return k.to(dtype) * (2.0 / (num_levels - 1)) - 1.0


def grid_to_levels(x: torch.Tensor, num_levels: int, dtype: torch.dtype = torch.int64
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
    return LevelDataset("digits", torch.from_numpy(np.ascontiguousarray(train)),
                        torch.from_numpy(np.ascontiguousarray(test)), num_levels=17)


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
    if not ((a[:, 1:row - 1:2] == ord(" ")).all() and (a[:, row - 1] == ord("\n")).all()
            and ((values == ord("0")) | (values == ord("1"))).all()):
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
            raise ValueError(f"{path}, line {lineno}: expected {num_values} space-separated "
                             f"0/1 values, found {len(tokens)}")
        try:
            vals = np.array([float(t) for t in tokens])
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            raise ValueError(f"{path}, line {lineno}: value {bad.decode(errors='replace')!r} "
                             f"is not a number (expected 0 or 1)") from None
        wrong = (vals != 0) & (vals != 1)
        if wrong.any():
            col = int(np.argmax(wrong))
            raise ValueError(f"{path}, line {lineno}: value "
                             f"{tokens[col].decode(errors='replace')!r} in column {col + 1} "
                             f"is not 0 or 1")
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


def _amat_path(data_dir: str, split: str) -> str:
    base = os.path.join(data_dir, f"binarized_mnist_{split}.amat")
    for candidate in (base, base + ".gz"):
        if os.path.isfile(candidate):
            return candidate
    expected = ", ".join(f"binarized_mnist_{s}.amat[.gz]" for s in _AMAT_SPLITS)
    where = os.path.abspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"binarized_mnist: data directory {data_dir!r} (resolved to {where}) does not "
            f"exist; it must hold {expected}. Pass --data-dir DIR.")
    raise FileNotFoundError(
        f"binarized_mnist: neither binarized_mnist_{split}.amat nor "
        f"binarized_mnist_{split}.amat.gz found in {data_dir!r} (resolved to {where}); "
        f"the directory must hold {expected}.")


def binarized_mnist(data_dir: str | None = None) -> LevelDataset:
    """The standard binarized MNIST (50,000 train / 10,000 valid / 10,000 test) as
    ``uint8 [N, 1, 28, 28]`` levels 0/1 (``num_levels=2``).

    ``data_dir`` holds ``binarized_mnist_{train,valid,test}.amat`` or ``.amat.gz``; it
    defaults to ``../shared/data/binarized_mnist`` relative to the current directory.
    """
    data_dir = DEFAULT_BINARIZED_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    paths = {s: _amat_path(data_dir, s) for s in _AMAT_SPLITS}  # all checked up front
    splits = {s: read_amat(p).reshape(-1, 1, 28, 28) for s, p in paths.items()}
    return LevelDataset("binarized_mnist", splits["train"], splits["test"], num_levels=2,
                        valid=splits["valid"])


def load_dataset(name: str, data_dir: str | None = None) -> LevelDataset:
    """A dataset by name (one of :data:`DATASETS`); ``data_dir`` is for the file-based
    ones (digits ships with scikit-learn and ignores it)."""
    if name == "digits":
        return digits()
    if name == "binarized_mnist":
        return binarized_mnist(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
