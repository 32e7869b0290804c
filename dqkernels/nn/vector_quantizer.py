"""Vector quantisation with an EMA codebook, trained by hard or soft EM (Roy et al. 2018).

:class:`VectorQuantizer` maps each ``D``-dim latent ``z`` (channels-last ``[B, ..., D]``, or
``[B, D, H, W]`` with ``channel_dim=1``) to code vectors of a codebook of ``K`` codes:

* **hard EM** (VQ-VAE): ``z_q = e_k`` with ``k = argmin_k |z - e_k|^2``
  (:func:`dqkernels.ops.vq_nearest`: exact, ties to the lowest index);
* **soft EM**: ``m`` codes ``k_1..k_m`` drawn from ``softmax_k(-|z - e_k|^2 / T)``
  (:func:`dqkernels.ops.vq_sample`, from torch's global generator) and
  ``z_q = mean_j e_{k_j}``.

The output is the straight-through estimate ``z + sg(z_q - z)`` (the gradient of ``z`` is
the gradient of the output), with the commitment loss ``beta * |z - sg(z_q)|^2`` summed
per example over every dimension but the first. The codebook gets no gradient.

Codebook. Two buffers, float32 whatever the input or autocast dtype (``module.half()`` and
``.to(torch.bfloat16)`` leave them in float32; ``.double()`` makes them float64):
``cluster_size`` ``[K]`` (EMA of the number of vectors assigned to each code per step)
and ``embed_sum`` ``[K, D]`` (EMA of their sum). The codebook is
``embed_sum / smoothed`` with the Laplace-smoothed counts
``smoothed_k = (n_k + eps) / (n + K eps) * n``, ``n = sum_k n_k``. In training mode every
forward applies :func:`dqkernels.ops.vq_ema_update` (``decay``; a soft-EM sample counts
``1/m``) after the quantisation, which used the codebook from before the update. Eval mode
never updates.

Initialisation (``init``): ``"batch"`` (default) sets every code, at the first forward in
training mode and before quantising it, to a vector drawn from that (global) batch
(without replacement where a rank has at least K vectors), with ``cluster_size = 1``;
``"normal"`` sets ``embed_sum`` from ``N(0, 1)`` at construction (torch's global
generator, so ranks seeded alike build the same codebook) with ``cluster_size = 1``. Either
way each code starts as if its initial vector had been assigned to it once. A random
normal codebook far from the encoder's outputs lets one code take every latent from the
first step; codes drawn from the data do not. The buffer ``initialized`` records that the
batch initialisation happened (it is in the ``state_dict``); until then the codebook is
the normal one.

Dead codes: a code whose EMA count ``n_k`` is below ``dead_threshold`` (default 0.01:
fewer than one assignment per hundred steps on average within the EMA's horizon). Starting
from the count 1, an unused code becomes dead after ``log(dead_threshold) / log(decay)``
steps (4603 at decay 0.999, 459 at 0.99). With ``reinit_dead`` every training step gives
each dead code a vector drawn uniformly from the step's (global) batch, ``embed_sum_k =
z`` and ``cluster_size_k = 1`` (the same draw as the batch initialisation).

Evaluation: hard and soft EM both take the nearest code in eval mode (the MAP assignment;
then the decoder's input is a function of one code per latent, so ``log K`` nats per latent
under a uniform prior is a valid rate).

Metrics, as 0-dim tensors (no device sync): ``perplexity = exp(H(p))`` of the step's code
usage ``p_k = c_k / sum c`` (``c_k`` the number of vectors assigned to code ``k``, a
soft-EM sample counting ``1/m``), ``used_codes = #{k: c_k > 0}`` and ``dead_codes`` from
the EMA counts (after this step's update, before any re-initialisation).

Distributed data parallel: when ``torch.distributed`` is initialised with more than one
process, a training step computes the local counts and sums
(``vq_ema_update`` of zero state with ``decay=0``), all-reduces them (SUM) and mixes the
global statistics into the state, so every rank holds the codebook of a single process
that saw the global batch; the usage metrics are of the global batch. Batch
initialisation and re-initialisation all-gather ``K`` candidate vectors and the batch size
of every rank; rank 0 picks a source rank per code (in proportion to the ranks' batch
sizes) and broadcasts the picks.
Every collective has the same shape on every rank whatever its batch size (an empty local
batch included), so all ranks must call ``forward`` in training mode together.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn

from dqkernels.ops import vq_ema_update, vq_nearest, vq_sample
from dqkernels.ops._common import accumulate_dtype

__all__ = ["EM_MODES", "INIT_MODES", "VQOutput", "VectorQuantizer"]

EM_MODES = ("hard", "soft")
INIT_MODES = ("batch", "normal")
_STATE_DTYPES = (torch.float32, torch.float64)


class VQOutput(NamedTuple):
    """What :meth:`VectorQuantizer.forward` returns."""

    quantized: torch.Tensor  #: ``z + sg(z_q - z)``, z's shape and dtype
    commitment: torch.Tensor  #: ``[B]`` float32 (float64 for float64 z): beta |z - sg(z_q)|^2
    indices: torch.Tensor  #: int64, z's shape without D (hard / eval), plus ``[m]`` (soft)
    perplexity: torch.Tensor  #: 0-dim, exp of the entropy of the step's code usage
    used_codes: torch.Tensor  #: 0-dim, codes assigned at least once in the step
    dead_codes: torch.Tensor  #: 0-dim, codes whose EMA count is below ``dead_threshold``


def _world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _check_number(
    name: str, value, low: float, high: float = math.inf, *, low_open: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"VectorQuantizer: {name} must be a number; got {type(value).__name__}")
    value = float(value)
    ok = (value > low if low_open else value >= low) and value <= high
    if not ok or math.isnan(value):
        lo = "(" if low_open else "["
        hi = "]" if math.isfinite(high) else ")"
        raise ValueError(
            f"VectorQuantizer: {name} must be in {lo}{low:g}, {high:g}{hi}; got {value:g}"
        )
    return value


def _check_count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"VectorQuantizer: {name} must be an int; got {type(value).__name__}")
    if value < low:
        raise ValueError(f"VectorQuantizer: {name} must be >= {low}; got {value}")
    return value


class VectorQuantizer(nn.Module):
    """EMA-codebook vector quantiser trained by hard or soft EM (see the module docstring).

    Args:
        num_codes: K, codebook size.
        dim: D, dimension of the latents and codes.
        em: ``"hard"`` (nearest code) or ``"soft"`` (mean of ``num_samples`` sampled codes).
        num_samples: m, codes drawn per latent in soft EM.
        decay: EMA decay of the counts and sums, in ``[0, 1]``.
        eps: Laplace smoothing of the counts, > 0.
        beta: weight of the commitment loss, >= 0.
        dead_threshold: EMA count below which a code is dead, >= 0.
        reinit_dead: re-initialise dead codes from batch vectors in every training step.
        temperature: T of soft EM's ``softmax(-|z - e|^2 / T)``, > 0.
        init: ``"batch"`` (codes drawn from the first training batch) or ``"normal"``.
        backend: dqkernels backend of the VQ ops (None: the one in force).
    """

    # buffers (registered in __init__; declared here for the type checker)
    cluster_size: torch.Tensor
    embed_sum: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        em: str = "hard",
        num_samples: int = 10,
        decay: float = 0.999,
        eps: float = 1e-5,
        beta: float = 0.25,
        dead_threshold: float = 0.01,
        reinit_dead: bool = False,
        temperature: float = 1.0,
        init: str = "batch",
        backend: str | None = None,
    ):
        super().__init__()
        self.num_codes = _check_count("num_codes", num_codes)
        self.dim = _check_count("dim", dim)
        if em not in EM_MODES:
            raise ValueError(
                f"VectorQuantizer: em must be one of {', '.join(EM_MODES)}; got {em!r}"
            )
        self.em = em
        self.num_samples = _check_count("num_samples", num_samples)
        self.decay = _check_number("decay", decay, 0.0, 1.0)
        self.eps = _check_number("eps", eps, 0.0, low_open=True)
        self.beta = _check_number("beta", beta, 0.0)
        self.dead_threshold = _check_number("dead_threshold", dead_threshold, 0.0)
        self.temperature = _check_number("temperature", temperature, 0.0, low_open=True)
        self.reinit_dead = bool(reinit_dead)
        if init not in INIT_MODES:
            raise ValueError(
                f"VectorQuantizer: init must be one of {', '.join(INIT_MODES)}; got {init!r}"
            )
        self.init = init
        self.backend = backend
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", torch.randn(num_codes, dim))
        self.register_buffer("initialized", torch.tensor(init == "normal"))
        # Python-side cache of ``initialized`` (no device sync per step); reset on load
        self._known_initialized = init == "normal"

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False

    def is_initialized(self) -> bool:
        """Whether the codebook has been initialised (from a training batch for
        ``init="batch"``; always for ``init="normal"``)."""
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _apply(self, fn, recurse=True):
        # the EMA state stays in full precision whatever .half() / .to(bf16) ask for: a
        # conversion to a half dtype keeps the old values (moved to the new device)
        before = {name: getattr(self, name) for name in ("cluster_size", "embed_sum")}
        super()._apply(fn, recurse)
        for name, old in before.items():
            t = getattr(self, name)
            if t.dtype not in _STATE_DTYPES:
                setattr(self, name, old.to(device=t.device))
        return self

    def extra_repr(self) -> str:
        soft = (
            f", num_samples={self.num_samples}, temperature={self.temperature:g}"
            if self.em == "soft"
            else ""
        )
        return (
            f"{self.num_codes}, {self.dim}, em={self.em!r}{soft}, decay={self.decay:g}, "
            f"beta={self.beta:g}, dead_threshold={self.dead_threshold:g}, "
            f"reinit_dead={self.reinit_dead}, init={self.init!r}"
        )

    # ------------------------------------------------------------------ codebook

    def codebook(self) -> torch.Tensor:
        """``[K, D]`` in the state's dtype: ``embed_sum / smoothed counts`` (Laplace)."""
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        # n = 0 only after decay = 0 met an empty global batch: embed_sum is 0 too
        return self.embed_sum / torch.where(smoothed > 0, smoothed, 1.0)[:, None]

    def dead_mask(self) -> torch.Tensor:
        """``[K]`` bool: the codes whose EMA count is below ``dead_threshold``."""
        return self.cluster_size < self.dead_threshold

    # ------------------------------------------------------------------ forward

    def _check_input(self, z) -> None:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"VectorQuantizer: z must be a torch.Tensor; got {type(z).__name__}")
        if not z.dtype.is_floating_point:
            raise TypeError(
                f"VectorQuantizer: z must be a floating tensor; got dtype "
                f"{str(z.dtype).replace('torch.', '')}"
            )
        if z.dim() < 2 or z.shape[-1] != self.dim:
            raise ValueError(
                f"VectorQuantizer: z must be [B, ..., {self.dim}] (channels "
                f"last, D = {self.dim}); got shape {tuple(z.shape)}"
            )

    def forward(self, z: torch.Tensor, *, channel_dim: int = -1) -> VQOutput:
        """Quantise ``z``; ``channel_dim=1`` takes and returns ``[B, D, H, W]``-style input
        (indices then ``[B, H, W]`` (+ ``[m]``)). See :class:`VQOutput`."""
        if channel_dim not in (-1, 1):
            raise ValueError(
                f"VectorQuantizer: channel_dim must be -1 (channels last) or 1 "
                f"(channels first); got {channel_dim}"
            )
        if channel_dim == 1:
            if not isinstance(z, torch.Tensor) or z.dim() < 2:
                raise ValueError(
                    f"VectorQuantizer: z must be [B, {self.dim}, ...] with "
                    f"channel_dim=1; got "
                    f"{tuple(z.shape) if isinstance(z, torch.Tensor) else z}"
                )
            out = self.forward(z.movedim(1, -1))
            return out._replace(quantized=out.quantized.movedim(-1, 1))
        self._check_input(z)
        D = self.dim
        lead = z.shape[:-1]
        z2 = z.reshape(-1, D)
        if self.training and not self.is_initialized():
            self._initialize(z2.detach())
        codebook = self.codebook()  # the state's dtype
        search = codebook.to(z.dtype)
        soft = self.training and self.em == "soft"
        with torch.no_grad():
            if soft:
                idx = vq_sample(
                    z2.detach(),
                    search,
                    self.num_samples,
                    temperature=self.temperature,
                    backend=self.backend,
                )
                zq = codebook.index_select(0, idx.reshape(-1)).view(-1, self.num_samples, D)
                zq = zq.mean(1)
            else:
                idx, _ = vq_nearest(z2.detach(), search, backend=self.backend)
                zq = codebook.index_select(0, idx)
        acc = accumulate_dtype(z.dtype)
        diff = z2.to(acc) - zq.to(acc)
        per_vector = (diff * diff).sum(1).view(lead)
        commitment = self.beta * (
            per_vector.flatten(1).sum(1) if per_vector.dim() > 1 else per_vector
        )
        quantized = z + (zq.to(z.dtype).view(z.shape) - z).detach()
        indices = idx.view(*lead, self.num_samples) if soft else idx.view(lead)

        with torch.no_grad():
            if self.training:
                counts = self._update(z2.detach(), idx)
            else:
                counts = self._counts(idx)
            dead = self.dead_mask()
            dead_codes = dead.sum()
            # dead_mask is identical on every rank (all-reduced state), so all ranks take
            # this branch together; no draw (nor collectives) in a step without dead codes
            if self.training and self.reinit_dead and bool(dead.any()):
                cand, ok = self._draw(z2.detach())
                replace = dead & ok
                self.embed_sum.copy_(torch.where(replace[:, None], cand, self.embed_sum))
                self.cluster_size.masked_fill_(replace, 1.0)
            total = counts.sum()
            p = counts / total.clamp_min(torch.finfo(counts.dtype).tiny)
            entropy = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()
            perplexity = torch.exp(entropy)
            used = (counts > 0).sum()
        return VQOutput(quantized, commitment, indices, perplexity, used, dead_codes)

    def _counts(self, idx: torch.Tensor) -> torch.Tensor:
        """Local usage counts ``[K]`` in the state's dtype (a sample of S counts 1/S)."""
        S = idx.shape[1] if idx.dim() == 2 else 1
        c = torch.bincount(idx.reshape(-1), minlength=self.num_codes)
        return c.to(self.cluster_size.dtype) / S

    def _update(self, z2: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The EMA update (all-reduced statistics under DDP); returns the step's usage counts."""
        if _world() == 1:
            vq_ema_update(
                self.cluster_size, self.embed_sum, z2, idx, decay=self.decay, backend=self.backend
            )
            return self._counts(idx)
        K, D = self.num_codes, self.dim
        stats = torch.zeros(K * (D + 1), dtype=self.embed_sum.dtype, device=self.embed_sum.device)
        counts, sums = stats[:K], stats[K:].view(K, D)
        # views of one buffer: the op writes them in place, one collective sends both
        vq_ema_update(counts, sums, z2, idx, decay=0.0, backend=self.backend)
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
        return counts

    @torch.no_grad()
    def _initialize(self, z2: torch.Tensor) -> None:
        """Batch initialisation: every code from a vector of the (global) batch; an
        all-empty global batch leaves the codebook as it is (the next step tries again)."""
        cand, ok = self._draw(z2)
        if bool(ok):
            self.embed_sum.copy_(cand)
            self.cluster_size.fill_(1.0)
            self.initialized.fill_(True)
            self._known_initialized = True

    def _draw(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``K`` vectors drawn uniformly from the (global) batch, ``[K, D]`` in the state's
        dtype, and a 0-dim bool: whether that batch had any vector (else the draws are 0).
        A rank with ``n >= K`` vectors contributes distinct ones (no replacement)."""
        K = self.num_codes
        n = z2.shape[0]
        dev = self.embed_sum.device
        if n >= K:
            pick = torch.randperm(n, device=dev)[:K]
        elif n > 0:
            pick = torch.randint(n, (K,), device=dev)
        if n > 0:
            cand = z2.index_select(0, pick).to(self.embed_sum.dtype)
        else:
            cand = torch.zeros_like(self.embed_sum)
        world = _world()
        if world == 1:
            return cand, torch.tensor(n > 0, device=dev)
        cands = [torch.empty_like(cand) for _ in range(world)]
        dist.all_gather(cands, cand.contiguous())
        sizes = [torch.empty(1, dtype=torch.float64, device=dev) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([float(n)], dtype=torch.float64, device=dev))
        weights = torch.cat(sizes)
        total = weights.sum()
        source = torch.zeros(K, dtype=torch.int64, device=dev)
        if dist.get_rank() == 0:
            # code k takes candidate k of a rank drawn in proportion to the ranks' batch
            # sizes: a uniform draw from the union (an all-empty batch: any rank, unused)
            source = torch.multinomial(
                weights + (total == 0).to(weights.dtype), K, replacement=True
            )
        dist.broadcast(source, src=0)
        index = source.view(1, K, 1).expand(1, K, self.dim)
        return torch.stack(cands).gather(0, index).squeeze(0), total > 0
