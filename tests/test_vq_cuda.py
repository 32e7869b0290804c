"""The ``cuda`` backend of the VQ ops (csrc/vq/vq_cuda.cu) against the float64 reference
(dqkernels.reference.vq): nearest on odd and multi-block shapes (the K split for small N,
vector and scalar loads, the tensor-core path for 16-bit inputs), duplicated codebook rows
and exact ties (lowest index), near ties below float resolution (the re-scoring screen, on
the tensor cores too), agreement with the ``torch`` backend at a large N; sample draws
checked one by one against the reference CDF on the same uniforms; the EMA update in
float32 and float64 state.

Then the findings of issue 12 (a static review of the kernel), each with the test that
would have caught it: 64-bit row counters at N near 2^31 and the size limit; no screen
once the rounding bound is vacuous (huge D); scratch from torch's caching allocator (under
memory pressure); an error for pointers off the device; double accumulation in the
sampler (the ``cpp`` backend's draws on the same uniforms); NaN codebook rows never chosen.

GPU only: every test skips cleanly without CUDA or without the compiled cuda kernels.
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import textwrap

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


# ----------------------------------------------------------------------------- issue 12

# The kernels' size limit (csrc/vq/vq_cuda.cu, kMaxExtent): int arithmetic of a size plus a
# tile or lane offset cannot overflow below it
MAX_EXTENT = 2**31 - 1024


def _release_cached():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def _need_free_gib(gib: float) -> None:
    _release_cached()
    if torch.cuda.mem_get_info()[0] < gib * 2**30:
        pytest.skip(f"needs {gib} GiB of free GPU memory")


def test_nearest_rows_near_the_int_limit():
    """N = 2^31 - 1024 (the largest N the kernels take), D = 1, bf16 (tensor-core scan):
    the grid-stride loops over rows step past 2^31 - 1 near the end (their stride is the
    grid, tens of thousands of warps); with int counters a row wrapped to a negative index
    that passed ``row < N`` (reads and writes far out of bounds). Every row must get its
    code. About 70 GB of GPU memory (z 4 GB, indices 17 GB, sqdist 9 GB, scratch 34 GB)."""
    require("cuda", DEV, torch.bfloat16)
    _need_free_gib(72)
    N = MAX_EXTENT
    try:
        z = torch.zeros(N, 1, dtype=torch.bfloat16, device=DEV)
        z[::999_983] = 1  # code 1 for a spread of rows and for the last ones
        z[-5000:] = 1
        e = torch.tensor([[0.0], [1.0]], dtype=torch.bfloat16, device=DEV)
        idx, dist = vq_nearest(z, e, backend="cuda")
        want1 = z[:, 0] == 1
        del z
        assert bool(((idx == 0) | (idx == 1)).all()), "an index unwritten or out of range"
        bad = ((idx == 1) != want1).nonzero()[:5, 0].tolist()
        assert not bad, f"rows {bad} got the wrong code"
        assert bool((dist == 0).all()), "sqdist of a vector on its code must be 0"
    finally:
        _release_cached()


def test_sizes_past_the_limit_are_refused():
    """N = 2^31 - 1023: a clear error before any launch (the old check let everything up
    to 2^31 - 1 through, into the overflow above)."""
    require("cuda", DEV, torch.bfloat16)
    _need_free_gib(80)
    message = r"N = 2147482625 exceeds the CUDA kernels' limit of 2\^31 - 1024"
    try:
        z = torch.zeros(MAX_EXTENT + 1, 1, dtype=torch.bfloat16, device=DEV)
        e = torch.zeros(2, 1, dtype=torch.bfloat16, device=DEV)
        with pytest.raises(ValueError, match=message):
            vq_nearest(z, e, backend="cuda")
        gc.collect()  # the traceback's frames held the outputs
        with pytest.raises(ValueError, match=message):
            vq_sample(z, e, 1, backend="cuda")
    finally:
        _release_cached()


def test_nearest_exact_path_when_the_bound_is_vacuous():
    """D = 2^27 on the tensor cores: n u = (D + 4) 2^-22 = 32, where the rounding bound
    gamma_n = n u / (1 - n u) means nothing (the old screen, 2 gamma (1 + gamma) = 0.067,
    still let rows through); every row must take the exact path.

    z = (A, t, ..., t), codes c0 = (A, 0, ..., 0) and c1 = z, A = 2^15, t = 1.875: c1 is at
    distance 0, c0 at (D - 1) t^2. In float, A^2 = 2^30 swallows every later term of the
    dot product (16 t^2 = 56.25 per mma step, below half an ulp of 2^30), so the expansion
    scores c0 below c1 by ~31/32 (D - 1) t^2: a gap of 0.10 of the bound's scale
    max|e|^2 + 2 |z| max|e|, above 0.067, so the old kernel returned c0 unflagged.
    About 1 GB; the exact path reads D elements per code serially (a second or so)."""
    require("cuda", DEV, torch.bfloat16)
    D, A, t = 2**27, 2.0**15, 1.875
    try:
        z = torch.full((1, D), t, dtype=torch.bfloat16, device=DEV)
        z[0, 0] = A
        e = torch.zeros(2, D, dtype=torch.bfloat16, device=DEV)
        e[0, 0] = A
        e[1] = z[0]
        d64 = ((z.double() - e.double()) ** 2).sum(1)
        assert d64.tolist() == [(D - 1) * t * t, 0.0]
        idx, dist = vq_nearest(z, e, backend="cuda")
        assert idx.tolist() == [1], "the float expansion's choice was not re-scored"
        assert dist.tolist() == [0.0]
    finally:
        _release_cached()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=DT_IDS)
@pytest.mark.parametrize("D", [256, 512, 1024])
def test_nearest_near_ties_on_tensor_cores(dtype, D):
    """Code pairs one ulp (of the 16-bit dtype) apart in one coordinate, vectors near the
    pairs, D from 256 to 1024 (the tensor-core scan): within a pair the distances differ by
    ~1e-4 relative, mostly inside the screen's bound, so the rows are settled by the exact
    re-score and must equal the argmin of the float64 distances. All values are multiples
    of 2^-10 below 16 in magnitude: exact in both dtypes, and the float64 distances exact."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    pairs, N = 100, 2000

    def q(x):  # multiples of 1/16
        return (x * 16).round() / 16

    a = q(torch.randn(pairs, D, generator=g, device=DEV, dtype=torch.float64)).clamp(-8, 8)
    a = a.to(dtype)
    col = a.float().abs().argmax(1)  # |a| >= ~2.5 there: its ulp is 2^-6 (bf16), 2^-9 (fp16)
    rows = torch.arange(pairs, device=DEV)
    b = a.clone()
    bits = b.view(torch.int16)
    bits[rows, col] += 1  # the next value away from zero (sign and magnitude)
    gap = (b.double() - a.double()).abs()
    assert bool((gap.sum(1) == gap.max(1).values).all()) and bool((gap.max(1).values > 0).all())
    e = torch.stack([a, b], 1).reshape(2 * pairs, D)  # pairs at 2j, 2j + 1
    pick = torch.randint(0, 2 * pairs, (N,), generator=g, device=DEV)
    noise = 0.5 * torch.randn(N, D, generator=g, device=DEV, dtype=torch.float64)
    z = q(e[pick].double() + noise).clamp(-15, 15).to(dtype)
    info = f"seed={seed} {dtype} D={D} near ties"
    idx = check_nearest(z, e, info=info)
    top2 = dists(z, e).topk(2, largest=False).values
    near = (top2[:, 1] - top2[:, 0]) < 0.25
    assert near.sum().item() > 0.9 * N, f"{info}: the test needs near-tied rows"
    assert bool((idx % 2 == 1).any()) and bool((idx % 2 == 0).any()), info


