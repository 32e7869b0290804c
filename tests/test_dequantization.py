"""Paper 1 models: the multi-scale flow, the dequantizers, the bounds, IW evaluation."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dqkernels.models.dequantization import (
    AutoregressiveDequantizer,
    DequantizationFlow,
    UniformDequantizer,
    VariationalDequantizer,
    bound,
)
from dqkernels.models.flow import MultiScaleFlow


def _perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Move every parameter off its (often zero, i.e. identity) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _perturbed_flow(seed, shape, num_scales, init_batch, scale, **kw) -> MultiScaleFlow:
    """A float64 MultiScaleFlow on C, H, W = shape images (2 steps a scale, hidden 8, 3
    components; kw: other settings) built after torch.manual_seed(seed), its ActNorms
    initialised on init_batch Gaussian images, moved off its initialisation by scale
    (_perturb, seed + 1), in eval mode."""
    torch.manual_seed(seed)
    C, H, W = shape
    flow = MultiScaleFlow(
        C, H, W, num_scales=num_scales, steps_per_scale=2, hidden=8, num_components=3, **kw
    ).double()
    flow(torch.randn(init_batch, C, H, W, dtype=torch.float64))  # ActNorm init
    _perturb(flow, scale, seed + 1)
    return flow.eval()


# ----------------------------------------------------------------------------- bounds


def test_bounds_order_and_limits():
    g = torch.Generator().manual_seed(0)
    log_w = 3.0 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    elbo, iw = bound(log_w, "elbo"), bound(log_w, "iw")
    assert torch.allclose(elbo, log_w.mean(0))
    assert torch.allclose(iw, torch.log(torch.exp(log_w).mean(0)))
    # Renyi is monotone in alpha between the IW bound (alpha=0) and the ELBO (alpha->1)
    prev = iw
    for alpha in (0.0, 0.25, 0.5, 0.75, 0.999999):
        r = bound(log_w, "renyi", alpha)
        if alpha == 0.0:
            assert torch.allclose(r, iw)
        assert (r <= prev + 1e-12).all()
        prev = r
    assert torch.allclose(prev, elbo, atol=1e-4)
    # one sample: every bound is the log-weight
    one = log_w[:1]
    for obj in ("elbo", "iw", "renyi"):
        assert torch.allclose(bound(one, obj), one[0])


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 2.0])
def test_renyi_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        bound(torch.zeros(2, 3), "renyi", alpha)


def test_bad_objective():
    with pytest.raises(ValueError, match="objective must be one of elbo, iw, renyi"):
        bound(torch.zeros(2, 3), "kl")


# ----------------------------------------------------------------------------- flow


@pytest.mark.parametrize(
    "shape,scales", [((1, 8, 8), 2), ((3, 7, 6), 2), ((2, 4, 4), 3), ((1, 5, 5), 1)]
)
@pytest.mark.parametrize("coupling", ["mixlog", "affine"])
def test_flow_shapes_and_exact_sampling(shape, scales, coupling):
    C, H, W = shape
    flow = _perturbed_flow(1, shape, scales, 16, 0.05, coupling=coupling)
    lp = flow(torch.randn(3, C, H, W, dtype=torch.float64))
    assert lp.shape == (3,) and lp.dtype == torch.float64 and torch.isfinite(lp).all()
    g = torch.Generator().manual_seed(3)
    s = flow.sample(4, generator=g, dtype=torch.float64)
    assert s.shape == (4, C, H, W) and torch.isfinite(flow(s)).all()
    # at temperature 0 every latent is its prior mean: a deterministic path
    s0 = flow.sample(2, temperature=0.0, dtype=torch.float64)
    assert torch.allclose(s0[0], s0[1])


def test_flow_with_split_normalises():
    """1x2x2 images through squeeze, steps, a split prior and a second scale: the
    density integrates to 1 (importance sampling from a wide Gaussian), and sampling
    then scoring is consistent with it (the samples' mean log density is close to the
    entropy estimate from the same proposal)."""
    flow = _perturbed_flow(14, (1, 2, 2), 2, 64, 0.1)
    assert flow.scales[0].split is not None
    sigma = 2.5
    g = torch.Generator().manual_seed(16)
    y = sigma * torch.randn(200_000, 1, 2, 2, generator=g, dtype=torch.float64)
    log_q = (
        (-0.5 * (y / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
    )
    with torch.no_grad():
        mass = torch.exp(flow(y) - log_q).mean()
    assert abs(mass.item() - 1.0) < 0.03


def test_flow_normalises():
    """A 1-D-per-pixel flow on 1x2x1 images: integrate p(y) numerically over a grid."""
    flow = _perturbed_flow(4, (1, 2, 1), 1, 32, 0.3)
    t = torch.linspace(-12, 12, 801, dtype=torch.float64)
    yy = torch.cartesian_prod(t, t).view(-1, 1, 2, 1)
    with torch.no_grad():
        p = torch.exp(flow(yy))
    mass = p.sum() * (t[1] - t[0]) ** 2
    assert abs(mass.item() - 1.0) < 2e-3


def test_flow_bad_input():
    flow = MultiScaleFlow(1, 4, 4, num_scales=1, steps_per_scale=1, hidden=4)
    with pytest.raises(ValueError, match=r"expected \[B, 1, 4, 4\]; got \(2, 1, 4, 5\)"):
        flow(torch.zeros(2, 1, 4, 5))
    with pytest.raises(ValueError, match="num_scales must be an int >= 1; got 0"):
        MultiScaleFlow(1, 4, 4, num_scales=0)
    with pytest.raises(ValueError, match="coupling must be one of mixlog, affine"):
        MultiScaleFlow(1, 4, 4, coupling="spline")


# ----------------------------------------------------------------------------- IW bound


def test_iw_estimates_the_exact_probability_mass():
    """A fresh flow with identity couplings is exactly N(0, I) on y (the 1x1 convolutions
    are rotations and the split priors start standard normal), so P(x) of every image is
    a product of Gaussian bin masses; the IW estimate with uniform dequantization must
    agree, and the masses must sum to the mass of the logit's range."""
    torch.manual_seed(6)
    L = 3
    flow = MultiScaleFlow(
        1, 2, 2, num_scales=1, steps_per_scale=2, hidden=8, num_components=3
    ).eval()
    model = DequantizationFlow(flow, UniformDequantizer(), L).eval()
    xs = torch.cartesian_prod(*[torch.arange(L)] * 4).view(-1, 1, 2, 2)
    nll = model.iw_nll(xs, 4000, max_rows=50_000).double()
    a = model.logit_margin
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)

    def edge(v):
        s = a + (1 - 2 * a) * v / L
        return torch.log(s / (1 - s))

    lo, hi = edge(xs.double()), edge(xs.double() + 1)
    exact = -torch.log(normal.cdf(hi) - normal.cdf(lo)).flatten(1).sum(1)
    assert (nll - exact).abs().max() < 0.05
    total = torch.exp(-exact).sum()
    range_mass = (
        normal.cdf(edge(torch.tensor(float(L)))) - normal.cdf(edge(torch.tensor(0.0)))
    ) ** 4
    assert torch.allclose(total, range_mass)
    assert abs(torch.exp(-nll).sum().item() - range_mass.item()) < 0.01


