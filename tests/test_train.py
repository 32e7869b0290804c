"""The PixelCNN model (autoregressive masks, nll, sampling) and ``dqk train pixelcnn``."""

import json
import math

import pytest
import torch
from conftest import fresh_seed, require

import dqkernels.cli
from dqkernels import trainer
from dqkernels.models import PixelCNN, pixel_mask
from dqkernels.nn import MaskedConv2d
from dqkernels.reference.masked_conv2d import masked_conv2d_reference


def test_pixel_masks():
    a = pixel_mask(3, "A")
    b = pixel_mask(3, "B")
    assert a.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert b.tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="odd"):
        pixel_mask(4, "A")
    with pytest.raises(ValueError, match="mask_type"):
        pixel_mask(3, "C")


def test_pixel_mask_is_the_ops_groups_1_mask():
    """PixelCNN's masks ignore channels: every MaskedConv2d of the model is groups=1 (type
    A first, type B in the blocks), and its [Cout, Cin, k, k] mask is pixel_mask(k) in
    every channel pair, i.e. the taps of rows above the centre and left of the centre are
    kept, the centre kept for "B" and hidden for "A"."""
    for k in (1, 3, 5, 7):
        c = k // 2
        for t in ("A", "B"):
            want = torch.zeros(k, k)
            want[:c] = 1
            want[c, :c] = 1
            want[c, c] = float(t == "B")
            assert torch.equal(pixel_mask(k, t), want), (k, t)
    model = PixelCNN(
        in_channels=3, num_levels=5, width=6, num_blocks=2, first_kernel=5, kernel_size=3
    )
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedConv2d)]
    assert [(n, m.mask_type, m.groups) for n, m in convs] == [
        ("input", "A", 1),
        ("blocks.0.conv", "B", 1),
        ("blocks.1.conv", "B", 1),
    ]
    for _, m in convs:
        mask = pixel_mask(m.kernel_size, m.mask_type).bool()
        assert torch.equal(m.mask(), mask.expand_as(m.weight))
        assert not m.weight.detach()[~m.mask()].any()  # masked entries start at zero


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("C, gated", [(1, True), (3, True), (1, False)])
def test_pixelcnn_is_autoregressive(C, gated, backend):
    """params at pixel (i, j) have zero gradient with respect to every input pixel at or
    after (i, j) in raster order, and a non-zero one with respect to its left and upper
    neighbours."""
    require(backend, "cpu", torch.float64)
    torch.manual_seed(0)
    H, W = 5, 6
    model = PixelCNN(
        in_channels=C,
        num_levels=17,
        width=8,
        num_blocks=3,
        num_mixtures=2,
        gated=gated,
        backend=backend,
    ).double()
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


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_pixelcnn_perturbing_later_pixels_changes_nothing_before(backend):
    """Changing the pixels at and after position p (raster order) leaves the params of
    every pixel up to p exactly unchanged, and changes those of the pixel after p; with
    non-zero values in the masked weight entries, which the op must never read."""
    require(backend, "cpu", torch.float32)
    seed = fresh_seed()
    torch.manual_seed(seed)
    C, H, W = 3, 5, 4
    model = PixelCNN(
        in_channels=C, num_levels=256, width=8, num_blocks=2, num_mixtures=2, backend=backend
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, MaskedConv2d):
                m.weight[~m.mask()] = 1e3
    x = torch.rand(2, C, H, W) * 2 - 1
    base = model(x)
    flat = torch.arange(H * W)
    for p in range(H * W - 1):
        later = (flat >= p).view(H, W)
        y = torch.where(later, torch.rand(2, C, H, W) * 2 - 1, x)
        out = model(y)
        upto = (flat <= p).view(H, W)
        assert torch.equal(out[..., upto], base[..., upto]), (p, seed)
        nxt = p + 1
        assert not torch.equal(out[..., nxt // W, nxt % W], base[..., nxt // W, nxt % W]), (p, seed)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_pixelcnn_masked_convs_match_the_dense_reference(backend):
    """The model's forward on the masked_conv2d op equals the same model with each masked
    convolution replaced by the dense definition ``conv2d(x, weight * mask)``."""
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = (
        PixelCNN(
            in_channels=3,
            num_levels=256,
            width=8,
            num_blocks=2,
            num_mixtures=2,
            dropout=0.2,
            backend=backend,
        )
        .double()
        .eval()
    )
    x = torch.rand(2, 3, 6, 5, dtype=torch.float64) * 2 - 1
    got = model(x)

    def dense(m):
        return lambda h: masked_conv2d_reference(h, m.weight, m.bias, m.mask_type, m.groups)

    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            m.forward = dense(m)
    torch.testing.assert_close(got, model(x), rtol=1e-10, atol=1e-10, msg=f"seed {seed}")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_pixelcnn_step_compiles(backend):
    """A training step (the loss compiled with fullgraph=True, then backward) of a PixelCNN:
    the masked convolutions and dmol ops are custom ops with fake implementations, so the
    graph has no break; same loss and gradients as eager."""
    require(backend, "cpu", torch.float32)
    torch._dynamo.reset()
    seed = fresh_seed()
    torch.manual_seed(seed)
    model = PixelCNN(
        in_channels=1, num_levels=17, width=8, num_blocks=2, num_mixtures=2, backend=backend
    )
    x = torch.randint(0, 17, (4, 1, 6, 6)) * (2.0 / 16) - 1

    def loss(x):
        return model.nll(x).mean()

    eager = loss(x)
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5, msg=f"seed {seed}")
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5, msg=f"seed {seed}")


