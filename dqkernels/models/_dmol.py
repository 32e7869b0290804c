"""What the models whose output is a discretized logistic mixture (dmol) share: the checks
of their image arguments and their calls of the dmol ops with their own settings."""

from __future__ import annotations

import torch

from dqkernels.ops import dmol_nll, dmol_sample


def check_image_args(model: str, in_channels: int, num_levels: int) -> None:
    """``in_channels`` 1 or 3 (what dmol models) and at least 2 ``num_levels``."""
    if in_channels not in (1, 3):
        raise ValueError(f"{model}: in_channels must be 1 or 3; got {in_channels}")
    if num_levels < 2:
        raise ValueError(f"{model}: num_levels must be >= 2; got {num_levels}")


class DmolOutput:
    """Mixin of a model with ``in_channels``, ``num_levels``, ``min_log_scale`` and
    ``backend`` attributes whose output is dmol params."""

    in_channels: int
    num_levels: int
    min_log_scale: float
    backend: str | None

    def _dmol_nll(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """NLL per pixel ``[B, H, W]`` of grid values ``x`` under dmol ``params``."""
        return dmol_nll(
            x.to(params.dtype),
            params,
            num_levels=self.num_levels,
            min_log_scale=self.min_log_scale,
            backend=self.backend,
        )

    def _dmol_sample(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Grid values ``[B, C, H, W]`` drawn from dmol ``params``."""
        return dmol_sample(
            params,
            self.in_channels,
            num_levels=self.num_levels,
            min_log_scale=self.min_log_scale,
            generator=generator,
            backend=self.backend,
        )
