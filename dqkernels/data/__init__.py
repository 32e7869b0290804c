"""Datasets of discrete images as integer levels, and level <-> grid conversion."""
from dqkernels.data.datasets import (DATASETS, DEFAULT_BINARIZED_MNIST_DIR, DEFAULT_CIFAR10_DIR,
                                     DEFAULT_MNIST_DIR, LevelDataset, UnsafePickleError,
                                     binarized_mnist, cifar10, digits, grid_to_levels,
                                     levels_to_grid, load_dataset, mnist, read_amat,
                                     read_cifar_binary, read_cifar_pickle, read_idx)

__all__ = ["DATASETS", "DEFAULT_BINARIZED_MNIST_DIR", "DEFAULT_CIFAR10_DIR", "DEFAULT_MNIST_DIR",
           "LevelDataset", "UnsafePickleError", "binarized_mnist", "cifar10", "digits",
           "grid_to_levels", "levels_to_grid", "load_dataset", "mnist", "read_amat",
           "read_cifar_binary", "read_cifar_pickle", "read_idx"]
