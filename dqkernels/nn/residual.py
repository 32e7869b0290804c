"""The residual block of the conditioning networks, the VQ-VAE and PixelCNN.

One block, ``x + out(dropout(act(conv(pre(x)))))``::

    pre      an activation of the input, or none (pre-activation blocks)
    conv     k x k, "same" padding: ``nn.Conv2d``, or a type-B
             :class:`~dqkernels.nn.MaskedConv2d` (``groups=1``) on the ``masked_conv2d``
             op, whose output at a pixel sees only that pixel and those before it in
             raster order, so the block keeps a PixelCNN autoregressive
    act      relu, gelu, elu, or the gated unit ``tanh(a) * sigmoid(b)`` of the two halves
             of ``conv``'s output (``conv`` then has ``2 * width`` outputs)
    dropout  ``nn.Dropout`` (``nn.Identity`` at p = 0)
    out      1x1 ``nn.Conv2d``, ``width -> width``

Its users:

- :class:`~dqkernels.nn.ConditioningNet`: ``ResidualBlock(w, activation)``,
  ``x + conv1x1(act(conv3x3(x)))``;
- :class:`~dqkernels.models.VQVAE`: ``ResidualBlock(w, "relu", pre_activation="relu")``,
  ``x + conv1x1(relu(conv3x3(relu(x))))``;
- :class:`~dqkernels.models.PixelCNN`: ``ResidualBlock(w, "gated", pre_activation="elu",
  masked=True, dropout=p)``, ``x + conv1x1(dropout(gate(masked_conv_B(elu(x)))))``.

The convolutions are created ``conv`` then ``out`` with their own default initialisation
(the owner re-initialises them if it wants another), and the parameters are
``conv.weight``, ``conv.bias``, ``out.weight``, ``out.bias``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dqkernels.nn.masked_conv2d import MaskedConv2d

__all__ = ["ACTIVATIONS", "GatedTanh", "ResidualBlock", "make_activation"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU}


def make_activation(
    name: str, layer: str, arg: str = "activation", also: tuple[str, ...] = ()
) -> nn.Module:
    """A fresh ``nn.ReLU``, ``nn.GELU`` or ``nn.ELU`` by name. The error for another name
    says ``"{layer}: {arg} must be one of ..."``, listing ``also`` (names the caller
    handles itself) after the three."""
    if name not in ACTIVATIONS:
        raise ValueError(
            f"{layer}: {arg} must be one of {', '.join((*ACTIVATIONS, *also))}; got {name!r}"
        )
    return ACTIVATIONS[name]()


class GatedTanh(nn.Module):
    """``tanh(a) * sigmoid(b)`` with ``a, b`` the two halves of the channels (dim 1)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, b = h.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)


class ResidualBlock(nn.Module):
    """``x + out(dropout(act(conv(pre(x)))))`` (see the module docstring).

    Args:
        width: channels of the input and of the output.
        activation: ``"relu"``, ``"gelu"``, ``"elu"`` or ``"gated"`` (``tanh(a) *
            sigmoid(b)``; ``conv`` then has ``2 * width`` outputs).
        pre_activation: ``"relu"``, ``"gelu"`` or ``"elu"`` applied to ``x`` before
            ``conv``; None (default): none.
        kernel_size: of ``conv``, odd ("same" padding).
        masked: ``conv`` is a type-B :class:`~dqkernels.nn.MaskedConv2d` (PixelCNN masks,
            ``groups=1``) instead of an ``nn.Conv2d``.
        dropout: probability of the dropout before ``out`` (0: none).
        backend: of the masked convolution's op (None: the backend in force).
    """

    def __init__(
        self,
        width: int,
        activation: str = "relu",
        *,
        pre_activation: str | None = None,
        kernel_size: int = 3,
        masked: bool = False,
        dropout: float = 0.0,
        backend: str | None = None,
    ):
        super().__init__()
        name = "ResidualBlock"
        if width < 1:
            raise ValueError(f"{name}: width must be >= 1; got {width}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{name}: kernel_size must be odd and positive; got {kernel_size}")
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{name}: dropout must be in [0, 1]; got {dropout}")
        gated = activation == "gated"
        self.pre = (
            nn.Identity()
            if pre_activation is None
            else make_activation(pre_activation, name, "pre_activation")
        )
        hidden = 2 * width if gated else width
        if masked:
            self.conv: nn.Module = MaskedConv2d(width, hidden, kernel_size, "B", backend=backend)
        else:
            self.conv = nn.Conv2d(width, hidden, kernel_size, padding=kernel_size // 2)
        self.act = GatedTanh() if gated else make_activation(activation, name, also=("gated",))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(self.dropout(self.act(self.conv(self.pre(x)))))
