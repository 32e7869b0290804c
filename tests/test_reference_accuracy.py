"""The float64 references are accurate to rounding at extreme inputs (checked against mpmath),
and every backend agrees with them far in the tails (issue 12, item 6): log-sigmoids
without softplus's threshold, and the mixture coupling's logdet far in the tails, inverse
included."""

from __future__ import annotations

import mpmath
import pytest
import torch
from conftest import BACKEND_DEVICES, require

from dqkernels.ops import dmol_nll, mixlogcdf_coupling
from dqkernels.reference.affine_coupling import log_scale
from dqkernels.reference.dmol import dmol_nll_reference
from dqkernels.reference.mixlogcdf_coupling import logit_cdf, mixlogcdf_forward_reference

mpmath.mp.dps = 60


def _mp_logsigmoid(t):
    return -mpmath.log1p(mpmath.exp(-mpmath.mpf(t)))


def test_affine_log_scale_exact_in_float64():
    """log sigmoid(l + 2) to a few ulps for l in [-60, 60], across softplus's threshold (its
    -softplus(-t) form erred by up to exp(-20) = 2e-9 there)."""
    t = torch.cat([torch.linspace(-60.0, 60.0, 241), torch.tensor([-22.5, -21.0, -20.5])])
    t = t.double()
    got = log_scale(t)
    for ti, gi in zip(t.tolist(), got.tolist()):
        want = _mp_logsigmoid(ti + 2.0)
        assert abs(gi - float(want)) <= 4e-16 * abs(float(want)) + 1e-300, (ti, gi, want)


def _mp_dmol_nll_one_channel(x, mean, log_s, num_levels):
    """NLL of one grayscale pixel under one logistic, in mpmath."""
    d = mpmath.mpf(1) / (num_levels - 1)
    s = mpmath.exp(mpmath.mpf(log_s))
    k = round((x + 1) * (num_levels - 1) / 2)
    a = (mpmath.mpf(x) + d - mean) / s
    b = (mpmath.mpf(x) - d - mean) / s

    def sig(t):
        return 1 / (1 + mpmath.exp(-t))

    if k == 0:
        mass = sig(a)
    elif k == num_levels - 1:
        mass = 1 - sig(b)
    else:
        mass = sig(a) - sig(b)
    return -mpmath.log(mass)


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_dmol_edge_bins_exact_in_float64(backend):
    """The edge bins' log-masses far in a tail (arguments of the log-sigmoid between -40
    and -20, where -softplus(-t) returned t) to rounding, in float64."""
    if backend != "reference":
        require(backend, "cpu", torch.float64)
    cases = []
    for mean in (0.05, 0.2, 0.4, 0.6, 0.95):  # the lowest bin x = -1 under a far mean
        cases.append((-1.0, mean, -3.0))
    for mean in (-0.05, -0.2, -0.4, -0.6, -0.95):  # the highest bin x = +1
        cases.append((1.0, mean, -3.0))
    x = torch.tensor([c[0] for c in cases], dtype=torch.float64).view(1, 1, 1, -1)
    params = torch.tensor(
        [[0.0] * len(cases), [c[1] for c in cases], [c[2] for c in cases]], dtype=torch.float64
    ).view(1, 3, 1, -1)
    if backend == "reference":
        got = dmol_nll_reference(x, params, 256, -7.0)
    else:
        got = dmol_nll(x, params, num_levels=256, backend=backend)
    for (xi, mean, ls), gi in zip(cases, got.reshape(-1).tolist()):
        want = float(_mp_dmol_nll_one_channel(xi, mean, ls, 256))
        assert 15.0 < want < 45.0  # in the range where the threshold mattered
        assert abs(gi - want) <= 1e-14 * want, (backend, xi, mean, gi, want)


def _mp_mixlog_l(x, logits, means, log_scales):
    """log F'(x) - log F(x) - log(1 - F(x)) for one element, in mpmath."""
    x = mpmath.mpf(x)
    ws = [mpmath.exp(mpmath.mpf(v)) for v in logits]
    tot = sum(ws)
    F = mpmath.mpf(0)
    G = mpmath.mpf(0)  # 1 - F, summed directly (no cancellation)
    dF = mpmath.mpf(0)
    for w, m, ls in zip(ws, means, log_scales):
        s = mpmath.exp(mpmath.mpf(ls))
        z = (x - m) / s
        sz, snz = 1 / (1 + mpmath.exp(-z)), 1 / (1 + mpmath.exp(z))
        F += w / tot * sz
        G += w / tot * snz
        dF += w / tot * sz * snz / s
    return mpmath.log(dF) - mpmath.log(F) - mpmath.log(G)


