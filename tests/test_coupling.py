"""affine_coupling and mixlogcdf_coupling on every backend against the float64 references:
values, gradients in both directions, the inverse's tolerance, Jacobians, the custom-op
contract and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    BACKEND_DEVICES,
    GRAD_TOL,
    TOL,
    assert_compiled_grads_match,
    fresh_seed,
    rel_err,
    require,
)

from dqkernels.kernels import _coupling_c
from dqkernels.ops import affine_coupling, mixlogcdf_coupling
from dqkernels.reference.affine_coupling import affine_coupling_reference
from dqkernels.reference.mixlogcdf_coupling import (
    mixlogcdf_forward_reference,
    mixlogcdf_inverse_reference,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
HALF = (torch.float16, torch.bfloat16)
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731


def small(backend: str) -> bool:
    """The Triton interpreter is slow: smaller shapes for it."""
    return backend == "triton"


def mix_inputs(B, S, K, *, seed, dtype=torch.float64, device="cpu", flat_regions=True):
    """x, logits, means, log_scales, a, b. With ``flat_regions``, log-scales over [-3, 2]
    and means over +-3, so F has flat stretches between components where the inverse is
    ill-conditioned (only the backward error is bounded there); without, log-scales over
    [-1, 1] and means over +-2, so every root is well-conditioned in float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, *S, generator=g, dtype=torch.float64) * 2
    logits = torch.randn(B, *S, K, generator=g, dtype=torch.float64) * 2
    u1 = torch.rand(B, *S, K, generator=g, dtype=torch.float64)
    u2 = torch.rand(B, *S, K, generator=g, dtype=torch.float64)
    means = u1 * 6 - 3 if flat_regions else u1 * 4 - 2
    log_scales = u2 * 5 - 3 if flat_regions else u2 * 2 - 1
    a = torch.randn(B, *S, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(B, *S, generator=g, dtype=torch.float64)
    return [t.to(device, dtype) for t in (x, logits, means, log_scales, a, b)]


def affine_inputs(shape, *, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(shape, generator=g, dtype=torch.float64) * s).to(device, dtype)
        for s in (1.0, 1.0, 2.0)
    ]


def fwd_tol(dtype):
    return TOL[torch.float64] if dtype == torch.float64 else TOL[dtype]


def check_grads(op, args, backend, *, inverse, seed, reference):
    """Outputs and gradients (random upstreams of both outputs) against autograd of the
    float64 reference on the same rounded inputs."""
    dtype = args[0].dtype
    leaves = [t.detach().clone().requires_grad_() for t in args]
    out, ld = op(*leaves, inverse=inverse, backend=backend)
    assert out.dtype == dtype and out.shape == args[0].shape
    assert ld.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ld.shape == (args[0].shape[0],)
    g = torch.Generator().manual_seed(seed + 1)
    # upstreams rounded to the outputs' dtypes first: the gold sees what the op sees
    gy = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).double()
    gl = torch.randn(ld.shape, generator=g, dtype=torch.float64).to(ld.dtype).double()
    grads = torch.autograd.grad([out, ld], leaves, [gy.to(out), gl.to(ld)])
    ref_leaves = [t.detach().double().cpu().requires_grad_() for t in args]
    rout, rld = reference(*ref_leaves, inverse)
    rgrads = torch.autograd.grad([rout, rld], ref_leaves, [gy, gl])
    tol_out, tol_ld = fwd_tol(dtype), fwd_tol(ld.dtype)
    # the inverse's backward is evaluated at its output, the root rounded to the input
    # dtype: in fp16/bf16 that rounding (2^-11 / 2^-8 relative) moves every gradient
    grad_tols = [GRAD_TOL[dtype] * (3 if inverse and dtype in HALF else 1)] * len(args)
    if dtype != torch.float64:
        # flash-attention's rule: the error may also be a small multiple of eager float32
        # PyTorch's on the same inputs (a lone element of y = x/s - shift may cancel)
        l32 = [t.detach().float().cpu().requires_grad_() for t in args]
        o32, ld32 = reference(*l32, inverse)
        g32 = torch.autograd.grad([o32, ld32], l32, [gy.float(), gl.float()])
        tol_out = max(tol_out, 2 * rel_err(o32.to(dtype), rout.to(dtype)))
        tol_ld = max(tol_ld, 2 * rel_err(ld32, rld))
        grad_tols = [
            max(t, 3 * rel_err(g.to(dtype), r.to(dtype))) for t, g, r in zip(grad_tols, g32, rgrads)
        ]
    if inverse and dtype in HALF and reference is _mix_ref:
        # the mixture's inverse differentiates at its output, the root rounded to fp16/bf16;
        # where the map is steep there that rounding alone moved a gradient by 2% (1 seed in
        # ~300): the gold is the float64 implicit-function gradient at that rounded root
        root = out.detach().double().cpu()
        rgrads = _inverse_grads_at(reference, root, [t.double() for t in ref_leaves[1:]], gy, gl)
    info = f"seed={seed} backend={backend} dtype={dtype} inverse={inverse}"
    e_out, e_ld = rel_err(out, rout.to(dtype)), rel_err(ld, rld)
    assert e_out <= tol_out, f"output rel err {e_out:.2e} > {tol_out:.1e} ({info})"
    assert e_ld <= tol_ld, f"logdet rel err {e_ld:.2e} > {tol_ld:.1e} ({info})"
    for i, (got, want, grad_tol) in enumerate(zip(grads, rgrads, grad_tols)):
        assert got.dtype == dtype and got.shape == args[i].shape
        e = rel_err(got, want.to(dtype))
        assert e <= grad_tol, f"grad of input {i} rel err {e:.2e} > {grad_tol:.1e} ({info})"


