"""*Learning Discrete Distributions by Dequantization* (Hoogeboom, Cohen, Tomczak 2020).

A discrete image ``x`` (integer levels ``0 .. L-1``, ``D = C*H*W`` dimensions) is modelled
through a continuous density ``p(v)`` on ``[0, L)^D`` (a :class:`MultiScaleFlow` after a
logit preprocessing) and a dequantizer ``q(u | x)`` on the unit hypercube, ``v = x + u``::

    log P(x) = log E_{q(u|x)} [ p(x + u) / q(u | x) ] >= E_q [ log p(x + u) - log q(u | x) ]

Dequantizers (``q``):

- :class:`UniformDequantizer`: ``u ~ U[0, 1)^D``, ``log q = 0``.
- :class:`VariationalDequantizer` (Flow++): ``u = sigmoid(g(eps; x))``, ``eps ~ N(0, I)``,
  ``g`` a flow of coupling layers whose conditioning nets also see a context computed
  from ``x``; ``log q(u|x) = log N(eps) - log|det dg/deps| - sum log sigmoid'(g)``.
- :class:`AutoregressiveDequantizer` (ARD): the same with ``g`` an inverse autoregressive
  flow (IAF): each layer maps ``z -> (z + m(z)) * sigmoid(s(z) + 2)`` elementwise
  (:func:`dqkernels.ops.affine_coupling`), followed by a learned elementwise affine map
  (the gates only contract; this lets ``q`` widen, and starts ``q`` close to uniform),
  where ``m_d, s_d`` depend only on the dimensions before ``d`` (and on ``x``) through
  masked networks:
  :func:`dqkernels.ops.masked_conv2d` (PixelCNN masks, raster order then channel, default)
  or :func:`dqkernels.ops.masked_linear` (MADE). The Jacobian is triangular, so sampling
  ``u`` and ``log q(u|x)`` both take ONE parallel pass. Consecutive layers reverse the
  order (flip channels, rows and columns).

Objectives (``log w_k = log p(x + u_k) - log q(u_k | x)``, ``u_1..u_K ~ q``), per example:

- ``"elbo"``: ``mean_k log w_k``;
- ``"iw"``: ``log mean_k w_k`` (importance weighted, Burda et al.; tighter as K grows);
- ``"renyi"``: ``1/(1-alpha) log mean_k w_k^(1-alpha)`` (Li & Turner's variational Rényi
  bound) for ``0 <= alpha < 1``: ``alpha = 0`` is ``"iw"``, ``alpha -> 1`` the ELBO.

The training loss is minus the bound, in nats. Test bits/dim come from the importance
weighted bound with many samples (:meth:`DequantizationFlow.iw_nll`, evaluated in chunks
of samples so memory stays bounded); it is an upper bound on ``-log2 P(x) / D``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dqkernels.data import levels_to_grid
from dqkernels.models.flow import MultiScaleFlow, make_coupling, standard_normal_log_prob
from dqkernels.ops import affine_coupling

__all__ = [
    "AutoregressiveDequantizer",
    "DEQUANTIZERS",
    "DequantizationFlow",
    "OBJECTIVES",
    "UniformDequantizer",
    "VariationalDequantizer",
    "bound",
]

DEQUANTIZERS = ("uniform", "variational", "ard")
OBJECTIVES = ("elbo", "iw", "renyi")
ARD_NETS = ("conv", "made")


def bound(log_w: torch.Tensor, objective: str, alpha: float = 0.5) -> torch.Tensor:
    """The per-example bound from log-weights ``log_w`` (``[K, B]``): ``[B]``."""
    K = log_w.shape[0]
    if objective == "elbo":
        return log_w.mean(dim=0)
    if objective == "iw":
        return torch.logsumexp(log_w, dim=0) - math.log(K)
    if objective == "renyi":
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"renyi: alpha must be in [0, 1); got {alpha}")
        r = 1.0 - alpha
        return (torch.logsumexp(r * log_w, dim=0) - math.log(K)) / r
    raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}")


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _log_sigmoid_grad(h: torch.Tensor) -> torch.Tensor:
    """``sum log sigmoid'(h)`` per batch element: ``log sigmoid(h) + log sigmoid(-h)``."""
    v = F.logsigmoid(h) + F.logsigmoid(-h)
    return v.flatten(1).sum(dim=1)


