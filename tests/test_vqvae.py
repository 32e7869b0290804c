"""The VQ-VAE model (dqkernels.models.VQVAE) and ``dqk train vqvae`` (hard and soft EM)."""

import json
import math
import re

import pytest
import torch
from conftest import fresh_seed
from train_runs import records

import dqkernels.cli
from dqkernels import trainer
from dqkernels.backends import use_backend
from dqkernels.models import VQVAE


@pytest.fixture(autouse=True)
def _torch_backend():
    with use_backend("torch"):
        yield


def _tiny(C=1, L=17, size=(8, 8), **kw):
    return VQVAE(C, L, size, num_codes=8, code_dim=4, width=8, num_blocks=1, num_mixtures=2, **kw)


@pytest.mark.parametrize(
    "C,L,size,down,latent",
    [
        (1, 17, (8, 8), 2, (2, 2)),
        (1, 17, (8, 8), 1, (4, 4)),
        (1, 2, (28, 28), 2, (7, 7)),
        (3, 256, (8, 8), 3, (1, 1)),
    ],
)
def test_forward_shapes_losses_and_gradients(C, L, size, down, latent):
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = _tiny(C, L, size, downsample=down, em="soft", num_samples=3)
    assert model.latent_shape == latent
    x = torch.randint(L, (3, C, *size))
    out = model(x)
    for k in ("loss", "recon", "commitment", "rate", "bound"):
        assert out[k].shape == (3,) and torch.isfinite(out[k]).all(), (k, seed)
    for k in ("perplexity", "used_codes", "dead_codes"):
        assert out[k].dim() == 0, k
    assert torch.allclose(out["rate"], torch.tensor(latent[0] * latent[1] * math.log(8)))
    torch.testing.assert_close(out["loss"], out["recon"] + out["commitment"])
    torch.testing.assert_close(out["bound"], out["recon"] + out["rate"])
    out["loss"].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.encoder[0].weight.grad.abs().sum() > 0  # through the straight-through path


def test_eval_bound_uses_the_nearest_codes_and_sampling_shapes():
    torch.manual_seed(fresh_seed())
    model = _tiny(em="soft", num_samples=4)
    x = torch.randint(17, (5, 1, 8, 8))
    model(x)  # a training step: batch init and an EMA update
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
        codes = model.codes(x)
        recon = model.nll(model.grid(x), model.decode(codes))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # eval mode changes nothing
    torch.testing.assert_close(out["recon"], recon)
    assert codes.shape == (5, 2, 2) and codes.dtype == torch.int64
    g = torch.Generator().manual_seed(0)
    s = model.sample(6, g)
    assert s.shape == (6, 1, 8, 8) and s.dtype == torch.int64
    assert 0 <= int(s.min()) and int(s.max()) <= 16
    r = model.reconstruct(x, g)
    assert r.shape == x.shape


def test_bf16_autocast_forward():
    torch.manual_seed(fresh_seed())
    model = _tiny()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(17, (4, 1, 8, 8)))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"]).all()
    assert model.quantizer.embed_sum.dtype == torch.float32


def test_model_bad_arguments():
    with pytest.raises(
        ValueError,
        match=r"the image size 28x28 must be divisible by "
        r"2\*\*downsample = 8 \(downsample 3\)",
    ):
        _tiny(1, 2, (28, 28), downsample=3)
    with pytest.raises(ValueError, match="in_channels must be 1 or 3; got 2"):
        _tiny(2)
    with pytest.raises(ValueError, match="em must be one of hard, soft; got 'x'"):
        _tiny(em="x")
    model = _tiny()
    with pytest.raises(
        ValueError,
        match=r"expected integer levels \[B, 1, 8, 8\]; got "
        r"\(2, 1, 4, 4\) int64",
    ):
        model(torch.zeros(2, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\) float32"):
        model(torch.zeros(2, 1, 8, 8))


# ----------------------------------------------------------------------------- dqk train vqvae

_TINY = (
    "--limit 40 --batch-size 16 --width 8 --blocks 1 --codes 8 --code-dim 4 --mixtures 1 --grid 4 "
    "--no-progress --device cpu --backend torch --eval-batch-size 128"
).split()


@pytest.mark.parametrize("em,extra", [("hard", []), ("soft", ["--samples", "3", "--reinit-dead"])])
def test_train_vqvae_cli(tmp_path, capsys, em, extra):
    out = tmp_path / "run"
    rc = dqkernels.cli.main(
        ["train", "vqvae", *_TINY, "--em", em, "--epochs", "2", "--out", str(out), *extra]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert f"VQ-VAE: {em} EM" in text and "codes of dim 4 on a 2x2 latent grid" in text
    rec = records(out)
    assert len(rec) == 2 and all(math.isfinite(r["test_bpd"]) for r in rec)
    assert {
        "recon",
        "rate",
        "bound",
        "commitment",
        "perplexity",
        "used_codes",
        "dead_codes",
    } <= set(rec[-1]["extras"])
    stats = json.loads((out / "vq_test_metrics.json").read_text())
    # the final test bits/dim is the bound, recon + rate
    assert stats["bound_bpd"] == pytest.approx(rec[-1]["test_bpd"], rel=1e-5)
    assert stats["bound_bpd"] == pytest.approx(stats["recon_bpd"] + stats["rate_bpd"])
    assert stats["rate_bpd"] == pytest.approx(4 * math.log2(8) / 64)
    assert 1 <= stats["perplexity"] <= stats["used_codes"] <= 8
    assert re.search(
        r"test: bound [\d.]+ bits/dim = recon [\d.]+ \+ rate 0.1875; code "
        r"perplexity [\d.]+ of 8, used \d/8, dead \d",
        text,
    )
    for name in ("reconstructions.png", "codebook_usage.png", "samples.png", "learning_curve.png"):
        assert (out / name).stat().st_size > 0, name
    ck = trainer.load_checkpoint(trainer.latest_checkpoint(str(out)))
    assert ck["task"] == "vqvae" and ck["model_config"]["em"] == em
    assert ck["model"]["quantizer.embed_sum"].dtype == torch.float32


def test_train_vqvae_bad_flags(tmp_path, capsys):
    for flags, message in (
        (["--codes", "0"], "--codes must be >= 1; got 0"),
        (["--decay", "1.5"], r"--decay must be in \[0, 1\]; got 1.5"),
        (["--temperature", "0"], "--temperature must be a positive number"),
        (["--beta", "-1"], "--beta must be a number >= 0; got -1.0"),
        (
            ["--downsample", "4"],
            ("--downsample 4: digits's 8x8 images are not divisible by 2\\^4 = 16"),
        ),
    ):
        rc = dqkernels.cli.main(["train", "vqvae", *_TINY, "--out", str(tmp_path / "x"), *flags])
        assert rc == 2
        assert re.search(message, capsys.readouterr().err), flags
