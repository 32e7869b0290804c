"""Squeeze (space-to-depth), the reshaping step of multi-scale flows.

``[B, C, H, W] -> [B, C*f*f, H/f, W/f]``: output channel ``c*f*f + i*f + j`` holds input
channel ``c`` at pixel offset ``(i, j)`` of each ``f x f`` block (Glow's order, the same as
``torch.nn.functional.pixel_unshuffle``). A permutation, so ``logdet = 0``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dqkernels.ops._common import accumulate_dtype

__all__ = ["Squeeze"]


class Squeeze(nn.Module):
    """Space-to-depth by ``factor``; ``inverse`` is depth-to-space.

    ``forward(x) -> (y, logdet)`` with ``logdet`` zeros ``[B]`` (float32, float64 for
    float64 inputs); ``H`` and ``W`` must be divisible by ``factor``.
    """

    def __init__(self, factor: int = 2):
        super().__init__()
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"Squeeze: factor must be a positive int; got {factor!r}")
        self.factor = factor

    def _zeros(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=accumulate_dtype(x.dtype), device=x.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.factor
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(
                f"Squeeze: x must be [B, C, H, W]; got shape {tuple(getattr(x, 'shape', ()))}"
            )
        B, C, H, W = x.shape
        if H % f or W % f:
            raise ValueError(
                f"Squeeze: H and W must be divisible by the factor {f}; got "
                f"H={H}, W={W} (shape {tuple(x.shape)})"
            )
        y = x.reshape(B, C, H // f, f, W // f, f).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(B, C * f * f, H // f, W // f), self._zeros(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.factor
        if not isinstance(y, torch.Tensor) or y.dim() != 4:
            raise ValueError(
                f"Squeeze.inverse: y must be [B, C, H, W]; got shape "
                f"{tuple(getattr(y, 'shape', ()))}"
            )
        B, C, H, W = y.shape
        if C % (f * f):
            raise ValueError(
                f"Squeeze.inverse: the channel count must be divisible by "
                f"factor**2 = {f * f}; got C={C}"
            )
        x = y.reshape(B, C // (f * f), f, f, H, W).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(B, C // (f * f), H * f, W * f), self._zeros(y)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