class ContextNet(nn.Module):
    """Features of ``x`` (grid values in ``[-1, 1]``) for a conditional dequantizer:
    ``conv3x3 -> ELU -> [conv3x3 -> ELU] x blocks -> conv1x1``."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, num_blocks: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ELU()]
        for _ in range(num_blocks):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU()]
        layers.append(nn.Conv2d(hidden, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


class UniformDequantizer(nn.Module):
    """``u ~ U[0, 1)^D`` and ``log q(u | x) = 0``."""

    #: the base noise this dequantizer draws (see :meth:`DequantizationFlow.log_weights`)
    noise = "uniform"

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log q(u | x))`` for levels ``x`` (float ``[N, C, H, W]``); ``eps``: the
        uniform draw itself, drawn when not given."""
        u = torch.rand_like(x) if eps is None else eps
        return u, x.new_zeros(x.shape[0])


class _FlowDequantizer(nn.Module):
    """Shared by the variational and autoregressive dequantizers: the context net, the
    Gaussian base and the sigmoid onto the unit cube; subclasses define ``_flow(eps,
    context) -> (h, logdet)``."""

    noise = "normal"

    def __init__(
        self, in_channels: int, num_levels: int, context_channels: int, hidden: int, num_blocks: int
    ):
        super().__init__()
        self.num_levels = num_levels
        self.context = ContextNet(in_channels, context_channels, hidden, num_blocks)

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, log q(u | x))`` for levels ``x`` (float ``[N, C, H, W]``); ``eps`` (the
        Gaussian noise, drawn when not given) makes the draw a deterministic function."""
        ctx = self.context(levels_to_grid(x, self.num_levels, x.dtype))
        if eps is None:
            eps = torch.randn_like(x)
        h, logdet = self._flow(eps, ctx)
        log_q = standard_normal_log_prob(eps) - logdet - _log_sigmoid_grad(h)
        return torch.sigmoid(h), log_q

    def _flow(self, eps, ctx):
        raise NotImplementedError


class VariationalDequantizer(_FlowDequantizer):
    """Flow++'s variational dequantizer: conditional coupling layers on ``eps`` whose
    nets see a context of ``x``; masks cycle checkerboard (parity 0, 1) then channel
    (parity 0, 1) where there are >= 2 channels, checkerboard only otherwise."""

    def __init__(
        self,
        in_channels: int,
        num_levels: int,
        *,
        num_steps: int = 4,
        coupling: str = "mixlog",
        hidden: int = 64,
        num_blocks: int = 1,
        num_components: int = 8,
        context_channels: int = 16,
        backend: str | None = None,
    ):
        super().__init__(in_channels, num_levels, context_channels, hidden, num_blocks)
        self.steps = nn.ModuleList(
            make_coupling(
                coupling,
                in_channels,
                i % 2,
                hidden=hidden,
                num_blocks=num_blocks,
                num_components=num_components,
                context_channels=context_channels,
                mask="checkerboard" if in_channels < 2 or i % 4 < 2 else "channel",
                backend=backend,
            )
            for i in range(num_steps)
        )

    def _flow(self, eps, ctx):
        h, total = eps, None
        for layer in self.steps:
            h, ld = layer(h, context=ctx)
            total = ld if total is None else total + ld
        return h, total


class _ConvARNet(nn.Module):
    """PixelCNN-masked net: ``(shift, scale_logit)`` of every element from the elements
    before it in raster-then-channel order, plus an unmasked context of ``x``."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        num_blocks: int,
        context_channels: int,
        kernel_size: int,
        backend: str | None,
    ):
        super().__init__()
        from dqkernels.nn import MaskedConv2d

        width = max(hidden // channels, 1) * channels  # whole channel groups
        k = kernel_size
        self.first = MaskedConv2d(channels, width, k, "A", groups=channels, backend=backend)
        self.ctx = nn.Conv2d(context_channels, width, 1)
        self.blocks = nn.ModuleList(
            MaskedConv2d(width, width, k, "B", groups=channels, backend=backend)
            for _ in range(num_blocks)
        )
        # output channel 2c is the shift of channel c, 2c+1 its scale logit: both fall in
        # channel group c (o * C // 2C = o // 2)
        self.out = MaskedConv2d(width, 2 * channels, k, "B", groups=channels, backend=backend)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, z, ctx):
        h = F.elu(self.first(z) + self.ctx(ctx).to(z.dtype))
        for block in self.blocks:
            h = h + F.elu(block(h))
        out = self.out(h)
        return out[:, 0::2], out[:, 1::2]


