"""masked_conv2d on every backend against the float64 dense masked reference: values,
gradients, the PixelCNN autoregressive property, masked taps skipped (never read, zero
gradient), odd shapes, strides, empty inputs, the custom-op contract and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    BACKEND_DEVICES,
    GRAD_TOL,
    HAS_GPU,
    TOL,
    assert_compiled_grads_match,
    fresh_seed,
    rel_err,
    require,
)

from dqkernels.nn import MaskedConv2d
from dqkernels.ops import masked_conv2d
from dqkernels.reference.masked_conv2d import (
    centre_counts,
    conv2d_mask,
    kept_taps,
    masked_conv2d_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731

# (B, Cin, Cout, H, W, k, mask_type, groups)
BASE = [(2, 5, 7, 5, 6, k, t, g) for k in (1, 3, 5) for t in "AB" for g in (1, 3)]
EXTRA = [
    (1, 1, 1, 1, 1, 3, "B", 1),  # size 1 everywhere
    (1, 4, 3, 7, 1, 5, "A", 3),  # one column, kernel wider than the image
    (3, 70, 17, 4, 37, 3, "B", 3),  # several channel tiles and chunks, W over 2 vectors
    (2, 9, 20, 3, 33, 7, "A", 2),  # k = 7, odd W past 32
]
SMALL_EXTRA = [(1, 1, 1, 1, 1, 3, "B", 1), (1, 4, 3, 7, 1, 5, "A", 3), (2, 20, 33, 3, 4, 3, "B", 3)]


def small(backend: str, device: str) -> bool:
    """The Triton interpreter is slow: fewer and smaller cases there."""
    return backend == "triton" and device == "cpu"


def make_inputs(case, *, seed, dtype=torch.float64, device="cpu", bias=True):
    B, Cin, Cout, H, W, k, _, _ = case
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, Cin, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(Cout, Cin, k, k, generator=g, dtype=torch.float64) / math.sqrt(Cin * k)
    b = torch.randn(Cout, generator=g, dtype=torch.float64) if bias else None
    return [None if t is None else t.to(device, dtype) for t in (x, w, b)]


def fwd_tol(dtype):
    return TOL[dtype]


def check_case(case, backend, device, dtype, seed, *, bias=True, need=(True, True, True)):
    """Output and the gradients asked for (random upstream) against autograd of the float64
    reference on the same rounded inputs."""
    *_, mask_type, groups = case
    x, w, b = make_inputs(case, seed=seed, dtype=dtype, device=device, bias=bias)
    leaves = [x, w, b]
    for t, n in zip(leaves, need):
        if t is not None:
            t.requires_grad_(n)
    y = masked_conv2d(x, w, b, mask_type=mask_type, groups=groups, backend=backend)
    assert y.dtype == dtype and y.shape == (x.shape[0], w.shape[0], *x.shape[2:])
    g = torch.Generator().manual_seed(seed + 1)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, wanted, gy.to(device)) if wanted else []
    ref = [
        None if t is None else t.detach().double().cpu().requires_grad_(t.requires_grad)
        for t in leaves
    ]
    yr = masked_conv2d_reference(*ref, mask_type, groups)
    rwanted = [t for t in ref if t is not None and t.requires_grad]
    rgrads = torch.autograd.grad(yr, rwanted, gy.double()) if rwanted else []
    info = f"seed={seed} case={case} backend={backend} dtype={dtype} bias={bias}"
    e = rel_err(y, yr.to(dtype))
    assert e <= fwd_tol(dtype), f"output rel err {e:.2e} ({info})"
    for got, want, leaf in zip(grads, rgrads, wanted):
        assert got.dtype == dtype and got.shape == leaf.shape, info
        e = rel_err(got, want.to(dtype))
        assert e <= GRAD_TOL[dtype], f"grad {tuple(leaf.shape)} rel err {e:.2e} ({info})"
        if leaf is w:  # exactly zero at masked entries, whatever the dtype
            mask = conv2d_mask(*w.shape[:3], mask_type, groups, device=got.device)
            assert bool((got[~mask] == 0).all()), info


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_matches_reference(backend, device, dtype):
    require(backend, device, dtype)
    seed = fresh_seed()
    if small(backend, device):
        cases = [c for c in BASE if c[5] != 5 or c[7] == 3] + SMALL_EXTRA
    else:
        cases = BASE + EXTRA
    for case in cases:
        check_case(case, backend, device, dtype, seed)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_bias_none_and_partial_grads(backend, device):
    """No bias; and each gradient alone (the kernels skip what is not asked for)."""
    require(backend, device)
    seed = fresh_seed()
    case = (2, 5, 7, 5, 6, 3, "B", 3)
    check_case(case, backend, device, torch.float32, seed, bias=False)
    for need in [(True, False, False), (False, True, False), (False, False, True)]:
        check_case(case, backend, device, torch.float32, seed, need=need)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_any_strides(backend, device):
    """Channels-last and sliced x, a permuted weight, a strided bias, an expanded
    (stride-0) upstream gradient: values and gradients as for contiguous tensors."""
    require(backend, device)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    B, Cin, Cout, H, W, k = 2, 5, 7, 5, 6, 3
    x = torch.randn(B, H, 2 * W, Cin, generator=g).permute(0, 3, 1, 2)[..., ::2]
    w = torch.randn(k, k, Cin, Cout, generator=g).permute(3, 2, 0, 1) * 0.3
    b = torch.randn(2 * Cout, generator=g)[::2]
    x, w, b = (t.to(device).requires_grad_() for t in (x, w, b))
    assert not x.is_contiguous() and not w.is_contiguous() and not b.is_contiguous()
    for mask_type, groups in (("A", 3), ("B", 1)):
        y = masked_conv2d(x, w, b, mask_type=mask_type, groups=groups, backend=backend)
        grads = torch.autograd.grad(y.sum(), (x, w, b))  # upstream: expanded ones
        ref = [t.detach().double().cpu().requires_grad_() for t in (x, w, b)]
        yr = masked_conv2d_reference(*ref, mask_type, groups)
        rgrads = torch.autograd.grad(yr.sum(), ref)
        assert rel_err(y, yr) <= TOL[torch.float32], (seed, mask_type)
        for got, want in zip(grads, rgrads):
            assert rel_err(got, want) <= GRAD_TOL[torch.float32], (seed, mask_type)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty(backend, device):
    """Empty batch or image: empty output, empty grad_x, zero grad_weight and grad_bias."""
    require(backend, device)
    for shape in [(0, 5, 4, 6), (2, 5, 0, 6), (2, 5, 4, 0)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        w = torch.randn(7, 5, 3, 3, device=device, requires_grad=True)
        b = torch.randn(7, device=device, requires_grad=True)
        y = masked_conv2d(x, w, b, mask_type="B", groups=3, backend=backend)
        assert y.shape == (shape[0], 7, *shape[2:])
        gx, gw, gb = torch.autograd.grad(y.sum(), (x, w, b))
        assert gx.shape == x.shape and bool((gw == 0).all()) and bool((gb == 0).all())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_masked_weights_never_read(backend, device):
    """NaN in every masked weight entry: output and all gradients stay finite (the kernels
    skip masked taps instead of multiplying by zero), grad_weight exactly zero there."""
    require(backend, device)
    seed = fresh_seed()
    for case in [
        (2, 5, 7, 5, 6, 3, "A", 3),
        (1, 4, 6, 3, 4, 5, "B", 2),
        (1, 3, 3, 2, 3, 1, "A", 1),
    ]:
        *_, mask_type, groups = case
        x, w, b = make_inputs(case, seed=seed, dtype=torch.float32, device=device)
        mask = conv2d_mask(*w.shape[:3], mask_type, groups, device=device)
        w = torch.where(mask, w, torch.full_like(w, math.nan))
        x.requires_grad_()
        w.requires_grad_()
        b.requires_grad_()
        y = masked_conv2d(x, w, b, mask_type=mask_type, groups=groups, backend=backend)
        assert bool(torch.isfinite(y).all()), (case, backend)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), torch.randn_like(y))
        assert bool(torch.isfinite(gx).all()) and bool(torch.isfinite(gb).all()), case
        assert bool((gw[~mask] == 0).all()) and bool(torch.isfinite(gw).all()), case
        yr = masked_conv2d_reference(
            x.detach().double().cpu(),
            torch.nan_to_num(w.detach().double().cpu()),
            b.detach().double().cpu(),
            mask_type,
            groups,
        )
        assert rel_err(y, yr) <= TOL[torch.float32], (case, seed)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    for case in [
        (2, 3, 4, 3, 4, 3, "A", 3),
        (1, 4, 3, 4, 3, 3, "B", 1),
        (1, 2, 3, 2, 3, 5, "B", 2),
    ]:
        *_, mask_type, groups = case
        args = [t.requires_grad_() for t in make_inputs(case, seed=seed)]
        assert torch.autograd.gradcheck(
            lambda x, w, b, t=mask_type, g=groups: masked_conv2d(
                x, w, b, mask_type=t, groups=g, backend=backend
            ),
            args,
        ), (case, seed)


def _raster_channel_precedes(C, H, W, strict):
    """allowed[c, h, w, c', h', w']: (h', w', c') precedes (h, w, c) in raster-then-channel
    order (or equals it, unless strict)."""

    def key(c, h, w):
        return (h * W + w) * C + c

    idx = torch.arange(C * H * W)
    c = idx % C
    hw = idx // C
    keys = key(c, hw // W, hw % W)
    order = torch.empty(C, H, W, dtype=torch.long)
    order[c, hw // W, hw % W] = keys
    o = order.reshape(-1)
    return (o[None, :] < o[:, None]) | ((o[None, :] == o[:, None]) & (not strict))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_autoregressive_property(backend, device):
    """A PixelCNN stack (type A with groups=C, then type B layers with groups=C, hidden
    widths not divisible by C) on a C-channel image: d out[c, h, w] / d in[c', h', w'] is
    exactly 0 unless (h', w', c') strictly precedes (h, w, c) in raster-then-channel
    order; and it is nonzero for the immediate predecessors that the stack must see."""
    require(backend, device)
    dtype = torch.float64 if backend in ("torch", "cpp", "cuda") else torch.float32
    require(backend, device, dtype)
    seed = fresh_seed()
    torch.manual_seed(seed)
    C, H, W, hidden = 3, 4, 5, 7
    layers = [
        MaskedConv2d(C, hidden, 3, "A", groups=C, backend=backend),
        MaskedConv2d(hidden, hidden, 3, "B", groups=C, backend=backend),
        MaskedConv2d(hidden, C, 1, "B", groups=C, backend=backend),
    ]
    for m in layers:
        m.to(device, dtype)
        with torch.no_grad():  # masked entries nonzero too: the op alone must mask them
            m.weight.normal_(0.0, 0.5)

    def net(v):
        h = v.view(1, C, H, W)
        for i, m in enumerate(layers):
            h = m(h)
            if i < len(layers) - 1:
                h = torch.tanh(h)
        return h.reshape(-1)

    x = torch.randn(C * H * W, dtype=dtype, device=device)
    n = C * H * W
    rows = range(n) if not small(backend, device) else [0, 5, 21, 37, 58, n - 1]
    allowed = _raster_channel_precedes(C, H, W, strict=True).reshape(n, n)
    xv = x.clone().requires_grad_()
    out = net(xv)
    for r in rows:
        (row,) = torch.autograd.grad(out[r], xv, retain_graph=True)
        row = row.cpu()
        bad = (row != 0) & ~allowed[r]
        assert not bool(bad.any()), (
            f"output {r} depends on inputs {bad.nonzero().flatten().tolist()} (seed {seed})"
        )
        c, hw = r // (H * W), r % (H * W)
        # the same pixel's earlier channels and the previous pixel are seen
        for c2 in range(c):
            assert row[c2 * H * W + hw] != 0, (r, c2, seed)
        if hw % W > 0:
            assert row[c * H * W + hw - 1] != 0, (r, seed)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_grad_weight_zero_at_masked_entries(backend, device):
    require(backend, device)
    for k, mask_type, groups in [(5, "A", 1), (3, "B", 3), (1, "A", 2)]:
        x = torch.randn(2, 4, 5, 6, device=device)
        w = torch.randn(6, 4, k, k, device=device, requires_grad=True)
        y = masked_conv2d(x, w, None, mask_type=mask_type, groups=groups, backend=backend)
        (gw,) = torch.autograd.grad(y, w, torch.randn_like(y))
        mask = conv2d_mask(6, 4, k, mask_type, groups, device=device)
        assert bool((gw[~mask] == 0).all())
        assert bool((gw[mask] != 0).all())  # kept entries do get a gradient


# ----------------------------------------------------------------------------- mask rule


def test_mask_rule():
    """The mask builder against the rule written out entry by entry."""
    for Cout, Cin, k, t, G in [
        (7, 5, 3, "A", 3),
        (7, 5, 5, "B", 3),
        (4, 4, 1, "A", 1),
        (4, 4, 1, "B", 1),
        (6, 3, 7, "A", 3),
        (5, 8, 3, "B", 2),
    ]:
        m = conv2d_mask(Cout, Cin, k, t, G)
        c = k // 2
        for o in range(Cout):
            for ci in range(Cin):
                for i in range(k):
                    for j in range(k):
                        if i < c or (i == c and j < c):
                            want = True
                        elif i == c and j == c:
                            bo, bi = o * G // Cout, ci * G // Cin
                            want = bi < bo if t == "A" else bi <= bo
                        else:
                            want = False
                        assert bool(m[o, ci, i, j]) == want, (Cout, Cin, k, t, G, o, ci, i, j)
        assert centre_counts(Cin, Cout, t, G) == m[:, :, c, c].sum(1).tolist()
        assert len(kept_taps(k)) == (k * k - 1) // 2 == int(m[0, 0].sum()) - int(m[0, 0, c, c])
    assert not conv2d_mask(3, 3, 3, "A", 1)[:, :, 1, 1].any()
    assert conv2d_mask(3, 3, 3, "B", 1)[:, :, 1, 1].all()


def test_cpp_deterministic_across_threads():
    """The cpp kernels reduce in a fixed order: bitwise the same with 1 and 2 threads."""
    require("cpp", "cpu")
    case = (3, 70, 17, 4, 37, 3, "B", 3)
    x, w, b = (t.float().requires_grad_() for t in make_inputs(case, seed=fresh_seed()))
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            y = masked_conv2d(x, w, b, mask_type="B", groups=3, backend="cpp")
            outs.append([y] + list(torch.autograd.grad(y, (x, w, b), torch.ones_like(y))))
    finally:
        torch.set_num_threads(old)
    for p, q in zip(*outs):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    require(backend, device)
    x, w, b = make_inputs(
        (2, 5, 7, 3, 4, 3, "A", 3), seed=fresh_seed(), dtype=torch.float32, device=device
    )
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    op = torch.ops.dqk.masked_conv2d.default
    torch.library.opcheck(op, (xg, wg, bg, "A", 3, backend))
    torch.library.opcheck(op, (xg, wg, None, "B", 1, backend))
    gy = torch.randn(2, 7, 3, 4, device=device)
    torch.library.opcheck(
        torch.ops.dqk.masked_conv2d_backward.default, (x, w, gy, "B", 3, True, True, True, backend)
    )
    torch.library.opcheck(
        torch.ops.dqk.masked_conv2d_backward.default,
        (x, w, gy, "A", 1, False, True, False, backend),
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compile_fullgraph(backend):
    require(backend, "cpu")
    torch._dynamo.reset()
    seed = fresh_seed()
    x, w, b = make_inputs((2, 3, 6, 4, 5, 3, "A", 3), seed=seed, dtype=torch.float32)
    w2 = torch.randn(6, 6, 3, 3) * 0.2

    def loss(x, w, b, w2):
        h = torch.relu(masked_conv2d(x, w, b, mask_type="A", groups=3, backend=backend))
        return masked_conv2d(h, w2, None, mask_type="B", groups=3, backend=backend).square().sum()

    assert_compiled_grads_match(loss, (x, w, b, w2))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_module(backend, device):
    """MaskedConv2d: masked entries zero at init, the op's output, a training step that
    leaves the masked entries at zero."""
    require(backend, device)
    torch.manual_seed(fresh_seed())
    m = MaskedConv2d(3, 8, 5, "A", groups=3, backend=backend).to(device)
    mask = m.mask()
    assert bool((m.weight[~mask] == 0).all()) and bool((m.weight[mask] != 0).all())
    x = torch.randn(2, 3, 6, 7, device=device)
    y = m(x)
    yr = masked_conv2d_reference(
        x.double().cpu(), m.weight.detach().double().cpu(), m.bias.detach().double().cpu(), "A", 3
    )
    assert rel_err(y, yr) <= TOL[torch.float32]
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        m(x).square().mean().backward()
        opt.step()
    assert bool((m.weight[~mask] == 0).all())
    assert "mask_type='A'" in repr(m)
    nb = MaskedConv2d(4, 4, 3, "B", bias=False, backend=backend).to(device)
    assert nb.bias is None and nb(torch.randn(1, 4, 3, 3, device=device)).shape == (1, 4, 3, 3)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_messages():
    x = torch.randn(2, 5, 4, 6)
    w = torch.randn(7, 5, 3, 3)
    b = torch.randn(7)
    op = masked_conv2d
    with pytest.raises(
        ValueError,
        match=r"masked_conv2d: the kernel size must be odd "
        r"\(centre tap at k // 2\); got 4",
    ):
        op(x, torch.randn(7, 5, 4, 4), b, mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"weight must have a square kernel \[Cout, Cin, k, "
        r"k\]; got shape \(7, 5, 3, 5\) \(kernel 3x5\)",
    ):
        op(x, torch.randn(7, 5, 3, 5), b, mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"weight must have x's 5 input channels "
        r"\(weight.shape\[1\] == x.shape\[1\]\); got weight "
        r"shape \(7, 4, 3, 3\)",
    ):
        op(x, torch.randn(7, 4, 3, 3), b, mask_type="A")
    with pytest.raises(ValueError, match=r"mask_type must be 'A' or 'B'; got 'C'"):
        op(x, w, b, mask_type="C")
    with pytest.raises(TypeError, match=r"mask_type must be a str, 'A' or 'B'; got int"):
        op(x, w, b, mask_type=1)
    with pytest.raises(ValueError, match=r"groups must be >= 1; got 0"):
        op(x, w, b, mask_type="A", groups=0)
    with pytest.raises(TypeError, match=r"groups must be an int; got float"):
        op(x, w, b, mask_type="A", groups=2.0)
    with pytest.raises(
        ValueError,
        match=r"groups must be <= min\(in_channels, out_channels\) "
        r"= min\(5, 7\) = 5, so that every channel block is "
        r"non-empty; got 6",
    ):
        op(x, w, b, mask_type="A", groups=6)
    with pytest.raises(
        ValueError,
        match=r"bias must have shape \(7,\) \(Cout, weight's output channels\); got \(5,\)",
    ):
        op(x, w, torch.randn(5), mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"bias must have shape \(7,\) \(Cout, weight's output channels\); got "
        r"\(1, 7\)",
    ):
        op(x, w, b[None], mask_type="A")
    with pytest.raises(
        TypeError,
        match=r"x and weight must have the same dtype; got x "
        r"float32 and weight float64",
    ):
        op(x, w.double(), b, mask_type="A")
    with pytest.raises(
        TypeError,
        match=r"x and bias must have the same dtype; got x float32 "
        r"and bias float16",
    ):
        op(x, w, b.half(), mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"x and weight must be on the same device; got x on "
        r"cpu and weight on meta",
    ):
        op(x, w.to("meta"), b, mask_type="A")
    with pytest.raises(TypeError, match=r"x must be a floating tensor .*got dtype int64"):
        op(x.long(), w, b, mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"x must have 4 dimensions \[B, Cin, H, W\]; got "
        r"shape \(5, 4, 6\)",
    ):
        op(x[0], w, b, mask_type="A")
    with pytest.raises(
        ValueError,
        match=r"weight must have 4 dimensions \[Cout, Cin, k, k\]; "
        r"got shape \(7, 5, 9\)",
    ):
        op(x, w.reshape(7, 5, 9), b, mask_type="A")
    with pytest.raises(TypeError, match=r"bias must be a torch.Tensor; got float"):
        op(x, w, 1.0, mask_type="A")
    with pytest.raises(
        TypeError,
        match=r"missing 1 required keyword-only argument: "
        r"'mask_type'",
    ):
        op(x, w, b)
    with pytest.raises(
        ValueError,
        match=r"MaskedConv2d: groups must be <= min\(in_channels, "
        r"out_channels\) = min\(3, 2\) = 2",
    ):
        MaskedConv2d(3, 2, 3, "A", groups=3)
    with pytest.raises(ValueError, match=r"MaskedConv2d: the kernel size must be odd"):
        MaskedConv2d(3, 2, 2, "A")
    with pytest.raises(
        ValueError,
        match=r"MaskedConv2d: x must be \[B, 3, H, W\]; got shape "
        r"\(1, 4, 2, 2\)",
    ):
        MaskedConv2d(3, 2, 3, "B")(torch.randn(1, 4, 2, 2))


def test_backend_rejections_explained():
    from dqkernels.backends import BackendUnavailableError

    x = torch.randn(1, 2, 3, 3)
    w = torch.randn(2, 2, 3, 3)
    with pytest.raises(
        BackendUnavailableError,
        match=r"(?s)masked_conv2d: backend 'cuda' "
        r"cannot run on cpu tensors.*torch: "
        r"available",
    ):
        masked_conv2d(x, w, None, mask_type="A", backend="cuda")
    if not HAS_GPU:
        with pytest.raises(
            BackendUnavailableError,
            match=r"backend 'triton' cannot run on cpu "
            r"tensors of dtype float64",
        ):
            masked_conv2d(x.double(), w.double(), None, mask_type="A", backend="triton")
