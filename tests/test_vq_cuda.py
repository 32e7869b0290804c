"""The ``cuda`` backend of the VQ ops (csrc/vq/vq_cuda.cu) against the float64 reference
(dqkernels.reference.vq): nearest on odd and multi-block shapes (the K split for small N,
vector and scalar loads, the tensor-core path for 16-bit inputs), duplicated codebook rows
and exact ties (lowest index), near ties below float resolution (the re-scoring screen),
agreement with the ``torch`` backend at a large N; sample draws checked one by one against
the reference CDF on the same uniforms; the EMA update in float32 and float64 state.

GPU only: every test skips cleanly without CUDA or without the compiled cuda kernels.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, fresh_seed, rel_err, require

from dqkernels.ops import vq_ema_update, vq_nearest, vq_sample
from dqkernels.reference.vq import sqdist_matrix, vq_ema_update_reference

pytestmark = pytest.mark.gpu

DEV = "cuda"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731
ACC = {torch.float64: torch.float64}  # accumulate dtype: float32 unless float64


def dists(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` float64 squared distances from explicit differences, in row chunks so the
    reference's ``[n, K, D]`` intermediate stays small."""
    K, D = codebook.shape
    step = max(1, (1 << 24) // max(1, K * D))
    return torch.cat([sqdist_matrix(z[i : i + step], codebook) for i in range(0, z.shape[0], step)])


def check_nearest(z, codebook, info=""):
    """Indices equal to the reference's first argmin on every row (the kernel is exact);
    sqdist against the float64 distance of the chosen code."""
    idx, dist = vq_nearest(z, codebook, backend="cuda")
    N = z.shape[0]
    assert idx.shape == (N,) and idx.dtype == torch.int64, info
    assert dist.dtype == ACC.get(z.dtype, torch.float32), info
    assert bool(((idx >= 0) & (idx < codebook.shape[0])).all()), f"{info}: unwritten index"
    d = dists(z, codebook)
    ref = torch.argmin(d, dim=1)
    bad = (idx != ref).nonzero()[:, 0]
    assert bad.numel() == 0, (
        f"{info}: {bad.numel()} rows differ, first {bad[:5].tolist()}: "
        f"got {idx[bad[:5]].tolist()}, ref {ref[bad[:5]].tolist()}, "
        f"d {d[bad[:5], idx[bad[:5]]].tolist()} vs "
        f"{d[bad[:5], ref[bad[:5]]].tolist()}"
    )
    chosen = d.gather(1, idx[:, None])[:, 0]
    tol = TOL[torch.float64] if z.dtype == torch.float64 else TOL[torch.float32]
    assert rel_err(dist, chosen) <= tol, f"{info}: sqdist {rel_err(dist, chosen)}"
    return idx


# ----------------------------------------------------------------------------- nearest

NEAREST_SHAPES = [
    (1, 1, 1),
    (7, 3, 5),
    (129, 130, 17),  # one row and one code past a tile
    (300, 1000, 64),  # vector loads, several code tiles
    (257, 300, 12),  # D % 4 == 0 but not % 8: float vector path, 16-bit scalar path
    (1000, 257, 256),
    (64, 5000, 8),  # one row block: K split over blocks, then merged
    (2000, 129, 33),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("N,K,D", NEAREST_SHAPES)
def test_nearest_matches_reference(dtype, N, K, D):
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = torch.randn(N, D, generator=g, device=DEV).to(dtype)
    e = torch.randn(K, D, generator=g, device=DEV).to(dtype)
    check_nearest(z, e, info=f"seed={seed} {dtype} N={N} K={K} D={D}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_leading_dims_and_unaligned_rows(dtype):
    """``[..., D]`` inputs, and rows that start off a 16-byte boundary (scalar loads)."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 3 * 67, 150, 16
    buf = torch.randn(N * D + 1, generator=g, device=DEV).to(dtype)
    z = buf[1:].view(N, D)
    ebuf = torch.randn(K * D + 3, generator=g, device=DEV).to(dtype)
    e = ebuf[3:].view(K, D)
    check_nearest(z, e, info=f"seed={seed} {dtype} unaligned")
    idx, dist = vq_nearest(z.view(3, 67, D), e, backend="cuda")
    assert idx.shape == (3, 67) and dist.shape == (3, 67)
    assert torch.equal(idx.reshape(-1), vq_nearest(z, e, backend="cuda")[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("N,K,D", [(500, 300, 32), (100, 2000, 7)])
def test_nearest_duplicated_codes_lowest_index(dtype, N, K, D):
    """Codebooks full of duplicated rows, z on codes (distance 0 to every copy) and near
    them: the first copy wins, as in the reference's argmin."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    base = torch.randn(max(2, K // 10), D, generator=g, device=DEV)
    e = base[torch.randint(0, base.shape[0], (K,), generator=g, device=DEV)].to(dtype)
    on = e[torch.randint(0, K, (N // 2,), generator=g, device=DEV)]
    near = (
        e[torch.randint(0, K, (N - N // 2,), generator=g, device=DEV)].double()
        + 1e-2 * torch.randn(N - N // 2, D, generator=g, device=DEV, dtype=torch.float64)
    ).to(dtype)
    z = torch.cat([on, near])
    idx = check_nearest(z, e, info=f"seed={seed} {dtype} duplicates")
    first = [int((e == e[k]).all(1).nonzero()[0, 0]) for k in idx[: N // 2].tolist()]
    assert idx[: N // 2].tolist() == first, f"seed={seed}: not the first copy"
    d_on = vq_nearest(on, e, backend="cuda")[1]
    assert bool((d_on == 0).all()), "a vector on a code is at distance 0"


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_exact_ties_lowest_index(dtype):
    """Integer codes and half-integer vectors: many rows are exactly equidistant from
    several codes (every step exact in every dtype); the lowest index must win."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 700, 333, 6
    e = torch.randint(-2, 3, (K, D), generator=g, device=DEV).to(dtype)
    z = (torch.randint(-4, 5, (N, D), generator=g, device=DEV) / 2).to(dtype)
    d = dists(z, e)
    ties = ((d == d.min(1, keepdim=True).values).sum(1) > 1).sum().item()
    assert ties > N // 10, "the test needs tied rows"
    check_nearest(z, e, info=f"seed={seed} {dtype} ties")


def test_nearest_near_ties_below_float_resolution():
    """Code pairs one ulp apart in one coordinate: their distances differ by ~1e-9
    relative, far below what the float32 expansion |e|^2 - 2 z.e resolves, so every row
    must be caught by the screen and settled by the exact re-score."""
    require("cuda", DEV, torch.float32)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    pairs, D, N = 150, 48, 3000
    a = torch.randn(pairs, D, generator=g, device=DEV)
    b = a.clone()
    col = a.abs().argmax(1)  # |a| >= ~1: one ulp is >= 1.2e-7, the gaps stay resolvable
    rows = torch.arange(pairs, device=DEV)
    b[rows, col] = torch.nextafter(a[rows, col], torch.full_like(a[rows, col], float("inf")))
    e = torch.stack([a, b], 1).reshape(2 * pairs, D)  # pairs at 2j, 2j + 1
    z = e[torch.randint(0, 2 * pairs, (N,), generator=g, device=DEV)] + 0.3 * torch.randn(
        N, D, generator=g, device=DEV
    )
    idx = check_nearest(z, e, info=f"seed={seed} near ties")
    assert bool((idx % 2 == 1).any()) and bool((idx % 2 == 0).any())


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nearest_far_from_origin(dtype):
    """Data clustered far from the origin: |e|^2 - 2 z.e cancels almost all its digits
    (a plain float32 expansion picks wrong codes), so most rows need the exact re-score."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 500, 300, 16
    z = (100 + 0.05 * torch.randn(N, D, generator=g, device=DEV)).to(dtype)
    e = (100 + 0.05 * torch.randn(K, D, generator=g, device=DEV)).to(dtype)
    check_nearest(z, e, info=f"seed={seed} {dtype} far from the origin")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=DT_IDS)
def test_nearest_large_agrees_with_torch_backend(dtype):
    """N = 65536 (many row blocks, no K split) against the tiled float64 torch backend."""
    require("cuda", DEV, dtype)
    require("torch", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = torch.randn(65536, 64, generator=g, device=DEV).to(dtype)
    e = torch.randn(512, 64, generator=g, device=DEV).to(dtype)
    idx, dist = vq_nearest(z, e, backend="cuda")
    ridx, rdist = vq_nearest(z, e, backend="torch")
    assert torch.equal(idx, ridx), f"seed={seed}: {(idx != ridx).sum().item()} rows differ"
    assert rel_err(dist, rdist) <= TOL[torch.float32], f"seed={seed}"


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs"
)
def test_nearest_on_second_device():
    require("cuda", DEV)
    z = torch.randn(300, 16, device="cuda:1")
    e = torch.randn(70, 16, device="cuda:1")
    idx, _ = vq_nearest(z, e, backend="cuda")
    assert idx.device == z.device
    assert torch.equal(idx, torch.argmin(dists(z, e), 1))


# ----------------------------------------------------------------------------- sample

# CDF slack: float distances (relative error ~D u) divided by T, cumulative float sums
SAMPLE_TOL = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-4, torch.bfloat16: 1e-4}


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize(
    "N,K,D,S,T",
    [(1, 1, 1, 1, 1.0), (37, 70, 5, 3, 0.5), (300, 257, 64, 8, 20.0), (33, 1000, 130, 40, 50.0)],
)
def test_sample_draws_follow_reference_cdf(dtype, N, K, D, S, T):
    """Same generator state as the op: every draw k must satisfy
    cdf[k-1] <= u < cdf[k] of the float64 reference CDF, up to rounding."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = torch.randn(N, D, generator=g, device=DEV).to(dtype)
    e = torch.randn(K, D, generator=g, device=DEV).to(dtype)
    draws = vq_sample(
        z,
        e,
        S,
        temperature=T,
        backend="cuda",
        generator=torch.Generator(device=DEV).manual_seed(seed),
    )
    u = torch.rand(
        (N, S),
        dtype=ACC.get(dtype, torch.float32),
        device=DEV,
        generator=torch.Generator(device=DEV).manual_seed(seed),
    ).double()
    assert draws.shape == (N, S) and draws.dtype == torch.int64
    assert bool(((draws >= 0) & (draws < K)).all()), f"seed={seed}: unwritten draw"
    p = torch.softmax(-dists(z, e) / T, dim=1)
    cdf = torch.cumsum(p, 1)
    cdf = cdf / cdf[:, -1:]
    hi = cdf.gather(1, draws)
    lo = torch.where(draws > 0, cdf.gather(1, (draws - 1).clamp(min=0)), torch.zeros_like(hi))
    tol = SAMPLE_TOL[dtype]
    ok = (lo - tol <= u) & (u < hi + tol)
    assert bool(ok.all()), (
        f"seed={seed}: {(~ok).sum().item()} draws outside their CDF "
        f"interval; first u={u[~ok][:3].tolist()} lo={lo[~ok][:3].tolist()} "
        f"hi={hi[~ok][:3].tolist()}"
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_sample_cold_is_nearest(dtype):
    """At a tiny temperature every draw is the nearest code."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    z = torch.randn(400, 24, generator=g, device=DEV).to(dtype)
    e = torch.randn(90, 24, generator=g, device=DEV).to(dtype)
    d = dists(z, e)
    top2 = d.topk(2, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-3
    draws = vq_sample(
        z,
        e,
        5,
        temperature=1e-6,
        backend="cuda",
        generator=torch.Generator(device=DEV).manual_seed(seed),
    )
    nearest = torch.argmin(d, 1)
    assert torch.equal(draws[clear], nearest[clear, None].expand(-1, 5)), f"seed={seed}"


def test_sample_frequencies():
    """Many draws for one vector: code frequencies within 5 sigma of the probabilities."""
    require("cuda", DEV)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    e = torch.randn(6, 3, generator=g, device=DEV)
    z = torch.randn(1, 3, generator=g, device=DEV).expand(200, 3).contiguous()
    draws = vq_sample(z, e, 500, temperature=2.0, backend="cuda", generator=g)
    counts = torch.bincount(draws.reshape(-1), minlength=6).double()
    n = draws.numel()
    p = torch.softmax(-dists(z[:1], e)[0] / 2.0, 0)
    sigma = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() <= 5 * sigma + 1).all()), (seed, counts, n * p)


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("state", [torch.float32, torch.float64], ids=DT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("S", [None, 3])
@pytest.mark.parametrize("decay", [0.99, 0.0])
def test_ema_update_matches_reference(state, dtype, S, decay):
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 1000, 37, 19
    z = torch.randn(N, D, generator=g, device=DEV).to(dtype)
    shape = (N,) if S is None else (N, S)
    # skewed: most rows on a few codes (atomic contention), some codes never used
    idx = (torch.rand(shape, generator=g, device=DEV) ** 3 * (K - 5)).long()
    cs = torch.rand(K, generator=g, device=DEV).to(state)
    es = torch.randn(K, D, generator=g, device=DEV).to(state)
    want_cs, want_es = vq_ema_update_reference(cs, es, z, idx, decay)
    vq_ema_update(cs, es, z, idx, decay=decay, backend="cuda")
    tol = 1e-12 if state == torch.float64 else 1e-5
    assert cs.dtype == state and es.dtype == state
    assert rel_err(cs, want_cs) <= tol, f"seed={seed}: cluster_size {rel_err(cs, want_cs)}"
    assert rel_err(es, want_es) <= tol, f"seed={seed}: embed_sum {rel_err(es, want_es)}"
