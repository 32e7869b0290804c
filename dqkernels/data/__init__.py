"""Datasets of discrete images as integer levels, and level <-> grid conversion."""
from dqkernels.data.datasets import (DATASETS, DEFAULT_BINARIZED_MNIST_DIR, LevelDataset,
                                     binarized_mnist, digits, grid_to_levels, levels_to_grid,
                                     load_dataset, read_amat)

__all__ = ["DATASETS", "DEFAULT_BINARIZED_MNIST_DIR", "LevelDataset", "binarized_mnist",
           "digits", "grid_to_levels", "levels_to_grid", "load_dataset", "read_amat"]