def _tail_mixture(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    K = 3
    logits = torch.randn(1, 1, K, generator=g, dtype=torch.float64)
    means = torch.randn(1, 1, K, generator=g, dtype=torch.float64)
    log_scales = 0.4 * torch.randn(1, 1, K, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (logits, means, log_scales)]


@pytest.mark.parametrize("x", [1.5e8, -1.0e8, 3e4, -3e4, 80.0, -80.0, 0.5])
def test_mixlog_reference_logdet_exact_far_in_the_tails(x):
    """The float64 reference's log F' - log F - log(1 - F) to 1e-12 absolute at |z| up to
    1e8 (formed as log F' - log(1 - F) = log sum q sigmoid(z)/s without cancelling terms
    of size |z|, which lost eps |z| = 1e-8 there)."""
    logits, means, log_scales = _tail_mixture()
    xt = torch.tensor([[x]], dtype=torch.float64)
    _, got = logit_cdf(xt, logits, means, log_scales)
    want = _mp_mixlog_l(
        x, logits.reshape(-1).tolist(), means.reshape(-1).tolist(), log_scales.reshape(-1).tolist()
    )
    assert abs(got.item() - float(want)) <= 1e-12 * (1 + abs(float(want))), (got.item(), want)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixlog_inverse_logdet_far_in_the_tails(backend, device):
    """The inverse at y = +-1e8 (and milder values) in float32: the returned logdet is minus
    the float64 forward logdet at the returned root, within 1e-5 (1 + |logdet|), on every
    backend (the torch backend lost 0.37 at y = 1e8)."""
    require(backend, device)
    g = torch.Generator().manual_seed(8)
    y = torch.tensor([1e8, -1e8, 1e4, -1e4, 50.0, -50.0, 1.0, 0.0])
    n, K = y.shape[0], 3
    logits = torch.randn(n, 1, K, generator=g)
    means = torch.randn(n, 1, K, generator=g)
    log_scales = 0.3 * torch.randn(n, 1, K, generator=g)
    a = 0.2 * torch.randn(n, 1, generator=g)
    b = 0.1 * torch.randn(n, 1, generator=g)
    args = [t.to(device) for t in (y.view(n, 1), logits, means, log_scales, a, b)]
    x, ld = mixlogcdf_coupling(*args, inverse=True, backend=backend)
    params64 = [t.double().cpu() for t in args[1:]]
    _, gold = mixlogcdf_forward_reference(x.double().cpu(), *params64)
    err = (ld.double().cpu() + gold).abs()
    assert bool((err <= 1e-5 * (1 + gold.abs())).all()), (err, gold)
    # and the forward at that root gives the same logdet (the forward path, too)
    _, ld_fwd = mixlogcdf_coupling(x, *args[1:], backend=backend)
    assert bool(((ld_fwd.double().cpu() - gold).abs() <= 1e-5 * (1 + gold.abs())).all())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixlog_gradients_far_in_the_tails(backend, device):
    """The gradients of the forward far in a tail (x = 1e6 in float32) agree with autograd
    of the float64 reference: dg/dx = exp(l) and the posteriors are formed without the
    cancellation of terms of size |z|."""
    require(backend, device)
    logits, means, log_scales = _tail_mixture(torch.float32)
    x = torch.tensor([[1e6]])
    a, b = torch.zeros(1, 1), torch.zeros(1, 1)
    leaves = [t.to(device).requires_grad_() for t in (x, logits, means, log_scales, a, b)]
    y, ld = mixlogcdf_coupling(*leaves, backend=backend)
    grads = torch.autograd.grad(y.sum() + ld.sum(), leaves)
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in leaves]
    yr, ldr = mixlogcdf_forward_reference(*ref_leaves)
    want = torch.autograd.grad(yr.sum() + ldr.sum(), ref_leaves)
    # float32 at x = 1e6: z = (x - m) / s carries relative error u = 6e-8 and each gradient
    # is a product of a few such factors (dg/ds = -z/s ...); the non-dominant components'
    # posteriors underflow to 0 in both. So a few u relative, 1e-4 with room; atol relative
    # to the largest gradient for entries that are 0 in one and tiny in the other.
    for i, (gi, wi) in enumerate(zip(grads, want)):
        gi = gi.double().cpu()
        assert torch.allclose(gi, wi, rtol=1e-4, atol=1e-5 * (1 + wi.abs().max().item())), (
            i,
            gi,
            wi,
        )
