"""The VQ ops (vq_nearest, vq_sample, vq_ema_update) on every backend against the float64
reference in dqkernels/reference/vq.py, plus sampler statistics, the no-N x K memory
property and bad input."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import BACKEND_DEVICES, TOL, fresh_seed, rel_err, require

from dqkernels.ops import vq_ema_update, vq_nearest, vq_sample
from dqkernels.reference.vq import (
    sqdist_matrix,
    vq_ema_update_reference,
    vq_probs_reference,
    vq_sample_reference,
)

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# (N, K, D): odd sizes, K = 1, D = 1, several tiles, and N = 0
SHAPES = [(1, 1, 1), (37, 1, 5), (5, 3, 1), (101, 67, 37), (300, 129, 67), (0, 7, 3)]


def _inputs(N, K, D, dtype, device, seed, dup=True):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(K, D, generator=g)
    if dup and K >= 4:
        e[K - 1] = e[1]  # a duplicated code after its twin
        e[K // 2] = e[1]
    z = torch.randn(N, D, generator=g)
    if N >= 3 and K >= 2:
        z[0] = e[1]  # exactly on a duplicated code: the tie goes to index 1
        z[1] = e[K - 1]
        z[2] = e[0] + 1e-3 * torch.randn(D, generator=g)
    return z.to(device, dtype), e.to(device, dtype)


def _check_nearest(z, e, idx, dist):
    """The chosen code's float64 distance is the minimum (within 1e-5 relative), and the
    chosen index is the lowest one at exactly that distance (ties -> lowest index)."""
    d = sqdist_matrix(z.cpu(), e.cpu())  # float64 on the inputs as given
    idx = idx.cpu().reshape(-1)
    assert idx.dtype == torch.int64
    assert bool(((idx >= 0) & (idx < e.shape[0])).all()), idx
    dmin = d.min(1).values
    chosen = d.gather(1, idx[:, None])[:, 0]
    bad = chosen > dmin * (1 + 1e-5)
    assert not bool(bad.any()), (
        f"{int(bad.sum())} rows off the minimum, e.g. chosen "
        f"{chosen[bad][:3].tolist()} vs {dmin[bad][:3].tolist()}"
    )
    first_equal = (d == chosen[:, None]).to(torch.int8).argmax(1)
    assert torch.equal(idx, first_equal), "a tie did not go to the lowest index"
    tol = TOL[torch.float64 if z.dtype == torch.float64 else torch.float32]
    assert rel_err(dist.reshape(-1), chosen) <= tol


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,D", SHAPES)
def test_nearest_matches_reference(backend, device, dtype, N, K, D):
    require(backend, device, dtype)
    seed = fresh_seed()
    z, e = _inputs(N, K, D, dtype, device, seed)
    idx, dist = vq_nearest(z, e, backend=backend)
    assert idx.shape == (N,) and dist.shape == (N,)
    assert dist.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if N:
        _check_nearest(z, e, idx, dist)
        if K >= 4 and N >= 3:
            assert idx[0].item() == 1 and idx[1].item() == 1, f"seed {seed}"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nearest_near_ties_need_more_than_the_fp32_expansion(backend, device):
    """Codes far from the origin with z very close to them: |z|^2 >> d_min, where
    the plain float32 expansion |z|^2 + |e|^2 - 2 z.e picks wrong codes (checked), and
    the kernels must still be exact."""
    require(backend, device)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    N, K, D = 96, 40, 24
    e = 300.0 + torch.randn(K, D, generator=g) * 1e-2
    z = e[torch.randint(0, K, (N,), generator=g)] + torch.randn(N, D, generator=g) * 1e-3
    naive = (e.pow(2).sum(1)[None] - 2 * z @ e.T).argmin(1)
    d = sqdist_matrix(z, e)
    naive_wrong = d.gather(1, naive[:, None])[:, 0] > d.min(1).values * (1 + 1e-5)
    assert bool(naive_wrong.any()), "the case is not hard enough to test anything"
    idx, dist = vq_nearest(z.to(device), e.to(device), backend=backend)
    _check_nearest(z, e, idx, dist)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nearest_batch_dims_and_noncontiguous(backend, device):
    require(backend, device)
    z, e = _inputs(24, 9, 6, torch.float32, device, fresh_seed())
    zb = z.reshape(2, 3, 4, 6).transpose(1, 2)  # [..., D], not contiguous
    idx, dist = vq_nearest(zb, e[:, :].t().contiguous().t(), backend=backend)
    assert idx.shape == (2, 4, 3)
    ref_idx, ref_dist = vq_nearest(zb.reshape(-1, 6).contiguous(), e, backend="torch")
    assert torch.equal(idx.reshape(-1).cpu(), ref_idx.cpu())
    assert rel_err(dist.reshape(-1), ref_dist) <= TOL[torch.float32]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_nearest_distance_gradients(backend, device):
    """sqdist is differentiable: 2 (z - e_k) for z and -2 (z - e_k) summed into e_k."""
    require(backend, device)
    z, e = _inputs(50, 11, 7, torch.float32, device, fresh_seed())
    z.requires_grad_(True)
    e.requires_grad_(True)
    w = torch.randn(50, device=device)
    idx, dist = vq_nearest(z, e, backend=backend)
    gz, ge = torch.autograd.grad((dist * w).sum(), (z, e))
    z64, e64 = z.detach().double().requires_grad_(True), e.detach().double().requires_grad_(True)
    ref = ((z64 - e64[idx]) ** 2).sum(1)
    rz, re_ = torch.autograd.grad((ref * w.double()).sum(), (z64, e64))
    assert rel_err(gz, rz) <= TOL[torch.float32]
    assert rel_err(ge, re_) <= TOL[torch.float32]


def test_nearest_gradcheck_float64():
    z, e = _inputs(13, 5, 4, torch.float64, "cpu", fresh_seed(), dup=False)
    z.requires_grad_(True)
    e.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: vq_nearest(a, b, backend="torch")[1], (z, e))


# ----------------------------------------------------------------------------- sampling


def _sorted_u(N, S, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(N, S, generator=g, dtype=dtype).sort(1).values


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N,K,D", [(1, 1, 1), (9, 2, 3), (61, 37, 19), (130, 70, 9)])
def test_sample_kernel_matches_inverse_cdf(backend, device, dtype, N, K, D):
    """Given the same sorted uniforms, the kernels draw what the float64 inverse CDF draws
    (equal except within rounding of a cumulative-weight boundary)."""
    require(backend, device, dtype)
    seed = fresh_seed()
    z, e = _inputs(N, K, D, dtype, device, seed)
    z, e = z * 0.5, e * 0.5
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    u = _sorted_u(N, 7, acc, seed)
    T = 1.3
    got = torch.ops.dqk.vq_sample(z, e, u.to(device), 1.0 / T, backend).cpu()
    ref = vq_sample_reference(z.cpu(), e.cpu(), u, T)
    same = (got == ref).double().mean().item()
    assert bool(((got >= 0) & (got < K)).all())
    assert same >= (0.999 if dtype in (torch.float32, torch.float64) else 0.98), (
        f"seed {seed}: agreement {same}"
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_sample_many_code_tiles(backend):
    """K beyond the tiles of the torch and cpp kernels (the running minimum falls across
    tiles, so the partial sums are rescaled)."""
    require(backend, "cpu")
    seed = fresh_seed()
    z, e = _inputs(23, 4500, 3, torch.float32, "cpu", seed)
    u = _sorted_u(23, 5, torch.float32, seed)
    got = torch.ops.dqk.vq_sample(z, e, u, 1.0 / 0.3, backend)
    ref = vq_sample_reference(z, e, u, 0.3)
    assert (got == ref).double().mean().item() >= 0.99, f"seed {seed}"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_sample_distribution_chi_square(backend, device):
    """Many draws per vector follow softmax(-d / T) (chi-square, Wilson-Hilferty normal
    approximation, z-score below 5)."""
    require(backend, device)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    K, D = 6, 3
    S = 2000 if (backend, device) == ("triton", "cpu") else 20000  # the interpreter is slow
    e = torch.randn(K, D, generator=g)
    z = torch.randn(3, D, generator=g) * 0.7
    T = 2.0
    draws = vq_sample(
        z.to(device),
        e.to(device),
        S,
        temperature=T,
        generator=torch.Generator(device).manual_seed(seed),
        backend=backend,
    ).cpu()
    p = vq_probs_reference(z, e, T)
    for n in range(3):
        counts = torch.bincount(draws[n], minlength=K).double()
        expected = p[n] * S
        keep = expected > 5
        chi2 = float((((counts - expected) ** 2) / expected)[keep].sum())
        dof = int(keep.sum()) - 1
        zscore = ((chi2 / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        assert zscore < 5, f"seed {seed} row {n}: chi2 {chi2:.1f} on {dof} dof"
    # draws are independent and in random order, not the kernels' sorted order
    assert not bool((draws[:, 1:] >= draws[:, :-1]).all())


def test_sample_generator_reproducible_and_temperature():
    z, e = _inputs(40, 9, 5, torch.float32, "cpu", fresh_seed(), dup=False)
    a = vq_sample(z, e, 4, generator=torch.Generator().manual_seed(3), backend="torch")
    b = vq_sample(z, e, 4, generator=torch.Generator().manual_seed(3), backend="torch")
    assert a.shape == (40, 4) and torch.equal(a, b)
    cold = vq_sample(z, e, 8, temperature=1e-6, backend="torch")
    nearest, _ = vq_nearest(z, e, backend="torch")
    assert torch.equal(cold, nearest[:, None].expand(-1, 8))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_sample_draw_positions_match_their_uniforms(backend, device):
    """Draw s of vector n is the inverse CDF at the generator's uniform u[n, s]: the op
    sorts the uniforms for the kernel and must put every draw back at its uniform's
    position (a wrong permutation would still look i.i.d.)."""
    require(backend, device)
    seed = fresh_seed()
    z, e = _inputs(40, 11, 5, torch.float32, device, seed, dup=False)
    got = vq_sample(
        z,
        e,
        6,
        temperature=0.7,
        backend=backend,
        generator=torch.Generator(device).manual_seed(seed),
    ).cpu()
    u = torch.rand(40, 6, generator=torch.Generator(device).manual_seed(seed), device=device).cpu()
    ref = vq_sample_reference(z.cpu(), e.cpu(), u, 0.7)
    assert (got == ref).double().mean().item() >= 0.99, f"seed {seed}"


def test_zero_dimensional_vectors():
    z, e = torch.randn(3, 0), torch.randn(4, 0)
    idx, dist = vq_nearest(z, e, backend="torch")
    assert idx.tolist() == [0, 0, 0] and dist.tolist() == [0.0, 0.0, 0.0]
    draws = vq_sample(z, e, 50, backend="torch")
    assert bool(((draws >= 0) & (draws < 4)).all()) and len(draws.unique()) > 1
    cs, es = torch.ones(4), torch.ones(4, 0)
    vq_ema_update(cs, es, z, torch.tensor([0, 0, 3]), decay=0.5)
    assert cs.tolist() == [0.5] * 4


def test_ops_compile_fullgraph_dynamic():
    z, e = _inputs(16, 5, 3, torch.float32, "cpu", fresh_seed(), dup=False)

    def f(z, e, cs, es):
        idx, dist = vq_nearest(z, e, backend="torch")
        draws = vq_sample(z, e, 3, temperature=0.5, backend="torch")
        vq_ema_update(cs, es, z, idx, decay=0.9, backend="torch")
        return idx, dist, draws

    cs, es = torch.zeros(5), torch.zeros(5, 3)
    idx, dist, draws = torch.compile(f, fullgraph=True, dynamic=True)(z, e, cs, es)
    ref_idx, _ = vq_nearest(z, e, backend="torch")
    assert torch.equal(idx, ref_idx) and draws.shape == (16, 3)
    assert float(cs.sum()) == pytest.approx(0.1 * 16)


def test_sample_empty_and_batch_dims():
    z, e = _inputs(0, 4, 3, torch.float32, "cpu", 0)
    assert vq_sample(z, e, 5, backend="torch").shape == (0, 5)
    z, e = _inputs(12, 4, 3, torch.float32, "cpu", 0)
    assert vq_sample(z.reshape(3, 4, 3), e, 2, backend="torch").shape == (3, 4, 2)


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("S", [0, 1, 3])  # 0: indices [N] (hard EM)
def test_ema_update_formula(backend, device, dtype, state, S):
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    N, K, D = 77, 13, 10
    z = torch.randn(N, D, generator=g).to(dtype)
    idx = torch.randint(0, K, (N, S) if S else (N,), generator=g)
    cs = torch.rand(K, generator=g, dtype=state) * 5
    es = torch.randn(K, D, generator=g, dtype=state)
    rc, re_ = vq_ema_update_reference(cs, es, z, idx, 0.9)
    cs_d, es_d = cs.to(device), es.to(device)
    vq_ema_update(cs_d, es_d, z.to(device), idx.to(device), decay=0.9, backend=backend)
    assert cs_d.dtype == state and es_d.dtype == state
    tol = 1e-12 if state == torch.float64 and dtype == torch.float64 else 1e-6
    assert rel_err(cs_d, rc) <= tol and rel_err(es_d, re_) <= tol


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_ema_update_decay_zero_gives_batch_statistics(backend, device):
    require(backend, device)
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    idx = torch.tensor([2, 0, 2], dtype=torch.int32)
    cs, es = torch.full((3,), 7.0), torch.full((3, 2), 7.0)
    cs, es = cs.to(device), es.to(device)
    vq_ema_update(cs, es, z.to(device), idx.to(device), decay=0.0, backend=backend)
    assert cs.cpu().tolist() == [1.0, 0.0, 2.0]
    assert es.cpu().tolist() == [[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]


def test_ema_update_empty_batch_only_decays():
    cs, es = torch.ones(4), torch.ones(4, 3)
    vq_ema_update(cs, es, torch.empty(0, 3), torch.empty(0, dtype=torch.int64), decay=0.5)
    assert cs.tolist() == [0.5] * 4 and bool((es == 0.5).all())


# ----------------------------------------------------------------------------- opcheck


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_opcheck(backend):
    require(backend, "cpu")
    z, e = _inputs(20, 6, 5, torch.float32, "cpu", fresh_seed())
    torch.library.opcheck(torch.ops.dqk.vq_nearest.default, (z, e, backend))
    # with gradients: opcheck's AOT check sums every output into a float, which fails on
    # the int64 indices inside opcheck itself, so it is left out here
    torch.library.opcheck(
        torch.ops.dqk.vq_nearest.default,
        (z.clone().requires_grad_(True), e, backend),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    u = _sorted_u(20, 3, torch.float32, 0)
    torch.library.opcheck(torch.ops.dqk.vq_sample.default, (z.detach(), e, u, 1.0, backend))
    idx = torch.randint(0, 6, (20, 2))
    torch.library.opcheck(
        torch.ops.dqk.vq_ema_update.default,
        (torch.zeros(6), torch.zeros(6, 5), z.detach(), idx, 0.5, backend),
    )


# ----------------------------------------------------------------------------- memory

_MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    from dqkernels.ops import vq_nearest, vq_sample, vq_ema_update
    torch.set_num_threads(2)
    backend, what, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
    K = N
    D = 4
    g = torch.Generator().manual_seed(0)
    z, e = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    idx = torch.randint(0, K, (N,), generator=g)
    cs, es = torch.zeros(K), torch.zeros(K, D)
    def rss():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = rss()
    if what == "nearest":
        vq_nearest(z, e, backend=backend)
    elif what == "sample":
        vq_sample(z, e, 4, backend=backend)
    elif what == "ema":
        vq_ema_update(cs, es, z, idx, decay=0.9, backend=backend)
    elif what == "cdist":       # control: the N x K matrix the ops avoid
        torch.cdist(z, e).argmin(1)
    print(before, rss())
""")