def test_nearest_scratch_from_the_torch_allocator():
    """The O(N + K) scratch (2 GiB here) comes from torch's caching allocator: with all the
    device's free memory held by torch (allocated, freed, kept cached), nearest still
    runs. The old kernel took it from cudaMallocAsync on the driver's pool: out of memory
    while torch held gigabytes of free blocks."""
    require("cuda", DEV)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 2**27, 16, 4
    z = torch.randint(-3, 4, (N, D), generator=g, device=DEV).float()
    e = torch.randint(-3, 4, (K, D), generator=g, device=DEV).float()
    leave, step = 256 * 2**20, 128 * 2**20
    try:
        _release_cached()
        free = torch.cuda.mem_get_info()[0]
        for extra in range(6):  # all but `leave` bytes, or as close as the driver allows
            try:
                hog = torch.empty(free - leave - extra * step, dtype=torch.uint8, device=DEV)
                break
            except torch.cuda.OutOfMemoryError:
                continue
        else:
            pytest.fail("could not take the GPU's free memory into torch's cache")
        del hog  # cached by torch, not returned to the driver
        left = torch.cuda.mem_get_info()[0]
        assert left < 2**30, f"the driver still has {left} bytes free"
        idx, dist = vq_nearest(z, e, backend="cuda")
        torch.cuda.synchronize()
    finally:
        _release_cached()
    rows = torch.randint(0, N, (4096,), generator=g, device=DEV)
    check = torch.argmin(dists(z[rows], e), 1)  # integers: exact ties go to the first code
    assert torch.equal(idx[rows], check), f"seed={seed}"
    assert bool((dist[rows] == dists(z[rows], e).min(1).values).all()), f"seed={seed}"


