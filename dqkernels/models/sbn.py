"""Sigmoid belief networks with a recognition network (the models of Mnih & Gregor 2014,
"Neural variational inference and learning in belief networks"; Gu et al. 2016, "MuProp";
Tokui & Sato 2017, "Evaluating the variance of likelihood-ratio gradient estimators").

Layers ``z_0 = x`` (``D`` binary units), ``z_1 .. z_L`` (``layers = (H_1, .., H_L)``, binary).

* Generative model ``p(x, z) = p(z_L) prod_{k<L} p(z_k | z_{k+1})``: a factorial Bernoulli
  prior ``p(z_L) = prod Bern(sigmoid(prior_logits))`` and ``p(z_k | z_{k+1}) =
  prod Bern(sigmoid(gen[k](z_{k+1})))``.
* Recognition network ``q(z | x) = prod_{k>=1} q(z_k | z_{k-1})``,
  ``q(z_k | z_{k-1}) = prod Bern(sigmoid(rec[k-1](z_{k-1})))``, the same depth.

Each stochastic connection ``gen[k]``, ``rec[k]`` is one affine map (``nonlinear=False``: the
"linear" SBN, e.g. ``SBN(784, (200, 200))`` is 200-200-784) or an MLP with ``tanh`` hidden
layers (``nonlinear=True``, hidden widths ``hidden``, default two of 100: the nonlinear
SBNs of the NVIL and MuProp comparisons put deterministic tanh layers between the stochastic
ones; set ``hidden`` to the widths of the configuration you compare with).

Sampling uses explicit uniforms so that common random numbers are possible:
``z_k = 1[u_k < sigmoid(a_k)]``, ``a_k = rec[k-1](z_{k-1})`` (:meth:`SBN.sample_posterior`).
``log Bern(z; sigmoid(a)) = z a - softplus(a)`` everywhere (finite for any logit).
All log-probabilities are per example, in nats.

The gradient estimators that train these models are in :mod:`dqkernels.models.sbn_estimators`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SBN", "PosteriorSample", "bernoulli_log_prob"]


def bernoulli_log_prob(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``log Bern(z; sigmoid(logits))`` elementwise, ``z`` in [0, 1] (a continuous ``z`` gives
    the cross-entropy)."""
    return -F.binary_cross_entropy_with_logits(logits, z, reduction="none")


def _connection(n_in: int, n_out: int, hidden: Sequence[int]) -> nn.Module:
    """One stochastic connection: affine (``hidden == ()``) or an MLP with tanh hidden layers."""
    if not hidden:
        return nn.Linear(n_in, n_out)
    mods: list[nn.Module] = []
    prev = n_in
    for h in hidden:
        mods += [nn.Linear(prev, h), nn.Tanh()]
        prev = h
    mods.append(nn.Linear(prev, n_out))
    return nn.Sequential(*mods)


@dataclass
class PosteriorSample:
    """A draw from ``q(z | x)``: ``z[k]`` for k = 0..L (``z[0] = x``), the recognition logits
    ``logits[k] = rec[k-1](z[k-1])`` for k = 1..L (``logits[0]`` is None) and the uniforms
    ``u[k]`` that made ``z[k] = 1[u[k] < sigmoid(logits[k])]`` (``u[0]`` is None)."""

    z: list[torch.Tensor]
    logits: list[torch.Tensor | None]
    u: list[torch.Tensor | None]


