"""The PixelCNN model (autoregressive masks, nll, sampling) and ``dqk train pixelcnn``."""
import json
import math

import pytest
import torch

import dqkernels.cli
from dqkernels.models import PixelCNN, pixel_mask


def test_pixel_masks():
    a = pixel_mask(3, "A")
    b = pixel_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="odd"):
        pixel_mask(4, "A")
    with pytest.raises(ValueError, match="mask_type"):
        pixel_mask(3, "C")


@pytest.mark.parametrize("C, gated", [(1, True), (3, True), (1, False)])
def test_pixelcnn_is_autoregressive(C, gated):
    """params at pixel (i, j) have zero gradient with respect to every input pixel at or
    after (i, j) in raster order, and a non-zero one with respect to its left and upper
    neighbours."""
    torch.manual_seed(0)
    H, W = 5, 6
    model = PixelCNN(in_channels=C, num_levels=17, width=8, num_blocks=3, num_mixtures=2,
                     gated=gated).double()
    x = (torch.rand(1, C, H, W, dtype=torch.float64) * 2 - 1).requires_grad_()
    params = model(x)
    assert params.shape == (1, 2 * (1 + (3 if C == 3 else 2) * C), H, W)
    order = torch.arange(H * W).reshape(H, W)
    for i in range(H):
        for j in range(W):
            (g,) = torch.autograd.grad(params[0, :, i, j].sum(), x, retain_graph=True)
            reach = g[0].abs().sum(dim=0)  # [H, W]
            after = order >= order[i, j]
            assert torch.all(reach[after] == 0), (i, j, reach)
            if j > 0:
                assert reach[i, j - 1] > 0, (i, j)
            if i > 0:
                assert reach[i - 1, j] > 0, (i, j)


@pytest.mark.parametrize("C", [1, 3])
def test_pixelcnn_nll_and_sample(C):
    torch.manual_seed(0)
    L = 5
    model = PixelCNN(in_channels=C, num_levels=L, width=8, num_blocks=1, num_mixtures=3)
    x = torch.randint(0, L, (2, C, 4, 3)) * (2.0 / (L - 1)) - 1
    nll = model.nll(x)
    assert nll.shape == (2,) and torch.isfinite(nll).all() and (nll > 0).all()
    torch.testing.assert_close(model.bits_per_dim(x),
                               nll.sum() / (2 * C * 12 * math.log(2.0)))
    nll.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

    gen = torch.Generator().manual_seed(3)
    s = model.sample(3, (4, 3), generator=gen)
    assert s.shape == (3, C, 4, 3)
    k = (s + 1) * (L - 1) / 2
    assert torch.equal(k, k.round()) and k.min() >= 0 and k.max() <= L - 1
    # same generator state, same samples
    assert torch.equal(s, model.sample(3, (4, 3), generator=torch.Generator().manual_seed(3)))
    assert model.training  # sample() restores the mode


def test_train_pixelcnn_smoke(tmp_path, capsys):
    rc = dqkernels.cli.main(["train", "pixelcnn", "--epochs", "1", "--limit", "64",
                             "--width", "8", "--grid", "4", "--out", str(tmp_path)])
    assert rc == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] == 1  # 64 images, batches of 64
    assert math.isfinite(rec["train_bpd"]) and math.isfinite(rec["test_bpd"])
    assert 0 < rec["test_bpd"] < 20
    for name in ("samples.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = torch.load(tmp_path / "checkpoint-1.pt", weights_only=True)
    assert ckpt["run"]["epoch"] == 1 and ckpt["args"]["width"] == 8
    assert ckpt["task"] == "pixelcnn"
    # the training module holds the PixelCNN as .net
    model = PixelCNN(**ckpt["model_config"])
    model.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["model"].items()})
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and "uniform baseline log2(17) = 4.087" in out


def test_train_bad_data_dir(tmp_path, capsys):
    rc = dqkernels.cli.main(["train", "pixelcnn", "--dataset", "binarized_mnist",
                             "--data-dir", str(tmp_path / "missing"), "--out",
                             str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "binarized_mnist_train.amat" in err
    assert "--data-dir" in err


def test_train_bad_argument(tmp_path, capsys):
    rc = dqkernels.cli.main(["train", "pixelcnn", "--limit", "0", "--out", str(tmp_path)])
    assert rc == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
