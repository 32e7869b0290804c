"""Sigmoid belief networks and their gradient estimators against exact enumeration.

A tiny network (D = 4; layers (3,) and (2, 2); linear and nonlinear) has few enough latent
configurations to compute the ELBO ``sum_z q(z|x) [log p(x,z) - log q(z|x)]`` exactly and
differentiate it with autograd. Each unbiased estimator's mean over many draws must lie
within a few standard errors of that gradient, for every parameter.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dqkernels.cli
from dqkernels import trainer
from dqkernels.models.sbn import SBN, bernoulli_log_prob
from dqkernels.models.sbn_estimators import ESTIMATORS, make_estimator
from dqkernels.ops import bernoulli_flip_loglik

UNBIASED = ["reinforce", "reinforce_baseline", "nvil", "muprop", "leg", "tokui", "arm", "disarm"]
X = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
GROUPS, PER_GROUP = 40, 400  # 16,000 draws per estimator; the SE from 40 group means


def tiny(layers, nonlinear=False, seed=0) -> SBN:
    torch.manual_seed(seed)
    m = SBN(4, layers, nonlinear=nonlinear, hidden=(3,)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.8)
    return m


def all_configs(model: SBN, x: torch.Tensor) -> list[torch.Tensor]:
    """``[x, z_1, .., z_L]`` over every (example, configuration) pair, example-major."""
    n = sum(model.layers)
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=x.dtype)
    C = bits.shape[0]
    zs = [x.repeat_interleave(C, 0)]
    start = 0
    for h in model.layers:
        zs.append(bits[:, start : start + h].repeat(x.shape[0], 1))
        start += h
    return zs


def exact_loss(model: SBN, x: torch.Tensor) -> torch.Tensor:
    """Minus the exact ELBO, batch mean, differentiable."""
    zs = all_configs(model, x)
    log_q = model.log_posterior(zs)
    f = model.log_joint(zs) - log_q
    elbo = (log_q.exp() * f).view(x.shape[0], -1).sum(1)
    return -elbo.mean()


def flat_grad(model: SBN, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, model.parameters())
        ]
    )


def group_grads(model: SBN, est, *, groups=GROUPS, per_group=PER_GROUP, seed=1) -> torch.Tensor:
    """``[groups, P]``: each row the gradient of the mean loss over ``per_group`` draws."""
    torch.manual_seed(seed)
    x = X.repeat(per_group // X.shape[0], 1)
    return torch.stack([flat_grad(model, est(model, x).loss.mean()) for _ in range(groups)])


def z_scores(model, est, **kw) -> torch.Tensor:
    exact = flat_grad(model, exact_loss(model, X))
    g = group_grads(model, est, **kw)
    se = g.std(0) / math.sqrt(g.shape[0])
    return (g.mean(0) - exact) / se.clamp_min(1e-12)


NETS = [((3,), False), ((2, 2), False), ((2, 2), True)]


@pytest.mark.parametrize("layers,nonlinear", NETS, ids=["linear3", "linear2-2", "nonlinear2-2"])
@pytest.mark.parametrize("name", UNBIASED)
def test_unbiased_estimators_match_exact_gradient(name, layers, nonlinear):
    model = tiny(layers, nonlinear)
    est = make_estimator(name, model).double()
    scale = 1.0
    if name == "reinforce_baseline":
        est.eval()  # a fixed baseline, away from the mean ELBO
        est.baseline.fill_(-3.0)
    if name == "nvil":
        est.eval()
        est.mean.fill_(-2.0)
        est.var.fill_(4.0)
        scale = est.scale()
        assert scale == 0.5
    if scale != 1.0:
        # NVIL scales the recognition gradient by 1 / max(1, sqrt(v)): undo it
        exact = flat_grad(model, exact_loss(model, X))
        g = group_grads(model, est)
        n_gen = sum(p.numel() for p in model.generative_parameters())
        g[:, n_gen:] /= scale
        z = (g.mean(0) - exact) / (g.std(0) / math.sqrt(g.shape[0])).clamp_min(1e-12)
    else:
        z = z_scores(model, est)
    assert z.abs().max() < 5, (name, z)


def test_parameter_order_generative_first():
    model = tiny((2, 2))
    names = [n for n, _ in model.named_parameters()]
    n_gen = len(model.generative_parameters())
    assert all(not n.startswith("rec.") for n in names[:n_gen])
    assert all(n.startswith("rec.") for n in names[n_gen:])


def test_biased_estimator_fails_the_same_test():
    """The test has power: straight-through, biased, is far outside 5 standard errors."""
    model = tiny((2, 2))
    z = z_scores(model, make_estimator("straight_through", model))
    assert z.abs().max() > 10


def test_straight_through_hand_computed():
    """One latent unit, D = 1: the gradient of ``f`` with ``z`` replaced by
    ``z + sigmoid(a) - sigmoid(a).detach()``, worked out by hand."""
    model = SBN(1, (1,)).double()
    with torch.no_grad():
        model.prior_logits.fill_(0.3)
        model.gen[0].weight.fill_(1.5)
        model.gen[0].bias.fill_(-0.4)
        model.rec[0].weight.fill_(0.7)
        model.rec[0].bias.fill_(0.2)
    x = torch.tensor([[1.0]], dtype=torch.float64)
    a = 0.7 + 0.2
    mu = 1 / (1 + math.exp(-a))
    for u, z in [(0.1, 1.0), (0.9, 0.0)]:
        est = make_estimator("straight_through", model)
        out = est(model, x, [None, torch.tensor([[u]], dtype=torch.float64)])
        model.zero_grad()
        out.loss.sum().backward()
        # f(z, a) = log Bern(z; s(.3)) + log Bern(1; s(1.5 z - .4)) - [z a - softplus(a)]
        # df/dz = 0.3 + 1.5 (1 - s(1.5 z - .4)) - a;  df/da|direct = -(z - mu)
        dfdz = 0.3 + 1.5 * (1 - 1 / (1 + math.exp(-(1.5 * z - 0.4)))) - a
        dfda = dfdz * mu * (1 - mu) - (z - mu)
        # a = w x + b with x = 1: d/dw = d/db = dfda; the loss is -f
        assert model.rec[0].weight.grad.item() == pytest.approx(-dfda, rel=1e-12)
        assert model.rec[0].bias.grad.item() == pytest.approx(-dfda, rel=1e-12)
        # generative gradient at the sampled z: d/dw log Bern(1; s(w z + b)) = z (1 - s(.))
        s_ = 1 / (1 + math.exp(-(1.5 * z - 0.4)))
        assert model.gen[0].weight.grad.item() == pytest.approx(-z * (1 - s_), rel=1e-12, abs=1e-15)
        assert out.elbo.item() == pytest.approx(-out.loss.item())


def _gumbel_mean_grad(model, temperature, n=20000):
    """The Gumbel estimator's exact expected gradient for one latent unit: the midpoint rule
    over u in (0, 1) on n points (its per-u gradient is smooth at these temperatures)."""
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0]], dtype=torch.float64).repeat(n, 1)
    u = ((torch.arange(n, dtype=torch.float64) + 0.5) / n)[:, None]
    est = make_estimator("gumbel", model, temperature=temperature)
    return flat_grad(model, est(model, x, [None, u]).loss.mean())


def test_gumbel_bias_shrinks_with_temperature():
    model = tiny((1,))
    exact = flat_grad(model, exact_loss(model, X[:1]))
    bias = [(_gumbel_mean_grad(model, t) - exact).norm().item() for t in (2.0, 0.5, 0.1)]
    assert bias[0] > bias[1] > bias[2]
    assert bias[2] < 0.2 * bias[0]
    assert not ESTIMATORS["gumbel"].unbiased and not ESTIMATORS["straight_through"].unbiased


def _rec_grad_per_config(model, name):
    """One-layer net: the estimator's recognition gradient for each configuration z of the
    3 latents (uniforms chosen inside each z's cell), with q(z|x); x = X[0]."""
    x = X[:1]
    n = model.layers[0]
    bits = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=x.dtype)
    mu = torch.sigmoid(model.rec[0](x)).detach()
    u = torch.where(bits > 0.5, mu / 2, (1 + mu) / 2)
    rows = []
    for c in range(bits.shape[0]):
        out = make_estimator(name, model)(model, x, [None, u[c : c + 1]])
        rows.append(
            flat_grad(model, out.loss.sum())[
                -sum(p.numel() for p in model.recognition_parameters()) :
            ]
        )
    zs = [x.expand(bits.shape[0], -1), bits]
    q = model.log_posterior(zs).exp().detach()
    return torch.stack(rows), q, zs


