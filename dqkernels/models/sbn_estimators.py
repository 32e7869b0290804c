"""Gradient estimators for sigmoid belief networks (:class:`dqkernels.models.sbn.SBN`),
one interface, chosen by name (:func:`make_estimator`, :data:`ESTIMATORS`).

Every estimator is an ``nn.Module`` (it may hold state: moving averages, a baseline network)
called as ``estimator(model, x, u=None) -> Estimate``. ``Estimate.loss`` is a per-example
surrogate ``[B]`` whose *value* is minus the one-sample ELBO ``f = log p(x, z) - log q(z | x)``
of the sample ``z = 1[u < sigmoid(a)]`` (nats) and whose *gradient* is minus the estimate
of the ELBO's gradient, for the generative parameters and the recognition parameters alike:
``loss.mean().backward()`` leaves ``-grad ELBO`` (batch mean) in ``.grad``. ``u``
(``[None, u_1, .., u_L]``, as :meth:`SBN.sample_posterior`) makes draws reproducible and
allows common random numbers across estimators.

The generative gradient is ``grad_theta log p(x, z)`` at the sampled ``z`` for all the
unbiased estimators. They differ for the recognition parameters ``phi``: with
``a_l = rec[l-1](z_{l-1})`` the logits of layer l, every unbiased estimator below computes
``sum_l sum_h c_{l,h} * grad_phi a_{l,h}`` with a per-unit coefficient ``c`` (detached):

=====================  ==========  ==============================================================
name                   unbiased    recognition gradient
=====================  ==========  ==============================================================
``reinforce``          yes         likelihood ratio ``f grad log q(z | x)`` (Williams 1992)
``reinforce_baseline`` yes         ``(f - b) grad log q``, ``b`` a moving average of ``f``
``nvil``               yes [*]_    input-dependent baseline network + variance normalisation
                                   (Mnih & Gregor 2014)
``muprop``             yes         first-order Taylor baseline around the mean-field network
                                   (Gu, Levine, Sutskever & Mnih 2016)
``leg``                yes         local expectation gradients (Titsias & Lázaro-Gredilla 2015)
``tokui``              yes         marginalise each unit, re-simulate its descendants with the
                                   same uniforms (Tokui & Sato 2017)
``arm``                yes         augment-REINFORCE-merge (Yin & Zhou 2019)
``disarm``             yes         DisARM (Dong, Mnih & Tucker 2020)
``straight_through``   NO          the sample's gradient replaced by ``sigmoid'(a)`` (Bengio et
                                   al. 2013)
``gumbel``             NO          the Concrete / Gumbel-softmax relaxation at temperature tau
                                   (Maddison et al. 2017; Jang et al. 2017)
=====================  ==========  ==============================================================

.. [*] NVIL divides the recognition gradient by ``max(1, sqrt(v))``, ``v`` a running variance
   held fixed during the step: unbiased up to that known positive scale.

The score-function estimators drop the term ``E[grad_phi f] = -E[grad_phi log q] = 0``
(``f`` treated as a constant in ``phi``); so do the local-expectation ones.

Costs per step (B examples, layers ``H_1..H_L``, linear connections): the likelihood-ratio
family, MuProp (one mean-field pass and its backward) and straight-through/Gumbel cost
O(1) forward/backward passes; ARM and DisARM one extra pass above each layer (L passes);
``leg`` and ``tokui`` see :class:`LEG` and :class:`Tokui`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from dqkernels.models.sbn import SBN, PosteriorSample, bernoulli_log_prob
from dqkernels.ops import bernoulli_flip_loglik

__all__ = ["ESTIMATORS", "Estimate", "Estimator", "SBNTraining", "make_estimator"]


@dataclass
class Estimate:
    """``loss`` ``[B]``: value ``-elbo``, gradient minus the estimated ELBO gradient.
    ``elbo`` ``[B]``: the one-sample ELBO of the drawn (binary) ``z``, detached."""

    loss: torch.Tensor
    elbo: torch.Tensor


def _flipped_copies(z: torch.Tensor) -> torch.Tensor:
    """``[B, H] -> [B*H, H]``: copy ``(b, h)`` is ``z[b]`` with bit ``h`` flipped."""
    B, H = z.shape
    eye = torch.eye(H, dtype=z.dtype, device=z.device)
    return (z[:, None, :] + eye * (1 - 2 * z)[:, None, :]).reshape(B * H, H)


def _flip_child_loglik(
    conn: nn.Module,
    child: torch.Tensor,
    child_logits: torch.Tensor,
    parent: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """``[B, H_parent]``: ``log p(child | parent with bit h flipped)`` summed over the child's
    units, for a connection ``conn: parent -> child logits`` (``child_logits = conn(parent)``).
    A linear connection uses the fused flip op (O(B (H + D)) extra memory); an MLP is run on
    the ``B * H`` flipped copies."""
    if isinstance(conn, nn.Linear):
        return bernoulli_flip_loglik(
            child, child_logits, conn.weight, parent.detach(), backend=backend
        )
    B, H = parent.shape
    logits = conn(_flipped_copies(parent)).view(B, H, child.shape[1])
    return bernoulli_log_prob(child[:, None, :].expand_as(logits), logits).sum(-1)


def _binary_log_prob_sum(z: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``sum_i log Bern(z_i; sigmoid(logits_i))`` over the last dim for binary ``z``, as
    ``sum_i logsigmoid((2 z_i - 1) logits_i)``: exact for binary z (no cancellation between
    ``z . logits`` and ``sum softplus``) in fewer passes than the cross-entropy;
    ``logits`` may be a vector broadcast over the rows."""
    return nn.functional.logsigmoid((2 * z - 1) * logits).sum(-1)