def test_iw_chunking_matches_one_pass():
    torch.manual_seed(7)
    flow = MultiScaleFlow(1, 4, 4, num_scales=1, steps_per_scale=1, hidden=8, num_components=3)
    model = DequantizationFlow(flow, UniformDequantizer(), 5)
    x = torch.randint(0, 5, (3, 1, 4, 4))
    model.train()
    model(x)  # ActNorm init
    model.eval()
    torch.manual_seed(8)
    one = model.iw_nll(x, 12, max_rows=10_000)
    torch.manual_seed(8)
    chunked = model.iw_nll(x, 12, max_rows=3 * 12)  # same draws, one chunk
    assert torch.equal(one, chunked)
    torch.manual_seed(8)
    small = model.iw_nll(x, 12, max_rows=3 * 5)  # chunks of 5, 5, 2 samples
    assert small.shape == (3,) and torch.isfinite(small).all()
    assert model.iw_nll(x[:0], 4).shape == (0,)
    with pytest.raises(ValueError, match="num_samples must be >= 1; got 0"):
        model.iw_nll(x, 0)


# ----------------------------------------------------------------------------- dequantizers


def _dequantizers(C, H, W, L):
    out = [
        (
            "variational-mixlog",
            VariationalDequantizer(
                C, L, num_steps=3, hidden=8, num_components=3, context_channels=4
            ),
        ),
        (
            "variational-affine",
            VariationalDequantizer(
                C, L, num_steps=2, coupling="affine", hidden=8, context_channels=4
            ),
        ),
    ]
    try:
        out.append(
            (
                "ard-conv",
                AutoregressiveDequantizer(
                    C, H, W, L, num_steps=2, hidden=2 * C, context_channels=4
                ),
            )
        )
        out.append(
            (
                "ard-made",
                AutoregressiveDequantizer(
                    C, H, W, L, num_steps=2, net="made", hidden=12, context_channels=4
                ),
            )
        )
    except ImportError:  # the masked layers are not there yet
        pass
    return out