def test_tokui_variance_not_above_optimal_baseline_reinforce():
    """Tokui & Sato's bound, on the one-layer tiny net, exactly (enumerating z): per
    recognition parameter, the variance of their estimator is not above that of the
    likelihood ratio with the optimal per-parameter baseline for this x."""
    model = tiny((3,))
    g_tok, q, zs = _rec_grad_per_config(model, "tokui")
    mean_tok = (q[:, None] * g_tok).sum(0)
    var_tok = (q[:, None] * (g_tok - mean_tok) ** 2).sum(0)
    # the likelihood ratio's score and f per configuration
    f = (model.log_joint(zs) - model.log_posterior(zs)).detach()
    scores = torch.stack(
        [
            flat_grad(model, model.log_posterior([zs[0][c : c + 1], zs[1][c : c + 1]]).sum())[
                -g_tok.shape[1] :
            ]
            for c in range(len(q))
        ]
    )
    den = (q[:, None] * scores**2).sum(0)
    b = (q[:, None] * f[:, None] * scores**2).sum(0) / den.clamp_min(1e-300)  # 0 where den == 0
    g_lr = (f[:, None] - b) * scores
    mean_lr = (q[:, None] * g_lr).sum(0)
    var_lr = (q[:, None] * (g_lr - mean_lr) ** 2).sum(0)
    torch.testing.assert_close(mean_tok, -mean_lr)  # both unbiased (loss is -ELBO)
    assert (var_tok <= var_lr * (1 + 1e-9) + 1e-12).all(), (var_tok, var_lr)
    assert (var_tok < 0.9 * var_lr).any()