@pytest.mark.parametrize("C", [1, 3])
def test_pixelcnn_nll_and_sample(C):
    torch.manual_seed(0)
    L = 5
    model = PixelCNN(in_channels=C, num_levels=L, width=8, num_blocks=1, num_mixtures=3)
    x = torch.randint(0, L, (2, C, 4, 3)) * (2.0 / (L - 1)) - 1
    nll = model.nll(x)
    assert nll.shape == (2,) and torch.isfinite(nll).all() and (nll > 0).all()
    torch.testing.assert_close(model.bits_per_dim(x), nll.sum() / (2 * C * 12 * math.log(2.0)))
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
    flags = "--epochs 1 --limit 64 --width 8 --grid 4".split()
    rc = dqkernels.cli.main(["train", "pixelcnn", *flags, "--out", str(tmp_path)])
    assert rc == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] == 1  # 64 images, batches of 64
    assert math.isfinite(rec["train_bpd"]) and math.isfinite(rec["test_bpd"])
    assert 0 < rec["test_bpd"] < 20
    for name in ("samples.png", "learning_curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpt = trainer.load_checkpoint(str(tmp_path / "checkpoint-1.pt"))
    assert ckpt["run"]["epoch"] == 1 and ckpt["args"]["width"] == 8
    assert ckpt["task"] == "pixelcnn"
    # the training module holds the PixelCNN as .net
    model = PixelCNN(**ckpt["model_config"])
    model.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["model"].items()})
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file
    out = capsys.readouterr().out
    assert "test bits/dim:" in out and "uniform baseline log2(17) = 4.087" in out


def test_train_bad_data_dir(tmp_path, capsys):
    data = ["--dataset", "binarized_mnist", "--data-dir", str(tmp_path / "missing")]
    rc = dqkernels.cli.main(["train", "pixelcnn", *data, "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "binarized_mnist_train.amat" in err
    assert "--data-dir" in err


def test_train_bad_argument(tmp_path, capsys):
    rc = dqkernels.cli.main(["train", "pixelcnn", "--limit", "0", "--out", str(tmp_path)])
    assert rc == 2
    assert "--limit must be >= 1" in capsys.readouterr().err
