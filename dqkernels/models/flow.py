"""A multi-scale normalising flow on images (Real NVP / Glow / Flow++ structure).

``MultiScaleFlow(C, H, W)`` maps ``y`` (``[B, C, H, W]``, real valued) to latents and
returns ``log p(y)`` exactly; :meth:`MultiScaleFlow.sample` inverts it. Each scale is::

    [Squeeze]  ->  steps x (ActNorm -> InvConv1x1 -> coupling)  ->  [SplitPrior]

- **Squeeze** (space to depth, factor 2) when H and W are both even; a scale that cannot
  squeeze (odd size) keeps its resolution, so images of any size work.
- **Couplings**: :class:`~dqkernels.nn.MixLogCDFCoupling` (Flow++, default) or
  :class:`~dqkernels.nn.AffineCoupling` (Glow). Channel masks with alternating parity where
  there are >= 2 channels, checkerboard masks (alternating parity) on 1-channel scales;
  the 1x1 convolution is skipped on 1-channel scales (it would be a scalar).
- **SplitPrior** after every scale but the last, where there are >= 2 channels: half the
  channels are factored out under a Gaussian conditioned on the rest.
- The top latent is scored under a standard normal.

``log p(y) = log N(z_top) + sum(logdets) + sum(split log-priors)``, ``[B]`` in float32
(float64 for float64 input). Every layer is exactly invertible, so ``sample`` draws exact
samples (``temperature`` scales the Gaussians' standard deviations).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dqkernels.nn import ActNorm, AffineCoupling, InvConv1x1, MixLogCDFCoupling, SplitPrior, Squeeze

__all__ = ["MultiScaleFlow", "COUPLINGS"]

COUPLINGS = ("mixlog", "affine")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def make_coupling(
    kind: str,
    channels: int,
    parity: int,
    *,
    hidden: int,
    num_blocks: int,
    num_components: int,
    context_channels: int = 0,
    mask: str | None = None,
    backend: str | None = None,
) -> nn.Module:
    """A coupling of ``kind`` (``"mixlog"`` or ``"affine"``) on ``channels`` channels; mask
    by default ``"channel"`` when ``channels >= 2``, ``"checkerboard"`` otherwise."""
    if mask is None:
        mask = "channel" if channels >= 2 else "checkerboard"
    common = dict(
        mask=mask,
        parity=parity,
        num_blocks=num_blocks,
        backend=backend,
        context_channels=context_channels,
    )
    if kind == "mixlog":
        return MixLogCDFCoupling(channels, num_components, hidden, **common)
    if kind == "affine":
        return AffineCoupling(channels, hidden, **common)
    raise ValueError(f"coupling must be one of {', '.join(COUPLINGS)}; got {kind!r}")


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z | 0, I)`` summed per batch element, ``[B]`` (float32/float64)."""
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.to(acc).flatten(1)
    return -0.5 * (z * z).sum(dim=1) - z.shape[1] * _HALF_LOG_2PI


class _Step(nn.Module):
    """ActNorm -> InvConv1x1 (when C >= 2) -> coupling."""

    def __init__(self, channels: int, coupling: nn.Module):
        super().__init__()
        self.norm = ActNorm(channels)
        self.conv = InvConv1x1(channels, lu=True) if channels >= 2 else None
        self.coupling = coupling

    def forward(self, x):
        x, ld = self.norm(x)
        if self.conv is not None:
            x, ld2 = self.conv(x)
            ld = ld + ld2
        x, ld3 = self.coupling(x)
        return x, ld + ld3

    def inverse(self, y):
        y, ld = self.coupling.inverse(y)
        if self.conv is not None:
            y, ld2 = self.conv.inverse(y)
            ld = ld + ld2
        y, ld3 = self.norm.inverse(y)
        return y, ld + ld3