def _optimal_baseline_lr_variance(model: SBN, x: torch.Tensor) -> torch.Tensor:
    """Per recognition parameter, the exact variance of the likelihood-ratio estimator with
    the optimal baseline for this one data point ``x`` ``[1, D]`` (enumerating z)."""
    zs = all_configs(model, x)
    q = model.log_posterior(zs).exp().detach()
    f = (model.log_joint(zs) - model.log_posterior(zs)).detach()
    n_rec = sum(p.numel() for p in model.recognition_parameters())
    scores = torch.stack(
        [
            flat_grad(model, model.log_posterior([z[c : c + 1] for z in zs]).sum())[-n_rec:]
            for c in range(len(q))
        ]
    )
    den = (q[:, None] * scores**2).sum(0)
    b = (q[:, None] * f[:, None] * scores**2).sum(0) / den.clamp_min(1e-300)
    g = (f[:, None] - b) * scores
    mean = (q[:, None] * g).sum(0)
    return (q[:, None] * (g - mean) ** 2).sum(0)


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear2-2", "nonlinear2-2"])
def test_tokui_variance_not_above_optimal_baseline_reinforce_deep(nonlinear):
    """Two stochastic layers (re-simulation with common random numbers): the per-draw
    variance of Tokui's recognition gradient, estimated from 200 group means of 50 draws
    (the two data points alternating), is below the exact variance of the likelihood ratio
    with each point's optimal baseline, per parameter (measured ratios <= 0.75 here; the
    estimate's relative standard error is about 10%)."""
    model = tiny((2, 2), nonlinear)
    n_rec = sum(p.numel() for p in model.recognition_parameters())
    g = group_grads(model, make_estimator("tokui", model), groups=200, per_group=50)[:, -n_rec:]
    var_tok = g.var(0) * 50  # = (var at X[0] + var at X[1]) / 2 per draw
    var_lr = (
        _optimal_baseline_lr_variance(model, X[:1]) + _optimal_baseline_lr_variance(model, X[1:])
    ) / 2
    assert (var_tok <= var_lr + 1e-12).all(), var_tok / var_lr
    assert (var_tok < 0.5 * var_lr).sum() > n_rec // 2


def test_leg_equals_tokui_on_one_layer():
    """One stochastic layer: no descendants to keep or re-simulate, and the Markov blanket
    weights are q's own, so LEG and Tokui's estimator are the same function of the draw;
    with two layers they differ."""
    for layers, same in (((3,), True), ((2, 2), False)):
        model = tiny(layers)
        x = X.repeat(4, 1)
        u = model.draw_uniforms(8, x)
        g = [
            flat_grad(model, make_estimator(n, model)(model, x, u).loss.mean())
            for n in ("leg", "tokui")
        ]
        assert torch.allclose(g[0], g[1], rtol=1e-10, atol=1e-12) == same


