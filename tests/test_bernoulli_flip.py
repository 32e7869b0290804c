"""bernoulli_flip_loglik on every backend against the float64 reference: values and the
three gradients (x, logits, weight) on odd, multi-block, size-1 and empty shapes, any
strides, every dtype; stability for |l'| up to 1e4; the reference against a direct
evaluation of every flipped copy (and against mpmath-free exact sums in float64);
gradcheck; the custom-op contract; z is not differentiated; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKEND_DEVICES, GRAD_TOL, HAS_GPU, TOL, fresh_seed, rel_err

from dqkernels import backends
from dqkernels.ops import bernoulli_flip_loglik
from dqkernels.reference.bernoulli_flip import bernoulli_flip_loglik_reference, log_sigmoid

FAMILY = "bernoulli_flip"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731


def require(backend: str, device: str, dtype: torch.dtype = torch.float32) -> None:
    """Skip (with the registry's reason) unless this family's ``backend`` kernels run on
    ``device`` and ``dtype``."""
    if device == "cuda" and not HAS_GPU:
        pytest.skip("no CUDA GPU")
    why = backends.why_unavailable(backend, device, dtype, FAMILY)
    if why is not None:
        pytest.skip(f"{backend} on {device} {dtype}: {why}")


def small(backend: str) -> bool:
    """The Triton interpreter is slow: smaller shapes for it."""
    return backend == "triton"


def inputs(B, D, H, *, seed, dtype=torch.float64, device="cpu", scale=1.0, binary=True):
    """x (binary, or probabilities), logits, weight and z (binary) in float64, cast."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    x = (x < 0.5).double() if binary else x
    logits = torch.randn(B, D, generator=g, dtype=torch.float64) * 2 * scale
    w = torch.randn(D, H, generator=g, dtype=torch.float64) * scale
    z = (torch.rand(B, H, generator=g, dtype=torch.float64) < 0.5).double()
    return tuple(t.to(device, dtype) for t in (x, logits, w, z))


def brute(x, logits, w, z):
    """Every flipped copy evaluated on its own (the eager re-simulation), float64."""
    B, H = z.shape
    out = torch.empty(B, H, dtype=torch.float64)
    for h in range(H):
        zf = z.clone()
        zf[:, h] = 1 - zf[:, h]
        lf = logits + (zf - z) @ w.T  # the logits of the flipped sample
        out[:, h] = (x * log_sigmoid(lf) + (1 - x) * log_sigmoid(-lf)).sum(dim=1)
    return out


def check(x, logits, w, z, backend, *, seed, info=""):
    """Output and the three gradients (random upstream) against autograd of the float64
    reference on the same rounded inputs."""
    dtype = x.dtype
    leaves = [t.detach().clone().requires_grad_() for t in (x, logits, w)]
    out = bernoulli_flip_loglik(*leaves, z, backend=backend)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.dtype == acc and out.shape == (x.shape[0], w.shape[1])
    g = torch.Generator().manual_seed(seed + 1)
    gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = (
        torch.autograd.grad(out, leaves, gout.to(out.device, acc))
        if out.numel()
        else [torch.zeros_like(t) for t in leaves]
    )
    ref = [t.detach().double().cpu().requires_grad_() for t in (x, logits, w)]
    rout = bernoulli_flip_loglik_reference(*ref, z.double().cpu())
    rgrads = (
        torch.autograd.grad(rout, ref, gout) if rout.numel() else [torch.zeros_like(t) for t in ref]
    )
    msg = f"seed={seed} backend={backend} dtype={dtype} {info}"
    tol = TOL[acc] if dtype in (torch.float32, torch.float64) else 1e-5
    e = rel_err(out, rout)
    assert e <= tol, f"output rel err {e:.2e} > {tol:.1e} ({msg})"
    for name, got, want in zip(("x", "logits", "weight"), grads, rgrads):
        assert got.dtype == dtype and got.shape == want.shape, (name, got.dtype, got.shape)
        e = rel_err(got, want.to(dtype))
        assert e <= GRAD_TOL[dtype], f"grad {name} rel err {e:.2e} > {GRAD_TOL[dtype]:.1e} ({msg})"


# ----------------------------------------------------------------------------- reference


def test_reference_against_every_flipped_copy():
    """The chunked reference equals the flipped copies evaluated one by one, for chunks of
    one hidden unit, a few, and all."""
    seed = fresh_seed()
    x, logits, w, z = inputs(5, 13, 7, seed=seed)
    want = brute(x, logits, w, z)
    for max_elements in (1, 5 * 13 * 3, 1 << 22):
        got = bernoulli_flip_loglik_reference(x, logits, w, z, max_elements=max_elements)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-12, msg=f"seed={seed}")
    # probabilities as data: the cross-entropy
    x, logits, w, z = inputs(4, 9, 5, seed=seed, binary=False)
    got = bernoulli_flip_loglik_reference(x, logits, w, z, max_elements=30)
    torch.testing.assert_close(got, brute(x, logits, w, z), rtol=1e-13, atol=1e-12)


