"""Flow layers (dqkernels.nn): exact inverses, log-determinants against the full autograd
Jacobian in float64, ActNorm's data-dependent init, SplitPrior's Gaussian, gradients, and
bad input. Small shapes on CPU: the ``torch`` backend always, ``cpp`` where it runs."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import fresh_seed
from torch.func import functional_call

from dqkernels import backends
from dqkernels.nn import (
    ActNorm,
    AffineCoupling,
    InvConv1x1,
    MixLogCDFCoupling,
    SplitPrior,
    Squeeze,
    checkerboard_index,
)

COUPLINGS = [
    f"{op}-{mask}-{parity}"
    for op in ("affine", "mixlog")
    for mask in ("channel", "checkerboard")
    for parity in (0, 1)
]
OTHERS = ["actnorm", "invconv", "invconv-lu", "squeeze"]


def require_backend(backend: str, dtype: torch.dtype) -> None:
    """Skip unless ``backend`` runs the coupling ops on CPU tensors of ``dtype``."""
    why = backends.why_unavailable(backend, "cpu", dtype)
    if why is not None:
        pytest.skip(f"{backend} on cpu {dtype}: {why}")


def cases(names, with_cpp: bool):
    out = []
    for name in names:
        for backend in ("torch", "cpp") if with_cpp else ("torch",):
            out.append(pytest.param(name, backend, id=f"{name}-{backend}"))
    return out


def perturb(layer: torch.nn.Module, scale: float = 0.3) -> None:
    """Move every parameter off its (often zero) initial value, so no test is trivial."""
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))


def make(
    name: str,
    C: int,
    dtype: torch.dtype,
    backend: str = "torch",
    init_data: torch.Tensor | None = None,
) -> torch.nn.Module:
    """A layer with non-trivial parameters (ActNorm initialised from ``init_data``)."""
    if name == "actnorm":
        layer = ActNorm(C).to(dtype)
        layer.train()
        layer(init_data)
        perturb(layer, 0.1)
    elif name.startswith("invconv"):
        layer = InvConv1x1(C, lu=name.endswith("lu")).to(dtype)
        perturb(layer, 0.1)
    elif name == "squeeze":
        layer = Squeeze(2)
    else:
        op, mask, parity = name.split("-")
        cls = AffineCoupling if op == "affine" else MixLogCDFCoupling
        kw = dict(num_components=3) if op == "mixlog" else {}
        layer = cls(
            C, hidden=8, mask=mask, parity=int(parity), num_blocks=1, backend=backend, **kw
        ).to(dtype)
        # 0.1 keeps the net's raw outputs within ~2: far larger ones can make the mixture
        # CDF flat to double precision, where no inverse can recover x (only y)
        perturb(layer, 0.1)
    return layer.eval()


def spatial(name: str) -> tuple[int, int]:
    return (4, 4) if name == "squeeze" else (3, 5)  # odd H*W for the checkerboard


# ----------------------------------------------------------------------------------------
# exact inverses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,backend", cases(OTHERS, False) + cases(COUPLINGS, True))
def test_inverse_of_forward(name, backend, dtype):
    require_backend(backend, dtype)
    seed = fresh_seed()
    torch.manual_seed(seed)
    H, W = (4, 6) if name == "squeeze" else (5, 5)
    x = torch.randn(3, 4, H, W, dtype=dtype)
    layer = make(name, 4, dtype, backend, init_data=2.0 * x + 1.0)
    with torch.no_grad():
        y, ld = layer(x)
        xr, ld_inv = layer.inverse(y)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert ld.shape == (3,) and ld.dtype == acc and ld_inv.dtype == acc, (ld.shape, ld.dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    err = (xr - x).abs() / (1 + x.abs())
    ok = err <= tol
    if name.startswith("mixlog"):
        # the op's contract: forward error, or where F is flat (x ill-conditioned),
        # backward error |forward(xr) - y| <= 1e-4 (1 + |y|) (in float64, 1e-9)
        with torch.no_grad():
            back = (layer(xr)[0] - y).abs() / (1 + y.abs())
        ok |= back <= (1e-9 if dtype == torch.float64 else 1e-4)
    assert ok.all(), f"seed {seed}: inverse error {err.max().item():.3g}"
    ld_tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.allclose(ld_inv, -ld, rtol=ld_tol, atol=ld_tol), f"seed {seed}: {ld_inv} vs {-ld}"
    if name != "squeeze":
        assert (ld.abs() > 1e-3).all(), f"seed {seed}: trivial logdet {ld}"


# ----------------------------------------------------------------------------------------
# logdet == log|det J| of the full Jacobian


def jacobians(fn, x: torch.Tensor) -> torch.Tensor:
    """``[B, D, D]``: ``J_b``, the Jacobian of ``fn(x)[b]`` (flattened) with respect to
    ``x[b]`` (flattened, ``D`` elements). The layers treat batch elements independently,
    so all ``J_b`` come from one forward and one backward pass over ``D`` copies of each
    ``x[b]``: row ``i`` of ``J_b`` is the gradient of output element ``i`` of copy ``i``."""
    B, D = x.shape[0], x[0].numel()
    copies = x.detach()[:, None].expand(B, D, *x.shape[1:]).reshape(B * D, *x.shape[1:])
    copies = copies.clone().requires_grad_()
    y = fn(copies)[0].reshape(B, D, D)
    eye = torch.eye(D, dtype=y.dtype).expand(B, D, D)
    (J,) = torch.autograd.grad(y, copies, grad_outputs=eye)
    return J.reshape(B, D, D)


@pytest.mark.parametrize("name,backend", cases(OTHERS, False) + cases(COUPLINGS, True))
def test_logdet_is_log_abs_det_jacobian(name, backend):
    require_backend(backend, torch.float64)
    seed = fresh_seed()
    torch.manual_seed(seed)
    H, W = spatial(name)
    x = torch.randn(2, 4, H, W, dtype=torch.float64)
    layer = make(name, 4, torch.float64, backend, init_data=3.0 * x - 0.5)
    with torch.no_grad():
        y, ld = layer(x)
        _, ld_inv = layer.inverse(y)
    J = jacobians(layer, x)
    expected = torch.linalg.slogdet(J)[1]
    assert torch.allclose(ld, expected, rtol=1e-9, atol=1e-9), (
        f"seed {seed}: logdet {ld.tolist()} vs Jacobian {expected.tolist()}"
    )
    # the inverse at the corresponding point (for mixlog through implicit differentiation):
    # its logdet, and its whole Jacobian is the inverse matrix
    J_inv = jacobians(layer.inverse, y)
    expected_inv = torch.linalg.slogdet(J_inv)[1]
    assert torch.allclose(ld_inv, expected_inv, rtol=1e-8, atol=1e-8), (
        f"seed {seed}: inverse logdet {ld_inv.tolist()} vs Jacobian {expected_inv.tolist()}"
    )
    eye = torch.eye(J.shape[1], dtype=J.dtype).expand_as(J)
    torch.testing.assert_close(J_inv @ J, eye, rtol=0, atol=1e-8, msg=f"seed {seed}")


# ----------------------------------------------------------------------------------------
# couplings: masks, identity at init, the gather


def test_checkerboard_index_and_odd_sizes():
    idx, mask = checkerboard_index(3, 3, 0)
    assert idx.tolist() == [0, 2, 4, 6, 8] and idx.dtype == torch.int64
    assert mask.view(-1).tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert checkerboard_index(3, 3, 1)[0].tolist() == [1, 3, 5, 7]
    assert checkerboard_index(2, 3, 1)[0].tolist() == [1, 3, 5]


@pytest.mark.parametrize("op", ["affine", "mixlog"])
@pytest.mark.parametrize("parity", [0, 1])
def test_checkerboard_touches_only_its_pixels(op, parity):
    seed = fresh_seed()
    torch.manual_seed(seed)
    layer = make(f"{op}-checkerboard-{parity}", 3, torch.float64)
    x = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    with torch.no_grad():
        y, _ = layer(x)
    trans = torch.zeros(15, dtype=torch.bool)
    trans[checkerboard_index(3, 5, parity)[0]] = True
    trans = trans.view(1, 1, 3, 5).expand_as(x)
    assert torch.equal(y[~trans], x[~trans]), f"seed {seed}"
    assert ((y - x)[trans].abs() > 1e-8).all(), f"seed {seed}"
    # a 1x1 image with parity 1 has nothing to transform
    one = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    y1, ld1 = layer(one)
    if parity == 1:
        assert torch.equal(y1, one) and torch.equal(ld1, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("parity", [0, 1])
def test_channel_mask_keeps_conditioning_half(parity):
    torch.manual_seed(fresh_seed())
    layer = make(f"affine-channel-{parity}", 5, torch.float64)  # odd C: 2 + 3
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    y, _ = layer(x)
    keep = slice(0, 2) if parity == 0 else slice(3, 5)
    assert torch.equal(y[:, keep], x[:, keep])
    assert layer.trans_channels == 3 and layer.cond_channels == 2


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
def test_fresh_couplings_start_near_identity(mask):
    torch.manual_seed(fresh_seed())
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mix = MixLogCDFCoupling(4, num_components=3, hidden=8, mask=mask, backend="torch").double()
    y, ld = mix(x)
    torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    aff = AffineCoupling(4, hidden=8, mask=mask, backend="torch").double()
    y, ld = aff(x)
    s = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    n = 2 * 9 if mask == "channel" else 4 * 5  # transformed elements per batch element
    torch.testing.assert_close(ld, torch.full((2,), n * torch.log(s).item(), dtype=torch.float64))


def test_mixlog_parameters_are_bounded():
    torch.manual_seed(fresh_seed())
    layer = MixLogCDFCoupling(2, num_components=2, hidden=4, backend="torch").double()
    with torch.no_grad():
        layer.net.out.bias.fill_(1e3)  # huge raw outputs
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    y, ld = layer(x)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    xr, _ = layer.inverse(y)
    assert torch.isfinite(xr).all()


# ----------------------------------------------------------------------------------------
# ActNorm


def test_actnorm_data_dependent_init_and_state_dict():
    seed = fresh_seed()
    torch.manual_seed(seed)
    x = 3.0 * torch.randn(8, 3, 5, 5) + torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    layer = ActNorm(3)
    assert not layer.initialized
    layer.eval()
    y, ld = layer(x)  # eval: no init, identity
    assert torch.equal(y, x) and not layer.initialized
    layer.train()
    y, ld = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(
        y.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5, msg=f"seed {seed}"
    )
    torch.testing.assert_close(
        y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=0, atol=1e-4, msg=f"seed {seed}"
    )
    torch.testing.assert_close(ld, torch.full((8,), 25 * layer.logs.sum().item()))
    # a second training batch does not re-initialise
    before = [p.detach().clone() for p in layer.parameters()]
    layer(torch.randn(8, 3, 5, 5))
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    # state_dict round trip keeps `initialized`: the loaded layer does not re-init
    state = layer.state_dict()
    assert "initialized" in state
    fresh = ActNorm(3)
    fresh.load_state_dict(state)
    fresh.train()
    z = torch.randn(4, 3, 5, 5)
    assert torch.equal(fresh(z)[0], layer(z)[0])
    assert torch.equal(fresh.bias, layer.bias)
    # loading an uninitialised state makes it initialise again
    fresh.load_state_dict(ActNorm(3).state_dict())
    assert not fresh.is_initialized()
    # [B, C] inputs
    flat = ActNorm(3).train()
    v = 2.0 * torch.randn(64, 3) + 1.0
    out, ld = flat(v)
    torch.testing.assert_close(out.mean(0), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(ld, flat.logs.sum().expand(64))


def test_actnorm_distributed_init_uses_global_statistics(monkeypatch):
    """Under torch.distributed, each rank all-reduces its batch statistics: simulate two
    ranks and compare with the init on the concatenated batch."""
    torch.manual_seed(fresh_seed())
    xa, xb = torch.randn(4, 3, 4, 4) * 2, torch.randn(6, 3, 4, 4) + 1
    import dqkernels.nn.actnorm as actnorm_module

    monkeypatch.setattr(actnorm_module, "_distributed", lambda: True)
    captured = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: captured.append(t.clone()))
    ActNorm(3).train()(xb)  # rank 1's local statistics
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.add_(captured[0]))
    rank0 = ActNorm(3).train()
    rank0(xa)
    monkeypatch.undo()
    whole = ActNorm(3).train()
    whole(torch.cat([xa, xb]))
    torch.testing.assert_close(rank0.bias, whole.bias)
    torch.testing.assert_close(rank0.logs, whole.logs)


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)
def test_actnorm_init_under_a_real_process_group(tmp_path):
    x = torch.randn(4, 2, 3, 3)
    plain = ActNorm(2).train()
    plain(x)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        layer = ActNorm(2).train()
        layer(x)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(layer.logs, plain.logs)
    torch.testing.assert_close(layer.bias, plain.bias)


# ----------------------------------------------------------------------------------------
# InvConv1x1, Squeeze, SplitPrior


@pytest.mark.parametrize("lu", [False, True])
def test_invconv_init_orthogonal_and_state_dict(lu):
    torch.manual_seed(fresh_seed())
    layer = InvConv1x1(5, lu=lu)
    w = layer.weight_matrix().double()
    torch.testing.assert_close(w @ w.T, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        layer.log_abs_det().double(), torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-6
    )
    perturb(layer, 0.1)
    other = InvConv1x1(5, lu=lu)
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 5, 3, 3)
    assert torch.equal(other(x)[0], layer(x)[0])
    y = layer(x)[0]
    ref = torch.einsum("ij,bjhw->bihw", layer.weight_matrix(), x)
    torch.testing.assert_close(y, ref)


def test_squeeze_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y, ld = Squeeze(2)(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(ld, torch.zeros(2))
    assert torch.equal(y, torch.nn.functional.pixel_unshuffle(x, 2))
    assert torch.equal(Squeeze(2).inverse(y)[0], x)


def test_split_prior_density_and_exact_inverse():
    seed = fresh_seed()
    torch.manual_seed(seed)
    layer = SplitPrior(5).double()  # keeps 3 channels, factors out 2
    perturb(layer, 0.2)
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    z1, log_p, z2 = layer(x, return_z2=True)
    assert z1.shape == (2, 3, 4, 3) and z2.shape == (2, 2, 4, 3)
    h = layer.conv(x[:, :3])
    normal = torch.distributions.Normal(h[:, :2], torch.exp(h[:, 2:]))
    expected = normal.log_prob(x[:, 3:]).sum(dim=(1, 2, 3))
    torch.testing.assert_close(log_p, expected, rtol=1e-12, atol=1e-12, msg=f"seed {seed}")
    assert torch.equal(layer(x)[1], log_p)
    xr, neg = layer.inverse(z1, z2=z2)
    assert torch.equal(xr, x) and torch.equal(neg, -log_p)
    # sampling: temperature 0 gives the mean; a generator makes it reproducible
    x0, _ = layer.inverse(z1, temperature=0.0)
    torch.testing.assert_close(x0[:, 3:], h[:, :2].detach())
    g = torch.Generator().manual_seed(1)
    xs, neg_s = layer.inverse(z1, generator=g)
    xs2, _ = layer.inverse(z1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(xs, xs2) and torch.equal(xs[:, :3], z1)
    torch.testing.assert_close(neg_s, -layer(xs)[1])
    # fresh layer: standard normal prior
    fresh = SplitPrior(4).double()
    torch.testing.assert_close(
        fresh(x[:, :4])[1],
        torch.distributions.Normal(0.0, 1.0).log_prob(x[:, 2:4]).sum(dim=(1, 2, 3)),
    )


# ----------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("name", COUPLINGS + ["actnorm", "invconv", "invconv-lu"])
def test_gradients_reach_every_parameter(name):
    seed = fresh_seed()
    torch.manual_seed(seed)
    x = torch.randn(2, 4, 3, 3)
    layer = make(name, 4, torch.float32, init_data=x).train()
    for direction in ("forward", "inverse"):
        layer.zero_grad()
        y, ld = layer(x) if direction == "forward" else layer.inverse(x)
        ((y**2).sum() + ld.sum()).backward()
        for pname, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (
                f"seed {seed}: {direction} {pname}"
            )
            assert p.grad.abs().sum() > 0, f"seed {seed}: {direction}: no gradient to {pname}"
    split = SplitPrior(4)
    perturb(split)
    split(x)[1].sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in split.parameters())


class _Direction(torch.nn.Module):
    """Wraps a layer so that ``functional_call`` can run either of its directions."""

    def __init__(self, layer: torch.nn.Module, inverse: bool):
        super().__init__()
        self.layer, self.inverse = layer, inverse

    def forward(self, x):
        return self.layer.inverse(x) if self.inverse else self.layer(x)


@pytest.mark.parametrize(
    "name",
    ["affine-channel-0", "affine-checkerboard-1", "mixlog-channel-1", "mixlog-checkerboard-0"],
)
def test_gradcheck_tiny_coupling(name):
    seed = fresh_seed()
    torch.manual_seed(seed)
    op, mask, parity = name.split("-")
    cls = AffineCoupling if op == "affine" else MixLogCDFCoupling
    kw = dict(num_components=2) if op == "mixlog" else {}
    layer = cls(2, hidden=3, mask=mask, parity=int(parity), backend="torch", **kw).double()
    perturb(layer, 0.3)
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    # the mixture's inverse bisects 100 times on the torch backend: too slow for the
    # numerical Jacobian; test_inverse_gradients_with_respect_to_parameters and the
    # inverse Jacobian above cover it
    for inverse in (False, True) if op == "affine" else (False,):
        module = _Direction(layer, inverse)
        names = [n for n, _ in module.named_parameters()]
        params = [p.detach().clone().requires_grad_() for p in module.parameters()]

        def f(x, *ps, module=module, names=names):
            return functional_call(module, dict(zip(names, ps)), (x,))

        # every parameter, along random directions (fast mode) ...
        assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True, atol=1e-6, rtol=1e-5), (
            f"seed {seed}, inverse={inverse}"
        )
        # ... and element by element with respect to the input
        assert torch.autograd.gradcheck(module, (x,), atol=1e-6, rtol=1e-5), (
            f"seed {seed}, inverse={inverse}"
        )


@pytest.mark.parametrize("name,backend", cases(COUPLINGS, True))
def test_inverse_gradients_with_respect_to_parameters(name, backend):
    """``inverse(forward(x; theta); theta) == x`` and the two logdets cancel for every
    ``theta``, so the gradient of any function of the round trip with respect to the
    parameters vanishes: the inverse's parameter gradients must cancel the forward's."""
    require_backend(backend, torch.float64)
    seed = fresh_seed()
    torch.manual_seed(seed)
    layer = make(name, 4, torch.float64, backend)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    w = torch.randn_like(x)
    y, ld = layer(x)
    forward_grads = torch.autograd.grad(
        (w * y).sum() + ld.sum(), list(layer.parameters()), retain_graph=True
    )
    xr, ld_inv = layer.inverse(y)
    grads = torch.autograd.grad((w * xr).sum() + (ld + ld_inv).sum(), list(layer.parameters()))
    for (pname, _), g, fg in zip(layer.named_parameters(), grads, forward_grads):
        assert g.abs().max() <= 1e-9 * (1 + fg.abs().max()), (
            f"seed {seed}: {pname}: round-trip gradient {g.abs().max():.3g}"
        )


# ----------------------------------------------------------------------------------------
# bad input


# (the exception, a pattern its message matches, the call that raises it), by what is wrong
BAD_INPUT = {
    "ActNorm x of 3 channels": (
        ValueError,
        r"ActNorm: x must be \[B, 4, H, W\] or \[B, 4\]; got shape \(2, 3, 4, 4\)",
        lambda: ActNorm(4)(torch.randn(2, 3, 4, 4)),
    ),
    "InvConv1x1 x of rank 3": (
        ValueError,
        r"InvConv1x1: x must be \[B, 4, H, W\] or \[B, 4\]; got shape \(2, 4, 4\)",
        lambda: InvConv1x1(4, lu=True)(torch.randn(2, 4, 4)),
    ),
    "Squeeze odd height": (
        ValueError,
        r"Squeeze: H and W must be divisible by the factor 2; got H=5, W=4",
        lambda: Squeeze()(torch.randn(1, 1, 5, 4)),
    ),
    "Squeeze.inverse 6 channels": (
        ValueError,
        r"Squeeze.inverse: the channel count must be divisible by factor\*\*2 = 4; got C=6",
        lambda: Squeeze().inverse(torch.randn(1, 6, 2, 2)),
    ),
    "Squeeze x of rank 2": (
        ValueError,
        r"Squeeze: x must be \[B, C, H, W\]; got shape \(3, 4\)",
        lambda: Squeeze()(torch.randn(3, 4)),
    ),
    "MixLogCDFCoupling no components": (
        ValueError,
        r"MixLogCDFCoupling: num_components must be >= 1; got 0",
        lambda: MixLogCDFCoupling(4, num_components=0),
    ),
    "unknown activation": (
        ValueError,
        r"ConditioningNet: activation must be one of relu, gelu, elu; got 'tanh'",
        lambda: AffineCoupling(4, activation="tanh"),
    ),
    "SplitPrior one channel": (
        ValueError,
        r"SplitPrior: num_channels must be >= 2; got 1",
        lambda: SplitPrior(1),
    ),
    "SplitPrior x of 5 channels": (
        ValueError,
        r"SplitPrior: x must be \[B, 4, H, W\]; got shape \(2, 5, 3, 3\)",
        lambda: SplitPrior(4)(torch.randn(2, 5, 3, 3)),
    ),
    "SplitPrior.inverse z2 of another shape": (
        ValueError,
        r"SplitPrior.inverse: z2 must have shape \(2, 2, 3, 3\); got \(2, 2, 3, 4\)",
        lambda: SplitPrior(4).inverse(torch.randn(2, 2, 3, 3), z2=torch.randn(2, 2, 3, 4)),
    ),
    "ActNorm integer x": (
        TypeError,
        r"ActNorm: x must be a floating tensor; got dtype int64",
        lambda: ActNorm(2)(torch.zeros(1, 2, dtype=torch.long)),
    ),
}

# the ValueErrors both couplings raise: (a pattern, {name} the class's name; call(cls))
COUPLING_BAD_INPUT = {
    "unknown mask": (
        r"{name}: mask must be 'channel' or 'checkerboard'; got 'diagonal'",
        lambda cls: cls(4, mask="diagonal"),
    ),
    "parity 2": (r"{name}: parity must be 0 or 1; got 2", lambda cls: cls(4, parity=2)),
    "channel mask of one channel": (
        r"{name}: num_channels must be >= 2 for the channel mask; got 1",
        lambda cls: cls(1, mask="channel"),
    ),
    "x of 3 channels": (
        r"{name}: x must be \[B, 4, H, W\]; got shape \(2, 3, 4, 4\)",
        lambda cls: cls(4, hidden=4)(torch.randn(2, 3, 4, 4)),
    ),
    "inverse of x of rank 3": (
        r"{name}.inverse: x must be \[B, 4, H, W\]",
        lambda cls: cls(4, hidden=4).inverse(torch.randn(2, 4, 4)),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_messages(case):
    exc, pattern, call = BAD_INPUT[case]
    with pytest.raises(exc, match=pattern):
        call()


@pytest.mark.parametrize("cls", [AffineCoupling, MixLogCDFCoupling])
@pytest.mark.parametrize("case", COUPLING_BAD_INPUT)
def test_coupling_bad_input_messages(cls, case):
    pattern, call = COUPLING_BAD_INPUT[case]
    with pytest.raises(ValueError, match=pattern.format(name=cls.__name__)):
        call(cls)


@pytest.mark.parametrize("mask", ["channel", "checkerboard"])
@pytest.mark.parametrize("cls", [AffineCoupling, MixLogCDFCoupling], ids=["affine", "mixlog"])
def test_coupling_with_context(cls, mask):
    """A conditional coupling: the context changes the output, the inverse with the same
    context recovers x, the logdet matches the Jacobian, and a missing, unexpected or
    wrongly shaped context is refused."""
    torch.manual_seed(fresh_seed())
    C = 2
    layer = cls(C, hidden=8, mask=mask, num_blocks=1, context_channels=3).double()
    perturb(layer, 0.1)
    layer.eval()
    x = torch.randn(2, C, 3, 5, dtype=torch.float64)
    ctx = torch.randn(2, 3, 3, 5, dtype=torch.float64)
    y, ld = layer(x, context=ctx)
    y2, _ = layer(x, context=ctx + 1.0)
    assert not torch.allclose(y, y2)
    back, ld_inv = layer.inverse(y, context=ctx)
    assert torch.allclose(back, x, atol=1e-9) and torch.allclose(ld_inv, -ld)
    jac = torch.autograd.functional.jacobian(
        lambda v: layer(v.view(1, C, 3, 5), context=ctx[:1])[0], x[:1]
    ).reshape(C * 15, C * 15)
    assert torch.allclose(ld[0], torch.linalg.slogdet(jac)[1])
    name = cls.__name__
    with pytest.raises(
        ValueError,
        match=rf"{name}: this layer was built with "
        r"context_channels=3; pass context=",
    ):
        layer(x)
    with pytest.raises(
        ValueError,
        match=rf"{name}.inverse: context must have shape "
        r"\(2, 3, 3, 5\); got \(2, 3, 3, 4\)",
    ):
        layer.inverse(y, context=ctx[..., :4])
    with pytest.raises(
        ValueError,
        match=rf"{name}: context given, but this layer was built "
        r"with context_channels=0",
    ):
        cls(C, hidden=4, mask=mask)(x.float(), context=ctx.float())
    with pytest.raises(ValueError, match=rf"{name}: context_channels must be >= 0; got -1"):
        cls(C, context_channels=-1)
