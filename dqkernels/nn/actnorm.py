"""Activation normalisation (Glow): a per-channel affine map with data-dependent init.

``y = (x + bias) * exp(logs)`` per channel of ``[B, C, H, W]`` (or ``[B, C]``), with
``logdet = H * W * sum(logs)`` per batch element (``H * W = 1`` for ``[B, C]``).

Data-dependent initialisation: the first forward pass in training mode sets
``bias = -mean`` and ``logs = -log(std + eps)`` per channel from that batch, so the
batch comes out with zero mean and unit variance per channel. A registered boolean
buffer ``initialized`` records that it happened: it is saved in the ``state_dict`` and a
module loaded from an initialised checkpoint is not re-initialised. A module that is
never run in training mode stays the identity until then.

Distributed data parallel: when ``torch.distributed`` is initialised, the per-channel
count, sum and sum of squares of the local batch are all-reduced (summed over ranks, in
float64) before the mean and standard deviation are formed, so every rank initialises
from the statistics of the global batch and the parameters agree on every rank (DDP only
broadcasts parameters at construction, so without this the ranks would drift apart).
Every rank must therefore run its first training forward pass together, as DDP does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

from dqkernels.nn._util import batch_logdet, check_input

__all__ = ["ActNorm"]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


class ActNorm(nn.Module):
    """Per-channel affine flow layer ``y = (x + bias) * exp(logs)``.

    Args:
        num_channels: C.
        eps: added to the standard deviation at initialisation (``logs = -log(std + eps)``).

    ``forward(x) -> (y, logdet)`` and ``inverse(y) -> (x, -logdet)``; ``logdet`` is ``[B]``
    in float32 (float64 for float64 inputs).
    """

    initialized: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"ActNorm: num_channels must be >= 1; got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.logs = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        # Python-side cache of ``initialized`` so that, once initialised, forward passes
        # never read the buffer back from the device (a GPU sync); reset on state_dict load.
        self._known_initialized = False

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def is_initialized(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set ``bias`` and ``logs`` from the batch ``x`` (all-reduced over ranks under
        ``torch.distributed``) and mark the module initialised."""
        check_input("ActNorm", x, self.num_channels, dims=(2, 4))
        flat = x.detach().transpose(0, 1).reshape(self.num_channels, -1).to(torch.float64)
        stats = torch.stack(
            [
                flat.new_full((self.num_channels,), flat.shape[1]),
                flat.sum(dim=1),
                (flat * flat).sum(dim=1),
            ]
        )
        if _distributed():
            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        count, total, total_sq = stats.unbind(0)
        count = count.clamp(min=1.0)
        mean = total / count
        var = (total_sq / count - mean * mean).clamp(min=0.0)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _scale_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (1, self.num_channels) + (1,) * (x.dim() - 2)

    def _pixels(self, x: torch.Tensor) -> int:
        return x.shape[2] * x.shape[3] if x.dim() == 4 else 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("ActNorm", x, self.num_channels, dims=(2, 4))
        if self.training and not self.is_initialized() and x.shape[0] > 0:
            self.initialize(x)
        shape = self._scale_shape(x)
        bias, logs = self.bias.view(shape), self.logs.view(shape)
        y = (x + bias.to(x.dtype)) * torch.exp(logs).to(x.dtype)
        return y, batch_logdet(self._pixels(x) * self.logs.sum(), x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("ActNorm", y, self.num_channels, dims=(2, 4))
        shape = self._scale_shape(y)
        bias, logs = self.bias.view(shape), self.logs.view(shape)
        x = y * torch.exp(-logs).to(y.dtype) - bias.to(y.dtype)
        return x, batch_logdet(-self._pixels(y) * self.logs.sum(), y)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"
