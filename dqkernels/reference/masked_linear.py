"""Plain-PyTorch reference of the masked (autoregressive) linear layer.

``y = x @ (weight * M).T + bias`` with the connectivity mask::

    M[j, i] = out_degrees[j] >  in_degrees[i]     (strict=True: MADE's output layer)
    M[j, i] = out_degrees[j] >= in_degrees[i]     (strict=False: input and hidden layers)

The masked weight is formed with ``torch.where`` rather than a product, so a masked
entry never reaches the sum even when it holds NaN or infinity (``0 * nan`` is NaN);
the gradient of ``weight`` is exactly zero where ``M`` is 0. Differentiable torch ops
only: autograd of this file is the reference gradient, and it runs in float64 for the
tests' gold values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["linear_mask", "masked_linear_reference"]


def linear_mask(in_degrees: torch.Tensor, out_degrees: torch.Tensor, strict: bool) -> torch.Tensor:
    """The bool mask ``M`` of shape ``[len(out_degrees), len(in_degrees)]``."""
    hi = out_degrees.reshape(-1, 1)
    lo = in_degrees.reshape(1, -1)
    return hi > lo if strict else hi >= lo


def masked_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    in_degrees: torch.Tensor,
    out_degrees: torch.Tensor,
    strict: bool,
) -> torch.Tensor:
    """``x @ (weight * M).T + bias`` for ``x`` of shape ``[..., in_features]``."""
    mask = linear_mask(in_degrees.to(weight.device), out_degrees.to(weight.device), strict)
    w = torch.where(mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
    return F.linear(x, w, bias)