def _inverse_grads_at(reference, root, params, gy, gl):
    """Float64 gradients, with respect to ``(y, *params)``, of ``<gy, x> + <gl, logdet>``
    for the inverse map ``x(y)`` (logdet = minus the forward's) evaluated at ``root``, by
    the implicit function theorem on the forward ``reference(x, *params, False)``:
    ``dx/dy = 1/F'(x)``, ``dx/dp = -(dF/dp)/F'(x)``."""
    x = root.detach().clone().requires_grad_()
    ps = [p.detach().clone().requires_grad_() for p in params]
    y, ld = reference(x, *ps, False)

    def grad(out, wrt, upstream):
        got = torch.autograd.grad(out, wrt, upstream, retain_graph=True, allow_unused=True)
        return [g if g is not None else torch.zeros_like(w) for g, w in zip(got, wrt)]

    (fprime,) = grad(y, [x], torch.ones_like(y))  # F is elementwise in x
    gx_ld, *gp_ld = grad(ld, [x, *ps], gl)
    v = (gy - gx_ld) / fprime  # what reaches y, through x
    return [v, *(-a - b for a, b in zip(grad(y, ps, v), gp_ld))]


def _affine_ref(x, s, l, inverse):
    return affine_coupling_reference(x, s, l, inverse)


def _mix_ref(*args):
    *t, inverse = args
    return (mixlogcdf_inverse_reference if inverse else mixlogcdf_forward_reference)(*t)


# ----------------------------------------------------------------------------- affine


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_affine_matches_reference(backend, device, dtype, inverse):
    require(backend, device, dtype)
    seed = fresh_seed()
    shapes = [(3, 5, 7), (1, 1)] if small(backend) else [(3, 5, 7, 9), (1, 1), (2, 70001)]
    for shape in shapes:
        args = affine_inputs(shape, seed=seed, dtype=dtype, device=device)
        check_grads(
            affine_coupling, args, backend, inverse=inverse, seed=seed, reference=_affine_ref
        )


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_affine_any_strides_and_roundtrip(backend, device):
    require(backend, device)
    seed = fresh_seed()
    x = torch.randn(4, 6, 5, 3, device=device).permute(0, 3, 2, 1)  # [4, 3, 5, 6]
    shift = torch.randn(1, 3, 1, 6, device=device).expand(4, 3, 5, 6)  # stride 0
    logit = torch.randn(4, 3, 5, 12, device=device)[..., ::2]
    y, ld = affine_coupling(x, shift, logit, backend=backend)
    yr, ldr = affine_coupling_reference(x.double(), shift.double(), logit.double())
    assert rel_err(y, yr) <= TOL[torch.float32] and rel_err(ld, ldr) <= TOL[torch.float32], seed
    x2, ld2 = affine_coupling(y, shift, logit, inverse=True, backend=backend)
    assert rel_err(x2, x) <= 1e-6
    assert torch.allclose(ld + ld2, torch.zeros_like(ld), atol=1e-4)