class SBN(nn.Module):
    """A sigmoid belief network ``p(x, z)`` with a recognition network ``q(z | x)``.

    Args:
        num_dims: D, the number of visible binary units.
        layers: ``(H_1, .., H_L)``, the stochastic layers from the bottom (next to x) up.
        nonlinear: each connection an MLP with tanh hidden layers of widths ``hidden``
            instead of one affine map.
        hidden: the MLPs' hidden widths (only with ``nonlinear``).
        backend: dqkernels backend of the fused flip op the local-expectation estimators
            call on linear connections (None: the default dispatch, i.e. the trainer's
            ``--backend``).
    """

    def __init__(
        self,
        num_dims: int,
        layers: Sequence[int] = (200, 200),
        *,
        nonlinear: bool = False,
        hidden: Sequence[int] = (100, 100),
        backend: str | None = None,
    ):
        super().__init__()
        self.backend = backend
        layers = tuple(layers)
        for name, v in [("num_dims", num_dims), *[("layers", h) for h in layers]]:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SBN: {name} must be positive integers; got {v!r}")
        if not layers:
            raise ValueError("SBN: layers must name at least one stochastic layer; got ()")
        hidden = tuple(hidden) if nonlinear else ()
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"SBN: hidden must be positive integers; got {hidden!r}")
        self.num_dims, self.layers, self.nonlinear, self.hidden = (
            num_dims,
            layers,
            nonlinear,
            hidden,
        )
        self.sizes = (num_dims, *layers)
        L = len(layers)
        self.prior_logits = nn.Parameter(torch.zeros(layers[-1]))
        # gen[k]: z_{k+1} -> logits of z_k; rec[k]: z_k -> logits of z_{k+1}.
        self.gen = nn.ModuleList(
            [_connection(self.sizes[k + 1], self.sizes[k], hidden) for k in range(L)]
        )
        self.rec = nn.ModuleList(
            [_connection(self.sizes[k], self.sizes[k + 1], hidden) for k in range(L)]
        )

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def generative_parameters(self) -> list[nn.Parameter]:
        return [self.prior_logits, *self.gen.parameters()]

    def recognition_parameters(self) -> list[nn.Parameter]:
        return list(self.rec.parameters())

    def check_input(self, x, who: str = "SBN") -> None:
        """``x``: a floating ``[B, D]`` tensor on the model's device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{who}: x must be a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{who}: x must be a floating tensor; got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"{who}: x must have shape [B, {self.num_dims}]; got {tuple(x.shape)}")
        p = self.prior_logits
        if x.device != p.device:
            raise ValueError(f"{who}: x must be on {p.device} (the model's); got {x.device}")
        if x.dtype != p.dtype:
            raise TypeError(
                f"{who}: x must have the model's dtype {p.dtype}; got {x.dtype} "
                "(convert x or the model with .to())"
            )

    # ------------------------------------------------------------------ recognition network

    def draw_uniforms(self, batch: int, like: torch.Tensor) -> list[torch.Tensor | None]:
        """Fresh uniforms ``[None, u_1, .., u_L]`` for :meth:`sample_posterior`."""
        return [None] + [
            torch.rand(batch, h, device=like.device, dtype=like.dtype) for h in self.layers
        ]

    def check_uniforms(self, u, batch: int, who: str = "SBN") -> None:
        if not isinstance(u, (list, tuple)) or len(u) != self.num_layers + 1:
            n = len(u) if isinstance(u, (list, tuple)) else "?"
            raise ValueError(
                f"{who}: u must be a list [None, u_1, .., u_L] of {self.num_layers + 1} "
                f"entries; got {type(u).__name__} of length {n}"
            )
        for k, h in enumerate(self.layers, start=1):
            if not isinstance(u[k], torch.Tensor) or tuple(u[k].shape) != (batch, h):
                got = tuple(u[k].shape) if isinstance(u[k], torch.Tensor) else type(u[k]).__name__
                raise ValueError(f"{who}: u[{k}] must have shape ({batch}, {h}); got {got}")
            if u[k].device != self.prior_logits.device:
                raise ValueError(
                    f"{who}: u[{k}] must be on {self.prior_logits.device} (the model's); "
                    f"got {u[k].device}"
                )

    def sample_posterior(
        self, x: torch.Tensor, u: list[torch.Tensor | None] | None = None
    ) -> PosteriorSample:
        """Samples ``q(z | x)`` layer by layer, ``z_k = 1[u_k < sigmoid(rec[k-1](z_{k-1}))]``.

        ``u`` (``[None, u_1, .., u_L]``, ``u_k`` of shape ``[B, H_k]``) defaults to fresh
        uniforms. The samples carry no gradient; the logits do."""
        self.check_input(x)
        if u is None:
            u = self.draw_uniforms(x.shape[0], x)
        else:
            self.check_uniforms(u, x.shape[0])
        zs: list[torch.Tensor] = [x]
        logits: list[torch.Tensor | None] = [None]
        for k in range(1, self.num_layers + 1):
            a = self.rec[k - 1](zs[-1])
            logits.append(a)
            zs.append((u[k] < torch.sigmoid(a.detach())).to(x.dtype))
        return PosteriorSample(zs, logits, list(u))

    def resimulate(
        self,
        z_l: torch.Tensor | None,
        l: int,
        u: list[torch.Tensor | None],
        a_next: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Given layer ``l``'s values ``z_l`` (``[N, H_l]``, N a multiple of the uniforms'
        batch B: copies grouped per example, ``N = B * C``), re-samples layers ``l+1 .. L``
        with the same uniforms ``u`` (common random numbers). ``a_next`` optionally gives
        ``rec[l](z_l)`` already computed (``z_l`` may then be None: it is not needed).
        Returns ``(z, a)``: ``z[j]`` and ``a[j]`` the values and recognition logits of layer
        ``l + 1 + j``."""
        if z_l is None and a_next is None:
            raise ValueError("SBN.resimulate: give z_l or a_next")
        zs, logits = [], []
        z = z_l
        for k in range(l + 1, self.num_layers + 1):
            a = self.rec[k - 1](z) if (k > l + 1 or a_next is None) else a_next
            uk = u[k]
            assert uk is not None
            copies = a.shape[0] // uk.shape[0] if uk.shape[0] else 1
            uk = uk.repeat_interleave(copies, dim=0)
            z = (uk < torch.sigmoid(a)).to(a.dtype)
            zs.append(z)
            logits.append(a)
        return zs, logits

    # ------------------------------------------------------------------ densities

    def generative_logits(self, k: int, z_above: torch.Tensor | None) -> torch.Tensor:
        """Logits of ``p(z_k | z_{k+1})`` (``k < L``) or of the prior (``k == L``)."""
        if k == self.num_layers:
            return self.prior_logits
        assert z_above is not None
        return self.gen[k](z_above)

    def log_joint(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``log p(x, z)`` per example for ``zs = [x, z_1, .., z_L]`` (values in [0, 1])."""
        L = self.num_layers
        total = bernoulli_log_prob(zs[L], self.prior_logits.expand_as(zs[L])).sum(-1)
        for k in range(L):
            total = total + bernoulli_log_prob(zs[k], self.gen[k](zs[k + 1])).sum(-1)
        return total

    def log_posterior(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``log q(z | x)`` per example for ``zs = [x, z_1, .., z_L]``."""
        total = zs[0].new_zeros(zs[0].shape[0])
        for k in range(1, self.num_layers + 1):
            total = total + bernoulli_log_prob(zs[k], self.rec[k - 1](zs[k - 1])).sum(-1)
        return total

    def elbo(self, x: torch.Tensor, u: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        """One-sample ELBO ``log p(x, z) - log q(z | x)``, ``z ~ q(z | x)``, per example."""
        s = self.sample_posterior(x, u)
        return self.log_joint(s.z) - self.log_posterior(s.z)

    @torch.no_grad()
    def iw_bound(self, x: torch.Tensor, num_samples: int, *, chunk: int = 100) -> torch.Tensor:
        """The importance-weighted bound ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` with
        ``K = num_samples`` draws from ``q`` (Burda et al. 2016), per example, in nats;
        ``<= log p(x)``, tightening as K grows. Drawn ``chunk`` samples at a time."""
        self.check_input(x, "SBN.iw_bound")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(
                f"SBN.iw_bound: num_samples must be a positive int; got {num_samples!r}"
            )
        B = x.shape[0]
        parts = []
        done = 0
        while done < num_samples:
            c = min(chunk, num_samples - done)
            xr = x.repeat(c, 1)  # [c*B, D], sample j of example b at j*B + b
            parts.append(self.elbo(xr).view(c, B))
            done += c
        log_w = torch.cat(parts, 0)
        return torch.logsumexp(log_w, 0) - math.log(num_samples)

    @torch.no_grad()
    def sample(self, num: int, *, means: bool = True) -> torch.Tensor:
        """Ancestral samples ``z_L ~ p(z_L)``, ..., ``z_1``, then ``x``: the Bernoulli means
        ``sigmoid(gen[0](z_1))`` of x (``means=True``) or binary x, ``[num, D]``."""
        p = self.prior_logits
        z = torch.rand(num, self.layers[-1], device=p.device, dtype=p.dtype) < torch.sigmoid(p)
        z = z.to(p.dtype)
        for k in range(self.num_layers - 1, -1, -1):
            prob = torch.sigmoid(self.gen[k](z))
            if k == 0 and means:
                return prob
            z = (torch.rand_like(prob) < prob).to(p.dtype)
        return z
