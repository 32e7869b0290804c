"""Models built on the dqkernels ops, one module per model family."""
from dqkernels.models.pixelcnn import MaskedConv2d, PixelCNN, pixel_mask
from dqkernels.models.vqvae import VQVAE

__all__ = ["MaskedConv2d", "PixelCNN", "VQVAE", "pixel_mask"]