# ----------------------------------------------------------------------------- mixture


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_mixlog_matches_reference(backend, device, dtype, inverse):
    require(backend, device, dtype)
    seed = fresh_seed()
    cases = (
        [(2, (3, 5), 3), (1, (1,), 1)]
        if small(backend)
        else [(3, (5, 7), 4), (2, (3,), 33), (1, (1,), 1), (2, (300,), 32)]
    )
    for B, S, K in cases:
        args = mix_inputs(B, S, K, seed=seed, dtype=dtype, device=device, flat_regions=not inverse)
        if inverse:  # outputs of the forward, so the roots are the x drawn above
            with torch.no_grad():
                y64, _ = mixlogcdf_forward_reference(*[t.double().cpu() for t in args])
            args[0] = y64.to(device, dtype)
        check_grads(
            mixlogcdf_coupling, args, backend, inverse=inverse, seed=seed, reference=_mix_ref
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DT_IDS)
def test_mixlog_cpp_scalar_path(dtype, monkeypatch):
    """The CPU's scalar path is the math the CUDA kernels run: test it on float32 too,
    with K over the vectorised path's limit."""
    require("cpp", "cpu", dtype)
    monkeypatch.setattr(_coupling_c, "cpu_scalar_only", True)
    seed = fresh_seed()
    for inverse in (False, True):
        for B, S, K in [(2, (5, 3), 5), (1, (7,), 130)]:
            args = mix_inputs(B, S, K, seed=seed, dtype=dtype, flat_regions=not inverse)
            if inverse:
                args[0] = mixlogcdf_forward_reference(*[t.double() for t in args])[0].to(dtype)
            check_grads(
                mixlogcdf_coupling, args, "cpp", inverse=inverse, seed=seed, reference=_mix_ref
            )


def inverse_errors(y, x, args64):
    """Per element: forward error against the float64 root, and backward error."""
    y64 = y.double().cpu()
    xs, _ = mixlogcdf_inverse_reference(y64, *args64)
    fx, _ = mixlogcdf_forward_reference(x.double().cpu(), *args64)
    return ((x.double().cpu() - xs).abs() / (1 + xs.abs()), (fx - y64).abs() / (1 + y64.abs()))


def hard_inverse_cases(device, dtype):
    """Tails, extreme log-scales, components far apart, flat regions, K = 1."""
    d64 = dict(dtype=torch.float64)
    cases = []
    # far-apart components, y from the left tail through the flat middle to the right tail
    n = 41
    y = torch.linspace(-1e3, 1e3, n, **d64).view(1, n)
    for means in ([-100.0, 100.0], [-1e3, 0.0, 1e3], [0.0, 1e-3]):
        K = len(means)
        cases.append(
            (
                y,
                torch.zeros(1, n, K, **d64),
                torch.tensor(means, **d64).expand(1, n, K),
                torch.zeros(1, n, K, **d64),
            )
        )
    # log-scales at both ends, weights far from uniform
    for ls in (-7.0, 7.0):
        y = torch.linspace(-30, 30, n, **d64).view(1, n)
        cases.append(
            (
                y,
                torch.tensor([8.0, -8.0, 0.0], **d64).expand(1, n, 3),
                torch.tensor([-5.0, 0.0, 5.0], **d64).expand(1, n, 3),
                torch.tensor([ls, ls, 0.0], **d64).expand(1, n, 3),
            )
        )
    # a single component: the inverse is closed-form
    cases.append(
        (
            torch.linspace(-500, 500, n, **d64).view(1, n),
            torch.zeros(1, n, 1, **d64),
            torch.full((1, n, 1), 3.0, **d64),
            torch.full((1, n, 1), -2.0, **d64),
        )
    )
    out = []
    for y, lg, mu, ls in cases:
        a = torch.zeros_like(y)
        b = torch.zeros_like(y)
        out.append([t.contiguous().to(device, dtype) for t in (y, lg, mu, ls, a, b)])
    return out


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=DT_IDS)
def test_mixlog_inverse_tolerance_hard_cases(backend, device, dtype):
    """DESIGN.md's bound on every element: forward error <= 1e-5 (1 + |x*|) or backward
    error <= 1e-4 (1 + |y|) in float32 (half types: 1e-2, their own rounding)."""
    require(backend, device, dtype)
    fwd, bwd = {
        torch.float64: (1e-12, 1e-10),
        torch.float32: (1e-5, 1e-4),
        torch.bfloat16: (1e-2, 1e-2),
    }[dtype]
    for i, args in enumerate(hard_inverse_cases(device, dtype)):
        x, ld = mixlogcdf_coupling(*args, inverse=True, backend=backend)
        args64 = [t.double().cpu() for t in args[1:]]
        ef, eb = inverse_errors(args[0], x, args64)
        ok = (ef <= fwd) | (eb <= bwd)
        assert bool(ok.all()), (
            f"case {i}: worst forward error {ef[~ok].max():.2e}, "
            f"backward error {eb[~ok].min():.2e} at y="
            f"{args[0].double().cpu()[~ok][:4].tolist()}"
        )
        assert torch.isfinite(ld).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixlog_extremes_finite(backend, device):
    """|x| up to 1e3 and log-scales at -7 and 7: outputs and gradients finite."""
    require(backend, device)
    n = 9
    x = torch.linspace(-1e3, 1e3, n).view(1, n).repeat(2, 1)
    K = 3
    logits = torch.tensor([0.0, -20.0, 20.0]).expand(2, n, K).contiguous()
    means = torch.tensor([-2.0, 0.0, 2.0]).expand(2, n, K).contiguous()
    log_scales = torch.stack([torch.full((n, K), -7.0), torch.full((n, K), 7.0)])
    a = torch.full((2, n), 1.5)
    b = torch.zeros(2, n)
    leaves = [t.to(device).requires_grad_() for t in (x, logits, means, log_scales, a, b)]
    for inverse in (False, True):
        out, ld = mixlogcdf_coupling(*leaves, inverse=inverse, backend=backend)
        grads = torch.autograd.grad(out.sum() + ld.sum(), leaves)
        assert torch.isfinite(out).all() and torch.isfinite(ld).all(), inverse
        for i, gr in enumerate(grads):
            assert torch.isfinite(gr).all(), (inverse, i)


