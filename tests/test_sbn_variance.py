"""``dqk sbn-variance`` (dqkernels/sbn_variance.py): it runs end to end and writes its files,
its numbers equal a direct computation, the optimal-baseline likelihood ratio is fitted
correctly (against enumeration) and beats the plain one, bad flags are one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_sbn import X, _cli, all_configs, tiny

from dqkernels import trainer
from dqkernels.data import binary_vectors
from dqkernels.models.sbn import SBN
from dqkernels.sbn_variance import (
    OPTIMAL,
    _per_example_scores,
    estimator_seed,
    fit_optimal_baseline,
)

MEASURE = "--batch-size 8 --batches 2 --draws 20 --baseline-draws 100 --fit-steps 10".split()
MEASURE += ["--no-progress", "--device", "cpu", "--seed", "3"]
NAMES = ["reinforce", "nvil", "tokui", OPTIMAL]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A tiny SBN trained for 3 steps on digits by ``dqk train sbn``, then measured."""
    import dqkernels.cli

    root = tmp_path_factory.mktemp("sbnvar")
    train = "train sbn --limit 40 --batch-size 16 --epochs 1 --no-progress --device cpu".split()
    train += ["--layers", "6,4", "--eval-samples", "5", "--epoch-eval-samples", "5"]
    assert dqkernels.cli.main([*train, "--out", str(root / "run")]) == 0
    ckpt = str(sorted((root / "run").glob("checkpoint-*.pt"))[-1])
    out = root / "var"
    argv = ["sbn-variance", "--checkpoint", ckpt, "--estimators", ",".join(NAMES), *MEASURE]
    assert dqkernels.cli.main([*argv, "--out", str(out)]) == 0
    return ckpt, out, json.loads((out / "variance.json").read_text())


def test_writes_its_files(measured):
    _, out, result = measured
    for name in ("variance.json", "variance.csv", "variance.md", "variance.png"):
        assert (out / name).stat().st_size > 100, name
    assert (out / "variance.png").read_bytes()[:4] == b"\x89PNG"
    assert [r["estimator"] for r in result["rows"]] == NAMES
    assert result["dataset"] == "digits" and result["model"]["sizes"] == "4-6-64"
    csv = (out / "variance.csv").read_text().splitlines()
    assert len(csv) == 1 + len(NAMES) and csv[0].startswith("estimator,unbiased,rec_trace")
    table = (out / "variance.md").read_text()
    assert all(f"| {n} |" in table for n in NAMES)


def _direct_reinforce(model: SBN, x: torch.Tensor, seed: int, draws: int) -> list[torch.Tensor]:
    """Per-draw ``[f grad log q, grad log p]`` of the batch-mean ELBO, written out directly with
    the command's uniforms (a generator seeded per estimator and minibatch)."""
    gen = torch.Generator().manual_seed(seed)
    rec, gen_params = model.recognition_parameters(), model.generative_parameters()
    rows: list[list[torch.Tensor]] = [[], []]
    for _ in range(draws):
        u = [None] + [torch.rand(x.shape[0], h, generator=gen) for h in model.layers]
        z = [x]
        for k in range(model.num_layers):
            z.append((u[k + 1] < torch.sigmoid(model.rec[k](z[-1]))).float())
        f = (model.log_joint(z) - model.log_posterior(z)).detach()
        for out, params, obj in (
            (rows[0], rec, (f * model.log_posterior(z)).mean()),
            (rows[1], gen_params, model.log_joint(z).mean()),
        ):
            out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(obj, params)]))
    return [torch.stack(r).double().var(0) for r in rows]


def test_numbers_equal_a_direct_computation(measured):
    ckpt_path, _, result = measured
    ckpt = trainer.load_checkpoint(ckpt_path)
    cfg = ckpt["model_config"]
    model = SBN(cfg["num_dims"], cfg["layers"])
    model.load_state_dict({k[4:]: v for k, v in ckpt["model"].items() if k.startswith("sbn.")})
    data = binary_vectors("digits").train.float()
    row = next(r for r in result["rows"] if r["estimator"] == "reinforce")
    for k, picks in enumerate(result["examples"]):
        var = _direct_reinforce(model, data[picks], estimator_seed(3, "reinforce", k), 20)
        for group, v in zip(("recognition", "generative"), var):
            got = row[group]["per_batch"][k]
            assert got["trace"] == pytest.approx(float(v.sum()), rel=1e-4)
            # (every measured estimator has the same zero-variance parameters here)
            assert got["active"] == int((v > 0).sum()) and got["parameters"] == v.numel()
            assert got["median"] == pytest.approx(float(v[v > 0].median()), rel=1e-4)
            assert got["mean"] == pytest.approx(float(v[v > 0].mean()), rel=1e-4)
    rec = row["recognition"]["per_batch"][0]
    assert rec["active"] < rec["parameters"]  # pixels 0 in all 8 examples: no gradient
    mean_trace = sum(b["trace"] for b in row["recognition"]["per_batch"]) / 2
    assert row["recognition"]["trace"] == pytest.approx(mean_trace)


