"""Models built on the dqkernels ops, one module per model family; their layers come from
:mod:`dqkernels.nn`."""

from dqkernels.models.pixelcnn import PixelCNN, pixel_mask
from dqkernels.models.sbn import SBN
from dqkernels.models.sbn_estimators import ESTIMATORS, make_estimator
from dqkernels.models.vqvae import VQVAE

__all__ = ["ESTIMATORS", "SBN", "PixelCNN", "VQVAE", "make_estimator", "pixel_mask"]