def test_pointer_off_the_device_is_an_error():
    """The kernels make the device that holds z current; memory that no device holds (host
    memory handed to a CUDA entry point as if it were on cuda:0) is a clear error before
    any launch. The old guard kept the current device when it could not place the pointer
    and launched on it. In a subprocess: a launch on host memory can break the context."""
    require("cuda", DEV)
    script = textwrap.dedent(
        """
        import torch
        from dqkernels._ext import _C
        from dqkernels.kernels._cext import tensor_arg

        def on0(t):  # t's argument as if t were on cuda:0
            a = tensor_arg(t)
            return (a[0], a[1], 0) + a[3:]

        z, e = torch.zeros(8, 4), torch.zeros(3, 4)
        idx, d = torch.zeros(8, dtype=torch.int64), torch.zeros(8)
        u, out = torch.rand(8, 2).sort(1).values, torch.zeros(8, 2, dtype=torch.int64)
        cs, es = torch.zeros(3), torch.zeros(3, 4)
        ws = torch.zeros(1 << 20, dtype=torch.uint8)
        calls = {
            "vq_sample_cuda": (on0(z), on0(e), on0(u), on0(out), 1.0, 0),
            "vq_ema_update_cuda": (on0(cs), on0(es), on0(z), on0(idx.view(8, 1)), 0.9, 0),
            "vq_nearest_workspace_cuda": (on0(z), on0(e), on0(idx), on0(d)),
            "vq_nearest_cuda": (on0(z), on0(e), on0(idx), on0(d), on0(ws), 0),
        }
        for name, args in calls.items():
            try:
                getattr(_C, name)(*args)
                print(name, "ran")
            except ValueError as exc:
                print(name, "refused:", exc)
        torch.cuda.synchronize()
        print("context ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("vq_sample_cuda", "vq_ema_update_cuda", "vq_nearest_workspace_cuda"):
        assert f"{name} refused: vq cuda: z is not in CUDA device memory" in r.stdout, r.stdout
    assert "vq_nearest_cuda refused: vq cuda: z is not in CUDA device memory" in r.stdout
    assert "context ok" in r.stdout


def test_sample_accumulates_in_double_like_cpp():
    """Code 0 at distance 0 and 65535 codes at distance 1 of weight w = 1.4 2^-28
    (1 / T = -ln w): the tail holds 3.4e-4 of the mass in steps far below float's
    resolution at 1. In float, each 32-code tile added 1.4 ulp of 1 to the running CDF
    and kept 1 ulp: tail targets went to codes ~1.4x too far, or past the end to the last
    code (58 of these 60 uniforms in a float emulation of the old kernel). In double, as
    on the CPU path, the draws equal the ``cpp`` backend's and the float64 inverse CDF's
    for the same uniforms (each at least 1% of a step from a CDF boundary)."""
    require("cuda", DEV)
    require("cpp", "cpu")
    K = 65536
    inv_t = -math.log(1.4 * 2.0**-28)
    w = math.exp(-inv_t)
    Z = 1 + (K - 1) * w  # cumulative weights: 1 + k w up to code k
    draws = {0.5: 0, 0.999: 0}  # uniform -> code; before the tail: code 0
    for i in range(1, 60):
        u = float(torch.tensor(1 - 2.0**-24 * round(i * 5730 / 60), dtype=torch.float32))
        x = (u * Z - 1) / w  # the first code k with 1 + k w > u Z is floor(x) + 1
        if x >= 0 and 0.01 < x - math.floor(x) < 0.99:
            draws[u] = math.floor(x) + 1
    assert len(draws) >= 40
    us = sorted(draws)
    want = [draws[u] for u in us]
    u = torch.tensor([us] * 3, dtype=torch.float32)  # sorted along each row
    z = torch.zeros(3, 1)
    e = torch.ones(K, 1)
    e[0] = 0
    cpp = torch.ops.dqk.vq_sample(z, e, u, inv_t, "cpp")
    assert cpp.tolist() == [want] * 3, "the cpp backend is the reference here"
    got = torch.ops.dqk.vq_sample(z.to(DEV), e.to(DEV), u.to(DEV), inv_t, "cuda").cpu()
    bad = (got[0] != cpp[0]).nonzero()[:5, 0].tolist()
    assert not bad, f"u={[us[i] for i in bad]}: cuda {got[0, bad].tolist()}, cpp {want}"
    assert torch.equal(got, cpp)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_nan_codes_are_never_chosen(dtype):
    """The NaN rule of every backend (nearest and sample): a NaN distance counts as +inf, so
    a code at NaN distance (a NaN entry in the code) is never chosen nor drawn while some
    code has a finite distance, and a row with no finite distance (a NaN entry in the row)
    gets code 0. Code 0 is one of the NaN codes here."""
    require("cuda", DEV, dtype)
    seed = fresh_seed()
    g = torch.Generator(device=DEV).manual_seed(seed)
    N, K, D = 300, 50, 16
    e = torch.randn(K, D, generator=g, device=DEV).to(dtype)
    nan_codes = [0, 7, 8, 49]
    e[nan_codes, 3] = float("nan")
    z = torch.randn(N, D, generator=g, device=DEV).to(dtype)
    z[nan_codes] = e[nan_codes].nan_to_num()  # rows whose nearest code would be a NaN one
    nan_rows = [5, 9, 100]
    z[nan_rows, 0] = float("nan")
    d = dists(z, e)
    want = torch.where(d.isnan(), torch.full_like(d, float("inf")), d).argmin(1)
    want[nan_rows] = 0
    idx, dist = vq_nearest(z, e, backend="cuda")
    info = f"seed={seed} {dtype}"
    assert torch.equal(idx, want), f"{info}: {(idx != want).nonzero()[:5, 0].tolist()}"
    clean = torch.ones(N, dtype=torch.bool, device=DEV)
    clean[nan_rows] = False
    assert not bool(torch.isin(idx[clean], torch.tensor(nan_codes, device=DEV)).any()), info
    assert bool(dist[clean].isfinite().all()), info
    s = vq_sample(z, e, 20, temperature=50.0, backend="cuda", generator=g)
    assert not bool(torch.isin(s[clean], torch.tensor(nan_codes, device=DEV)).any()), info
    assert bool((s[nan_rows] == 0).all()), info
    e_all = e.clone()
    e_all[:, 1] = float("nan")  # every code NaN: code 0 everywhere
    assert bool((vq_nearest(z, e_all, backend="cuda")[0] == 0).all()), info
    assert bool((vq_sample(z, e_all, 3, backend="cuda", generator=g) == 0).all()), info


def test_no_finite_distance_gets_code_0():
    """float64 rows far out (1e200): every distance overflows to inf, and code 0's is NaN.
    A NaN distance counts as +inf, so the row has no finite distance and gets code 0 (as
    on the cpp backend), with its distance."""
    require("cuda", DEV, torch.float64)
    z = torch.full((3, 4), 1e200, dtype=torch.float64, device=DEV)
    e = torch.zeros(5, 4, dtype=torch.float64, device=DEV)
    e[0, 1] = float("nan")
    idx, dist = vq_nearest(z, e, backend="cuda")
    assert idx.tolist() == [0, 0, 0]
    assert bool(torch.isnan(dist).all())
    e[0, 1] = 0.0  # every distance inf: the first code
    idx, dist = vq_nearest(z, e, backend="cuda")
    assert idx.tolist() == [0, 0, 0] and bool(torch.isinf(dist).all())