def _global_sums(*values: torch.Tensor) -> list[torch.Tensor]:
    """The sums of the scalars ``values`` over the processes of a torch.distributed group
    (this process's own when there is none): the estimators' moving averages are then
    updated from the global batch on every rank alike, like synchronised batch norm. Every
    rank calls it at the same point (each training forward), an empty local batch
    included."""
    stacked = torch.stack([v.double() for v in values])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(stacked)
    return list(stacked.unbind())


def _layer_log_q(s: PosteriorSample) -> list[torch.Tensor]:
    """``log q(z_k | z_{k-1})`` per example for k = 1..L (index k-1), with gradient into the
    recognition logits."""
    return [bernoulli_log_prob(s.z[k], s.logits[k]).sum(-1) for k in range(1, len(s.z))]


def _check_model(model, who: str) -> None:
    if not isinstance(model, SBN):
        raise TypeError(f"{who}: model must be a dqkernels.models.SBN; got {type(model).__name__}")


class Estimator(nn.Module):
    """Base class: draws ``z ~ q(z | x)``, returns the generative term ``log p(x, z)`` plus
    :meth:`recognition_surrogate` (whose gradient is the recognition-gradient estimate) as an
    :class:`Estimate`. Subclasses may hold state, updated only in training mode."""

    name = ""
    unbiased = True

    def uniforms(self, model: SBN, x: torch.Tensor, u) -> list:
        """Checks the model, ``x`` and ``u`` (messages name the estimator); returns ``u`` or,
        when it is None, fresh uniforms."""
        who = f"estimator {self.name!r}"
        _check_model(model, who)
        model.check_input(x, who)
        if u is None:
            return model.draw_uniforms(x.shape[0], x)
        model.check_uniforms(u, x.shape[0], who)
        return u

    def forward(self, model: SBN, x: torch.Tensor, u=None) -> Estimate:
        s = model.sample_posterior(x, self.uniforms(model, x, u))
        log_p = model.log_joint(s.z)
        log_q = _layer_log_q(s)
        f = (log_p - sum(log_q)).detach()
        surrogate = log_p + self.recognition_surrogate(model, s, f, log_q)
        return Estimate(-f - (surrogate - surrogate.detach()), f)

    def recognition_surrogate(
        self, model: SBN, s: PosteriorSample, f: torch.Tensor, log_q: list[torch.Tensor]
    ) -> torch.Tensor:
        """``[B]`` whose gradient w.r.t. the recognition parameters is the estimate (and zero
        w.r.t. the generative ones); its value is irrelevant."""
        raise NotImplementedError


