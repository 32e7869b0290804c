"""A VQ-VAE on discrete images (Roy, Vaswani, Neelakantan, Parmar 2018: hard or soft EM).

Architecture (channels ``width``, ``s = downsample`` stride-2 stages)::

    levels -> grid 2k/(L-1) - 1 in [-1, 1]
      encoder: conv3x3 -> s x (relu, conv4x4 stride 2) -> blocks x residual -> relu, conv1x1
               -> z_e [B, D, H/2^s, W/2^s]
      VectorQuantizer (EMA codebook of K codes, hard or soft EM, straight-through)
      decoder: conv3x3 -> blocks x residual -> s x (relu, transposed conv4x4 stride 2)
               -> relu, conv1x1 -> dmol params [B, M*(1 + J*C), H, W]

with residual blocks ``x + conv1x1(relu(conv3x3(relu(x))))`` (pre-activation
:class:`~dqkernels.nn.ResidualBlock`). Initialisation: He-normal
weights (ReLU gain) and zero biases for every convolution, zero for the last conv of each
residual branch (a block starts as the identity) and unit gain for the encoder's last
conv, so the latents start with a spread of order 1. (With PyTorch's default init they
start within ~0.02 of each other: a few encoder steps then move them all into one code's
cell faster than the EMA codebook follows, and the codebook collapses to one code.)
The decoder's likelihood
``p(x | codes)`` is the discretized logistic mixture (:func:`dqkernels.ops.dmol_nll`),
independent over pixels given the codes.

Units (nats per image): ``recon = -log p(x | codes)`` with the codes of the quantizer
(the nearest ones in eval mode), ``rate = h*w*log K`` (a uniform prior over the codes) and
the bound ``recon + rate >= -log p(x)`` (valid in eval mode, where the decoder sees one
code per latent). Training minimises ``recon + commitment``; the rate is a constant.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dqkernels.models._dmol import DmolOutput, check_image_args
from dqkernels.nn.residual import ResidualBlock
from dqkernels.nn.vector_quantizer import VectorQuantizer
from dqkernels.reference.dmol import params_per_mixture

__all__ = ["VQVAE"]


def _block(width: int) -> ResidualBlock:
    """``x + conv1x1(relu(conv3x3(relu(x))))``."""
    return ResidualBlock(width, "relu", pre_activation="relu")


class VQVAE(DmolOutput, nn.Module):
    """Conv encoder, :class:`~dqkernels.nn.VectorQuantizer`, conv decoder to dmol params.

    Args:
        in_channels: C, 1 or 3.
        num_levels: L, levels per channel (17 digits, 2 binarized MNIST, 256 CIFAR-10).
        image_size: ``(H, W)``, each divisible by ``2**downsample``.
        num_codes: K. code_dim: D.
        width: channels of the encoder and decoder. num_blocks: residual blocks in each.
        downsample: stride-2 stages (latent grid ``H/2^s x W/2^s``).
        num_mixtures: M, logistic components per pixel.
        min_log_scale: lower clamp of the dmol log-scales.
        backend: dqkernels backend of the dmol and VQ ops (None: the one in force).
        **vq: the :class:`~dqkernels.nn.VectorQuantizer` options (``em``,
            ``num_samples``, ``decay``, ``eps``, ``beta``, ``dead_threshold``,
            ``reinit_dead``, ``temperature``).

    ``forward(levels)`` takes int64 ``[B, C, H, W]`` levels and returns a dict of per-image
    ``[B]`` tensors in nats: ``loss`` (``recon + commitment``, what training minimises),
    ``recon``, ``commitment``, ``rate``, ``bound`` (``recon + rate``), and the quantizer's
    0-dim ``perplexity``, ``used_codes`` and ``dead_codes``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_levels: int = 256,
        image_size: tuple[int, int] = (8, 8),
        *,
        num_codes: int = 256,
        code_dim: int = 16,
        width: int = 64,
        num_blocks: int = 2,
        downsample: int = 2,
        num_mixtures: int = 5,
        min_log_scale: float = -7.0,
        backend: str | None = None,
        **vq,
    ):
        super().__init__()
        check_image_args("VQVAE", in_channels, num_levels)
        if width < 1 or num_blocks < 0 or downsample < 0 or num_mixtures < 1:
            raise ValueError(
                f"VQVAE: need width >= 1, num_blocks >= 0, downsample >= 0, "
                f"num_mixtures >= 1; got {width}, {num_blocks}, {downsample}, "
                f"{num_mixtures}"
            )
        H, W = (int(s) for s in image_size)
        f = 2**downsample
        if H % f or W % f or H < f or W < f:
            raise ValueError(
                f"VQVAE: the image size {H}x{W} must be divisible by "
                f"2**downsample = {f} (downsample {downsample})"
            )
        self.quantizer = VectorQuantizer(num_codes, code_dim, backend=backend, **vq)
        self.config = dict(
            in_channels=in_channels,
            num_levels=num_levels,
            image_size=(H, W),
            num_codes=num_codes,
            code_dim=code_dim,
            width=width,
            num_blocks=num_blocks,
            downsample=downsample,
            num_mixtures=num_mixtures,
            min_log_scale=min_log_scale,
            **vq,
        )
        self.in_channels = in_channels
        self.num_levels = num_levels
        self.image_size = (H, W)
        self.latent_shape = (H // f, W // f)
        self.num_latents = (H // f) * (W // f)
        self.min_log_scale = min_log_scale
        self.backend = backend

        enc = [nn.Conv2d(in_channels, width, 3, padding=1)]
        for _ in range(downsample):
            enc += [nn.ReLU(), nn.Conv2d(width, width, 4, stride=2, padding=1)]
        enc += [_block(width) for _ in range(num_blocks)]
        enc += [nn.ReLU(), nn.Conv2d(width, code_dim, 1)]
        self.encoder = nn.Sequential(*enc)

        dec = [nn.Conv2d(code_dim, width, 3, padding=1)]
        dec += [_block(width) for _ in range(num_blocks)]
        for _ in range(downsample):
            dec += [nn.ReLU(), nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv2d(width, num_mixtures * params_per_mixture(in_channels), 1)]
        self.decoder = nn.Sequential(*dec)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            if isinstance(m, ResidualBlock):
                nn.init.zeros_(m.out.weight)
        last = self.encoder[-1]
        nn.init.normal_(last.weight, std=1.0 / math.sqrt(last.in_channels))

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    @property
    def rate(self) -> float:
        """Nats per image of the codes under the uniform prior: ``h*w*log K``."""
        return self.num_latents * math.log(self.num_codes)

    def _check(self, levels: torch.Tensor) -> None:
        C, (H, W) = self.in_channels, self.image_size
        if (
            not isinstance(levels, torch.Tensor)
            or levels.dtype.is_floating_point
            or levels.dim() != 4
            or tuple(levels.shape[1:]) != (C, H, W)
        ):
            got = (
                f"{tuple(levels.shape)} {str(levels.dtype).replace('torch.', '')}"
                if isinstance(levels, torch.Tensor)
                else type(levels).__name__
            )
            raise ValueError(f"VQVAE: expected integer levels [B, {C}, {H}, {W}]; got {got}")

    def grid(self, levels: torch.Tensor) -> torch.Tensor:
        """Levels to the model's input grid ``2k/(L-1) - 1`` in its parameters' dtype."""
        from dqkernels.data import levels_to_grid

        return levels_to_grid(levels, self.num_levels, self.encoder[0].weight.dtype)

    def nll(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """``-log p(x | codes)`` per image ``[B]`` of grid values ``x`` under dmol ``params``."""
        return self._dmol_nll(x, params).flatten(1).sum(1)

    def forward(self, levels: torch.Tensor) -> dict:
        self._check(levels)
        x = self.grid(levels)
        vq = self.quantizer(self.encoder(x), channel_dim=1)
        params = self.decoder(vq.quantized)
        recon = self.nll(x, params)
        commitment = vq.commitment.to(recon.dtype)
        rate = torch.full_like(recon, self.rate)
        return {
            "loss": recon + commitment,
            "recon": recon,
            "commitment": commitment,
            "rate": rate,
            "bound": recon + rate,
            "perplexity": vq.perplexity,
            "used_codes": vq.used_codes,
            "dead_codes": vq.dead_codes,
        }

    @torch.no_grad()
    def codes(self, levels: torch.Tensor) -> torch.Tensor:
        """The nearest code of every latent, int64 ``[B, h, w]`` (no EMA update)."""
        from dqkernels.ops import vq_nearest

        self._check(levels)
        z = self.encoder(self.grid(levels)).movedim(1, -1)
        codebook = self.quantizer.codebook().to(z.dtype)
        return vq_nearest(z.contiguous(), codebook, backend=self.quantizer.backend)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """dmol params ``[B, P, H, W]`` of the code indices ``[B, h, w]``."""
        dtype = self.decoder[0].weight.dtype
        z = self.quantizer.codebook().to(dtype)[codes]  # [B, h, w, D]
        return self.decoder(z.movedim(-1, 1))

    @torch.no_grad()
    def sample_levels(
        self, params: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Integer levels ``[B, C, H, W]`` drawn from ``p(x | codes)`` given its params."""
        from dqkernels.data import grid_to_levels

        return grid_to_levels(self._dmol_sample(params, generator), self.num_levels)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images as levels: codes drawn uniformly (the prior), decoded, sampled."""
        dev = self.decoder[0].weight.device
        codes = torch.randint(
            self.num_codes, (n, *self.latent_shape), generator=generator, device=dev
        )
        return self.sample_levels(self.decode(codes), generator)

    @torch.no_grad()
    def reconstruct(
        self, levels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Levels drawn from ``p(x | nearest codes of levels)``."""
        return self.sample_levels(self.decode(self.codes(levels)), generator)