@pytest.mark.parametrize(
    "what,backend",
    [
        ("nearest", "torch"),
        ("nearest", "cpp"),
        ("sample", "torch"),
        ("sample", "cpp"),
        ("ema", "torch"),
        ("ema", "cpp"),
    ],
)
def test_no_n_by_k_memory(what, backend):
    """On N = K = 32768 (16384 for sampling; an N x K float32 matrix is 4 GiB, 1 GiB) the
    ops' peak resident memory grows by less than an eighth of that (the torch backend's
    float64 tiles and one-time library buffers take ~150 MB); the control (cdist) grows by
    at least half of it, so the measurement can see an N x K matrix."""
    require(backend, "cpu")

    def grow(which, be):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, be, which, str(n)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        before, after = (int(v) for v in out.stdout.split()[-2:])
        return after - before, f"peak resident {before} -> {after} bytes"

    n = 16384 if what == "sample" else 32768  # sampling costs two passes of exp
    nk = n * n * 4
    grew, info = grow(what, backend)
    assert grew < nk / 8, f"{what} on {backend}: {info}"
    if what == "nearest" and backend == "torch":
        grew, info = grow("cdist", "torch")
        assert grew >= nk / 2, f"control: {info}"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_no_n_by_k_memory_gpu(backend):
    """N = K = 32768 (an N x K float32 matrix is 4 GiB): the ops allocate far less through
    torch's allocator (the cuda kernels' own O(N + K) scratch, from cudaMallocAsync, is not
    counted there)."""
    require(backend, "cuda")
    N = K = 32768
    z, e = torch.randn(N, 64, device="cuda"), torch.randn(K, 64, device="cuda")
    idx = torch.randint(0, K, (N,), device="cuda")
    cs, es = torch.zeros(K, device="cuda"), torch.zeros(K, 64, device="cuda")
    for call in (
        lambda: vq_nearest(z, e, backend=backend),
        lambda: vq_sample(z, e, 4, backend=backend),
        lambda: vq_ema_update(cs, es, z, idx, decay=0.9, backend=backend),
    ):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = call()
        torch.cuda.synchronize()
        assert torch.cuda.max_memory_allocated() - base < N * K * 4 / 64
        del out


