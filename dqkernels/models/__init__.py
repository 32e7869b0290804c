"""Models built on the dqkernels ops, one module per model family."""
from dqkernels.models.pixelcnn import MaskedConv2d, PixelCNN, pixel_mask

__all__ = ["MaskedConv2d", "PixelCNN", "pixel_mask"]
