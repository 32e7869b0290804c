"""A small PixelCNN with the discretized logistic mixture likelihood (PixelCNN++'s).

Architecture (layers from :mod:`dqkernels.nn`; the masked convolutions are
:class:`~dqkernels.nn.MaskedConv2d` on the fused :func:`dqkernels.ops.masked_conv2d`, which
skips the masked taps)::

    [x, 1]  --masked conv type A (7x7)-->  width
            --num_blocks residual blocks (:class:`~dqkernels.nn.ResidualBlock`):
                x + conv1x1(dropout(gate(masked conv type B (3x3)(elu(x)))))
            --elu, conv1x1, elu, conv1x1-->  dmol params [B, M*(1 + J*C), H, W]

Masks are over pixels in raster order (rows top to bottom, left to right within a row):
type A hides the centre pixel, type B shows it. The masks ignore channels (``groups=1``
of the op; see :func:`pixel_mask`): for C == 3 the
dependence between the channels of one pixel is the dmol's own coupling of the means, as
in PixelCNN++. A constant ones channel is appended to the input so the network can tell
zero padding from mid-grey.

Stacked 3x3 type-B masks leave PixelCNN's "blind spot" up and to the right; for the small
images this model is for, that costs little (a gated PixelCNN with vertical and
horizontal stacks removes it).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dqkernels.models._dmol import DmolOutput, check_image_args
from dqkernels.nn import MaskedConv2d, ResidualBlock
from dqkernels.reference.dmol import params_per_mixture
from dqkernels.reference.masked_conv2d import conv2d_mask

__all__ = ["PixelCNN", "pixel_mask"]


def pixel_mask(kernel_size: int, mask_type: str) -> torch.Tensor:
    """``[k, k]`` float mask of PixelCNN's convolutions (which ignore channels, ``groups=1``):
    taps in rows above the centre, and left of the centre in its row, are 1; the centre is
    1 for type ``"B"`` and 0 for type ``"A"``."""
    return conv2d_mask(1, 1, kernel_size, mask_type, dtype=torch.float32)[0, 0]


class PixelCNN(DmolOutput, nn.Module):
    """A small PixelCNN that outputs discretized-logistic-mixture parameters.

    Args:
        in_channels: C, 1 (grey) or 3 (RGB).
        num_levels: L, the number of levels per channel (17 for the digits, 2 for binary).
        width: channels of the hidden layers.
        num_blocks: residual blocks after the type-A input convolution.
        num_mixtures: M, logistic components per pixel.
        first_kernel: kernel size of the type-A input convolution (odd).
        kernel_size: kernel size of the type-B convolutions (odd).
        gated: gated (tanh * sigmoid) residual blocks, else ReLU.
        dropout: dropout inside the residual blocks.
        min_log_scale: lower clamp of the log-scales (passed to the ops).
        backend: dqkernels backend of the masked convolutions and the dmol ops (None: the
            one in force).

    Inputs ``x`` are ``[B, C, H, W]`` grid values ``2k/(L-1) - 1``
    (see :func:`dqkernels.data.levels_to_grid`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_levels: int = 256,
        width: int = 64,
        num_blocks: int = 5,
        num_mixtures: int = 5,
        first_kernel: int = 7,
        kernel_size: int = 3,
        gated: bool = True,
        dropout: float = 0.0,
        min_log_scale: float = -7.0,
        backend: str | None = None,
    ):
        super().__init__()
        check_image_args("PixelCNN", in_channels, num_levels)
        if width < 1 or num_blocks < 0 or num_mixtures < 1:
            raise ValueError(
                f"PixelCNN: need width >= 1, num_blocks >= 0, num_mixtures >= 1; "
                f"got {width}, {num_blocks}, {num_mixtures}"
            )
        self.config = dict(
            in_channels=in_channels,
            num_levels=num_levels,
            width=width,
            num_blocks=num_blocks,
            num_mixtures=num_mixtures,
            first_kernel=first_kernel,
            kernel_size=kernel_size,
            gated=gated,
            dropout=dropout,
            min_log_scale=min_log_scale,
        )
        self.in_channels = in_channels
        self.num_levels = num_levels
        self.num_mixtures = num_mixtures
        self.min_log_scale = min_log_scale
        self.backend = backend
        self.num_params = num_mixtures * params_per_mixture(in_channels)

        self.input = MaskedConv2d(in_channels + 1, width, first_kernel, "A", backend=backend)
        self.blocks = nn.ModuleList(
            ResidualBlock(
                width,
                "gated" if gated else "relu",
                pre_activation="elu",
                kernel_size=kernel_size,
                masked=True,
                dropout=dropout,
                backend=backend,
            )
            for _ in range(num_blocks)
        )
        self.head1 = nn.Conv2d(width, width, 1)
        self.head2 = nn.Conv2d(width, self.num_params, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """dmol params ``[B, M*(1 + J*C), H, W]``; those at pixel (i, j) depend only on the
        pixels of ``x`` before (i, j) in raster order."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PixelCNN: x must be [B, {self.in_channels}, H, W]; got shape {tuple(x.shape)}"
            )
        ones = x.new_ones(x.shape[0], 1, *x.shape[2:])
        h = self.input(torch.cat([x, ones], dim=1))
        for block in self.blocks:
            h = block(h)
        return self.head2(F.elu(self.head1(F.elu(h))))

    def nll_per_pixel(self, x: torch.Tensor) -> torch.Tensor:
        """NLL in nats per pixel (all channels of a pixel together), ``[B, H, W]``."""
        return self._dmol_nll(x, self(x))

    def nll(self, x: torch.Tensor) -> torch.Tensor:
        """NLL in nats of each image, ``[B]`` (summed over pixels and channels)."""
        return self.nll_per_pixel(x).sum(dim=(1, 2))

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Mean bits per dimension of the batch, ``NLL / (B*C*H*W * ln 2)``."""
        return self.nll(x).sum() / (x[0].numel() * x.shape[0] * math.log(2.0))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        image_size: tuple[int, int] | int = (8, 8),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``n`` images ``[n, C, H, W]`` of grid values, one pixel at a time in raster
        order (``H*W`` forward passes); for C == 3 the dmol draws the channels of a pixel.

        ``generator`` must live on the model's device (None: torch's default one).
        """
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        H, W = image_size
        p = next(self.parameters())
        was_training = self.training
        self.eval()
        try:
            x = torch.zeros(n, self.in_channels, H, W, device=p.device, dtype=p.dtype)
            for i in range(H):
                for j in range(W):
                    params = self(x)[:, :, i : i + 1, j : j + 1]
                    x[:, :, i : i + 1, j : j + 1] = self._dmol_sample(params, generator)
        finally:
            self.train(was_training)
        return x