# ----------------------------------------------------------------------------- bad input


def test_bad_input_messages():
    e = torch.randn(5, 3)
    with pytest.raises(
        ValueError,
        match=r"vq_nearest: z's last dimension \(4\) must equal "
        r"the codebook's dimension D \(3\)",
    ):
        vq_nearest(torch.randn(2, 4), e)
    with pytest.raises(
        TypeError, match="vq_nearest: z must be a floating tensor .* got dtype int64"
    ):
        vq_nearest(torch.ones(2, 3, dtype=torch.int64), e)
    with pytest.raises(
        TypeError, match="vq_sample: z must be a floating tensor .* got dtype complex64"
    ):
        vq_sample(torch.ones(2, 3, dtype=torch.complex64), e, 2)
    with pytest.raises(TypeError, match="vq_nearest: z and codebook must have the same dtype"):
        vq_nearest(torch.randn(2, 3, dtype=torch.float64), e)
    with pytest.raises(ValueError, match=r"vq_nearest: codebook must have 2 dimensions"):
        vq_nearest(torch.randn(2, 3), torch.randn(3))
    with pytest.raises(ValueError, match=r"at least one code \(K >= 1\)"):
        vq_nearest(torch.randn(2, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="vq_sample: num_samples must be >= 1; got 0"):
        vq_sample(torch.randn(2, 3), e, 0)
    with pytest.raises(
        ValueError, match=r"vq_sample: temperature must be finite and >= .*; got -1.0"
    ):
        vq_sample(torch.randn(2, 3), e, 2, temperature=-1.0)
    cs, es, z = torch.zeros(5), torch.zeros(5, 3), torch.randn(4, 3)
    with pytest.raises(
        IndexError,
        match=r"vq_ema_update: indices must be in \[0, 5\) \(the "
        r"codebook size\); got 5",
    ):
        vq_ema_update(cs, es, z, torch.tensor([0, 1, 5, 2]), decay=0.9)
    with pytest.raises(IndexError, match=r"indices must be in \[0, 5\) .* got -1"):
        vq_ema_update(cs, es, z, torch.tensor([[0, -1], [1, 1], [2, 2], [3, 3]]), decay=0.9)
    with pytest.raises(
        TypeError,
        match="vq_ema_update: indices must be an integer tensor "
        r"\(int64 or int32\); got dtype float32",
    ):
        vq_ema_update(cs, es, z, torch.zeros(4), decay=0.9)
    with pytest.raises(ValueError, match=r"indices must have shape \(4,\) or \(4,\) \+ \(S,\)"):
        vq_ema_update(cs, es, z, torch.zeros(3, dtype=torch.int64), decay=0.9)
    with pytest.raises(
        TypeError,
        match="vq_ema_update: embed_sum must be float32 or float64 "
        r"\(the EMA state is kept in full precision\); got "
        "bfloat16",
    ):
        vq_ema_update(cs, es.bfloat16(), z, torch.zeros(4, dtype=torch.int64), decay=0.9)
    with pytest.raises(
        ValueError,
        match=r"vq_ema_update: embed_sum must be contiguous \(it "
        r"is updated in place\); got strides \(1, 5\)",
    ):
        vq_ema_update(cs, torch.zeros(3, 5).t(), z, torch.zeros(4, dtype=torch.int64), decay=0.9)
    with pytest.raises(
        ValueError,
        match=r"vq_ema_update: embed_sum must be contiguous \(it "
        r"is updated in place\); got strides \(1, 5\)",
    ):
        vq_ema_update(cs, torch.zeros(3, 5).t(), z, torch.zeros(4, dtype=torch.int64), decay=0.9)
    with pytest.raises(ValueError, match=r"vq_ema_update: decay must be in \[0, 1\]; got 1.5"):
        vq_ema_update(cs, es, z, torch.zeros(4, dtype=torch.int64), decay=1.5)
    with pytest.raises(
        ValueError,
        match=r"vq_ema_update: z's last dimension must equal "
        r"embed_sum's D \(3\)",
    ):
        vq_ema_update(cs, es, torch.randn(4, 2), torch.zeros(4, dtype=torch.int64), decay=0.9)


def test_backend_rejection_explains():
    from dqkernels.backends import BackendUnavailableError

    z, e = torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(
        BackendUnavailableError,
        match=r"vq_nearest: backend 'triton' cannot "
        r"run on cpu tensors of dtype float64",
    ):
        vq_nearest(z, e, backend="triton")