class Reinforce(Estimator):
    """The plain likelihood-ratio estimator ``f grad_phi log q(z | x)`` (Williams 1992)."""

    name = "reinforce"

    def recognition_surrogate(self, model, s, f, log_q):
        return f * sum(log_q)


class ReinforceBaseline(Estimator):
    """Likelihood ratio with a moving-average baseline: ``(f - b) grad log q``, ``b`` the
    exponential moving average (``decay``) of the batch-mean ELBO over previous steps
    (fixed during a step, so unbiased); updated in training mode only."""

    name = "reinforce_baseline"

    def __init__(self, model: SBN, *, decay: float = 0.9):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"reinforce_baseline: decay must be in [0, 1); got {decay!r}")
        self.decay = decay
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def recognition_surrogate(self, model, s, f, log_q):
        b = self.baseline.to(f.dtype)
        out = (f - b) * sum(log_q)
        if self.training:
            with torch.no_grad():
                total, n = _global_sums(f.sum(), f.new_tensor(float(f.numel())))
                if n > 0:  # an empty (global) batch leaves the state alone
                    m = (total / n).to(self.baseline.dtype)
                    new = torch.where(
                        self.initialised, self.decay * self.baseline + (1 - self.decay) * m, m
                    )
                    self.baseline.copy_(new)
                    self.initialised.fill_(True)
        return out


