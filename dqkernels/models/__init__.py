"""Models built on the dqkernels ops, one module per model family; their layers come from
:mod:`dqkernels.nn`."""

from dqkernels.models.pixelcnn import PixelCNN, pixel_mask
from dqkernels.models.vqvae import VQVAE

__all__ = ["PixelCNN", "VQVAE", "pixel_mask"]