class _MadeARNet(nn.Module):
    """MADE over the flattened ``C*H*W`` dimensions (raster-then-channel order, i.e.
    dimension ``(h*W + w)*C + c`` has degree ``1 + that index``)."""

    def __init__(
        self,
        channels: int,
        height: int,
        width: int,
        hidden: int,
        num_blocks: int,
        context_channels: int,
        backend: str | None,
    ):
        super().__init__()
        from dqkernels.nn import MaskedLinear

        C, H, W = channels, height, width
        D = C * H * W
        self.shape = (C, H, W)
        # the position of element (c, h, w) in raster-then-channel order, 1-based
        order = torch.arange(H * W).view(1, H, W) * C + torch.arange(C).view(C, 1, 1) + 1
        in_deg = order.reshape(-1)  # degrees in [C, H, W] flat layout
        # hidden degrees ascending in 1 .. D-1 (a staircase the kernels skip along)
        hid_deg = 1 + (torch.arange(hidden) * max(D - 1, 1)) // hidden
        hid_deg = hid_deg.clamp(max=max(D - 1, 1))
        out_deg = in_deg.repeat_interleave(2)  # (shift, scale) of each element
        self.first = MaskedLinear(D, hidden, in_deg, hid_deg, strict=False, backend=backend)
        self.ctx = nn.Linear(context_channels * H * W, hidden)
        self.blocks = nn.ModuleList(
            MaskedLinear(hidden, hidden, hid_deg, hid_deg, strict=False, backend=backend)
            for _ in range(num_blocks)
        )
        self.out = MaskedLinear(hidden, 2 * D, hid_deg, out_deg, strict=True, backend=backend)
        nn.init.zeros_(self.out.weight)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)

    def forward(self, z, ctx):
        N = z.shape[0]
        h = F.elu(self.first(z.reshape(N, -1)) + self.ctx(ctx.reshape(N, -1)).to(z.dtype))
        for block in self.blocks:
            h = h + F.elu(block(h))
        out = self.out(h).view(N, -1, 2)
        return out[..., 0].view(N, *self.shape), out[..., 1].view(N, *self.shape)