def test_flip_op_matches_the_models_recomputation():
    torch.manual_seed(3)
    B, D, H = 3, 5, 4
    x = torch.randint(0, 2, (B, D)).double()
    z = torch.randint(0, 2, (B, H)).double()
    w = torch.randn(D, H, dtype=torch.float64)
    bias = torch.randn(D, dtype=torch.float64)
    out = bernoulli_flip_loglik(x, z @ w.t() + bias, w, z)
    for h in range(H):
        zf = z.clone()
        zf[:, h] = 1 - zf[:, h]
        ref = bernoulli_log_prob(x, zf @ w.t() + bias).sum(-1)
        torch.testing.assert_close(out[:, h], ref)


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_tokui_resimulates_with_common_random_numbers(nonlinear):
    """Deep layers: the flipped copy's upper layer is re-sampled with the SAME uniforms, so a
    flip that leaves the upper layer's probabilities on the same side of u changes nothing
    above; checked against a direct recomputation of f for every unit."""
    model = tiny((2, 2), nonlinear)
    x = X
    torch.manual_seed(5)
    u = model.draw_uniforms(2, x)
    est = make_estimator("tokui", model)
    s = model.sample_posterior(x, u)
    diff = est._flip_minus_sample(model, s, 1)
    f = model.log_joint(s.z) - model.log_posterior(s.z)
    for h in range(2):
        z1 = s.z[1].clone()
        z1[:, h] = 1 - z1[:, h]
        a2 = model.rec[1](z1)
        z2 = (u[2] < torch.sigmoid(a2)).double()
        zs = [x, z1, z2]
        ff = model.log_joint(zs) - model.log_posterior(zs)
        torch.testing.assert_close(diff[:, h], (ff - f).detach())


def test_model_bounds_and_samples():
    model = tiny((2, 2))
    exact_ll = torch.logsumexp(
        (lambda zs: model.log_joint(zs).view(2, -1))(all_configs(model, X)), 1
    )
    torch.manual_seed(0)
    # K = 1: the ELBO; its mean over 20,000 draws within 5 standard errors of the exact one
    one = model.iw_bound(X.repeat(10000, 1), 1).view(10000, 2)
    exact_elbo = -torch.stack([exact_loss(model, X[i : i + 1]) for i in range(2)]).detach()
    se = one.std(0) / math.sqrt(one.shape[0])
    assert ((one.mean(0) - exact_elbo).abs() < 5 * se).all()
    # large K: close to log p(x) (the weights' relative sd is <= 8 here: sd of the bound ~0.04)
    iw = model.iw_bound(X, 50000, chunk=5000)
    torch.testing.assert_close(iw, exact_ll.detach(), atol=0.15, rtol=0)
    assert (iw > exact_elbo + 0.3).all()
    s = model.sample(7)
    assert s.shape == (7, 4) and ((s > 0) & (s < 1)).all()
    b = model.sample(7, means=False)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    m = SBN(784, (200, 200))
    assert [tuple(c.weight.shape) for c in m.gen] == [(784, 200), (200, 200)]
    assert [tuple(c.weight.shape) for c in m.rec] == [(200, 784), (200, 200)]
    nl = SBN(784, (200,), nonlinear=True)
    assert [type(mm).__name__ for mm in nl.gen[0]] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]


def test_estimators_run_on_nonlinear_deep_net_and_value_is_elbo():
    model = tiny((2, 3, 2), nonlinear=True)
    u = model.draw_uniforms(2, X)
    f = model.elbo(X, u).detach()
    for name in ESTIMATORS:
        est = make_estimator(name, model).double()
        out = est(model, X, u)
        torch.testing.assert_close(out.loss.detach(), -f)
        torch.testing.assert_close(out.elbo, f)
        out.loss.mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()


def test_empty_batch():
    model = tiny((2, 2))
    empty = X[:0]
    for name in ESTIMATORS:
        est = make_estimator(name, model).double().train()
        state = {k: v.clone() for k, v in est.state_dict().items()}
        out = est(model, empty)
        assert out.loss.shape == (0,) and out.elbo.shape == (0,)
        out.loss.sum().backward()
        for k, v in est.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
    assert model.iw_bound(empty, 3).shape == (0,)