class MultiScaleFlow(nn.Module):
    """Multi-scale flow on ``[B, C, H, W]`` images (see the module docstring).

    Args:
        in_channels, height, width: the image shape.
        num_scales: scales (>= 1).
        steps_per_scale: flow steps per scale (>= 1).
        coupling: ``"mixlog"`` (Flow++) or ``"affine"`` (Glow).
        hidden: width of the couplings' conditioning nets.
        num_blocks: residual blocks in each conditioning net.
        num_components: mixture components of the mixlog couplings.
        backend: dqkernels backend of the coupling ops (None: the one in force).
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        *,
        num_scales: int = 2,
        steps_per_scale: int = 4,
        coupling: str = "mixlog",
        hidden: int = 64,
        num_blocks: int = 1,
        num_components: int = 8,
        backend: str | None = None,
    ):
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("height", height, 1),
            ("width", width, 1),
            ("num_scales", num_scales, 1),
            ("steps_per_scale", steps_per_scale, 1),
            ("hidden", hidden, 1),
            ("num_blocks", num_blocks, 0),
            ("num_components", num_components, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MultiScaleFlow: {name} must be an int >= {low}; got {value!r}")
        if coupling not in COUPLINGS:
            raise ValueError(
                f"MultiScaleFlow: coupling must be one of {', '.join(COUPLINGS)}; got {coupling!r}"
            )
        self.config = dict(
            in_channels=in_channels,
            height=height,
            width=width,
            num_scales=num_scales,
            steps_per_scale=steps_per_scale,
            coupling=coupling,
            hidden=hidden,
            num_blocks=num_blocks,
            num_components=num_components,
        )
        self.input_shape = (in_channels, height, width)
        C, H, W = in_channels, height, width
        self.scales = nn.ModuleList()
        for s in range(num_scales):
            scale = nn.Module()
            scale.squeeze = Squeeze(2) if H % 2 == 0 and W % 2 == 0 else None
            if scale.squeeze is not None:
                C, H, W = 4 * C, H // 2, W // 2
            scale.steps = nn.ModuleList(
                _Step(
                    C,
                    make_coupling(
                        coupling,
                        C,
                        i % 2,
                        hidden=hidden,
                        num_blocks=num_blocks,
                        num_components=num_components,
                        backend=backend,
                    ),
                )
                for i in range(steps_per_scale)
            )
            last = s == num_scales - 1
            scale.split = SplitPrior(C) if not last and C >= 2 else None
            if scale.split is not None:
                C = scale.split.keep_channels
            self.scales.append(scale)
        self.latent_shape = (C, H, W)

    def _check(self, y: torch.Tensor, where: str) -> None:
        if (
            not isinstance(y, torch.Tensor)
            or y.dim() != 4
            or tuple(y.shape[1:]) != self.input_shape
        ):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"MultiScaleFlow.{where}: expected [B, "
                f"{', '.join(map(str, self.input_shape))}]; got {got}"
            )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``log p(y)``, ``[B]`` (float32; float64 for float64 input)."""
        self._check(y, "forward")
        total = None
        h = y
        for scale in self.scales:
            if scale.squeeze is not None:
                h, _ = scale.squeeze(h)
            for step in scale.steps:
                h, ld = step(h)
                total = ld if total is None else total + ld
            if scale.split is not None:
                h, lp = scale.split(h)
                total = total + lp
        return total + standard_normal_log_prob(h)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """``n`` exact samples ``y`` (``[n, C, H, W]``) by inverting the flow."""
        if device is None:
            device = next(self.parameters()).device
        h = (
            torch.randn((n,) + self.latent_shape, generator=generator, device=device, dtype=dtype)
            * temperature
        )
        for scale in reversed(self.scales):
            if scale.split is not None:
                h, _ = scale.split.inverse(h, temperature, generator=generator)
            for step in reversed(scale.steps):
                h, _ = step.inverse(h)
            if scale.squeeze is not None:
                h, _ = scale.squeeze.inverse(h)
        return h