def test_optimal_baseline_beats_plain_reinforce_and_tokui_beats_it(measured):
    """Plain REINFORCE's signal f is about -40 nats, its variance dominated by f^2: the fitted
    optimal baseline must cut it by orders of magnitude; Tokui & Sato's bound: their
    estimator's variance is below the optimal-baseline one's."""
    rows = {r["estimator"]: r["recognition"] for r in measured[2]["rows"]}
    assert rows[OPTIMAL]["trace"] < 0.01 * rows["reinforce"]["trace"]
    assert rows[OPTIMAL]["median"] < 0.01 * rows["reinforce"]["median"]
    assert rows["tokui"]["trace"] < rows[OPTIMAL]["trace"]
    assert measured[2]["tokui_le_optimal_fraction"] > 0.9


def test_fitted_baseline_matches_enumeration():
    """fit_optimal_baseline converges to the exact ``E[f s_i^2] / E[s_i^2]`` of each data point
    (enumerating z of the tiny net): within 5 standard errors of the ratio estimator, the
    standard errors computed exactly (delta method) from the enumeration too."""
    model = tiny((3,))
    draws = 800
    b_hat = fit_optimal_baseline(model, X, draws, torch.Generator().manual_seed(0))
    n_rec = sum(p.numel() for p in model.recognition_parameters())
    for j in range(X.shape[0]):
        zs = all_configs(model, X[j : j + 1])
        q = model.log_posterior(zs).exp().detach()
        f = (model.log_joint(zs) - model.log_posterior(zs)).detach()
        s = []
        for c in range(len(q)):
            lq = model.log_posterior([z[c : c + 1] for z in zs]).sum()
            s.append(
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(lq, model.rec.parameters())])
            )
        s2 = torch.stack(s) ** 2  # [C, n_rec]
        e_s2 = (q[:, None] * s2).sum(0)
        live = e_s2 > 1e-12
        b = (q[:, None] * f[:, None] * s2).sum(0) / e_s2.clamp_min(1e-300)
        se = ((q[:, None] * (f[:, None] - b) ** 2 * s2**2).sum(0) / draws).sqrt() / e_s2.clamp_min(
            1e-300
        )
        assert b_hat.shape == (X.shape[0], n_rec)
        err = (b_hat[j] - b).abs()
        assert (err[live] < 5 * se[live] + 1e-9).all(), (err / se)[live]
        assert (b_hat[j][~live] == 0).all()
        assert not math.isclose(float(b[live].std()), 0.0)  # per-parameter baselines differ


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_per_example_scores(nonlinear):
    """The scores (closed form on linear nets, torch.func on MLPs) equal one backward pass per
    example, in the order of recognition_parameters()."""
    model = tiny((3, 2), nonlinear)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    s = model.sample_posterior(x.double())
    got = _per_example_scores(model, s.z)
    rec = model.recognition_parameters()
    for b in range(3):
        lq = model.log_posterior([z[b : b + 1] for z in s.z]).sum()
        want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(lq, rec)])
        torch.testing.assert_close(got[b], want)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--draws", "1"], "argument --draws: must be >= 2; got 1"),
        (["--estimators", "tokui,bogus"], "unknown estimator 'bogus'"),
        (["--temperature", "0"], "argument --temperature: must be a finite number > 0"),
        (["--layers", "5,0"], "--layers must be comma-separated positive integers"),
        (
            ["--checkpoint", "/nonexistent/ck.pt"],
            "--checkpoint '/nonexistent/ck.pt' does not exist",
        ),
        (["--batch-size", "1000", "--batches", "2"], "digits has 1437 training examples"),
        (["--seed", "-1"], "argument --seed: must be in [0,"),
    ],
)
def test_bad_flags_one_line(tmp_path, capsys, flags, message):
    argv = ["sbn-variance", "--dataset", "digits", "--train-steps", "1", "--no-progress"]
    rc, _, err = _cli(capsys, [*argv, "--out", tmp_path / "o", *flags])
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("dqk sbn-variance: error:")
    assert not (tmp_path / "o").exists()


def test_checkpoint_and_model_flags_conflict(measured, tmp_path, capsys):
    argv = ["sbn-variance", "--checkpoint", measured[0], "--layers", "5", "--no-progress"]
    rc, _, err = _cli(capsys, [*argv, "--out", tmp_path / "o"])
    assert rc == 2 and "--layers describes the model trained here" in err
    assert len(err.strip().splitlines()) == 1


def test_trains_a_model_without_checkpoint(tmp_path, capsys):
    out = tmp_path / "o"
    argv = "sbn-variance --dataset digits --layers 5 --train-steps 4 --train-estimator arm".split()
    argv += ["--estimators", "gumbel,straight_through", "--draws", "3", "--batch-size", "4"]
    rc, stdout, err = _cli(capsys, [*argv, "--no-progress", "--device", "cpu", "--out", out])
    assert rc == 0, err
    result = json.loads((out / "variance.json").read_text())
    assert result["source"]["trained_here"]["estimator"] == "arm"
    assert result["source"]["trained_here"]["steps"] == 4
    assert [r["unbiased"] for r in result["rows"]] == [False, False]
    assert "| gumbel | NO |" in stdout and result["tokui_le_optimal_fraction"] is None
