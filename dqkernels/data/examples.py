"""What the trainer sees of a dataset, whatever its examples are.

A task's data (:meth:`dqkernels.trainer.Task.load_data`) is a *dataset*: an object with

* ``name``: e.g. ``"digits"``;
* ``noun``: ``(plural, short)`` naming its examples in logs, e.g. ``("images", "img")``;
* ``examples(split) -> Examples`` for ``"train"``, ``"test"`` (and ``"valid"`` where the
  data set has one);
* ``describe() -> str``: what its examples are, after the counts, e.g. ``"images of
  1x8x8, 17 levels"`` in ``"1437 train / 360 test images of 1x8x8, 17 levels"``;
* ``info() -> dict``: plain values a checkpoint records about the data.

:class:`~dqkernels.data.LevelDataset` (images), :class:`~dqkernels.data.BinaryVectors`
and :class:`~dqkernels.data.TokenPairDataset` are the datasets of this package.

:class:`Examples` is one split: ``len()``, ``take(index)`` (a batch of the examples at
``index``, an int64 tensor or a slice, on the split's device), ``to(device)`` and
``head(n)`` (the first ``n``, for ``--limit``). A batch has ``len(batch)`` examples: a
tensor whose first dimension indexes them, or an object with ``__len__`` (e.g.
:class:`~dqkernels.data.TokenBatch`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["DataFileError", "Examples", "TensorExamples", "TensorSplits"]


class DataFileError(ValueError):
    """A data file that cannot be read as its format: truncated, malformed, or larger than
    the format allows. The message starts with the file's path; the trainer reports it in
    one line with exit status 2."""


@runtime_checkable
class Examples(Protocol):
    """One split of a dataset (see the module docstring)."""

    def __len__(self) -> int: ...

    def take(self, index: torch.Tensor | slice) -> Any: ...

    def to(self, device: torch.device | str) -> Examples: ...

    def head(self, n: int) -> Examples: ...


class TensorExamples:
    """Examples that are the rows of one tensor (images ``[N, C, H, W]``, vectors
    ``[N, D]``), stored compactly (e.g. ``uint8``) and handed out as ``dtype``."""

    def __init__(self, data: torch.Tensor, dtype: torch.dtype):
        if not isinstance(data, torch.Tensor) or data.dim() < 1:
            raise ValueError(
                f"TensorExamples: data must be a tensor with a leading example "
                f"dimension; got {type(data).__name__}"
            )
        self.data = data
        self.dtype = dtype

    def __len__(self) -> int:
        return self.data.shape[0]

    def take(self, index: torch.Tensor | slice) -> torch.Tensor:
        return self.data[index].to(self.dtype)

    def to(self, device: torch.device | str) -> TensorExamples:
        return TensorExamples(self.data.to(device), self.dtype)

    def head(self, n: int) -> TensorExamples:
        return TensorExamples(self.data[:n], self.dtype)

    def __repr__(self) -> str:
        return (
            f"TensorExamples({tuple(self.data.shape)} {self.data.dtype} as "
            f"{str(self.dtype).replace('torch.', '')}, {self.data.device})"
        )


class TensorSplits:
    """Mixin of the datasets whose splits are tensors in the attributes ``train``, ``test``
    and ``valid`` (None when absent), handed out as ``example_dtype``."""

    example_dtype: torch.dtype = torch.float32

    def examples(self, split: str) -> TensorExamples:
        """The examples of ``split`` (``"train"``, ``"test"`` or ``"valid"``)."""
        data = getattr(self, split, None) if split in ("train", "test", "valid") else None
        if data is None:
            raise ValueError(f"{getattr(self, 'name', type(self).__name__)} has no {split!r} split")
        return TensorExamples(data, self.example_dtype)