def test_reference_far_tails():
    """|l'| up to 1e4: finite, and exact where the true value is -exp(-|l'|) (the
    ``x t - softplus(t)`` form rounds those to 0)."""
    t = torch.tensor([1e4, 40.0, 30.0, -30.0, -1e4], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    z = torch.zeros(1, 1, dtype=torch.float64)
    w = torch.zeros(5, 1, dtype=torch.float64)
    out = bernoulli_flip_loglik_reference(x, t[None], w, z)
    want = -(math.exp(-1e4) + math.exp(-40.0) + 2 * math.exp(-30.0))
    assert out.item() == pytest.approx(want, rel=1e-15)
    x = 1 - x  # the other side: -|t| each
    out = bernoulli_flip_loglik_reference(x, t[None], w, z)
    assert math.isfinite(out.item())
    assert out.item() == pytest.approx(-(1e4 + 40 + 30 + 30 + 1e4), rel=1e-15)


def test_reference_gradient_at_zero():
    """l' = 0 exactly (fp16 inputs reach it): d/dlogits = x - 1/2, d/dx = l' = 0."""
    x = torch.tensor([[1.0, 0.0, 0.25]], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor([[0.5, -0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[0.5], [-0.5], [0.0]], dtype=torch.float64, requires_grad=True)
    z = torch.ones(1, 1, dtype=torch.float64)  # s = -1: l' = logits - w = 0
    out = bernoulli_flip_loglik_reference(x, logits, w, z)
    assert out.item() == pytest.approx(3 * math.log(0.5), rel=1e-15)
    gx, gl, gw = torch.autograd.grad(out, [x, logits, w])
    assert gl.tolist() == [[0.5, -0.5, -0.25]]
    assert gw.tolist() == [[-0.5], [0.5], [0.25]]
    assert gx.tolist() == [[0.0, 0.0, 0.0]]


def test_reference_gradcheck():
    seed = fresh_seed()
    leaves = [t.requires_grad_() for t in inputs(3, 5, 4, seed=seed, binary=False)]
    assert torch.autograd.gradcheck(
        lambda *t: bernoulli_flip_loglik_reference(*t, max_elements=7), leaves
    ), seed


# ----------------------------------------------------------------------------- values


SHAPES = [  # (B, D, H): odd, size 1, several blocks, empty
    (3, 7, 5),
    (1, 1, 1),
    (5, 33, 17),
    (2, 1, 40),
    (37, 70, 65),
    (0, 6, 4),
    (4, 0, 3),
    (4, 6, 0),
]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_against_reference(backend, device, dtype):
    require(backend, device, dtype)
    seed = fresh_seed()
    for i, (B, D, H) in enumerate(SHAPES):
        if small(backend) and B * D * H > 5000:
            continue
        t = inputs(B, D, H, seed=seed + i, dtype=dtype, device=device, binary=i % 2 == 0)
        check(*t, backend, seed=seed + i, info=f"shape={(B, D, H)}")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_large_logits(backend, device):
    """|l'| up to 1e4 in float32 and float64: finite values and gradients, as the reference."""
    for dtype in (torch.float32, torch.float64):
        if backends.why_unavailable(backend, device, dtype, FAMILY) is not None:
            continue
        require(backend, device, dtype)
        seed = fresh_seed()
        t = inputs(4, 9, 6, seed=seed, dtype=dtype, device=device, scale=3e3)
        check(*t, backend, seed=seed, info="scale 3e3")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_strided_inputs(backend, device):
    """Transposed, sliced and stride-0 inputs give the contiguous inputs' results."""
    require(backend, device)
    seed = fresh_seed()
    x, logits, w, z = inputs(6, 11, 9, seed=seed, dtype=torch.float32, device=device)
    xs = x.t().contiguous().t()
    ls = torch.cat([logits, logits], dim=1)[:, ::2]
    ws = w.t().contiguous().t()
    zs = z[:1].expand(6, 9)
    zc = zs.contiguous()
    leaves = [t.requires_grad_() for t in (xs, ls, ws)]
    out = bernoulli_flip_loglik(*leaves, zs, backend=backend)
    cleaves = [t.detach().contiguous().requires_grad_() for t in (xs, ls, ws)]
    cout = bernoulli_flip_loglik(*cleaves, zc, backend=backend)
    torch.testing.assert_close(out, cout, rtol=1e-6, atol=1e-5)
    gout = torch.randn(1, 9, device=device).expand(6, 9)  # a stride-0 upstream
    got, want = torch.autograd.grad(out, leaves, gout), torch.autograd.grad(cout, cleaves, gout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_only_some_gradients(backend, device):
    """Only weight (logits computed from it upstream, x data), only x: the rest unasked."""
    require(backend, device)
    seed = fresh_seed()
    x, logits, w, z = inputs(5, 12, 8, seed=seed, dtype=torch.float32, device=device)
    w.requires_grad_()
    (gw,) = torch.autograd.grad(bernoulli_flip_loglik(x, logits, w, z, backend=backend).sum(), [w])
    wr = w.detach().double().cpu().requires_grad_()
    ref = bernoulli_flip_loglik_reference(x.double().cpu(), logits.double().cpu(), wr,
                                          z.double().cpu())  # fmt: skip
    (gwr,) = torch.autograd.grad(ref.sum(), [wr])
    assert rel_err(gw, gwr) <= GRAD_TOL[torch.float32], seed
    x.requires_grad_()
    w.requires_grad_(False)
    (gx,) = torch.autograd.grad(bernoulli_flip_loglik(x, logits, w, z, backend=backend).sum(), [x])
    xr = x.detach().double().cpu().requires_grad_()
    ref = bernoulli_flip_loglik_reference(xr, logits.double().cpu(), w.double().cpu(),
                                          z.double().cpu())  # fmt: skip
    (gxr,) = torch.autograd.grad(ref.sum(), [xr])
    assert rel_err(gx, gxr) <= GRAD_TOL[torch.float32], seed


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    x, logits, w, z = inputs(3, 5, 4, seed=seed, binary=False)
    leaves = [t.requires_grad_() for t in (x, logits, w)]
    assert torch.autograd.gradcheck(
        lambda *t: bernoulli_flip_loglik(*t, z, backend=backend), leaves
    ), seed


def test_z_is_not_differentiated():
    x, logits, w, z = inputs(2, 3, 4, seed=0)
    z.requires_grad_()
    out = bernoulli_flip_loglik(x, logits.requires_grad_(), w, z, backend="torch")
    with pytest.raises(RuntimeError, match="bernoulli_flip_loglik: z is a sample in"):
        out.sum().backward()


def test_second_order_refused():
    x, logits, w, z = inputs(2, 3, 4, seed=0)
    w.requires_grad_()
    out = bernoulli_flip_loglik(x, logits, w, z, backend="torch")
    (gw,) = torch.autograd.grad(out.sum(), [w], create_graph=True)
    with pytest.raises(RuntimeError, match="bernoulli_flip_loglik: second-order gradients"):
        gw.sum().backward()


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    require(backend, device)
    seed = fresh_seed()
    x, logits, w, z = inputs(4, 7, 6, seed=seed, dtype=torch.float32, device=device)
    args = [t.requires_grad_() for t in (x, logits, w)]
    torch.library.opcheck(torch.ops.dqk.bernoulli_flip_loglik.default, (*args, z, backend))
    g = torch.randn(4, 6, device=device)
    for need in ((True, True, True), (False, True, False), (True, False, True)):
        torch.library.opcheck(
            torch.ops.dqk.bernoulli_flip_loglik_backward.default,
            (g, x.detach(), logits.detach(), w.detach(), z, *need, backend),
        )


def test_compile_fullgraph():
    torch._dynamo.reset()
    x, logits, w, z = inputs(4, 6, 5, seed=fresh_seed(), dtype=torch.float32)

    def loss(lg, wt):
        return bernoulli_flip_loglik(x, lg, wt, z, backend="torch").square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    a = [t.clone().requires_grad_() for t in (logits, w)]
    b = [t.clone().requires_grad_() for t in (logits, w)]
    compiled(*a).backward()
    loss(*b).backward()
    for p, q in zip(a, b):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def _bad(**kw):
    x, logits, w, z = inputs(3, 4, 5, seed=0, dtype=torch.float32)
    args = {"x": x, "logits": logits, "weight": w, "z": z, **kw}
    return args


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"x": torch.zeros(3, 4, 1)}, ValueError,
         "bernoulli_flip_loglik: x must have 2 dimensions [B, D]; got shape (3, 4, 1)"),
        ({"logits": torch.zeros(3, 5)}, ValueError,
         "bernoulli_flip_loglik: logits must have x's shape [B, D] = (3, 4); got (3, 5)"),
        ({"weight": torch.zeros(5, 5)}, ValueError,
         "bernoulli_flip_loglik: weight must have x's D = 4 rows [D, H]; got shape (5, 5)"),
        ({"z": torch.zeros(3, 4)}, ValueError,
         "bernoulli_flip_loglik: z must have shape [B, H] = (3, 5) (x's batch, weight's "
         "columns); got (3, 4)"),
        ({"z": torch.zeros(3, 5, dtype=torch.int64)}, TypeError,
         "bernoulli_flip_loglik: z must be a floating tensor"),
        ({"weight": torch.zeros(4, 5, dtype=torch.float64)}, TypeError,
         "bernoulli_flip_loglik: x and weight must have the same dtype; got x float32 and "
         "weight float64"),
        ({"logits": torch.zeros(3, 4, device="meta")}, ValueError,
         "bernoulli_flip_loglik: x and logits must be on the same device"),
        ({"x": [[0.0]]}, TypeError, "bernoulli_flip_loglik: x must be a torch.Tensor; got list"),
    ],
)  # fmt: skip
def test_bad_input(kw, exc, match):
    with pytest.raises(exc) as info:
        bernoulli_flip_loglik(**_bad(**kw), backend="torch")
    assert match in str(info.value)


def test_unavailable_backend_names_the_op():
    x, logits, w, z = inputs(2, 3, 4, seed=0, dtype=torch.float32)
    with pytest.raises(backends.BackendUnavailableError, match="bernoulli_flip_loglik: backend "):
        bernoulli_flip_loglik(x, logits, w, z, backend="cuda")


def test_cpp_result_does_not_depend_on_the_thread_count():
    """Every output and gradient element is summed by one thread in a fixed order: 1 and 2
    threads agree bitwise (on a size above the kernels' one-thread threshold)."""
    require("cpp", "cpu")
    seed = fresh_seed()
    x, logits, w, z = inputs(40, 90, 75, seed=seed, dtype=torch.float32)  # 270,000 elements
    results = []
    old = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            leaves = [t.clone().requires_grad_() for t in (x, logits, w)]
            out = bernoulli_flip_loglik(*leaves, z, backend="cpp")
            results.append((out, *torch.autograd.grad(out, leaves, torch.ones_like(out))))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results):
        assert torch.equal(a, b), seed
