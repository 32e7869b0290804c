"""Plain-PyTorch reference of the PixelCNN masked convolution (``masked_conv2d``).

Odd square kernels ``k = 2c + 1``, "same" padding ``c``, stride 1. Tap ``(i, j)`` of the
kernel (row ``i``, column ``j``, centre ``(c, c)``) is

* kept when it lies above the centre row (``i < c``) or left of the centre in the centre
  row (``i == c and j < c``): pixels before the output pixel in raster order;
* masked when it lies right of the centre (``i == c and j > c``) or below (``i > c``);
* at the centre itself, decided per (output, input) channel pair: the ``C`` channels of
  a side form ``groups`` contiguous blocks, channel ``ch`` in block ``ch * groups // C``
  (``C = Cin`` for inputs, ``C = Cout`` for outputs). Output block ``j`` sees input
  blocks ``< j`` (mask type "A") or ``<= j`` (type "B"). Block ``j`` starts at channel
  ``ceil(j * C / groups)``, so the input channels an output channel sees at the centre
  are always a prefix ``[0, centre_inputs(o))``.

With ``groups = 1`` a type-A centre is fully masked and a type-B centre fully kept.
:func:`masked_conv2d_reference` is the definition: ``F.conv2d(x, weight * mask, bias,
padding=k // 2)``; autograd of it is the reference gradient (exactly zero at masked
weights), and it runs in float64 for the tests' gold values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_TYPES = ("A", "B")


def block_start(block: int, channels: int, groups: int) -> int:
    """First channel of channel block ``block`` (``ceil(block * channels / groups)``)."""
    return -(-block * channels // groups)


def centre_inputs(
    out_channel: int, in_channels: int, out_channels: int, mask_type: str, groups: int
) -> int:
    """How many input channels (a prefix) output channel ``out_channel`` sees at the
    centre tap."""
    seen = out_channel * groups // out_channels + (1 if mask_type == "B" else 0)
    return block_start(seen, in_channels, groups)


def centre_counts(in_channels: int, out_channels: int, mask_type: str, groups: int) -> list[int]:
    """:func:`centre_inputs` for every output channel (non-decreasing)."""
    return [
        centre_inputs(o, in_channels, out_channels, mask_type, groups) for o in range(out_channels)
    ]


def kept_taps(kernel_size: int) -> list[tuple[int, int]]:
    """The fully kept taps ``(i, j)`` in raster order (the centre not included):
    ``(k * k - 1) / 2`` of them."""
    c = kernel_size // 2
    return [(i, j) for i in range(c + 1) for j in range(kernel_size) if i < c or j < c]


def conv2d_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: int,
    mask_type: str,
    groups: int = 1,
    *,
    dtype: torch.dtype = torch.bool,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``[out_channels, in_channels, k, k]`` mask (1 = kept) of a PixelCNN conv."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be 'A' or 'B'; got {mask_type!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd; got {kernel_size}")
    if not 1 <= groups <= min(in_channels, out_channels):
        raise ValueError(
            f"groups must be in [1, min(in_channels, out_channels)] = "
            f"[1, {min(in_channels, out_channels)}]; got {groups}"
        )
    k, c = kernel_size, kernel_size // 2
    mask = torch.zeros(out_channels, in_channels, k, k, dtype=torch.bool)
    mask[:, :, :c, :] = True
    mask[:, :, c, :c] = True
    o_block = torch.arange(out_channels) * groups // out_channels
    i_block = torch.arange(in_channels) * groups // in_channels
    if mask_type == "A":
        mask[:, :, c, c] = i_block[None, :] < o_block[:, None]
    else:
        mask[:, :, c, c] = i_block[None, :] <= o_block[:, None]
    return mask.to(device=device, dtype=dtype)


def masked_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    mask_type: str,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d(x, weight * mask, bias, padding=k // 2)``: x ``[B, Cin, H, W]``, weight
    ``[Cout, Cin, k, k]``, bias ``[Cout]`` or None; all of one dtype and device."""
    cout, cin, k, _ = weight.shape
    mask = conv2d_mask(cout, cin, k, mask_type, groups, dtype=weight.dtype, device=weight.device)
    return F.conv2d(x, weight * mask, bias, padding=k // 2)
