"""Small helpers shared by the flow layers."""

from __future__ import annotations

import torch

from dqkernels.ops._common import accumulate_dtype

__all__ = ["accumulate_dtype", "batch_logdet", "check_input"]


def check_input(layer: str, x, num_channels: int, dims: tuple[int, ...] = (4,)) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``x`` is a float tensor with ``num_channels``
    channels (dimension 1) and one of the ranks in ``dims``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: x must be a torch.Tensor; got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(
            f"{layer}: x must be a floating tensor; got dtype {str(x.dtype).replace('torch.', '')}"
        )
    layouts = {2: "[B, C]", 4: "[B, C, H, W]"}
    if x.dim() not in dims or x.shape[1] != num_channels:
        want = " or ".join(
            layouts[d].replace("C", str(num_channels)) for d in sorted(dims, reverse=True)
        )
        raise ValueError(f"{layer}: x must be {want}; got shape {tuple(x.shape)}")


def batch_logdet(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-layer scalar log-determinant as the ``[B]`` tensor the flow layers return
    (float32, float64 for float64 ``x``; its own storage, so ``+=`` on it is safe)."""
    return value.to(accumulate_dtype(x.dtype)).expand(x.shape[0]).contiguous()