def test_bad_inputs():
    model = tiny((3,))
    with pytest.raises(ValueError, match=r"unknown estimator 'bogus'; choose one of: arm, disarm"):
        make_estimator("bogus", model)
    est = make_estimator("tokui", model)
    with pytest.raises(
        ValueError, match=r"estimator 'tokui': x must have shape \[B, 4\]; got \(2, 5\)"
    ):
        est(model, torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"estimator 'tokui': x must be a floating tensor"):
        est(model, torch.zeros(2, 4, dtype=torch.int64))
    with pytest.raises(
        ValueError, match=r"estimator 'tokui': u\[1\] must have shape \(2, 3\); got \(2, 2\)"
    ):
        est(model, X, [None, torch.rand(2, 2, dtype=torch.float64)])
    with pytest.raises(
        TypeError, match=r"estimator 'reinforce': model must be a dqkernels.models.SBN"
    ):
        make_estimator("reinforce", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"gumbel: temperature must be a positive number; got 0"):
        make_estimator("gumbel", model, temperature=0)
    with pytest.raises(ValueError, match=r"estimator 'tokui' takes no options"):
        make_estimator("tokui", model, temperature=1.0)
    with pytest.raises(ValueError, match=r"SBN: layers must name at least one"):
        SBN(4, ())
    with pytest.raises(ValueError, match=r"SBN: layers must be positive integers; got 0"):
        SBN(4, (3, 0))
    with pytest.raises(ValueError, match=r"SBN.iw_bound: num_samples must be a positive int"):
        model.iw_bound(X, 0)
    with pytest.raises(
        TypeError, match=r"estimator 'tokui': x must have the model's dtype torch.float64; got "
    ):
        est(model, X.float())
    with pytest.raises(ValueError, match=r"estimator 'tokui': x must be on cpu \(the model's\)"):
        est(model, X.to("meta"))
    with pytest.raises(ValueError, match=r"estimator 'tokui': u\[1\] must be on cpu"):
        est(model, X, [None, torch.rand(2, 3, dtype=torch.float64, device="meta")])
    with pytest.raises(ValueError, match=r"SBN.iw_bound: x must have shape \[B, 4\]"):
        model.iw_bound(X[:, :3], 5)
    with pytest.raises(ValueError, match=r"SBN.resimulate: give z_l or a_next"):
        model.resimulate(None, 1, [None, None])


def test_stateful_estimators_update_in_training_mode_only():
    model = tiny((3,))
    x = X.repeat(8, 1)
    rb = make_estimator("reinforce_baseline", model, decay=0.5).double()
    nv = make_estimator("nvil", model).double()
    f = model.elbo(x, model.draw_uniforms(16, x)).detach()
    rb.eval()
    nv.eval()
    rb(model, x)
    nv(model, x)
    assert rb.baseline.item() == 0.0 and nv.mean.item() == 0.0 and nv.var.item() == 1.0
    rb.train()
    nv.train()
    rb(model, x)  # the first step sets the baseline to the batch mean
    assert rb.baseline.item() == pytest.approx(f.mean().item(), abs=1.5)
    rb(model, x)
    assert rb.baseline.item() == pytest.approx(f.mean().item(), abs=1.5)
    nv(model, x)
    assert nv.mean.item() != 0.0 and nv.var.item() != 1.0
    # NVIL's baseline network is fitted by the same loss: its parameters get gradients
    nv(model, x).loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in nv.baseline_net.parameters())


def _cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = dqkernels.cli.main(list(map(str, argv)))
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


TINY_RUN = "--limit 40 --batch-size 16 --epochs 1 --no-progress --device cpu --seed 1".split()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--layers", "5,0"], "--layers must be comma-separated positive integers"),
        (["--layers", "a"], "--layers must be comma-separated positive integers"),
        (["--nonlinear", "--hidden", ""], "--hidden must be comma-separated positive integers"),
        (["--temperature", "0.5"], "--temperature applies to --estimator gumbel only"),
        (
            ["--estimator", "gumbel", "--temperature", "0"],
            "--temperature must be a positive number; got 0.0",
        ),
        (["--estimator", "bogus"], "argument --estimator: invalid choice: 'bogus'"),
        (["--eval-samples", "0"], "--eval-samples must be >= 1; got 0"),
    ],
)
def test_train_sbn_bad_flags(tmp_path, capsys, flags, message):
    rc, _, err = _cli(capsys, ["train", "sbn", *TINY_RUN, "--out", tmp_path / "o", *flags])
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("estimator", ["nvil", "gumbel"])
def test_train_sbn_runs_and_reports_nats(tmp_path, capsys, estimator):
    out = tmp_path / "o"
    flags = ["--layers", "6,4", "--estimator", estimator, "--eval-samples", "20"]
    rc, stdout, err = _cli(capsys, ["train", "sbn", *TINY_RUN, "--out", out, *flags, "--nonlinear"])
    assert rc == 0, err
    assert f"estimator {estimator}" in stdout and "1000" not in stdout.split("\n")[1]
    assert "IW bound with 50 samples per epoch, 20 at the end" in stdout
    ck = trainer.load_checkpoint(str(sorted(out.glob("checkpoint-*.pt"))[-1]))
    assert ck["model_config"] == {
        "num_dims": 64,
        "layers": [6, 4],
        "nonlinear": True,
        "hidden": [100, 100],
        "estimator": estimator,
    }
    assert (out / "samples.png").exists()


