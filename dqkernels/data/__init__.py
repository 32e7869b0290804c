"""Datasets for every model family, as the trainer sees them (:mod:`.examples`):

* images of integer levels (:mod:`.images`): :class:`LevelDataset` from scikit-learn's
  digits, binarized MNIST, CIFAR-10 and MNIST, and the level <-> grid conversions;
* binary vectors (:mod:`.vectors`): :class:`BinaryVectors` from binarized MNIST or the
  digits;
* token pairs (:mod:`.text`): raw parallel text (Multi30k) and :class:`TokenPairs` of
  token ids collated into padded :class:`TokenBatch` es.
"""

from dqkernels.data.examples import DataFileError, Examples, TensorExamples, TensorSplits
from dqkernels.data.images import (
    DATASETS,
    DEFAULT_BINARIZED_MNIST_DIR,
    DEFAULT_CIFAR10_DIR,
    DEFAULT_MNIST_DIR,
    LevelDataset,
    UnsafePickleError,
    binarized_mnist,
    cifar10,
    default_data_dir,
    digits,
    grid_to_levels,
    levels_to_grid,
    load_dataset,
    mnist,
    read_amat,
    read_cifar_binary,
    read_cifar_pickle,
    read_idx,
)
from dqkernels.data.text import (
    MULTI30K_SPLITS,
    ParallelText,
    TokenBatch,
    TokenPairDataset,
    TokenPairs,
    encode_pairs,
    multi30k,
    read_parallel,
    read_text_lines,
)
from dqkernels.data.vectors import BINARY_DATASETS, BinaryVectors, binary_vectors

__all__ = [
    "BINARY_DATASETS",
    "DATASETS",
    "DEFAULT_BINARIZED_MNIST_DIR",
    "DEFAULT_CIFAR10_DIR",
    "DEFAULT_MNIST_DIR",
    "MULTI30K_SPLITS",
    "BinaryVectors",
    "DataFileError",
    "Examples",
    "LevelDataset",
    "ParallelText",
    "TensorExamples",
    "TensorSplits",
    "TokenBatch",
    "TokenPairDataset",
    "TokenPairs",
    "UnsafePickleError",
    "binarized_mnist",
    "binary_vectors",
    "cifar10",
    "default_data_dir",
    "digits",
    "encode_pairs",
    "grid_to_levels",
    "levels_to_grid",
    "load_dataset",
    "mnist",
    "multi30k",
    "read_amat",
    "read_cifar_binary",
    "read_cifar_pickle",
    "read_idx",
    "read_parallel",
    "read_text_lines",
]
