"""masked_linear on every backend against the float64 reference: values and gradients for
sorted, unsorted and random degrees, strict and not, odd and multi-block shapes, any
strides, empty inputs; skipping (masked weights and never-connected inputs may hold
NaN); the autoregressive property; gradcheck; the custom-op contract; bad input; the
MaskedLinear module and made_degrees."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKEND_DEVICES, GRAD_TOL, TOL, fresh_seed, rel_err, require

from dqkernels.nn import MaskedLinear, made_degrees
from dqkernels.ops import masked_linear
from dqkernels.reference.masked_linear import linear_mask, masked_linear_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731
DEGREE_KINDS = ["sorted", "unsorted", "random"]


def small(backend: str) -> bool:
    """The Triton interpreter is slow: smaller shapes for it."""
    return backend == "triton"


def degrees(kind: str, n_in: int, n_out: int, *, seed: int, device="cpu"):
    """(in_degrees, out_degrees): MADE-like ascending degrees over 1..D, the same
    permuted, or uniform random integers (ties and all orders)."""
    g = torch.Generator().manual_seed(seed)
    D = max(2, min(n_in, 40))
    if kind == "random":
        di = torch.randint(0, D + 1, (n_in,), generator=g)
        do = torch.randint(0, D + 1, (n_out,), generator=g)
    else:
        di = 1 + torch.arange(n_in) * D // n_in
        do = 1 + torch.arange(n_out) * D // n_out
        if kind == "unsorted":
            di = di[torch.randperm(n_in, generator=g)]
            do = do[torch.randperm(n_out, generator=g)]
    return di.to(device), do.to(device)


def inputs(lead, n_in, n_out, *, seed, dtype=torch.float64, device="cpu", bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n_in, generator=g, dtype=torch.float64)
    w = torch.randn(n_out, n_in, generator=g, dtype=torch.float64) / math.sqrt(max(n_in, 1))
    b = torch.randn(n_out, generator=g, dtype=torch.float64) if bias else None
    cast = lambda t: None if t is None else t.to(device, dtype)  # noqa: E731
    return cast(x), cast(w), cast(b)


def check(x, w, b, di, do, strict, backend, *, seed, info=""):
    """Output and the three gradients (random upstream) against autograd of the float64
    reference on the same rounded inputs."""
    dtype = x.dtype
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    xl, wl = leaves[0], leaves[1]
    bl = leaves[2] if b is not None else None
    y = masked_linear(xl, wl, bl, di, do, strict=strict, backend=backend)
    assert y.dtype == dtype and y.shape == (*x.shape[:-1], w.shape[0])
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    grads = (
        torch.autograd.grad(y, leaves, gy) if y.numel() else [torch.zeros_like(t) for t in leaves]
    )
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in (x, w, b) if t is not None]
    rb = ref_leaves[2] if b is not None else None
    ry = masked_linear_reference(ref_leaves[0], ref_leaves[1], rb, di.cpu(), do.cpu(), strict)
    rgrads = (
        torch.autograd.grad(ry, ref_leaves, gy.double().cpu())
        if ry.numel()
        else [torch.zeros_like(t) for t in ref_leaves]
    )
    msg = f"seed={seed} backend={backend} dtype={dtype} strict={strict} {info}"
    e = rel_err(y, ry.to(dtype))
    assert e <= TOL[dtype], f"output rel err {e:.2e} > {TOL[dtype]:.1e} ({msg})"
    for name, got, want in zip(("x", "weight", "bias"), grads, rgrads):
        assert got.dtype == dtype
        e = rel_err(got, want.to(dtype))
        assert e <= GRAD_TOL[dtype], f"grad {name} rel err {e:.2e} ({msg})"
    mask = linear_mask(di.cpu(), do.cpu(), strict)
    assert (grads[1].cpu()[~mask] == 0).all(), f"weight grad not zero where masked ({msg})"


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "nonstrict"])
def test_matches_reference(backend, device, dtype, strict):
    require(backend, device, dtype)
    seed = fresh_seed()
    if small(backend):
        cases = [((5,), 37, 53), ((1,), 1, 1), ((2, 3), 20, 9)]
    else:
        # odd sizes; size 1; 3-D x; several row chunks, K blocks and column groups
        cases = [((5,), 37, 53), ((1,), 1, 1), ((2, 3), 20, 9), ((131,), 300, 270)]
    for i, (lead, n_in, n_out) in enumerate(cases):
        kind = DEGREE_KINDS[i % 3]
        di, do = degrees(kind, n_in, n_out, seed=seed + i, device=device)
        x, w, b = inputs(lead, n_in, n_out, seed=seed + i, dtype=dtype, device=device)
        check(
            x, w, b, di, do, strict, backend, seed=seed + i, info=f"{lead} {n_in}->{n_out} {kind}"
        )


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("kind", DEGREE_KINDS)
def test_degree_kinds_float32(backend, device, kind):
    """Every degree kind with both masks, on a shape that spans several tiles of every
    backend (the interpreter gets a smaller one)."""
    require(backend, device)
    seed = fresh_seed()
    lead, n_in, n_out = ((9,), 70, 66) if small(backend) else ((97,), 530, 301)
    for strict in (True, False):
        di, do = degrees(kind, n_in, n_out, seed=seed, device=device)
        x, w, b = inputs(lead, n_in, n_out, seed=seed, dtype=torch.float32, device=device)
        check(x, w, b, di, do, strict, backend, seed=seed, info=kind)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_any_strides_int32_degrees_no_bias(backend, device):
    """Permuted 3-D x, a transposed weight view, a strided bias, int32 strided degrees;
    and bias=None."""
    require(backend, device)
    seed = fresh_seed()
    n_in, n_out = 23, 19
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_in, 4, 3, generator=g).permute(2, 1, 0).to(device)  # [3, 4, 23]
    w = torch.randn(n_in, n_out, generator=g).t().to(device)  # [19, 23] view
    b = torch.randn(2 * n_out, generator=g)[::2].to(device)
    di_full, do_full = degrees("random", 2 * n_in, 2 * n_out, seed=seed)
    di = di_full.to(torch.int32)[::2].to(device)
    do = do_full.to(torch.int32)[1::2].to(device)
    assert not x.is_contiguous() and not w.is_contiguous() and not di.is_contiguous()
    for strict in (True, False):
        check(x, w, b, di, do, strict, backend, seed=seed, info="strided")
        check(x, w, None, di, do, strict, backend, seed=seed, info="no bias")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_broadcast_upstream_gradient(backend, device):
    """The gradient of y.sum() arrives with stride 0."""
    require(backend, device)
    seed = fresh_seed()
    di, do = degrees("sorted", 13, 11, seed=seed, device=device)
    x, w, b = inputs((2, 5), 13, 11, seed=seed, dtype=torch.float32, device=device)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    y = masked_linear(*leaves, di, do, strict=False, backend=backend)
    grads = torch.autograd.grad(y.sum(), leaves)
    ref = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
    rgrads = torch.autograd.grad(
        masked_linear_reference(*ref, di.cpu(), do.cpu(), False).sum(), ref
    )
    for got, want in zip(grads, rgrads):
        assert rel_err(got, want) <= TOL[torch.float32], seed


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty(backend, device):
    require(backend, device)
    di, do = degrees("sorted", 5, 4, seed=0, device=device)
    for lead in [(0,), (2, 0)]:
        x = torch.randn(*lead, 5, device=device, requires_grad=True)
        w = torch.randn(4, 5, device=device, requires_grad=True)
        b = torch.randn(4, device=device, requires_grad=True)
        y = masked_linear(x, w, b, di, do, strict=True, backend=backend)
        assert y.shape == (*lead, 4)
        gx, gw, gb = torch.autograd.grad(y.sum(), [x, w, b])
        assert gx.shape == x.shape and (gw == 0).all() and (gb == 0).all()
    # no inputs: y = bias; no outputs: y empty
    x = torch.randn(3, 0, device=device, requires_grad=True)
    w = torch.randn(4, 0, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    y = masked_linear(x, w, b, di[:0], do, strict=False, backend=backend)
    assert torch.equal(y, b.detach().expand(3, 4))
    gx, gw, gb = torch.autograd.grad(y.sum(), [x, w, b])
    assert gx.shape == (3, 0) and gw.shape == (4, 0) and torch.equal(gb, torch.full_like(gb, 3))
    x = torch.randn(3, 5, device=device, requires_grad=True)
    w = torch.randn(0, 5, device=device, requires_grad=True)
    y = masked_linear(x, w, None, di, do[:0], strict=False, backend=backend)
    assert y.shape == (3, 0)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    assert (gx == 0).all()


# ----------------------------------------------------------------------------- skipping


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DT_IDS)
def test_masked_weights_and_unconnected_inputs_are_never_read(backend, device, dtype):
    """NaN in every masked weight and, for the skipping kernels, NaN in the inputs
    64..127, which no output uses (their degree exceeds every output degree; they fill
    whole K tiles of every backend): a kernel that multiplied masked entries by zero, or
    read the entirely masked K tiles, would return NaN. Outputs and gradients must be
    finite and match the reference with zeros there. (The ``torch`` backend is the dense
    masked product: it selects the masked weights but multiplies every input.)"""
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    n_in, n_out, rows = 128, 40, 6
    for strict in (True, False):
        di = torch.cat([torch.randint(0, 30, (64,), generator=g), torch.full((64,), 1000)])
        do = torch.randint(0, 30, (n_out,), generator=g)
        mask = linear_mask(di, do, strict)
        x, w, b = inputs((rows,), n_in, n_out, seed=seed, dtype=torch.float64)
        x_nan = x.clone()
        if backend != "torch":
            x_nan[:, 64:] = math.nan
        w_nan = torch.where(mask, w, torch.full_like(w, math.nan))
        leaves = [t.to(device, dtype).requires_grad_() for t in (x_nan, w_nan, b)]
        y = masked_linear(*leaves, di.to(device), do.to(device), strict=strict, backend=backend)
        gy = torch.randn(rows, n_out, generator=g, dtype=torch.float64)
        gx, gw, gb = torch.autograd.grad(y, leaves, gy.to(device, dtype))
        for name, t in (("y", y), ("gx", gx), ("gw", gw), ("gb", gb)):
            assert torch.isfinite(t).all(), f"{name} not finite (seed={seed}, strict={strict})"
        # the reference on the same rounded values with the NaNs replaced by zeros
        x0 = leaves[0].detach().double().cpu().nan_to_num(0.0).requires_grad_()
        w0 = leaves[1].detach().double().cpu().nan_to_num(0.0).requires_grad_()
        b0 = leaves[2].detach().double().cpu().requires_grad_()
        ry = masked_linear_reference(x0, w0, b0, di, do, strict)
        rgx, rgw, rgb = torch.autograd.grad(ry, [x0, w0, b0], gy.to(dtype).double())
        assert rel_err(y, ry.to(dtype)) <= TOL[dtype], seed
        assert (gx[:, 64:] == 0).all() and (gw.cpu()[~mask] == 0).all()
        for got, want in ((gx, rgx), (gw, rgw), (gb, rgb)):
            assert rel_err(got, want.to(dtype)) <= GRAD_TOL[dtype], seed


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_fully_masked_layer_is_bias(backend, device):
    """No connection at all: y = bias exactly, grad of x and weight exactly 0."""
    require(backend, device)
    x = torch.randn(7, 33, device=device, requires_grad=True)
    w = torch.full((21, 33), math.nan, device=device, requires_grad=True)
    b = torch.randn(21, device=device, requires_grad=True)
    di = torch.full((33,), 5, device=device)
    do = torch.full((21,), 5, device=device)
    y = masked_linear(x, w, b, di, do, strict=True, backend=backend)
    assert torch.equal(y, b.detach().expand(7, 21))
    gx, gw = torch.autograd.grad(y.sum(), [x, w])
    assert (gx == 0).all() and (gw == 0).all()


def test_cpp_isa_paths_and_thread_counts(monkeypatch):
    """Every compiled GEMM path this CPU runs (generic, AVX2, AVX-512, AVX-512 with
    bf16 pairs through vdpbf16ps) gives the reference, odd K included; and results are
    bitwise identical for 1 and 2 threads."""
    require("cpp", "cpu")
    from dqkernels.kernels.masked_linear import cpp as cpp_masked_linear

    seed = fresh_seed()
    lead, n_in, n_out = (61,), 300, 77
    for isa in cpp_masked_linear.supported_isas():
        monkeypatch.setattr(cpp_masked_linear, "cpu_isa", isa)
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for i, kind in enumerate(DEGREE_KINDS):
                di, do = degrees(kind, n_in, n_out, seed=seed + i)
                x, w, b = inputs(lead, n_in, n_out, seed=seed + i, dtype=dtype)
                check(x, w, b, di, do, i % 2 == 0, "cpp", seed=seed + i, info=f"isa={isa}")
    monkeypatch.setattr(cpp_masked_linear, "cpu_isa", 0)
    di, do = degrees("random", n_in, n_out, seed=seed)
    x, w, b = inputs((300,), n_in, n_out, seed=seed, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            y = masked_linear(*leaves, di, do, strict=False, backend="cpp")
            outs.append([y] + list(torch.autograd.grad(y.square().sum(), leaves)))
    finally:
        torch.set_num_threads(old)
    for a, c in zip(*outs):
        assert torch.equal(a, c)


# ----------------------------------------------------------------------------- autograd


def _made_pair(D, H, device, dtype, seed, order=None):
    """Two masked layers with MADE degrees: D -> H (>=) and H -> D (>)."""
    torch.manual_seed(seed)
    deg_in, deg_h = made_degrees(D, [H], order=order)
    l1 = MaskedLinear(D, H, deg_in, deg_h, strict=False, device=device, dtype=dtype)
    l2 = MaskedLinear(H, D, deg_h, deg_in, strict=True, device=device, dtype=dtype)
    return deg_in, l1, l2


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_autoregressive_property(backend, device):
    """d y_j / d x_i is exactly 0 unless degree(i) < degree(j), through the Jacobian of a
    stack of two masked layers (tanh between) with MADE degrees in a random order; and
    nonzero where a path exists."""
    require(backend, device)
    seed = fresh_seed()
    D, H = 9, 19
    order = torch.randperm(D, generator=torch.Generator().manual_seed(seed))
    deg, l1, l2 = _made_pair(D, H, device, torch.float32, seed, order=order)
    l1.backend = l2.backend = backend
    x = torch.randn(D, device=device)
    J = torch.autograd.functional.jacobian(lambda v: l2(torch.tanh(l1(v))), x).cpu()
    allowed = deg.view(-1, 1) > deg.view(1, -1)
    assert (J[~allowed] == 0).all(), seed
    assert (J[allowed] != 0).all(), seed


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    for strict, kind in ((True, "random"), (False, "sorted")):
        di, do = degrees(kind, 6, 5, seed=seed)
        x, w, b = inputs((2, 3), 6, 5, seed=seed)
        leaves = [t.requires_grad_() for t in (x, w, b)]
        assert torch.autograd.gradcheck(
            lambda *t, di=di, do=do, strict=strict: masked_linear(
                *t, di, do, strict=strict, backend=backend
            ),
            leaves,
        ), seed


def test_reference_gradcheck():
    seed = fresh_seed()
    di, do = degrees("random", 5, 4, seed=seed)
    leaves = [t.requires_grad_() for t in inputs((3,), 5, 4, seed=seed)]
    assert torch.autograd.gradcheck(lambda *t: masked_linear_reference(*t, di, do, True), leaves), (
        seed
    )


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_only_some_gradients(backend, device):
    """x without grad (a MADE's input layer), or only x: the rest is not computed."""
    require(backend, device)
    seed = fresh_seed()
    di, do = degrees("sorted", 12, 10, seed=seed, device=device)
    x, w, b = inputs((4,), 12, 10, seed=seed, dtype=torch.float32, device=device)
    w.requires_grad_()
    y = masked_linear(x, w, b, di, do, strict=False, backend=backend)
    (gw,) = torch.autograd.grad(y.square().sum(), [w])
    wr = w.detach().double().cpu().requires_grad_()
    yr = masked_linear_reference(x.double().cpu(), wr, b.double().cpu(), di.cpu(), do.cpu(), False)
    (gwr,) = torch.autograd.grad(yr.square().sum(), [wr])
    assert rel_err(gw, gwr) <= GRAD_TOL[torch.float32], seed
    x.requires_grad_()
    w.requires_grad_(False)
    y = masked_linear(x, w, None, di, do, strict=False, backend=backend)
    (gx,) = torch.autograd.grad(y.sum(), [x])
    xr = x.detach().double().cpu().requires_grad_()
    yr = masked_linear_reference(xr, w.double().cpu(), None, di.cpu(), do.cpu(), False)
    (gxr,) = torch.autograd.grad(yr.sum(), [xr])
    assert rel_err(gx, gxr) <= GRAD_TOL[torch.float32], seed


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    require(backend, device)
    seed = fresh_seed()
    di, do = degrees("random", 7, 6, seed=seed, device=device)
    x, w, b = inputs((2, 3), 7, 6, seed=seed, dtype=torch.float32, device=device)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    for strict in (True, False):
        torch.library.opcheck(
            torch.ops.dqk.masked_linear.default, (x, w, b, di, do, strict, backend)
        )
    torch.library.opcheck(torch.ops.dqk.masked_linear.default, (x, w, None, di, do, True, backend))
    gy = torch.randn(2, 3, 6, device=device)
    for need in ((True, True, True), (False, True, False), (True, False, False)):
        torch.library.opcheck(
            torch.ops.dqk.masked_linear_backward.default,
            (gy, x.detach(), w.detach(), di, do, True, *need, backend),
        )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compile_fullgraph(backend):
    require(backend, "cpu")
    torch._dynamo.reset()
    seed = fresh_seed()
    _, l1, l2 = _made_pair(6, 10, "cpu", torch.float32, seed)
    l1.backend = l2.backend = backend
    x = torch.randn(4, 6)

    def loss(v):
        return l2(torch.relu(l1(v))).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    compiled(x).backward()
    g1 = [p.grad.clone() for p in (l1.weight, l2.weight, l2.bias)]
    for p in (l1.weight, l2.weight, l2.bias):
        p.grad = None
    loss(x).backward()
    for a, c in zip(g1, (l1.weight.grad, l2.weight.grad, l2.bias.grad)):
        assert torch.allclose(a, c, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad input


# arguments masked_linear takes: x [2, 5], weight [3, 5], bias [3] and the degrees
GOOD = dict(
    x=torch.randn(2, 5),
    weight=torch.randn(3, 5),
    bias=torch.randn(3),
    in_degrees=torch.arange(5),
    out_degrees=torch.arange(3),
    strict=True,
)
X, W, B, DI, DO = (GOOD[k] for k in ("x", "weight", "bias", "in_degrees", "out_degrees"))

# (the exception, a pattern its message matches, the arguments changed from GOOD)
BAD_INPUT = {
    "in_degrees too short": (
        ValueError,
        r"masked_linear: in_degrees must have length 5 \(weight's in_features\); got 4",
        dict(in_degrees=DI[:4]),
    ),
    "out_degrees too long": (
        ValueError,
        r"out_degrees must have length 3 \(weight's out_features\); got 5",
        dict(out_degrees=DI),
    ),
    "float in_degrees": (
        TypeError,
        r"in_degrees must be an integer tensor \(int32 or int64\); got dtype float32",
        dict(in_degrees=DI.float()),
    ),
    "bool out_degrees": (
        TypeError,
        r"out_degrees must be an integer tensor .*got dtype bool",
        dict(out_degrees=DO > 0),
    ),
    "list out_degrees": (
        TypeError,
        r"out_degrees must be a torch.Tensor; got list",
        dict(out_degrees=[0, 1, 2]),
    ),
    "in_degrees of rank 2": (
        ValueError,
        r"in_degrees must be 1-D; got shape \(5, 1\)",
        dict(in_degrees=DI.view(5, 1)),
    ),
    "out_degrees on another device": (
        ValueError,
        r"x and out_degrees must be on the same device; got x on cpu and out_degrees on meta",
        dict(out_degrees=DO.to("meta")),
    ),
    "x of other in_features": (
        ValueError,
        r"x's last dimension must equal weight's in_features 5; got x \(2, 4\) and weight "
        r"\(3, 5\)",
        dict(x=torch.randn(2, 4)),
    ),
    "weight of rank 1": (
        ValueError,
        r"weight must have 2 dimensions \[out_features, in_features\]; got shape \(15,\)",
        dict(weight=W.flatten()),
    ),
    "bias of rank 2": (
        ValueError,
        r"bias must have shape \(3,\) \(weight's out_features\); got \(1, 3\)",
        dict(bias=B.view(1, 3)),
    ),
    "float64 weight": (
        TypeError,
        r"x and weight must have the same dtype; got x float32 and weight float64",
        dict(weight=W.double()),
    ),
    "float16 bias": (
        TypeError,
        r"x and bias must have the same dtype; got x float32 and bias float16",
        dict(bias=B.half()),
    ),
    "integer x": (
        TypeError,
        r"x must be a floating tensor .*got dtype int64",
        dict(x=X.long()),
    ),
    "weight on another device": (
        ValueError,
        r"x and weight must be on the same device; got x on cpu and weight on meta",
        dict(weight=W.to("meta")),
    ),
    "strict an int": (TypeError, r"strict must be a bool; got int", dict(strict=1)),
    "scalar x": (
        ValueError,
        r"x must have at least one dimension",
        dict(x=torch.tensor(1.0)),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_messages(case):
    exc, pattern, changed = BAD_INPUT[case]
    a = {**GOOD, **changed}
    with pytest.raises(exc, match=pattern):
        masked_linear(
            a["x"], a["weight"], a["bias"], a["in_degrees"], a["out_degrees"], strict=a["strict"]
        )


def test_strict_is_required():
    with pytest.raises(TypeError, match=r"strict"):
        masked_linear(X, W, B, DI, DO)


def test_backend_rejections_explained():
    from dqkernels.backends import BackendUnavailableError

    x = torch.randn(2, 3)
    w = torch.randn(4, 3)
    with pytest.raises(
        BackendUnavailableError,
        match=r"(?s)masked_linear: backend 'cuda' "
        r"cannot run on cpu tensors.*torch: "
        r"available",
    ):
        masked_linear(x, w, None, torch.arange(3), torch.arange(4), strict=True, backend="cuda")


# ----------------------------------------------------------------------------- module


def test_module_and_made_degrees():
    seed = fresh_seed()
    deg_in, deg_h1, deg_h2 = made_degrees(7, [12, 5])
    assert deg_in.tolist() == list(range(1, 8))
    assert deg_h1.tolist() == sorted(deg_h1.tolist()) and set(deg_h1.tolist()) == set(range(1, 7))
    assert deg_h2.min() >= 1 and deg_h2.max() <= 6
    assert made_degrees(3, [4], order=[2, 0, 1])[0].tolist() == [3, 1, 2]
    layer = MaskedLinear(7, 12, deg_in, deg_h1, strict=False)
    assert set(layer.state_dict()) == {"weight", "bias", "in_degrees", "out_degrees"}
    assert torch.equal(layer.mask(), linear_mask(deg_in, deg_h1, False))
    x = torch.randn(3, 2, 7, generator=torch.Generator().manual_seed(seed))
    ref = masked_linear_reference(x, layer.weight, layer.bias, deg_in, deg_h1, False)
    assert torch.allclose(layer(x), ref, atol=1e-6), seed
    double = layer.to(torch.float64)
    assert double.in_degrees.dtype == torch.int64 and double.weight.dtype == torch.float64
    assert "strict=False" in repr(layer)
    assert MaskedLinear(7, 12, deg_in, deg_h1, strict=True, bias=False).bias is None


def test_module_and_made_degrees_bad_input():
    with pytest.raises(ValueError, match=r"MaskedLinear: in_degrees must have length 4; got 3"):
        MaskedLinear(4, 2, [1, 2, 3], [1, 2], strict=True)
    with pytest.raises(TypeError, match=r"MaskedLinear: out_degrees must be a 1-D integer"):
        MaskedLinear(3, 2, [1, 2, 3], [1.0, 2.0], strict=True)
    with pytest.raises(TypeError, match=r"MaskedLinear: strict must be a bool; got str"):
        MaskedLinear(3, 2, [1, 2, 3], [1, 2], strict="yes")
    with pytest.raises(ValueError, match=r"MaskedLinear: in_features must be >= 1; got 0"):
        MaskedLinear(0, 2, [], [1, 2], strict=True)
    with pytest.raises(
        ValueError,
        match=r"made_degrees: order must be a permutation of "
        r"range\(3\)",
    ):
        made_degrees(3, [4], order=[0, 0, 1])
    with pytest.raises(ValueError, match=r"made_degrees: hidden_sizes\[1\] must be >= 1; got 0"):
        made_degrees(3, [4, 0])