@pytest.mark.parametrize("idx", range(4))
def test_dequantizer_log_q_is_the_change_of_variables(idx):
    """log q(u|x) == log N(eps) - log |det du/deps| by the full autograd Jacobian, and
    u lies in the open unit cube."""
    torch.manual_seed(9)
    C, H, W, L = 2, 2, 3, 5
    items = _dequantizers(C, H, W, L)
    if idx >= len(items):
        pytest.skip("masked layers not available")
    name, deq = items[idx]
    deq = deq.double()
    _perturb(deq, 0.2, 10)
    x = torch.randint(0, L, (1, C, H, W)).double()
    eps = torch.randn(1, C, H, W, dtype=torch.float64)
    u, log_q = deq(x, eps)
    assert ((u > 0) & (u < 1)).all()
    jac = torch.autograd.functional.jacobian(lambda e: deq(x, e)[0], eps).reshape(
        C * H * W, C * H * W
    )
    log_n = -0.5 * (eps**2).sum() - C * H * W * 0.5 * math.log(2 * math.pi)
    expected = log_n - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(log_q[0], expected, atol=1e-8, rtol=1e-8), name


@pytest.mark.parametrize("net", ["conv", "made"])
def test_ard_layer_is_autoregressive(net):
    """One IAF layer: u_d depends on eps_j only for j at or before d in raster-then-channel
    order (so its Jacobian is triangular in that order and one pass gives u and log q)."""
    pytest.importorskip("dqkernels.nn", reason="masked layers")
    from dqkernels import nn as dnn

    if not hasattr(dnn, "MaskedConv2d") or not hasattr(dnn, "MaskedLinear"):
        pytest.skip("masked layers not available")
    torch.manual_seed(11)
    C, H, W, L = 2, 3, 3, 4
    deq = AutoregressiveDequantizer(
        C, H, W, L, num_steps=1, net=net, hidden=4 * C, context_channels=3
    ).double()
    _perturb(deq, 0.3, 12)
    x = torch.randint(0, L, (1, C, H, W)).double()
    eps = torch.randn(1, C, H, W, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda e: deq(x, e)[0], eps).reshape(C, H, W, C, H, W)
    order = torch.arange(H * W).view(1, H, W) * C + torch.arange(C).view(C, 1, 1)
    o = order.reshape(-1)
    J = jac.reshape(C * H * W, C * H * W)
    later = o.view(1, -1) > o.view(-1, 1)  # input j after output d
    assert (J[later] == 0).all()
    assert (J.diagonal() != 0).all()
    assert (J[~later].abs() > 0).sum() > C * H * W  # it does use earlier inputs


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("objective", ["elbo", "iw", "renyi"])
def test_model_forward_backward_and_sample(objective):
    torch.manual_seed(13)
    L = 17
    flow = MultiScaleFlow(1, 8, 8, num_scales=2, steps_per_scale=1, hidden=8, num_components=3)
    deq = VariationalDequantizer(1, L, num_steps=2, hidden=8, num_components=3, context_channels=4)
    model = DequantizationFlow(flow, deq, L, objective=objective, num_samples=3)
    x = torch.randint(0, L, (5, 1, 8, 8))
    out = model(x)
    assert set(out) == {"loss", "elbo", "log_q"}
    assert all(v.shape == (5,) for v in out.values())
    # loss is minus the bound, and the bound is >= the ELBO for iw/renyi
    if objective != "elbo":
        assert (-out["loss"] >= out["elbo"] - 1e-4).all()
    out["loss"].mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    s = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, 1, 8, 8) and s.dtype == torch.int64
    assert s.min() >= 0 and s.max() <= L - 1