class AutoregressiveDequantizer(_FlowDequantizer):
    """ARD: an inverse autoregressive flow on ``eps`` (see the module docstring)."""

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        num_levels: int,
        *,
        num_steps: int = 4,
        net: str = "conv",
        hidden: int = 64,
        num_blocks: int = 1,
        context_channels: int = 16,
        kernel_size: int = 3,
        backend: str | None = None,
    ):
        super().__init__(in_channels, num_levels, context_channels, hidden, num_blocks)
        if net not in ARD_NETS:
            raise ValueError(
                f"AutoregressiveDequantizer: net must be one of {', '.join(ARD_NETS)}; got {net!r}"
            )
        self.backend = backend
        # Each IAF layer's gate sigmoid(s + 2) is < 1, so the layers can only contract;
        # a learned per-element log-scale after them lets q widen. It starts where u is
        # close to uniform at initialisation: sigmoid of a logistic variable (std pi/sqrt 3)
        # is uniform, and the zero-initialised layers scale eps by sigmoid(2) each.
        init = math.log(math.pi / math.sqrt(3.0)) - num_steps * math.log(_sigmoid(2.0))
        self.out_log_scale = nn.Parameter(torch.full((in_channels, height, width), init))
        self.out_shift = nn.Parameter(torch.zeros(in_channels, height, width))
        if net == "conv":
            self.nets = nn.ModuleList(
                _ConvARNet(in_channels, hidden, num_blocks, context_channels, kernel_size, backend)
                for _ in range(num_steps)
            )
        else:
            self.nets = nn.ModuleList(
                _MadeARNet(
                    in_channels, height, width, hidden, num_blocks, context_channels, backend
                )
                for _ in range(num_steps)
            )

    def _flow(self, eps, ctx):
        z, total = eps, None
        for i, net in enumerate(self.nets):
            flip = i % 2 == 1  # reverse the autoregressive order every other layer
            zi = z.flip((1, 2, 3)) if flip else z
            shift, scale_logit = net(zi, ctx.flip((2, 3)) if flip else ctx)
            zi, ld = affine_coupling(zi, shift, scale_logit, backend=self.backend)
            z = zi.flip((1, 2, 3)) if flip else zi
            total = ld if total is None else total + ld
        ls = self.out_log_scale.to(z.dtype)
        z = z * torch.exp(ls) + self.out_shift.to(z.dtype)
        total = total + ls.sum().to(total.dtype)
        return z, total


