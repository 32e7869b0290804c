"""The ``cpp`` VQ kernels (csrc/vq/vq_cpu.cpp) on every instruction-set path this CPU
runs (generic, AVX2, AVX-512, AVX-512 with vdpbf16ps for bf16), forced through
``dqkernels.kernels.vq.cpp.ISA``, against the float64 reference: odd shapes, one code,
duplicated codes (ties to the lowest index), z equal to a code, near ties that a plain
fp32 expansion gets wrong, values too large for the float expansion; sampling on the
same sorted uniforms; the EMA update; thread-count invariance; a bad ISA."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, fresh_seed, rel_err, require

from dqkernels.ops.vq import vq_ema_update, vq_nearest, vq_sample
from dqkernels.reference import vq as ref

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731
# N, K, D: D not a multiple of any block, K = 1, odd K and N, several row blocks (256
# rows) and code blocks (K = 1000 at D = 67 is two blocks on every path)
SHAPES = [(1, 1, 1), (7, 1, 3), (37, 5, 3), (300, 129, 37), (513, 1000, 67), (65, 17, 64)]


def cpu_paths() -> list[int]:
    try:
        from dqkernels._ext import _C

        bits = _C.vq_cpu_isas()
    except Exception:  # not built: the tests skip through require()
        return [1]
    return [i for i in range(1, 5) if bits & (1 << i)]


@pytest.fixture(params=cpu_paths(), ids=lambda i: f"isa{i}")
def isa(request, monkeypatch):
    require("cpp", "cpu")
    from dqkernels.kernels.vq import cpp as cpp_vq

    monkeypatch.setattr(cpp_vq, "ISA", request.param)
    return request.param


def check_nearest(z, e, info=""):
    """Indices equal to the reference's first argmin (up to true near-ties below 1e-12
    relative, where float64 itself cannot tell, and then the lowest index at the chosen
    distance) and sqdist within the dtype's tolerance."""
    idx, dist = vq_nearest(z, e, backend="cpp")
    d = ref.sqdist_matrix(z, e)
    ridx, rdist = ref.vq_nearest_reference(z, e)
    assert idx.dtype == torch.int64 and (idx >= 0).all() and (idx < e.shape[0]).all(), info
    chosen = d.gather(1, idx[:, None])[:, 0]
    ok = (idx == ridx) | (chosen <= rdist * (1 + 1e-12))
    assert ok.all(), f"{info}: {int((~ok).sum())} rows with a wrong code"
    # an accepted near-tie must still be the lowest index at its float64 distance
    first_equal = (d == chosen[:, None]).to(torch.int8).argmax(1)
    assert torch.equal(idx, first_equal), f"{info}: a tie did not go to the lowest index"
    tol = 1e-12 if z.dtype == torch.float64 else TOL[torch.float32]
    assert rel_err(dist, rdist) <= tol, info
    return idx, dist


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_shapes(isa, dtype):
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    for N, K, D in SHAPES:
        z = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
        e = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
        check_nearest(z, e, f"seed={seed} isa={isa} {dtype} N={N} K={K} D={D}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_duplicates_and_exact_hits(isa, dtype):
    """Duplicated codes tie exactly: the lowest index wins; z equal to a code gives it
    (its first copy) at distance 0."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    K, D = 41, 19
    e = torch.randn(K, D, generator=g, dtype=torch.float64).to(dtype)
    e[9] = e[4]
    e[30] = e[4]
    e[17] = e[2]
    e[40] = e[39]
    z = torch.randn(200, D, generator=g, dtype=torch.float64).to(dtype)
    z[:20] = e[30]
    z[20:40] = e[17]
    z[40:60] = e[40]
    z[60:80] = e[11]
    z[80:120] = e[torch.randint(0, K, (40,), generator=g)]
    # near the duplicated codes so that they win often
    z[120:] = (
        e[[4, 2, 39]].double().repeat(27, 1)[:80]
        + 0.05 * torch.randn(80, D, generator=g, dtype=torch.float64)
    ).to(dtype)
    idx, dist = check_nearest(z, e, f"seed={seed} isa={isa} {dtype}")
    assert (idx[:20] == 4).all() and (idx[20:40] == 2).all() and (idx[40:60] == 39).all()
    assert (idx[60:80] == 11).all()
    assert (dist[:120] == 0).all()
    assert not bool(torch.isin(idx, torch.tensor([9, 30, 17, 40])).any())


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_near_ties_need_refinement(isa, dtype):
    """Codes far from the origin that differ by a unit in a few coordinates (integers,
    exact in every dtype): |e|^2 ~ 2.6e7 > 2^24, so the plain fp32 expansion |e|^2 -
    2 z.e rounds by more than the gaps and picks wrong codes (checked below); the kernel
    must still return the exact first argmin."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    D, K, N = 515, 64, 300
    c = torch.randint(192, 255, (D,), generator=g).double()
    e = c + torch.randint(-1, 2, (K, D), generator=g).double()
    z = c + torch.randint(-1, 2, (N, D), generator=g).double()
    e[K - 1] = e[K // 2]  # and an exact tie
    ridx, _ = ref.vq_nearest_reference(z, e)
    if dtype != torch.float64:
        z32, e32 = z.float(), e.float()
        plain = ((e32 * e32).sum(1)[None] - 2 * z32 @ e32.T).argmin(1)
        assert (plain != ridx).sum() > 10, "the construction no longer defeats fp32"
    z, e = z.to(dtype), e.to(dtype)
    idx, _ = check_nearest(z, e, f"seed={seed} isa={isa} {dtype}")
    assert torch.equal(idx, ridx)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DT_IDS)
def test_nearest_values_beyond_the_float_expansion(isa, dtype):
    """|e|^2 overflows float (values ~1e20): rows are re-scored from differences in
    double instead of returning an overflowed (inf/NaN) score's index."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    big = 1e20 if dtype == torch.float32 else 1e160
    e = (torch.randn(23, 9, generator=g, dtype=torch.float64) * big).to(dtype)
    z = (torch.randn(31, 9, generator=g, dtype=torch.float64) * big).to(dtype)
    idx, _ = vq_nearest(z, e, backend="cpp")
    ridx, _ = ref.vq_nearest_reference(z, e)
    assert torch.equal(idx, ridx), f"seed={seed} isa={isa}"


def sample_pair(z, e, S, T, seed):
    """(kernel draws, reference draws on the same sorted uniforms)."""
    gen = torch.Generator().manual_seed(seed)
    got = vq_sample(z, e, S, temperature=T, generator=gen, backend="cpp")
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(seed)
    u, order = torch.sort(torch.rand((z.shape[0], S), dtype=acc, generator=gen), dim=-1)
    want = ref.vq_sample_reference(z, e, u, T)
    return got, torch.empty_like(want).scatter_(-1, order, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_sample_matches_reference(isa, dtype):
    """Inverse-CDF draws on the same uniforms as the reference: float64 inputs identical,
    the others >= 99.9% identical (their scores round in float)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    total = agree = 0
    for N, K, D, S, T in [
        (1, 1, 1, 3, 1.0),
        (37, 5, 3, 1, 0.5),
        (301, 129, 37, 5, 1.0),
        (257, 1000, 67, 3, 2.0),
        (40, 17, 64, 8, 0.05),
    ]:
        z = (0.15 * torch.randn(N, D, generator=g, dtype=torch.float64)).to(dtype)
        e = (0.15 * torch.randn(K, D, generator=g, dtype=torch.float64)).to(dtype)
        got, want = sample_pair(z, e, S, T, seed + N)
        info = f"seed={seed} isa={isa} {dtype} N={N} K={K} D={D} S={S} T={T}"
        assert got.shape == (N, S) and (got >= 0).all() and (got < K).all(), info
        if dtype == torch.float64:
            assert torch.equal(got, want), info
        total += got.numel()
        agree += int((got == want).sum())
    assert agree >= 0.999 * total, f"seed={seed} isa={isa} {dtype}: {agree}/{total}"


def test_sample_spread_and_peaked(isa):
    """A flat softmax (huge T) spreads draws over all codes; a peaked one (tiny T) draws
    the nearest code; duplicated codes share their mass (both drawn)."""
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(8, 5, generator=g)
    e[5] = e[1]
    z = e[1].repeat(4000, 1) + 0.01 * torch.randn(4000, 5, generator=g)
    flat = vq_sample(z, e, 1, temperature=1e6, generator=g, backend="cpp")
    counts = torch.bincount(flat.flatten(), minlength=8)
    assert (counts > 300).all(), (seed, counts)
    peaked = vq_sample(z, e, 2, temperature=1e-3, generator=g, backend="cpp")
    assert set(peaked.unique().tolist()) == {1, 5}, seed


@pytest.mark.parametrize(
    "zdt,sdt",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float64, torch.float64),
        (torch.float32, torch.float64),
    ],
    ids=str,
)
@pytest.mark.parametrize("S", [1, 3])
def test_ema_update(zdt, sdt, S):
    require("cpp", "cpu")
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    for N, K, D in [(1, 1, 1), (333, 37, 19), (1000, 700, 5)]:
        z = torch.randn(N, D, generator=g, dtype=torch.float64).to(zdt)
        idx = torch.randint(0, K, (N, S), generator=g)
        if N > 10:
            idx[: N // 3] = 3 % K  # a popular code
        cs = torch.rand(K, generator=g, dtype=torch.float64).to(sdt)
        es = torch.randn(K, D, generator=g, dtype=torch.float64).to(sdt)
        want_cs, want_es = ref.vq_ema_update_reference(cs, es, z, idx if S > 1 else idx[:, 0], 0.9)
        vq_ema_update(cs, es, z, idx if S > 1 else idx[:, 0], decay=0.9, backend="cpp")
        tol = 1e-12 if sdt == torch.float64 else 1e-6
        info = f"seed={seed} N={N} K={K} D={D}"
        assert rel_err(cs, want_cs) <= tol, info
        assert rel_err(es, want_es) <= tol, info


def test_thread_counts_bitwise():
    """nearest, sample and ema give bitwise equal results on 1 and 2 threads."""
    require("cpp", "cpu")
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1100, 33, generator=g)
    e = torch.randn(300, 33, generator=g)
    idx = torch.randint(0, 300, (1100, 2), generator=g)
    old = torch.get_num_threads()
    outs = []
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            i, d = vq_nearest(z, e, backend="cpp")
            s = vq_sample(
                z * 0.1, e * 0.1, 3, generator=torch.Generator().manual_seed(seed), backend="cpp"
            )
            cs, es = torch.ones(300), torch.ones(300, 33)
            vq_ema_update(cs, es, z, idx, decay=0.5, backend="cpp")
            outs.append((i, d, s, cs, es))
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs):
        assert torch.equal(a, b), seed


def test_bad_isa_is_refused(monkeypatch):
    require("cpp", "cpu")
    from dqkernels.kernels.vq import cpp as cpp_vq

    monkeypatch.setattr(cpp_vq, "ISA", 9)
    with pytest.raises(ValueError, match="instruction-set path 9 does not run on this CPU"):
        vq_nearest(torch.randn(3, 4), torch.randn(5, 4), backend="cpp")