def _far_tail_logdet_error(backend, device):
    n, K = 9, 3
    x = torch.linspace(-1e3, 1e3, n).view(n, 1)
    logits = torch.tensor([0.0, -2.0, 1.0]).expand(n, 1, K).contiguous()
    means = torch.tensor([-2.0, 0.0, 2.0]).expand(n, 1, K).contiguous()
    args = [x, logits, means, torch.full((n, 1, K), -7.0), torch.zeros(n, 1), torch.zeros(n, 1)]
    _, gold = mixlogcdf_forward_reference(*[t.double() for t in args])
    _, ld = mixlogcdf_coupling(*[t.to(device) for t in args], backend=backend)
    return (ld.double().cpu() - gold).abs().max().item(), gold.abs().max().item()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixlog_logdet_far_tails(backend, device):
    """|z| up to 1e6 (x = +-1e3, log-scales -7): the float32 logdet must not lose
    eps*|z| to cancellation between log F' and log(1 - F) (or log F)."""
    require(backend, device)
    err, scale = _far_tail_logdet_error(backend, device)
    assert err <= 1e-5 * (1 + scale), err


def test_mixlog_logdet_far_tails_cpp_scalar_path(monkeypatch):
    """The same through the CPU's scalar path: the math the CUDA kernels run."""
    require("cpp", "cpu")
    monkeypatch.setattr(_coupling_c, "cpu_scalar_only", True)
    err, scale = _far_tail_logdet_error("cpp", "cpu")
    assert err <= 1e-5 * (1 + scale), err


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_mixlog_roundtrip_and_any_strides(backend, device):
    """inverse(forward(x)) == x and logdet(inverse) == -logdet(forward), with the
    per-component tensors permuted (K not the fastest axis) and a stride-0 b."""
    require(backend, device)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    B, C, H, W, K = 2, 3, 4, 5, 6
    raw = torch.randn(B, C, 3 * K, H, W, generator=g)
    logits, means, log_scales = (t.permute(0, 1, 3, 4, 2) for t in raw.split(K, dim=2))
    means = means * 2
    log_scales = log_scales.clamp(-3, 2)
    x = torch.randn(B, C, H, W, generator=g) * 2
    a = torch.randn(B, C, H, W, generator=g) * 0.3
    b = torch.randn(1, C, 1, 1, generator=g).expand(B, C, H, W)
    args = [t.to(device) for t in (x, logits, means, log_scales, a, b)]
    y, ld = mixlogcdf_coupling(*args, backend=backend)
    yr, ldr = mixlogcdf_forward_reference(*[t.double().cpu() for t in args])
    assert rel_err(y, yr) <= TOL[torch.float32] and rel_err(ld, ldr) <= TOL[torch.float32], seed
    x2, ld2 = mixlogcdf_coupling(y, *args[1:], inverse=True, backend=backend)
    ef, eb = inverse_errors(y, x2, [t.double().cpu() for t in args[1:]])
    assert bool(((ef <= 1e-5) | (eb <= 1e-4)).all()), seed
    assert torch.allclose(ld + ld2, torch.zeros_like(ld), atol=1e-3 * (1 + ld.abs().max())), seed