class NVIL(Estimator):
    """Neural variational inference and learning (Mnih & Gregor 2014, "Neural Variational
    Inference and Learning in Belief Networks", ICML): the learning signal
    ``l = f - c - C_psi(x)`` with ``c`` a running mean and ``C_psi`` an input-dependent
    baseline network (an MLP, one tanh hidden layer of ``hidden`` units), divided by
    ``max(1, sqrt(v))``, ``v`` a running variance of ``f - C_psi(x)`` (variance
    normalisation); ``c`` and ``v`` are exponential moving averages (``decay``, the paper's
    alpha = 0.8) updated after the step in training mode. ``C_psi`` is trained to minimise
    ``(f - c - C_psi(x))^2`` through the same loss (its term's value is added as zero).
    The gradient is unbiased up to the step's fixed scale ``1 / max(1, sqrt(v))``.
    (The paper's layer-wise local learning signals are not used: one signal for all layers.)
    """

    name = "nvil"

    def __init__(self, model: SBN, *, hidden: int = 100, decay: float = 0.8):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"nvil: decay must be in [0, 1); got {decay!r}")
        self.decay = decay
        self.baseline_net = nn.Sequential(
            nn.Linear(model.num_dims, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("var", torch.ones(()))

    def scale(self) -> float:
        """The current variance normalisation ``1 / max(1, sqrt(v))``."""
        return 1.0 / max(1.0, math.sqrt(float(self.var)))

    def recognition_surrogate(self, model, s, f, log_q):
        cx = self.baseline_net(s.z[0]).squeeze(-1)
        c = self.mean.to(f.dtype)
        signal = (f - c - cx.detach()) / max(1.0, math.sqrt(float(self.var)))
        fit = (f - c - cx) ** 2
        if self.training:
            with torch.no_grad():
                r = (f - cx.detach()).double()
                s1, s2, n = _global_sums(r.sum(), (r * r).sum(), r.new_tensor(float(r.numel())))
                if n > 0:  # an empty (global) batch leaves the state alone
                    a = self.decay
                    mean = s1 / n
                    var = (s2 / n - mean * mean).clamp(min=0.0)  # population variance
                    self.mean.mul_(a).add_((1 - a) * mean.to(self.mean.dtype))
                    self.var.mul_(a).add_((1 - a) * var.to(self.var.dtype))
        return signal * sum(log_q) - (fit - fit.detach())


class MuProp(Estimator):
    """MuProp (Gu, Levine, Sutskever & Mnih 2016, "MuProp: Unbiased Backpropagation for
    Stochastic Neural Networks", ICLR): a deterministic mean-field pass
    ``m_0 = x``, ``m_k = sigmoid(rec[k-1](m_{k-1}))`` gives ``f_bar = f(m)`` (``f`` extended
    to [0, 1]-valued z) and ``g_k = d f / d m_k`` (each layer an independent input). Layer k's
    likelihood-ratio term uses the first-order Taylor baseline
    ``b_k = f_bar + g_k . (z_k - m_k)`` and adds back its expectation's gradient analytically:
    ``(f - b_k) grad log q(z_k | z_{k-1}) + g_k . grad sigmoid(a_k)``, ``a_k = rec[k-1](z_{k-1})``
    on the sampled parents. Unbiased: ``b_k`` is linear in ``z_k`` and independent of the
    sample otherwise."""

    name = "muprop"

    def recognition_surrogate(self, model, s, f, log_q):
        x = s.z[0]
        with torch.enable_grad():
            ms: list[torch.Tensor] = [x]
            with torch.no_grad():
                m = x
                for k in range(1, model.num_layers + 1):
                    m = torch.sigmoid(model.rec[k - 1](m))
                    ms.append(m)
            leaves = [ms[0]] + [m.detach().requires_grad_(True) for m in ms[1:]]
            f_bar = model.log_joint(leaves) - model.log_posterior(leaves)
            grads = torch.autograd.grad(f_bar.sum(), leaves[1:])
        f_bar = f_bar.detach()
        out = f.new_zeros(f.shape)
        for k in range(1, model.num_layers + 1):
            g = grads[k - 1].detach()
            signal = f - f_bar - (g * (s.z[k] - leaves[k].detach())).sum(-1)
            out = out + signal * log_q[k - 1] + (g * torch.sigmoid(s.logits[k])).sum(-1)
        return out


class _PerUnitEstimator(Estimator):
    """Estimators of the form ``sum_l sum_h c_{l,h} grad_phi a_{l,h}``: :meth:`coefficients`
    gives layer l's ``c`` ``[B, H_l]`` (computed without gradient)."""

    def coefficients(self, model: SBN, s: PosteriorSample, f: torch.Tensor, l: int) -> torch.Tensor:
        raise NotImplementedError

    def recognition_surrogate(self, model, s, f, log_q):
        out = f.new_zeros(f.shape)
        for l in range(1, model.num_layers + 1):
            with torch.no_grad():
                coef = self.coefficients(model, s, f, l)
            out = out + (coef * s.logits[l]).sum(-1)
        return out


class _LocalEstimator(_PerUnitEstimator):
    """Shared pieces of the local-expectation estimators (LEG, Tokui): the change of ``f`` when
    one unit of layer l is flipped, per unit, in the terms that do not involve layers above."""

    @staticmethod
    def _below_terms(model: SBN, s: PosteriorSample, l: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(z_{l-1} | z_l)`` ``[B]`` and the same with each bit of ``z_l`` flipped
        ``[B, H_l]`` (the fused flip op on linear layers)."""
        below = s.z[l - 1]
        logits = model.gen[l - 1](s.z[l])
        orig = bernoulli_log_prob(below, logits).sum(-1)
        return orig, _flip_child_loglik(model.gen[l - 1], below, logits, s.z[l], model.backend)


class LEG(_LocalEstimator):
    """Local expectation gradients (Titsias & Lázaro-Gredilla 2015, "Local Expectation
    Gradients for Black Box Variational Inference"). For unit h of layer l,

        c_{l,h} = sum_{v in {0,1}} q(v | mb) * d log q(v | a_{l,h}) / d a_{l,h} * f(z_{l,h} = v)

    with every other unit at its sampled value (descendants *kept*), and ``q(v | mb)`` the
    conditional of the unit given its Markov blanket in q,
    ``∝ q(z_{l,h} = v | a_{l,h}) q(z_{l+1} | z_l with z_{l,h} = v)``. Unbiased, since
    ``z_{-(l,h)}`` is a draw of its marginal. ``f(v)`` changes only in four terms:
    ``log p(z_{l-1} | z_l)`` and ``-log q(z_{l+1} | z_l)`` (the flip op on linear layers,
    ``[B, H_l]`` each) and the unit's own ``log p`` and ``log q`` terms (closed form).
    Cost per layer: two flip-loglik evaluations, O(B H_l (H_{l-1} + H_{l+1})) work and
    O(B (H_l + H_{l-1} + H_{l+1})) extra memory with the fused op (MLP
    connections build ``[B, H_l, H_{l±1}]``)."""

    name = "leg"

    def coefficients(self, model, s, f, l):
        L = model.num_layers
        z, a = s.z[l], s.logits[l].detach()
        sign = 1 - 2 * z  # flipped minus original value of each unit
        ap = model.generative_logits(l, s.z[l + 1] if l < L else None)
        below_o, below_f = self._below_terms(model, s, l)
        delta = below_f - below_o[:, None] + sign * (ap - a)
        log_w_flip = bernoulli_log_prob(1 - z, a)
        log_w_orig = bernoulli_log_prob(z, a)
        if l < L:
            above = s.z[l + 1]
            a_above = s.logits[l + 1].detach()
            above_o = bernoulli_log_prob(above, a_above).sum(-1)
            above_f = _flip_child_loglik(model.rec[l], above, a_above, z, model.backend)
            delta = delta - (above_f - above_o[:, None])
            log_w_flip = log_w_flip + above_f
            log_w_orig = log_w_orig + above_o[:, None]
        w_flip = torch.sigmoid(log_w_flip - log_w_orig)
        f_orig, f_flip = f[:, None].expand_as(z), f[:, None] + delta
        f1 = torch.where(z > 0.5, f_orig, f_flip)
        f0 = torch.where(z > 0.5, f_flip, f_orig)
        w1 = torch.where(z > 0.5, 1 - w_flip, w_flip)
        mu = torch.sigmoid(a)
        coef = w1 * (1 - mu) * f1 - (1 - w1) * mu * f0
        return coef


class Tokui(_LocalEstimator):
    """The reparameterisation trick for discrete variables (Tokui & Sato 2017, "Evaluating the
    Variance of Likelihood-Ratio Gradient Estimators", ICML; arXiv 2016 as "Reparameterization
    Trick for Discrete Variables").
    Write the sample as ``z_l = 1[u_l < sigmoid(a_l)]``. For unit h of layer l, marginalise
    ``u_{l,h}`` analytically: ``E_{u_{l,h}}[f] = mu F(1) + (1 - mu) F(0)``, ``mu =
    sigmoid(a_{l,h})``, where ``F(v)`` is ``f`` with ``z_{l,h} = v``, the other units of layers
    <= l at their sampled values, and the layers above l *re-simulated with the same uniforms*
    ``u_{l+1..L}`` (common random numbers). Hence

        c_{l,h} = sigmoid'(a_{l,h}) * (F(1) - F(0)),

    unbiased (the expectation over ``u_{-(l,h)}`` of the exact derivative in ``a_{l,h}``).
    One of ``F(0), F(1)`` is the sample's own ``f``; the other is computed as follows.

    * Top layer (l = L): nothing to re-simulate. ``F(flip) - f`` = the change of
      ``log p(z_{L-1} | z_L)`` (the flip op ``bernoulli_flip_loglik`` on a linear layer: for a
      one-layer linear SBN that is the whole estimator, ``x`` the child) plus
      ``(1 - 2 z) (prior_logit - a)`` (the unit's own prior and posterior terms).
    * Lower layers (l < L): for each of the ``B * H_l`` flipped copies, the logits of layer
      l+1 are the sample's plus a rank-one change (``a_{l+1} + (1 - 2 z_{l,h}) W_rec[:, h]``,
      linear) or the MLP on the copy; layer l+1 is re-sampled with ``u_{l+1}``, then layers
      l+2..L by ordinary forward passes on the ``B * H_l`` copies with ``u_{l+2..L}``; then
      the terms of ``f`` that involve layers >= l are summed for each copy
      (``log p(z_{l-1} | z_l)`` by the flip op, the rest on the copies). Terms below l
      cancel in ``F(1) - F(0)`` and are never recomputed.

    Cost per step, linear connections: the top layer O(B H_L H_{L-1}) (one flip-op call);
    layer l < L one flip-op call plus, on the ``B * H_l`` copies, the rank-one logits of
    layer l+1, the generative logits of layer l (``[B H_l, H_l]``) and the forward and
    log-densities of layers l+2..L: O(B H_l (H_{l+1} H_l + sum_{l<k<L} H_k H_{k+1})) work
    and O(B H_l (H_l + sum_{k>l} H_k)) memory.
    For 200-200-784 and B = 24: layer 2 is one flip op on the 200-wide layer 1; layer 1 is
    one flip op on the 784-wide x plus the 200-200 top part evaluated on 24 * 200 copies (no
    784-wide tensor per copy)."""

    name = "tokui"

    def coefficients(self, model, s, f, l):
        diff = self._flip_minus_sample(model, s, l)  # F(flip) - f, [B, H_l]
        mu = torch.sigmoid(s.logits[l])
        return mu * (1 - mu) * (1 - 2 * s.z[l]) * diff  # sigmoid'(a) (F(1) - F(0))

    def _flip_minus_sample(self, model: SBN, s: PosteriorSample, l: int) -> torch.Tensor:
        L = model.num_layers
        z, a = s.z[l], s.logits[l].detach()
        B, H = z.shape
        sign = 1 - 2 * z  # flipped minus sampled value of each unit
        below_o, below_f = self._below_terms(model, s, l)
        # the unit's own posterior term: log q changes by sign * a (closed form)
        own = below_f - below_o[:, None] - sign * a
        if l == L:
            return own + sign * model.prior_logits
        # layer l+1's logits on the B*H flipped copies (copy (b, h) at row b*H + h)
        conn = model.rec[l]
        if isinstance(conn, nn.Linear):  # a rank-one change of the sample's logits
            a_next = torch.addcmul(
                s.logits[l + 1].detach()[:, None, :],
                sign[:, :, None],
                conn.weight.t().contiguous()[None],
            ).view(B * H, conn.weight.shape[0])
        else:
            a_next = conn(_flipped_copies(z))
        # layers l+1..L re-sampled with the sample's own uniforms (common random numbers)
        zs_up, as_up = model.resimulate(None, l, s.u, a_next)
        # log p(z_l' | z_{l+1}') with z_l' = z_l with bit h flipped, without building z_l':
        # every unit at its sampled value, then unit h's term corrected by
        # logsigmoid(-t) - logsigmoid(t) = -t, t = (2 z_h - 1) ap_h, i.e. + sign_h ap_h
        ap = model.generative_logits(l, zs_up[0]).view(B, H, H)
        flip = nn.functional.logsigmoid(-sign[:, None, :] * ap).sum(-1) + sign * ap.diagonal(
            dim1=1, dim2=2
        )
        orig = _binary_log_prob_sum(z, model.generative_logits(l, s.z[l + 1]))
        # layers above l: log p - log q, on the copies and on the sample
        for j, zk in enumerate(zs_up):
            k = l + 1 + j
            up = zs_up[j + 1] if k < L else None
            flip = flip + (
                _binary_log_prob_sum(zk, model.generative_logits(k, up))
                - _binary_log_prob_sum(zk, as_up[j])
            ).view(B, H)
            orig = orig + (
                _binary_log_prob_sum(
                    s.z[k], model.generative_logits(k, s.z[k + 1] if k < L else None)
                )
                - _binary_log_prob_sum(s.z[k], s.logits[k].detach())
            )
        return own + flip - orig[:, None]


class _AntitheticEstimator(_PerUnitEstimator):
    """ARM and DisARM: for each layer l the antithetic sample ``z~_l = 1[1 - u_l < sigmoid(a_l)]``
    (the sample's layers below l kept), layers above re-simulated with the same uniforms
    ``u_{l+1..L}``, and ``f~_l`` its full ELBO term. One extra forward pass above each layer."""

    def _antithetic_f(self, model: SBN, s: PosteriorSample, l: int) -> torch.Tensor:
        a = s.logits[l].detach()
        zt = (1 - s.u[l] < torch.sigmoid(a)).to(a.dtype)
        ups, _ = model.resimulate(zt, l, s.u)
        zs = [*s.z[:l], zt, *ups]
        return model.log_joint(zs) - model.log_posterior(zs)

    def coefficients(self, model, s, f, l):
        return self._coef(s, l, f, self._antithetic_f(model, s, l))

    def _coef(self, s: PosteriorSample, l: int, f: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ARM(_AntitheticEstimator):
    """Augment-REINFORCE-merge (Yin & Zhou 2019, "ARM: Augment-REINFORCE-Merge Gradient for
    Stochastic Binary Networks", ICLR), per layer:
    ``c_{l,h} = (f(1[u > sigmoid(-a)]) - f(1[u < sigmoid(a)])) (u_{l,h} - 1/2)``, i.e.
    ``(f~_l - f) (u_l - 1/2)`` with the sample ``z = 1[u < sigmoid(a)]``."""

    name = "arm"

    def _coef(self, s, l, f, ft):
        return (ft - f)[:, None] * (s.u[l] - 0.5)


class DisARM(_AntitheticEstimator):
    """DisARM (Dong, Mnih & Tucker 2020, "DisARM: An Antithetic Gradient Estimator for Binary
    Latent Variables", NeurIPS): ARM with the augmenting uniforms integrated out given the
    antithetic pair,
    ``c_{l,h} = 1/2 (f - f~_l) (-1)^{z~_{l,h}} 1[z_{l,h} != z~_{l,h}] sigmoid(|a_{l,h}|)``."""

    name = "disarm"

    def _coef(self, s, l, f, ft):
        a = s.logits[l].detach()
        z = s.z[l]
        zt = (1 - s.u[l] < torch.sigmoid(a)).to(a.dtype)
        return (
            0.5 * (f - ft)[:, None] * (1 - 2 * zt) * (z != zt).to(a.dtype) * torch.sigmoid(a.abs())
        )


class _RelaxedEstimator(Estimator):
    """Pathwise estimators through a relaxation of the sample (biased): layer by layer,
    ``z_k = relax(a_k, u_k)``, ``a_k = rec[k-1](z_{k-1})``; the gradient is that of
    ``log p(x, z) - log q(z | x)`` evaluated at these ``z`` (the Bernoulli log-probabilities
    extended to [0, 1]), for the generative and recognition parameters alike, including the
    direct dependence of ``log q`` on the recognition parameters. The loss's value is minus
    the ELBO of the binary sample ``1[u < sigmoid(a)]`` drawn with the same uniforms."""

    unbiased = False

    def relax(self, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, model: SBN, x: torch.Tensor, u=None) -> Estimate:
        u = self.uniforms(model, x, u)
        zs = [x]
        for k in range(1, model.num_layers + 1):
            zs.append(self.relax(model.rec[k - 1](zs[-1]), u[k]))
        value = model.log_joint(zs) - model.log_posterior(zs)
        with torch.no_grad():
            f = model.elbo(x, u)
        return Estimate(-f - (value - value.detach()), f)


class StraightThrough(_RelaxedEstimator):
    """Straight-through (Bengio, Léonard & Courville 2013; BIASED). The forward pass uses the
    binary sample ``z_k = 1[u_k < sigmoid(a_k)]``; the backward pass treats ``z_k`` as
    ``sigmoid(a_k)`` (``dz/da = sigmoid'(a)``), through every layer (``a_{k+1} = rec[k](z_k)``
    is differentiated through ``z_k``): ``relax(a, u) = 1[u < sigmoid(a)] + sigmoid(a) -
    stop_gradient(sigmoid(a))``. The generative gradient is exact at the sampled ``z``."""

    name = "straight_through"

    def relax(self, a, u):
        mu = torch.sigmoid(a)
        return (u < mu.detach()).to(a.dtype) + mu - mu.detach()


class Gumbel(_RelaxedEstimator):
    """The Concrete / Gumbel-softmax relaxation (Maddison, Mnih & Teh 2017; Jang, Gu & Poole
    2017; BIASED). Each unit is relaxed to the binary Concrete sample
    ``relax(a, u) = sigmoid((a - logit(u)) / tau)`` (``-> 1[u < sigmoid(a)]`` as tau -> 0),
    so the generative gradient too is taken at the relaxed ``z``. The bias vanishes as
    tau -> 0 while the variance grows."""

    name = "gumbel"

    def __init__(self, model: SBN, *, temperature: float = 0.5):
        super().__init__()
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not temperature > 0
        ):
            raise ValueError(f"gumbel: temperature must be a positive number; got {temperature!r}")
        self.temperature = float(temperature)

    def relax(self, a, u):
        return torch.sigmoid((a - torch.logit(u.clamp(1e-7, 1 - 1e-7))) / self.temperature)


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (
        Reinforce,
        ReinforceBaseline,
        NVIL,
        MuProp,
        LEG,
        Tokui,
        ARM,
        DisARM,
        StraightThrough,
        Gumbel,
    )
}


def make_estimator(name: str, model: SBN, **options) -> Estimator:
    """The estimator called ``name`` (a key of :data:`ESTIMATORS`) for ``model``; ``options``
    go to its constructor (``decay`` for ``reinforce_baseline``; ``hidden``, ``decay`` for
    ``nvil``; ``temperature`` for ``gumbel``). An unknown name is a ``ValueError`` listing
    the names."""
    if name not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {name!r}; choose one of: {', '.join(sorted(ESTIMATORS))}"
        )
    _check_model(model, f"estimator {name!r}")
    cls = ESTIMATORS[name]
    if cls in (ReinforceBaseline, NVIL, Gumbel):
        return cls(model, **options)  # type: ignore[call-arg]
    if options:
        raise ValueError(f"estimator {name!r} takes no options; got {sorted(options)}")
    return cls()


class SBNTraining(nn.Module):
    """An :class:`SBN` and its estimator as one training module (the trainer's contract):
    ``forward(x) -> {"loss": [B]}``, the loss valued at minus the one-sample ELBO in nats
    and carrying the estimator's gradient; the estimator's state (moving averages, NVIL's
    baseline network) is part of the module, so it is optimised and checkpointed with it."""

    def __init__(self, sbn: SBN, estimator: Estimator):
        super().__init__()
        self.sbn = sbn
        self.estimator = estimator

    @property
    def config(self) -> dict:
        """The model's definition, stored in checkpoints (``model_config``)."""
        s = self.sbn
        return {
            "num_dims": s.num_dims,
            "layers": list(s.layers),
            "nonlinear": s.nonlinear,
            "hidden": list(s.hidden),
            "estimator": self.estimator.name,
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.estimator(self.sbn, x).loss}
