"""dmol_nll / dmol_sample on every backend against the float64 reference."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKEND_DEVICES, GRAD_TOL, HAS_GPU, TOL, fresh_seed, rel_err, require

from dqkernels.ops import dmol_nll, dmol_sample
from dqkernels.reference.dmol import (
    dmol_level_log_probs,
    dmol_nll_reference,
    dmol_sample_reference,
    params_per_mixture,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Gradients may be off by up to this multiple of eager float32 PyTorch's own error on the
# same inputs (forward: 2x). Seen: 2.15x for the scalar path's online logsumexp over
# M = 70 components on an ill-conditioned draw.
GRAD_MULTIPLE = 3


def make_inputs(B, C, H, W, M, L, *, seed, dtype=torch.float64, device="cpu"):
    """Random params spread over every regime (log-scales across the clamp, coupled
    channels) and random levels with both edge levels present."""
    g = torch.Generator().manual_seed(seed)
    P = M * params_per_mixture(C)
    p = torch.empty(B, P, H, W, dtype=torch.float64)
    p[:, :M] = torch.randn(B, M, H, W, generator=g) * 2
    rest = p[:, M:].view(B, C, 3 if C == 3 else 2, M, H, W)
    rest[:, :, 0] = torch.rand(B, C, M, H, W, generator=g, dtype=torch.float64) * 2.4 - 1.2
    rest[:, :, 1] = torch.rand(B, C, M, H, W, generator=g, dtype=torch.float64) * 9 - 8
    if C == 3:
        rest[:, :, 2] = torch.randn(B, C, M, H, W, generator=g, dtype=torch.float64)
    k = torch.randint(0, L, (B, C, H, W), generator=g)
    if k.numel() >= 2:
        k.view(-1)[0], k.view(-1)[-1] = 0, L - 1
    x = k.double() * (2.0 / (L - 1)) - 1.0
    return x.to(device, dtype), p.to(device, dtype)


def check_against_reference(x, params, L, backend, *, seed, mls=-7.0, grad_seed=0):
    """Forward and backward of `backend` vs autograd of the float64 reference evaluated
    on the same (already rounded) inputs."""
    dtype = params.dtype
    p = params.detach().clone().requires_grad_()
    nll = dmol_nll(x, p, num_levels=L, min_log_scale=mls, backend=backend)
    assert nll.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert nll.shape == (x.shape[0],) + tuple(x.shape[2:])
    g = torch.randn(
        nll.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=nll.dtype
    ).to(nll.device)
    (grad,) = torch.autograd.grad(nll, p, g)
    assert grad.dtype == dtype and grad.shape == params.shape

    p64 = params.detach().double().cpu().requires_grad_()
    ref = dmol_nll_reference(x.detach().double().cpu(), p64, L, mls)
    (gref,) = torch.autograd.grad(ref, p64, g.double().cpu())
    fwd_tol = TOL[torch.float64] if dtype == torch.float64 else TOL[torch.float32]
    # compared with the exact values rounded to the output dtype, the best any kernel can
    # return (an NLL of 1e-100 is 0 in float32; tiny gradients underflow fp16's range)
    gold_f, gold_b = ref.to(nll.dtype), gref.to(dtype)
    e_f, e_b = rel_err(nll, gold_f), rel_err(grad, gold_b)
    if dtype != torch.float64:
        # flash-attention's rule: the error may also be up to a small multiple of that of
        # eager PyTorch computing the reference in float32 on the same inputs
        # (ill-conditioned inputs, log-probabilities in the thousands, cost any float32
        # evaluation digits)
        p32 = params.detach().float().cpu().requires_grad_()
        r32 = dmol_nll_reference(x.detach().float().cpu(), p32, L, mls)
        (g32,) = torch.autograd.grad(r32, p32, g.float().cpu())
        fwd_tol = max(fwd_tol, 2 * rel_err(r32, gold_f))
        bwd_tol = max(GRAD_TOL[dtype], GRAD_MULTIPLE * rel_err(g32.to(dtype), gold_b))
    else:
        bwd_tol = GRAD_TOL[dtype]
    info = f"seed={seed} backend={backend} dtype={dtype} shape={tuple(params.shape)} L={L}"
    assert e_f <= fwd_tol, f"forward rel err {e_f:.3e} > {fwd_tol:.1e} ({info})"
    assert e_b <= bwd_tol, f"backward rel err {e_b:.3e} > {bwd_tol:.1e} ({info})"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("C", [1, 3])
def test_matches_reference(backend, device, dtype, C):
    require(backend, device, dtype)
    seed = fresh_seed()
    small = backend == "triton" and device == "cpu"  # the interpreter is slow
    cases = (
        [(2, 3, 5, 4, 256), (1, 1, 1, 1, 2)]
        if small
        else [(2, 3, 5, 4, 256), (1, 1, 1, 1, 2), (3, 7, 9, 10, 17), (2, 17, 19, 1, 5)]
    )
    for i, (B, H, W, M, L) in enumerate(cases):
        x, p = make_inputs(B, C, H, W, M, L, seed=seed + i, dtype=dtype, device=device)
        check_against_reference(x, p, L, backend, seed=seed + i)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_several_blocks(backend, device):
    """Enough pixels for several thread blocks / programs, with an odd tail."""
    require(backend, device)
    seed = fresh_seed()
    shape = (3, 11, 13) if device == "cpu" and backend == "triton" else (5, 37, 41)
    x, p = make_inputs(
        shape[0], 3, shape[1], shape[2], 6, 256, seed=seed, dtype=torch.float32, device=device
    )
    check_against_reference(x, p, 256, backend, seed=seed)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_many_mixtures(backend, device):
    """More components than the CPU tile path caches (64): the fallback path."""
    require(backend, device)
    seed = fresh_seed()
    for C in (1, 3):
        x, p = make_inputs(2, C, 3, 3, 70, 256, seed=seed, dtype=torch.float32, device=device)
        check_against_reference(x, p, 256, backend, seed=seed)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_any_strides(backend, device):
    """Non-contiguous params (a slice of a wider tensor, transposed spatial dims,
    channels-last) and an x expanded along the batch with stride 0."""
    require(backend, device)
    seed = fresh_seed()
    C, M, L = 3, 3, 256
    P = M * params_per_mixture(C)
    x1, _ = make_inputs(1, C, 5, 6, M, L, seed=seed, dtype=torch.float32, device=device)
    wide = torch.randn(4, P + 7, 6, 5, device=device) * 2
    params = wide[:, 3 : 3 + P].transpose(2, 3)  # [4, P, 5, 6], strided
    assert not params.is_contiguous()
    x = x1.expand(4, C, 5, 6)  # batch stride 0
    check_against_reference(x, params, L, backend, seed=seed)
    cl = params.contiguous(memory_format=torch.channels_last)
    check_against_reference(x.contiguous(), cl, L, backend, seed=seed)
    # upstream gradient with stride 0, as sum() produces
    p = params.detach().clone().requires_grad_()
    dmol_nll(x, p, num_levels=L, backend=backend).sum().backward()
    p64 = params.detach().double().cpu().requires_grad_()
    dmol_nll_reference(x.double().cpu(), p64, L).sum().backward()
    assert rel_err(p.grad, p64.grad) <= GRAD_TOL[torch.float32]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_empty(backend, device):
    require(backend, device)
    for B, H, W in [(0, 4, 4), (2, 0, 3), (2, 3, 0)]:
        x = torch.zeros(B, 3, H, W, device=device)
        p = torch.zeros(B, 20, H, W, device=device, requires_grad=True)
        out = dmol_nll(x, p, backend=backend)
        assert out.shape == (B, H, W)
        out.sum().backward()
        assert p.grad.shape == p.shape
        s = dmol_sample(p, 3, backend=backend)
        assert s.shape == (B, 3, H, W)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_extreme_inputs_finite_and_exact(backend, device):
    """Both edge bins, log-scales at and far below the clamp, very flat scales, very
    peaked mixtures, huge logits, means far from x: finite and equal to the reference."""
    require(backend, device)
    C, M, L = 3, 4, 256
    B, H, W = 6, 2, 3
    P = M * params_per_mixture(C)
    p = torch.zeros(B, P, H, W, dtype=torch.float64)
    rest = p[:, M:].view(B, C, 3, M, H, W)
    x = torch.zeros(B, C, H, W, dtype=torch.float64)
    # 0: lowest bin, mean at the other end, scale at the clamp
    x[0] = -1.0
    rest[0, :, 0] = 1.0
    rest[0, :, 1] = -7.0
    # 1: highest bin, scale far below the clamp (clamped), mean at the other end
    x[1] = 1.0
    rest[1, :, 0] = -1.0
    rest[1, :, 1] = -50.0
    # 2: very peaked at x: interior bin, tiny scale, mean exactly at x
    x[2] = 2 * 60 / 255 - 1
    rest[2, :, 0] = x[2][:, None]
    rest[2, :, 1] = -7.0
    # 3: very flat: scale e^12
    x[3] = 2 * 100 / 255 - 1
    rest[3, :, 1] = 12.0
    # 4: huge logits of both signs
    p[4, :M] = torch.tensor([1e4, -1e4, 5e3, 0.0]).view(M, 1, 1)
    rest[4, :, 1] = -3.0
    x[4] = 2 * 17 / 255 - 1
    # 5: strong coupling coefficients and means far outside [-1, 1]
    rest[5, :, 2] = 20.0
    rest[5, :, 0] = 30.0
    rest[5, :, 1] = -2.0
    x[5] = -1.0 + 2 * 3 / 255
    for dtype in (torch.float32, torch.float64):
        if backends_skip(backend, device, dtype):
            continue
        xd, pd = x.to(device, dtype), p.to(device, dtype)
        pr = pd.detach().clone().requires_grad_()
        out = dmol_nll(xd, pr, num_levels=L, backend=backend)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(pr.grad).all()
        check_against_reference(xd, pd, L, backend, seed=0)


def backends_skip(backend, device, dtype) -> bool:
    from dqkernels import backends

    return backends.why_unavailable(backend, device, dtype) is not None


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_very_low_min_log_scale(backend, device):
    """min_log_scale far below -7: bins are 1e32 scales wide (exp(-delta) is 0) and
    everything stays finite. (Below about -88, 1/s itself overflows float32.)"""
    require(backend, device)
    x, p = make_inputs(2, 3, 2, 3, 3, 256, seed=fresh_seed(), dtype=torch.float32, device=device)
    p = p.clone()
    p[:, 3:].view(2, 3, 3, 3, 2, 3)[:, :, 1] = -80.0  # every log-scale
    p[:, 3:].view(2, 3, 3, 3, 2, 3)[:, :, 0] = x.view(2, 3, 1, 2, 3)  # means on the data
    pr = p.clone().requires_grad_()
    out = dmol_nll(x, pr, min_log_scale=-80.0, backend=backend)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(pr.grad).all()
    check_against_reference(x, p, 256, backend, seed=0, mls=-80.0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nan_propagates(backend, device):
    require(backend, device)
    x, p = make_inputs(1, 1, 2, 2, 2, 256, seed=1, dtype=torch.float32, device=device)
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    out = dmol_nll(x, p, backend=backend)
    assert torch.isnan(out[0, 0, 0]) and torch.isfinite(out.view(-1)[1:]).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_low_precision_x_is_snapped(backend, device):
    """bf16 cannot hold all 256 levels; its rounded values still map to the right level,
    so the NLL equals the float32 one on the same params."""
    require(backend, device, torch.bfloat16)
    x, p = make_inputs(2, 3, 4, 4, 3, 256, seed=fresh_seed(), dtype=torch.float64)
    p16 = p.to(torch.bfloat16)
    got = dmol_nll(x.to(torch.bfloat16).to(device), p16.to(device), backend=backend)
    want = dmol_nll_reference(x, p16.double())
    assert rel_err(got, want) <= TOL[torch.float32]


# ------------------------------------------------------------------------- gradients


def test_reference_gradcheck():
    for C in (1, 3):
        x, p = make_inputs(2, C, 2, 3, 3, 9, seed=fresh_seed())
        p.requires_grad_()
        assert torch.autograd.gradcheck(lambda q, x=x: dmol_nll_reference(x, q, 9), (p,))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_op_gradcheck_float64(backend):
    require(backend, "cpu", torch.float64)
    for C in (1, 3):
        x, p = make_inputs(2, C, 2, 3, 3, 9, seed=fresh_seed())
        p.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda q, x=x: dmol_nll(x, q, num_levels=9, backend=backend), (p,)
        )


# ----------------------------------------------------------------- custom op contract


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_opcheck(backend, device):
    require(backend, device)
    x, p = make_inputs(2, 3, 3, 4, 2, 256, seed=fresh_seed(), dtype=torch.float32, device=device)
    p.requires_grad_()
    torch.library.opcheck(torch.ops.dqk.dmol_nll.default, (x, p, 256, -7.0, backend))
    g = torch.randn(2, 3, 4, device=device)
    torch.library.opcheck(
        torch.ops.dqk.dmol_nll_backward.default, (x, p.detach(), g, 256, -7.0, backend)
    )
    u = torch.rand(2, 4, 3, 4, device=device)
    torch.library.opcheck(torch.ops.dqk.dmol_sample.default, (p.detach(), u, 3, 256, -7.0, backend))
    from dqkernels.ops.dmol import FUSED_BACKWARD_BACKENDS

    if backend in FUSED_BACKWARD_BACKENDS:
        torch.library.opcheck(torch.ops.dqk.dmol_nll_fused.default, (x, p, 256, -7.0, backend))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.bfloat16, torch.float64],
    ids=lambda d: str(d).replace("torch.", ""),
)
def test_backward_op_matches_reference(backend, device, dtype):
    """The backward op itself (the recomputing path; `cpp` otherwise takes the fused one
    through autograd), with a non-contiguous upstream gradient."""
    require(backend, device, dtype)
    seed = fresh_seed()
    for C, M in [(1, 4), (3, 10), (3, 70)]:
        x, p = make_inputs(2, C, 5, 7, M, 256, seed=seed, dtype=dtype, device=device)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        g = torch.randn(2, 7, 5, dtype=acc, device=device).transpose(1, 2)  # strided
        got = torch.ops.dqk.dmol_nll_backward(x, p, g, 256, -7.0, backend)
        p64 = p.double().cpu().requires_grad_()
        (want,) = torch.autograd.grad(
            dmol_nll_reference(x.double().cpu(), p64), p64, g.double().cpu()
        )
        tol = GRAD_TOL[dtype]
        if dtype != torch.float64:  # flash-attention's rule, as in check_against_reference
            p32 = p.float().cpu().requires_grad_()
            (g32,) = torch.autograd.grad(
                dmol_nll_reference(x.float().cpu(), p32), p32, g.float().cpu()
            )
            tol = max(tol, GRAD_MULTIPLE * rel_err(g32.to(dtype), want.to(dtype)))
        assert rel_err(got, want.to(dtype)) <= tol, f"seed={seed} C={C} M={M}"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_backward_twice_with_retain_graph(backend, device):
    """A second backward through a retained graph gives the same gradient (the fused
    CPU path must not consume its saved unit gradient)."""
    require(backend, device)
    x, p = make_inputs(2, 3, 3, 5, 3, 256, seed=fresh_seed(), dtype=torch.float32, device=device)
    p.requires_grad_()
    loss = (dmol_nll(x, p, backend=backend) * 0.5).sum()
    (g1,) = torch.autograd.grad(loss, p, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, p)
    assert torch.equal(g1, g2)
    p64 = p.detach().double().cpu().requires_grad_()
    (gr,) = torch.autograd.grad((dmol_nll_reference(x.double().cpu(), p64) * 0.5).sum(), p64)
    assert rel_err(g1, gr) <= GRAD_TOL[torch.float32]


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_compile_fullgraph(backend):
    """torch.compile traces a function calling the ops without graph breaks."""
    require(backend, "cpu")
    torch._dynamo.reset()
    x, p = make_inputs(2, 3, 4, 4, 2, 256, seed=fresh_seed(), dtype=torch.float32)

    def loss(x, p):
        return dmol_nll(x, p * 1.0, backend=backend).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    p1 = p.clone().requires_grad_()
    p2 = p.clone().requires_grad_()
    compiled(x, p1).backward()
    loss(x, p2).backward()
    assert torch.allclose(p1.grad, p2.grad)


@pytest.mark.slow
def test_compile_inductor_default_backend():
    """With the global default backend (auto -> cpp or torch) under inductor."""
    torch._dynamo.reset()
    x, p = make_inputs(2, 1, 4, 4, 2, 17, seed=fresh_seed(), dtype=torch.float32)

    @torch.compile(fullgraph=True)
    def loss(x, p):
        return dmol_nll(x, torch.tanh(p) * 3, num_levels=17).sum()

    p1 = p.clone().requires_grad_()
    out = loss(x, p1)
    out.backward()
    p2 = p.clone().requires_grad_()
    ref = dmol_nll_reference(x, torch.tanh(p2) * 3, 17).sum()
    ref.backward()
    assert abs(out.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert rel_err(p1.grad, p2.grad) <= 1e-5


# --------------------------------------------------------------------------- sampling


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0):
    """Pearson chi-square p-value, pooling outcomes expected fewer than `min_expected`."""
    n = counts.sum()
    exp = probs * n
    keep = exp >= min_expected
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)])
    ex = torch.cat([exp[keep], exp[~keep].sum().view(1)])
    if ex[-1] < min_expected:  # fold a tiny pooled cell into the largest one
        obs[ex.argmax()] += obs[-1]
        ex[ex.argmax()] += ex[-1]
        obs, ex = obs[:-1], ex[:-1]
    stat = ((obs - ex) ** 2 / ex).sum()
    df = obs.numel() - 1
    return torch.special.gammaincc(
        torch.tensor(df / 2, dtype=torch.float64), stat.double() / 2
    ).item()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("C,L", [(1, 8), (3, 3)])
def test_sample_distribution(backend, device, C, L):
    """Samples of one pixel's mixture follow the exact level probabilities (chi-square),
    including the coupled joint distribution of C == 3."""
    require(backend, device)
    seed = fresh_seed()
    M = 3
    g = torch.Generator().manual_seed(seed)
    P = M * params_per_mixture(C)
    one = torch.randn(1, P, 1, 1, generator=g, dtype=torch.float64)
    one[:, M:].view(C, 3 if C == 3 else 2, M)[:, 1] = torch.rand(C, M, generator=g) * 2 - 2.5
    n = 20000 if not (backend == "triton" and device == "cpu") else 6000
    params = one.to(torch.float32).expand(n, P, 1, 1).to(device)  # stride-0 batch
    gen = torch.Generator(device=device).manual_seed(seed)
    s = dmol_sample(params, C, num_levels=L, generator=gen, backend=backend).cpu()
    k = torch.round((s.double() + 1) * (L - 1) / 2).long().view(n, C)
    assert torch.allclose(s.double().view(n, C), k.double() * 2 / (L - 1) - 1)
    idx = sum(k[:, c] * L ** (C - 1 - c) for c in range(C))
    counts = torch.bincount(idx, minlength=L**C).double()
    probs = dmol_level_log_probs(one.to(torch.float32).double(), C, L).exp().view(-1)
    pval = chi_square_pvalue(counts, probs)
    assert pval > 1e-4, f"chi-square p={pval:.2e} (seed={seed}, backend={backend})"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_sample_matches_reference_given_uniforms(backend, device):
    """All backends map the same uniforms to the same samples."""
    require(backend, device)
    seed = fresh_seed()
    for C, L in [(1, 256), (3, 256), (3, 2)]:
        _, p = make_inputs(3, C, 5, 6, 4, L, seed=seed, dtype=torch.float32, device=device)
        u = torch.rand(3, 1 + C, 5, 6, generator=torch.Generator().manual_seed(seed)).to(device)
        got = torch.ops.dqk.dmol_sample(p, u, C, L, -7.0, backend).cpu().double()
        want = dmol_sample_reference(p.double().cpu(), u.double().cpu(), C, L)
        # a uniform within rounding of a bin edge may land either side: allow a handful
        bad = (got - want).abs() > 1e-6
        assert bad.float().mean() <= 0.01, f"{int(bad.sum())} mismatches (seed={seed})"


def test_sample_generator_reproducible():
    _, p = make_inputs(2, 3, 4, 4, 3, 256, seed=3, dtype=torch.float32)
    a = dmol_sample(p, 3, generator=torch.Generator().manual_seed(5))
    b = dmol_sample(p, 3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.gpu
def test_cuda_matches_cpp_bitwise_close():
    """The CUDA and C++ kernels share their math header: results agree to rounding."""
    require("cuda", "cuda")
    require("cpp", "cpu")
    x, p = make_inputs(4, 3, 16, 16, 10, 256, seed=fresh_seed(), dtype=torch.float32)
    a = dmol_nll(x, p, backend="cpp")
    b = dmol_nll(x.cuda(), p.cuda(), backend="cuda").cpu()
    assert rel_err(b, a) < 1e-6


@pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_empty_shapes(dtype):
    """Empty inputs on the cuda backend, every dtype and channel count: empty results and
    gradients, no launch (a launch of 0 blocks is a CUDA error: the ops skip the kernels,
    the binding refuses empty tensors with a clear message, and the kernels' launchers
    return before launching), and no CUDA error left behind."""
    require("cuda", "cuda", dtype)
    for C, per in ((1, 3), (3, 10)):
        for B, H, W in [(0, 4, 4), (2, 0, 3), (2, 3, 0)]:
            x = torch.zeros(B, C, H, W, device="cuda", dtype=dtype)
            p = torch.zeros(B, 2 * per, H, W, device="cuda", dtype=dtype, requires_grad=True)
            out = dmol_nll(x, p, backend="cuda")
            assert out.shape == (B, H, W)
            out.sum().backward()
            assert p.grad.shape == p.shape
            assert dmol_sample(p, C, backend="cuda").shape == (B, C, H, W)
    from dqkernels.kernels.dmol import cuda as dmol_cuda

    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.zeros(0, 3, 4, 4, device="cuda", dtype=dtype)
    p = torch.zeros(0, 20, 4, 4, device="cuda", dtype=dtype)
    with pytest.raises(ValueError, match="the kernels take no empty tensors"):
        dmol_cuda.nll_forward(x, p, torch.zeros(0, 4, 4, device="cuda", dtype=acc), 256, -7.0)
    torch.cuda.synchronize()


def test_nll_is_normalised():
    """Sanity of the definition: level probabilities of a pixel sum to one."""
    for C, L in [(1, 7), (3, 4)]:
        _, p = make_inputs(2, C, 2, 2, 3, L, seed=fresh_seed())
        lp = dmol_level_log_probs(p, C, L)
        assert torch.allclose(
            lp.logsumexp(1), torch.zeros(2, 2, 2, dtype=torch.float64), atol=1e-12
        )
        assert math.isfinite(lp.min().item())