# ----------------------------------------------------------------------------- Jacobian


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_logdet_is_log_det_of_full_jacobian(backend):
    """The op's logdet equals log|det| of the Jacobian of the whole map, computed by
    autograd, for each batch element, both ops and both directions."""
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    B, S, K = 2, (2, 3), 3
    mix = mix_inputs(B, S, K, seed=seed)
    aff = affine_inputs((B, *S), seed=seed)
    ops = [(affine_coupling, aff), (mixlogcdf_coupling, mix)]
    for op, args in ops:
        for inverse in (False, True):
            for i in range(B):
                params = [t[i : i + 1] for t in args[1:]]
                x = args[0][i : i + 1]

                def f(v, op=op, x=x, params=params, inverse=inverse):
                    return op(v.view_as(x), *params, inverse=inverse, backend=backend)[0].reshape(
                        -1
                    )

                J = torch.autograd.functional.jacobian(f, x.reshape(-1))
                _, ld = op(x, *params, inverse=inverse, backend=backend)
                sign, logabs = torch.linalg.slogdet(J)
                assert sign > 0
                assert abs(logabs.item() - ld.item()) <= 1e-9 * (1 + abs(ld.item())), (
                    op.__name__,
                    inverse,
                    seed,
                )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    """gradcheck (finite differences) of the ops themselves, both directions: the
    inverse's analytic gradient (implicit function theorem) included."""
    require(backend, "cpu", torch.float64)
    seed = fresh_seed()
    mix = [t.requires_grad_() for t in mix_inputs(2, (2,), 3, seed=seed)]
    aff = [t.requires_grad_() for t in affine_inputs((2, 3), seed=seed)]
    for inverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda *t, inverse=inverse: affine_coupling(*t, inverse=inverse, backend=backend), aff
        ), seed
        assert torch.autograd.gradcheck(
            lambda *t, inverse=inverse: mixlogcdf_coupling(*t, inverse=inverse, backend=backend),
            mix,
        ), seed


