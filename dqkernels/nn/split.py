"""Split prior (Glow's factor-out layer with a learned conditional prior).

``x`` (``[B, C, H, W]``) is split along channels into ``z1 = x[:, :C - C//2]`` (kept, it
flows on through the next layers) and ``z2 = x[:, C - C//2:]`` (factored out). ``z2`` is
scored under a diagonal Gaussian whose per-element mean and log-scale come from a
zero-initialised 3x3 convolution of ``z1`` (so the prior starts as a standard normal).

Convention: ``forward(x) -> (z1, log_p)`` where ``log_p[b] = log N(z2 | mean(z1),
exp(log_scale(z1)))`` summed over the elements of batch element ``b`` (float32, float64
for float64 inputs). It is not a log-determinant (the split is volume preserving), but it
plays the same role in the change of variables: a multi-scale flow's log-likelihood is
``log p(z_top) + sum of every layer's second output``, this layer's included. The
inverse mirrors it: ``inverse(z1, z2=z2) -> (x, -log_p)`` with ``log_p`` at that ``z2``,
so ``inverse(*forward(x, return_z2=True)[::2])`` rebuilds ``x`` exactly and its second
output is minus the forward's. Without ``z2`` the inverse samples
``z2 = mean + temperature * exp(log_scale) * eps`` and returns ``-log_p`` of that sample
under the untempered prior.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dqkernels.nn._util import accumulate_dtype, check_input

__all__ = ["SplitPrior"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class SplitPrior(nn.Module):
    """Factor out ``num_channels // 2`` channels under a Gaussian conditioned on the rest.

    Args:
        num_channels: C of the input (>= 2); ``C - C//2`` channels are kept, ``C//2``
            factored out.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        if num_channels < 2:
            raise ValueError(f"SplitPrior: num_channels must be >= 2; got {num_channels}")
        self.num_channels = num_channels
        self.out_channels = num_channels // 2  # factored out (z2)
        self.keep_channels = num_channels - num_channels // 2  # kept (z1)
        self.conv = nn.Conv2d(self.keep_channels, 2 * self.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        assert self.conv.bias is not None  # built with a bias
        nn.init.zeros_(self.conv.bias)

    def prior(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, log_scale)`` of ``z2`` given ``z1``, each ``[B, C//2, H, W]``."""
        h = self.conv(z1).to(z1.dtype)
        return h[:, : self.out_channels], h[:, self.out_channels :]

    def log_prob(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``log p(z2 | z1)`` summed per batch element, ``[B]`` (float32/float64)."""
        return self._log_prob(*self.prior(z1), z2)

    @staticmethod
    def _log_prob(mean, log_scale, z2):
        acc = accumulate_dtype(z2.dtype)
        z2, mean, log_scale = z2.to(acc), mean.to(acc), log_scale.to(acc)
        u = (z2 - mean) * torch.exp(-log_scale)
        lp = -0.5 * u * u - log_scale - _HALF_LOG_2PI
        return lp.reshape(lp.shape[0], -1).sum(dim=1)

    def forward(self, x: torch.Tensor, return_z2: bool = False):
        """``(z1, log p(z2|z1))``, or ``(z1, log p(z2|z1), z2)`` with ``return_z2``."""
        check_input("SplitPrior", x, self.num_channels)
        z1, z2 = x[:, : self.keep_channels], x[:, self.keep_channels :]
        log_p = self.log_prob(z1, z2)
        return (z1, log_p, z2) if return_z2 else (z1, log_p)

    def inverse(
        self,
        z1: torch.Tensor,
        temperature: float = 1.0,
        z2: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, -log p(z2|z1))`` with ``x = cat([z1, z2])``; ``z2`` is drawn from the prior
        with its scale multiplied by ``temperature`` unless given."""
        check_input("SplitPrior.inverse", z1, self.keep_channels)
        mean, log_scale = self.prior(z1)
        if z2 is None:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            z2 = mean + temperature * torch.exp(log_scale) * eps
        else:
            want = (z1.shape[0], self.out_channels) + tuple(z1.shape[2:])
            if tuple(z2.shape) != want:
                raise ValueError(
                    f"SplitPrior.inverse: z2 must have shape {want}; got {tuple(z2.shape)}"
                )
        log_p = self._log_prob(mean, log_scale, z2)
        return torch.cat([z1, z2.to(z1.dtype)], dim=1), -log_p

    def extra_repr(self) -> str:
        return f"{self.num_channels} (keeps {self.keep_channels}, factors out {self.out_channels})"
