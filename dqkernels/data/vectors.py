"""Datasets of binary vectors: the data of sigmoid belief networks and RBMs.

:class:`BinaryVectors` holds ``uint8 [N, D]`` tensors of 0/1 values per split and, as a
trainer dataset (see :mod:`dqkernels.data.examples`), hands out float32 batches ``[B, D]``.

* ``binarized_mnist``: the standard fixed binarization of MNIST (50,000 / 10,000 / 10,000
  vectors of 784 pixels) from ``binarized_mnist_{train,valid,test}.amat[.gz]``;
* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 64 pixels, no download),
  each pixel 1 where its level is at least half the range (``k >= 8`` of 0..16), with the
  same fixed train/test split as the image version: the built-in default, so that a model
  of binary vectors runs on a fresh machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dqkernels.data.examples import TensorSplits
from dqkernels.data.images import binarized_mnist, digits

__all__ = ["BinaryVectors", "BINARY_DATASETS", "binary_vectors"]

BINARY_DATASETS = ("digits", "binarized_mnist")
#: a digits pixel is 1 where its level (0..16) is at least this
DIGITS_THRESHOLD = 8


@dataclass
class BinaryVectors(TensorSplits):
    """Binary vectors: ``train``/``test`` (and optionally ``valid``) are ``uint8 [N, D]``
    tensors of 0/1 values."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    valid: torch.Tensor | None = None

    def __post_init__(self):
        for split in ("train", "test", "valid"):
            t = getattr(self, split)
            if t is None:
                continue
            if t.dim() != 2 or t.dtype != torch.uint8:
                raise ValueError(
                    f"BinaryVectors {self.name!r}: {split} must be uint8 [N, D]; "
                    f"got {str(t.dtype).replace('torch.', '')} "
                    f"{tuple(t.shape)}"
                )
            if t.numel() and int(t.max()) > 1:
                raise ValueError(
                    f"BinaryVectors {self.name!r}: {split} holds values other "
                    f"than 0 and 1 (max {int(t.max())})"
                )
            if t.shape[1] != self.train.shape[1]:
                raise ValueError(
                    f"BinaryVectors {self.name!r}: {split} vectors have "
                    f"{t.shape[1]} dimensions, train vectors "
                    f"{self.train.shape[1]}"
                )

    @property
    def num_dims(self) -> int:
        """D, the dimensions of a vector."""
        return self.train.shape[1]

    # the trainer's view (see dqkernels.data.examples): splits of float32 0/1 vectors
    noun = ("vectors", "vec")
    example_dtype = torch.float32

    def describe(self) -> str:
        return f"binary vectors of {self.num_dims} dimensions"

    def info(self) -> dict:
        return {"kind": "binary_vectors", "num_dims": self.num_dims}


def binary_vectors(name: str, data_dir: str | None = None) -> BinaryVectors:
    """A binary-vector dataset by name (one of :data:`BINARY_DATASETS`); ``data_dir`` is
    for binarized MNIST (default ``../shared/data/binarized_mnist``)."""
    if name == "digits":
        d = digits()
        return BinaryVectors("digits", _threshold(d.train), _threshold(d.test))
    if name == "binarized_mnist":
        d = binarized_mnist(data_dir)
        return BinaryVectors(
            "binarized_mnist", d.train.flatten(1), d.test.flatten(1), valid=d.valid.flatten(1)
        )
    raise ValueError(
        f"unknown binary-vector dataset {name!r}; choose one of {', '.join(BINARY_DATASETS)}"
    )


def _threshold(levels: torch.Tensor) -> torch.Tensor:
    return (levels.flatten(1) >= DIGITS_THRESHOLD).to(torch.uint8)
