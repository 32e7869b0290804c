"""PixelCNN masked convolution layer on :func:`dqkernels.ops.masked_conv2d`.

Unlike the flow layers of this package it is not invertible: ``forward(x) -> y``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dqkernels.nn._util import check_input
from dqkernels.ops._checks import check_int
from dqkernels.ops.masked_conv2d import check_masked_conv2d_args, masked_conv2d
from dqkernels.reference.masked_conv2d import conv2d_mask

__all__ = ["MaskedConv2d"]


class MaskedConv2d(nn.Module):
    """PixelCNN masked 2-D convolution ("same" padding, stride 1).

    Args:
        in_channels, out_channels: Cin and Cout.
        kernel_size: odd k; the kernel sees the pixels above and to the left (raster
            order) and, at the centre, the channel blocks of ``mask_type``.
        mask_type: ``"A"`` (first layer: a channel block sees only earlier blocks of the
            same pixel) or ``"B"`` (later layers: earlier blocks and its own).
        groups: channel blocks at the centre (``1 <= groups <= min(Cin, Cout)``; channel
            ``c`` of ``C`` is in block ``c * groups // C``), e.g. 3 for RGB ordering.
        bias: learn a per-channel bias.
        backend: passed to the op (None: the backend in force).

    ``weight`` is ``[Cout, Cin, k, k]`` with its masked entries set to zero at
    initialisation; the op never reads them and gives them a zero gradient, so they stay
    zero under any optimiser without weight decay. The initialisation is uniform in
    ``+-1/sqrt(fan_in)``, with ``fan_in`` the average number of kept entries per output
    channel (PyTorch's ``Conv2d`` rule applied to the kept taps).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        groups: int = 1,
        bias: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        layer = "MaskedConv2d"
        check_int(layer, "in_channels", in_channels, 1)
        check_int(layer, "out_channels", out_channels, 1)
        check_int(layer, "kernel_size", kernel_size, 1)
        check_masked_conv2d_args(layer, in_channels, out_channels, kernel_size, mask_type, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.mask_type, self.groups = kernel_size, mask_type, groups
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def mask(self) -> torch.Tensor:
        """The boolean ``[Cout, Cin, k, k]`` mask (True = kept) on the weight's device."""
        return conv2d_mask(
            self.out_channels,
            self.in_channels,
            self.kernel_size,
            self.mask_type,
            self.groups,
            device=self.weight.device,
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        mask = self.mask()
        fan_in = max(1.0, mask.sum().item() / self.out_channels)
        bound = 1.0 / math.sqrt(fan_in)
        self.weight.uniform_(-bound, bound)
        self.weight.mul_(mask)
        if self.bias is not None:
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("MaskedConv2d", x, self.in_channels)
        return masked_conv2d(
            x,
            self.weight.to(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
            mask_type=self.mask_type,
            groups=self.groups,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"mask_type={self.mask_type!r}, groups={self.groups}, "
            f"bias={self.bias is not None}"
        )