def test_model_bad_arguments():
    flow = MultiScaleFlow(1, 4, 4, num_scales=1, steps_per_scale=1, hidden=4)
    with pytest.raises(ValueError, match="objective must be one of elbo, iw, renyi"):
        DequantizationFlow(flow, UniformDequantizer(), 4, objective="kl")
    with pytest.raises(ValueError, match="num_samples must be >= 1; got 0"):
        DequantizationFlow(flow, UniformDequantizer(), 4, num_samples=0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\); got 1.5"):
        DequantizationFlow(flow, UniformDequantizer(), 4, objective="renyi", alpha=1.5)
    model = DequantizationFlow(flow, UniformDequantizer(), 4)
    with pytest.raises(ValueError, match=r"x must be levels of shape \[B, 1, 4, 4\]"):
        model(torch.zeros(2, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="net must be one of conv, made"):
        AutoregressiveDequantizer(1, 4, 4, 4, net="rnn")


# ----------------------------------------------------------------------------- dqk train flow

_FLOW_TINY = (
    "--limit 24 --batch-size 8 --width 8 --steps 1 --components 3 --dequant-steps 2 "
    "--context-channels 2 --eval-samples 3 --epoch-eval-samples 2 --grid 4 --no-progress "
    "--device cpu --warmup-steps 0"
).split()


@pytest.mark.parametrize(
    "dequant,objective,extra",
    [
        ("uniform", "elbo", []),
        ("uniform", "renyi", ["--samples", "2", "--alpha", "0.3"]),
        ("variational", "iw", ["--samples", "2", "--coupling", "affine"]),
        ("ard", "elbo", ["--bf16"]),
        ("ard", "iw", ["--ard-net", "made", "--samples", "2"]),
    ],
)
def test_train_flow_cli(tmp_path, capsys, dequant, objective, extra):
    import json

    import dqkernels.cli

    out = tmp_path / "run"
    rc = dqkernels.cli.main(
        [
            "train",
            "flow",
            *_FLOW_TINY,
            "--dequant",
            dequant,
            "--objective",
            objective,
            "--epochs",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert f"{dequant} dequantization, {objective} objective" in text
    assert "test bits/dim:" in text
    rec = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rec) == 1 and math.isfinite(rec[0]["test_bpd"]) and rec[0]["test_bpd"] > 0
    assert {"elbo", "log_q"} <= set(rec[0].get("extras", rec[0]))
    assert (out / "samples.png").stat().st_size > 0
    assert (out / "learning_curve.png").stat().st_size > 0


def test_train_flow_bad_flags(tmp_path, capsys):
    import dqkernels.cli

    for flags, message in (
        (["--alpha", "1.0"], r"--alpha must be in \[0, 1\); got 1.0"),
        (["--samples", "0"], "--samples must be >= 1; got 0"),
        (["--scales", "0"], "--scales must be >= 1; got 0"),
    ):
        rc = dqkernels.cli.main(
            ["train", "flow", *_FLOW_TINY, "--out", str(tmp_path / "x"), *flags]
        )
        assert rc == 2
        assert re.search(message, capsys.readouterr().err)


def test_train_flow_ddp_two_gloo_processes(tmp_path):
    """The ARD flow under torchrun with 2 CPU processes: ActNorm's data-dependent init is
    all-reduced and DDP averages the gradients, so both ranks end with identical
    parameters (every parameter is used in the forward: DDP would fail otherwise)."""
    import torch.distributed as dist
    from train_runs import assert_ranks_match, torchrun

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("no gloo")
    torchrun(
        "-m",
        "dqkernels.cli",
        "train",
        "flow",
        *_FLOW_TINY,
        "--limit",
        "32",
        "--dequant",
        "ard",
        "--epochs",
        "1",
        "--grid",
        "0",
        "--out",
        tmp_path / "ddp",
        "--dump-params",
        tmp_path / "rank{rank}.pt",
    )
    r0 = assert_ranks_match(tmp_path, single=None)
    assert len(r0) > 20
    # training moved the ARD parameters away from their initial values on both ranks
    shift = r0["dequantizer.out_shift"]
    assert not torch.equal(shift, torch.zeros_like(shift))


def test_empty_batch_float64_sampling_and_margin():
    flow = MultiScaleFlow(1, 4, 4, num_scales=1, steps_per_scale=1, hidden=4, num_components=2)
    for deq in (UniformDequantizer(), AutoregressiveDequantizer(1, 4, 4, 5, num_steps=1, hidden=4)):
        model = DequantizationFlow(flow, deq, 5).double()
        out = model(torch.zeros(0, 1, 4, 4, dtype=torch.int64))
        assert out["loss"].shape == (0,)
        s = model.eval().sample(3, generator=torch.Generator().manual_seed(0))
        assert s.shape == (3, 1, 4, 4) and s.dtype == torch.int64
    with pytest.raises(ValueError, match=r"logit_margin must be in \(0, 0.5\); got 0.0"):
        DequantizationFlow(flow, UniformDequantizer(), 5, logit_margin=0.0)


def test_bf16_autocast_keeps_the_flow_in_its_dtype():
    """Under bf16 autocast the 1x1 convolutions must not drop the flow to bf16 (their
    logdet comes from the fp32 weight): log p(y) stays close to the fp32 value."""
    torch.manual_seed(17)
    flow = MultiScaleFlow(1, 8, 8, num_scales=2, steps_per_scale=2, hidden=8, num_components=3)
    y = torch.randn(4, 1, 8, 8)
    flow(y)
    _perturb(flow, 0.05, 18)
    flow.eval()
    ref = flow(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = flow(y)
    assert lp.dtype == torch.float32
    # the nets run in bf16 (their outputs are rounded), the flow's own maps do not
    assert (lp - ref).abs().max() < 0.5
    from dqkernels.nn import InvConv1x1

    for lu in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, _ = InvConv1x1(4, lu=lu)(torch.randn(2, 4, 3, 3))
        assert z.dtype == torch.float32
