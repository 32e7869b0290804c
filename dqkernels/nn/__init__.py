"""Flow layers built on the dqkernels ops.

Every layer is an ``nn.Module`` with ``forward(x) -> (y, logdet)`` and an exact
``inverse(y) -> (x, logdet_of_inverse)``, ``logdet_of_inverse = -logdet`` at corresponding
points; ``logdet`` is ``[B]`` in float32 (float64 for float64 inputs). The exception in
meaning (not in form) is :class:`SplitPrior`, whose second output is ``log p(z2 | z1)``
of the factored-out half (see its docstring). The masked autoregressive layers
:class:`MaskedLinear` (MADE) and :class:`MaskedConv2d` (PixelCNN masks) are ordinary
layers (``forward(x) -> y``), the building blocks of autoregressive flows and models.
:class:`VectorQuantizer` (the EMA-codebook quantiser of VQ-VAEs, hard or soft EM) returns
a :class:`~dqkernels.nn.vector_quantizer.VQOutput`. :class:`ResidualBlock` is the residual
block of the coupling layers' conditioning nets and of the VQ-VAE and PixelCNN models.
"""

from dqkernels.nn.actnorm import ActNorm
from dqkernels.nn.coupling import (
    AffineCoupling,
    ConditioningNet,
    MixLogCDFCoupling,
    checkerboard_index,
)
from dqkernels.nn.invconv import InvConv1x1
from dqkernels.nn.masked_conv2d import MaskedConv2d
from dqkernels.nn.masked_linear import MaskedLinear, made_degrees
from dqkernels.nn.residual import ResidualBlock
from dqkernels.nn.split import SplitPrior
from dqkernels.nn.squeeze import Squeeze
from dqkernels.nn.vector_quantizer import VectorQuantizer

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "ConditioningNet",
    "InvConv1x1",
    "MaskedConv2d",
    "MaskedLinear",
    "MixLogCDFCoupling",
    "ResidualBlock",
    "SplitPrior",
    "Squeeze",
    "VectorQuantizer",
    "checkerboard_index",
    "made_degrees",
]