class DequantizationFlow(nn.Module):
    """A flow on dequantized images, trained through a bound on ``log P(x)``.

    Args:
        flow: the density on the preprocessed ``y = logit(a + (1 - 2a) (x + u) / L)``.
        dequantizer: :class:`UniformDequantizer`, :class:`VariationalDequantizer` or
            :class:`AutoregressiveDequantizer`.
        num_levels: L.
        objective: ``"elbo"``, ``"iw"`` or ``"renyi"``.
        num_samples: K, dequantization samples per example in the training bound.
        alpha: Rényi's alpha (``"renyi"`` only), in ``[0, 1)``.
        logit_margin: ``a`` of the preprocessing (keeps the logit finite at the cube's edges).

    ``forward(x)`` (integer levels ``[B, C, H, W]``) returns ``{"loss": -bound [B],
    "elbo": mean_k log w_k [B], "log_q": mean_k log q [B]}`` in nats.
    """

    def __init__(
        self,
        flow: MultiScaleFlow,
        dequantizer: nn.Module,
        num_levels: int,
        *,
        objective: str = "elbo",
        num_samples: int = 1,
        alpha: float = 0.5,
        logit_margin: float = 0.05,
    ):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(
                f"DequantizationFlow: objective must be one of "
                f"{', '.join(OBJECTIVES)}; got {objective!r}"
            )
        if num_samples < 1:
            raise ValueError(f"DequantizationFlow: num_samples must be >= 1; got {num_samples}")
        if objective == "renyi" and not 0.0 <= alpha < 1.0:
            raise ValueError(f"DequantizationFlow: alpha must be in [0, 1); got {alpha}")
        if not 0.0 < logit_margin < 0.5:
            raise ValueError(
                f"DequantizationFlow: logit_margin must be in (0, 0.5); got {logit_margin}"
            )
        self.flow = flow
        self.dequantizer = dequantizer
        self.num_levels = num_levels
        self.objective = objective
        self.num_samples = num_samples
        self.alpha = float(alpha)
        self.logit_margin = float(logit_margin)

    def _check(self, x: torch.Tensor, where: str) -> None:
        want = self.flow.input_shape
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"DequantizationFlow.{where}: x must be levels of shape [B, "
                f"{', '.join(map(str, want))}]; got {got}"
            )

    def preprocess(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y = logit(a + (1 - 2a) v / L)`` and ``log |dy/dv|`` summed per example."""
        a, L = self.logit_margin, self.num_levels
        s = a + (1.0 - 2.0 * a) * (v / L)
        y = torch.log(s) - torch.log1p(-s)
        per = -torch.log(s) - torch.log1p(-s)
        D = math.prod(v.shape[1:])
        return y, per.flatten(1).sum(dim=1) + D * math.log((1.0 - 2.0 * a) / L)

    def _dtype(self) -> torch.dtype:
        p = next(self.flow.parameters(), None)
        return torch.float32 if p is None else p.dtype

    def draw_noise(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The dequantizer's base noise for ``num_samples`` draws per example of ``x``:
        ``[num_samples * B, C, H, W]``, uniform or standard normal (see ``noise``)."""
        shape = (num_samples * x.shape[0],) + tuple(x.shape[1:])
        kw = dict(generator=generator, dtype=self._dtype(), device=x.device)
        if getattr(self.dequantizer, "noise", "uniform") == "uniform":
            return torch.rand(shape, **kw)
        return torch.randn(shape, **kw)

    def log_weights(
        self, x: torch.Tensor, num_samples: int, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log w, log q)``, each ``[num_samples, B]``: ``log w = log p(x + u) - log q(u|x)``
        for ``num_samples`` draws ``u ~ q(u | x)`` per example (one batched pass). ``noise``
        (from :meth:`draw_noise`) fixes the draws; by default they are random."""
        B = x.shape[0]
        dtype = self._dtype()
        xr = x.to(dtype).repeat(num_samples, 1, 1, 1)
        if noise is not None and tuple(noise.shape) != tuple(xr.shape):
            raise ValueError(
                f"DequantizationFlow: noise must have shape {tuple(xr.shape)} "
                f"(num_samples * B, C, H, W); got {tuple(noise.shape)}"
            )
        u, log_q = self.dequantizer(xr, noise)
        y, ld = self.preprocess(xr + u.to(dtype))
        log_p = self.flow(y) + ld
        return (log_p - log_q).view(num_samples, B), log_q.view(num_samples, B)

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self._check(x, "forward")
        log_w, log_q = self.log_weights(x, self.num_samples, noise)
        b = bound(log_w, self.objective, self.alpha)
        return {"loss": -b, "elbo": log_w.mean(dim=0), "log_q": log_q.mean(dim=0)}

    @torch.no_grad()
    def iw_nll(
        self, x: torch.Tensor, num_samples: int = 1000, max_rows: int = 8192
    ) -> torch.Tensor:
        """``-log mean_k w_k`` per example (nats, ``[B]``) with ``num_samples`` importance
        samples, drawn in chunks of ``max(1, max_rows // B)`` samples, i.e. at most
        ``max(max_rows, B)`` flow rows per pass (the trainer passes batches of
        ``--eval-batch-size`` images)."""
        self._check(x, "iw_nll")
        if num_samples < 1:
            raise ValueError(f"iw_nll: num_samples must be >= 1; got {num_samples}")
        B = x.shape[0]
        if B == 0:
            return torch.zeros(0, dtype=torch.float32, device=x.device)
        chunk = max(1, min(num_samples, max_rows // max(B, 1)))
        parts = []
        done = 0
        while done < num_samples:
            k = min(chunk, num_samples - done)
            log_w, _ = self.log_weights(x, k)
            parts.append(torch.logsumexp(log_w.double(), dim=0))
            done += k
        total = torch.logsumexp(torch.stack(parts), dim=0) - math.log(num_samples)
        return (-total).float()

    @torch.no_grad()
    def sample(
        self, n: int, *, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``n`` images as integer levels ``[n, C, H, W]`` (int64): ``y`` from the flow,
        undone preprocessing, ``x = floor(v)`` clamped to ``0 .. L-1``."""
        y = self.flow.sample(n, temperature=temperature, generator=generator, dtype=self._dtype())
        a, L = self.logit_margin, self.num_levels
        v = (torch.sigmoid(y.double()) - a) * (L / (1.0 - 2.0 * a))
        return v.floor().clamp(0, L - 1).to(torch.int64)