@pytest.mark.parametrize(
    "layers,nonlinear",
    [((3,), False), ((3, 2), False), ((3, 2), True), ((3, 4, 2), False), ((2, 3, 2), True)],
    ids=["linear1", "linear2", "nonlinear2", "linear3", "nonlinear3"],
)
def test_tokui_matches_the_resimulated_reference(layers, nonlinear):
    """The fast path (fused flip op below, rank-one logits and no copies of the unchanged
    terms above) gives the same ``F(flip) - f`` as re-simulating the whole network on the
    ``B * H`` copies (the public code's way), for every layer, and the same gradients."""
    from dqkernels.reference.sbn_tokui import TokuiResimulate, flip_minus_sample_resimulated

    model = tiny(layers, nonlinear, seed=3)
    x = torch.tensor(
        [[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.manual_seed(9)
    u = model.draw_uniforms(3, x)
    s = model.sample_posterior(x, u)
    est = make_estimator("tokui", model)
    for l in range(1, model.num_layers + 1):
        with torch.no_grad():
            torch.testing.assert_close(
                est._flip_minus_sample(model, s, l), flip_minus_sample_resimulated(model, s, l)
            )
    grads = []
    for e in (est, TokuiResimulate()):
        loss = e(model, x, u).loss.sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r)
    empty = x[:0]  # an empty batch: empty coefficients on both paths
    s0 = model.sample_posterior(empty, model.draw_uniforms(0, empty))
    for l in range(1, model.num_layers + 1):
        with torch.no_grad():
            for got in (
                est._flip_minus_sample(model, s0, l),
                flip_minus_sample_resimulated(model, s0, l),
            ):
                assert got.shape == (0, model.layers[l - 1])


def test_sbn_backend_reaches_the_flip_op():
    """``SBN(backend=...)`` routes the estimators' flip op; an unknown name is refused by the
    op with the backend named."""
    model = SBN(4, (3,), backend="torch").double()
    est = make_estimator("tokui", model)
    torch.manual_seed(0)
    ref = est(model, X, model.draw_uniforms(2, X))
    model.backend = "no_such_backend"
    with pytest.raises(ValueError, match="no_such_backend"):
        est(model, X)
    assert torch.isfinite(ref.loss).all()


@pytest.mark.parametrize("estimator", ["tokui", "nvil"])
def test_train_sbn_ddp_two_gloo_processes(tmp_path, estimator):
    """``dqk train sbn`` under torchrun with 2 CPU processes: each rank draws its own latent
    samples for its half of the batch, DDP averages the gradients (NVIL's baseline network
    and moving averages included: buffers follow rank 0), so both ranks end with identical
    parameters."""
    import torch.distributed as dist
    from train_runs import assert_ranks_match, torchrun

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("no gloo")
    torchrun(
        "-m",
        "dqkernels.cli",
        "train",
        "sbn",
        "--estimator",
        estimator,
        "--layers",
        "6,4",
        "--limit",
        "48",
        "--batch-size",
        "16",
        "--epochs",
        "2",
        "--eval-samples",
        "3",
        "--epoch-eval-samples",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        tmp_path / "ddp",
        "--dump-params",
        tmp_path / "rank{rank}.pt",
    )
    r0 = assert_ranks_match(tmp_path, single=None)
    assert any(k.startswith("sbn.rec.") for k in r0)
    if estimator == "nvil":  # the baseline network is trained and synchronised too
        assert any(k.startswith("estimator.") for k in r0)
    assert all(torch.isfinite(v).all() for v in r0.values() if v.is_floating_point())