def test_reference_inverse_gradient_is_implicit_function():
    """The reference inverse's gradient (used as gold) against finite differences."""
    seed = fresh_seed()
    mix = [t.requires_grad_() for t in mix_inputs(1, (2,), 2, seed=seed)]
    assert torch.autograd.gradcheck(lambda *t: mixlogcdf_inverse_reference(*t), mix), seed


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    require(backend, device)
    seed = fresh_seed()
    aff = [
        t.requires_grad_()
        for t in affine_inputs((2, 3, 4), seed=seed, dtype=torch.float32, device=device)
    ]
    torch.library.opcheck(torch.ops.dqk.affine_coupling.default, (*aff, False, backend))
    torch.library.opcheck(torch.ops.dqk.affine_coupling.default, (*aff, True, backend))
    mix = [
        t.requires_grad_()
        for t in mix_inputs(2, (3,), 2, seed=seed, dtype=torch.float32, device=device)
    ]
    torch.library.opcheck(torch.ops.dqk.mixlogcdf_coupling.default, (*mix, backend))
    torch.library.opcheck(torch.ops.dqk.mixlogcdf_coupling_inverse.default, (*mix, backend))
    det = [t.detach() for t in mix]
    torch.library.opcheck(
        torch.ops.dqk.mixlogcdf_coupling_backward.default,
        (*det, torch.randn_like(det[0]), torch.randn(2, device=device), True, backend),
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compile_fullgraph(backend):
    require(backend, "cpu")
    torch._dynamo.reset()
    args = mix_inputs(2, (3, 4), 3, seed=fresh_seed(), dtype=torch.float32)
    aff = affine_inputs((2, 3, 4), seed=1, dtype=torch.float32)[1:]

    def loss(x, logits, means, log_scales, a, b, shift, scale):
        y, ld = mixlogcdf_coupling(x, logits, means, log_scales, a, b, backend=backend)
        z, ld2 = affine_coupling(y, shift, scale, backend=backend)
        w, ld3 = mixlogcdf_coupling(
            z, logits, means, log_scales, a, b, inverse=True, backend=backend
        )
        return w.square().sum() + (ld + ld2 + ld3).sum()

    assert_compiled_grads_match(loss, args + aff)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty(backend, device):
    require(backend, device)
    for shape in [(0, 3, 4), (2, 0, 4)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        y, ld = affine_coupling(x, x, x, backend=backend)
        assert y.shape == shape and ld.shape == (shape[0],) and (ld == 0).all()
        K = 2
        m = torch.randn(*shape, K, device=device)
        y, ld = mixlogcdf_coupling(x, m, m, m, x, x, inverse=True, backend=backend)
        assert y.shape == shape and ld.shape == (shape[0],) and (ld == 0).all()
        (y.sum() + ld.sum()).backward()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nan_propagates(backend, device):
    require(backend, device)
    args = mix_inputs(1, (4,), 3, seed=0, dtype=torch.float32, device=device)
    args[2][0, 1, 0] = math.nan
    for inverse in (False, True):
        y, ld = mixlogcdf_coupling(*args, inverse=inverse, backend=backend)
        assert torch.isnan(y[0, 1]) and torch.isnan(ld[0])
        assert not torch.isnan(y[0, [0, 2, 3]]).any()


# ----------------------------------------------------------------------------- bad input


def test_bad_input_messages():
    x = torch.randn(2, 3)
    m = torch.randn(2, 3, 4)
    with pytest.raises(
        ValueError,
        match=r"mixlogcdf_coupling: means must have shape "
        r"\[\*x.shape, K\]; K mismatch: logits has K=4 "
        r"components and means has 5",
    ):
        mixlogcdf_coupling(x, m, torch.randn(2, 3, 5), m, x, x)
    with pytest.raises(
        ValueError,
        match=r"logits must have shape \[\*x.shape, K\] = "
        r"\[2, 3, 'K'\]; got \(2, 4, 4\)",
    ):
        mixlogcdf_coupling(x, torch.randn(2, 4, 4), m, m, x, x)
    with pytest.raises(
        ValueError,
        match=r"log_scales must have shape \[\*x.shape, K\]; "
        r"expected logits' shape \(2, 3, 4\); got \(3, 3, 4\)",
    ):
        mixlogcdf_coupling(x, m, m, torch.randn(3, 3, 4), x, x)
    with pytest.raises(ValueError, match=r"a must have x's shape \(2, 3\); got \(2, 1\)"):
        mixlogcdf_coupling(x, m, m, m, torch.randn(2, 1), x)
    with pytest.raises(
        TypeError,
        match=r"x and b must have the same dtype; got x float32 "
        r"and b float64",
    ):
        mixlogcdf_coupling(x, m, m, m, x, x.double())
    with pytest.raises(TypeError, match=r"logits must be a floating tensor .*got dtype int64"):
        mixlogcdf_coupling(x, m.long(), m, m, x, x)
    with pytest.raises(
        ValueError,
        match=r"x and means must be on the same device; got x on "
        r"cpu and means on meta",
    ):
        mixlogcdf_coupling(x, m, m.to("meta"), m, x, x)
    with pytest.raises(ValueError, match=r"K >= 1 components"):
        e = torch.randn(2, 3, 0)
        mixlogcdf_coupling(x, e, e, e, x, x)
    with pytest.raises(TypeError, match=r"inverse must be a bool; got int"):
        mixlogcdf_coupling(x, m, m, m, x, x, inverse=1)
    with pytest.raises(
        ValueError,
        match=r"affine_coupling: shift must have x's shape "
        r"\(2, 3\); got \(3, 2\)",
    ):
        affine_coupling(x, x.t(), x)
    with pytest.raises(
        TypeError,
        match=r"affine_coupling: x and scale_logit must have the "
        r"same dtype; got x float32 and scale_logit float16",
    ):
        affine_coupling(x, x, x.half())
    with pytest.raises(
        TypeError,
        match=r"affine_coupling: shift must be a torch.Tensor; got "
        r"float",
    ):
        affine_coupling(x, 1.0, x)
    with pytest.raises(ValueError, match=r"batch dimension"):
        affine_coupling(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))


def test_backend_rejections_explained():
    from dqkernels.backends import BackendUnavailableError

    x = torch.randn(2, 3)
    with pytest.raises(
        BackendUnavailableError,
        match=r"(?s)affine_coupling: backend 'cuda' "
        r"cannot run on cpu tensors.*torch: "
        r"available",
    ):
        affine_coupling(x, x, x, backend="cuda")
