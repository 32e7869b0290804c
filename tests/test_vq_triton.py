"""The triton backend of the VQ ops against the float64 reference (dqkernels.reference.vq):
nearest (odd and multi-tile shapes, K = 1, duplicated codes, near-ties that a plain fp32
expansion gets wrong, fp16/bf16), sample (agreement with the reference's inverse CDF on
the same uniforms, peaked distributions, the fallback to the last code of positive
weight), ema_update (S = 1 and 3, float32 and float64 state). On CPU these run under the
Triton interpreter (conftest sets TRITON_INTERPRET=1), whose tiles are 16 wide, so the
shapes below span several row, code and D tiles and both the resident-z (D <= 16) and
chunked-D paths."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_DEVICES, TOL, fresh_seed, rel_err, require

from dqkernels.kernels.vq import triton as triton_vq
from dqkernels.ops import vq_ema_update, vq_nearest, vq_sample
from dqkernels.reference.vq import (
    sqdist_matrix,
    vq_ema_update_reference,
    vq_nearest_reference,
    vq_sample_reference,
)

PAIRS = [p for p in BACKEND_DEVICES if p.values[0] == "triton"]
HALF = [torch.float16, torch.bfloat16]
DT_IDS = lambda d: str(d).replace("torch.", "")  # noqa: E731
SHAPES = [(37, 23, 19), (50, 70, 9), (1, 1, 1), (33, 1, 40), (5, 40, 16), (40, 33, 17)]


def randn(*shape, g, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def check_nearest(z, codebook, msg):
    """Indices equal to the reference's first argmin; the chosen code's float64 distance
    within 1e-5 relative of the minimum; sqdist against the float64 distance."""
    idx, dist = vq_nearest(z, codebook, backend="triton")
    assert idx.dtype == torch.int64 and dist.dtype == torch.float32
    ref_i, ref_d = vq_nearest_reference(z.cpu(), codebook.cpu())
    got_d = sqdist_matrix(z.cpu(), codebook.cpu()).gather(1, idx.cpu()[:, None])[:, 0]
    assert (got_d <= ref_d * (1 + 1e-5) + 1e-30).all(), f"not the nearest code ({msg})"
    bad = (idx.cpu() != ref_i).nonzero()[:, 0].tolist()
    assert not bad, (
        f"rows {bad[:8]}: {idx.cpu()[bad[:8]].tolist()} vs {ref_i[bad[:8]].tolist()} ({msg})"
    )
    e = rel_err(dist, ref_d)
    assert e <= TOL[torch.float32], f"sqdist rel err {e:.2e} ({msg})"
    return idx


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=DT_IDS)
@pytest.mark.parametrize("N,K,D", SHAPES)
def test_nearest_random(backend, device, dtype, N, K, D):
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = randn(N, D, g=g).to(device, dtype)
    codebook = randn(K, D, g=g).to(device, dtype)
    check_nearest(z, codebook, f"seed={seed} dtype={dtype} N={N} K={K} D={D}")


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=DT_IDS)
@pytest.mark.parametrize("D", [5, 21])
@pytest.mark.parametrize("copies", [(4,), (20, 37), (4, 20, 37)])
def test_nearest_duplicated_codes(backend, device, dtype, D, copies):
    """Copies of code 3 within its tile (4) and in later tiles (20, 37): the lowest index
    wins; z lies at or near them, so these rows must be flagged and re-scored."""
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    codebook = randn(40, D, g=g)
    for k in copies:
        codebook[k] = codebook[3]
    z = randn(45, D, g=g)
    z[::2] = codebook[3] + randn(23, D, g=g, scale=1e-3)
    z[1] = codebook[3]
    z, codebook = z.to(device, dtype), codebook.to(device, dtype)
    idx = check_nearest(z, codebook, f"seed={seed} dtype={dtype} D={D}")
    assert (idx[::2] == 3).all() and idx[1] == 3


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=DT_IDS)
def test_nearest_identical_codebook(backend, device, dtype):
    """Every code the same (a zero-initialised codebook): index 0 and |z|^2 for all rows
    (every row is re-scored, over several re-score programs)."""
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = randn(50, 18, g=g).to(device, dtype)
    idx, dist = vq_nearest(z, torch.zeros(35, 18, dtype=dtype, device=device), backend="triton")
    assert (idx == 0).all()
    assert rel_err(dist, (z.double() ** 2).sum(1)) <= TOL[torch.float32], f"seed={seed}"


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("D", [8, 24])
@pytest.mark.parametrize("K", [12, 24])
def test_nearest_near_ties_fp32(backend, device, D, K):
    """Codes and vectors in a cluster of radius ~1e-2 around a point of norm ~1e3: the
    scores |e|^2 - 2 z.e carry fp32 rounding errors far above the gaps between codes, so
    a plain fp32 expansion picks wrong codes (asserted: the case is hard); the kernel
    must still return the exact first argmin. K = 12 fits one code tile, K = 24 two."""
    require(backend, device, torch.float32)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    anchor = 300.0 + randn(1, D, g=g)
    codebook = (anchor + randn(K, D, g=g, scale=1e-2)).float()
    z = (anchor + randn(40, D, g=g, scale=1e-2)).float()
    plain = ((codebook * codebook).sum(1)[None] - 2.0 * z @ codebook.T).argmin(1)
    ref_i, _ = vq_nearest_reference(z, codebook)
    assert (plain != ref_i).sum() >= 5, f"the fp32 expansion is not fooled (seed={seed})"
    check_nearest(z.to(device), codebook.to(device), f"seed={seed} D={D} K={K}")


@pytest.mark.parametrize("backend,device", PAIRS)
def test_nearest_leading_dims_and_grad(backend, device):
    """z of shape [..., D] and the sqdist gradient (the op layer's backward) on the
    kernel's indices, against the reference's distance autograd."""
    require(backend, device, torch.float32)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = randn(3, 7, 10, g=g).float().to(device).requires_grad_()
    codebook = randn(20, 10, g=g).float().to(device).requires_grad_()
    idx, dist = vq_nearest(z, codebook, backend="triton")
    assert idx.shape == (3, 7) and dist.shape == (3, 7)
    gz, ge = torch.autograd.grad(dist.sum(), (z, codebook))
    z64 = z.detach().double().cpu().requires_grad_()
    e64 = codebook.detach().double().cpu().requires_grad_()
    ri, rd = vq_nearest_reference(z64.reshape(-1, 10), e64)
    assert torch.equal(idx.cpu().reshape(-1), ri), f"seed={seed}"
    rgz, rge = torch.autograd.grad(rd.sum(), (z64, e64))
    assert rel_err(gz, rgz) <= TOL[torch.float32] and rel_err(ge, rge) <= TOL[torch.float32]


# ----------------------------------------------------------------------------- sample


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32] + HALF, ids=DT_IDS)
@pytest.mark.parametrize(
    "N,K,D,S,T",
    [(45, 50, 21, 3, 1.0), (37, 23, 7, 1, 0.3), (20, 70, 12, 20, 2.0), (1, 1, 3, 2, 1.0)],
)
def test_sample_matches_reference(backend, device, dtype, N, K, D, S, T):
    """The same generator state gives the same uniforms to vq_sample and to the
    reference's inverse CDF; >= 99% of draws agree (they differ only where rounding of
    the cumulative weights moves a boundary across a uniform)."""
    require(backend, device, dtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    z = randn(N, D, g=g, scale=0.4).to(dtype)
    codebook = randn(K, D, g=g, scale=0.4).to(dtype)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = vq_sample(
        z.to(device), codebook.to(device), S, temperature=T, generator=gen, backend="triton"
    )
    assert out.dtype == torch.int64 and out.shape == (N, S)
    assert ((out >= 0) & (out < K)).all()
    gen = torch.Generator(device=device).manual_seed(seed)
    u = torch.rand((N, S), dtype=torch.float32, device=device, generator=gen)
    ref = vq_sample_reference(z, codebook, u.cpu(), T)
    agree = (out.cpu() == ref).double().mean().item()
    assert agree >= 0.99, f"only {agree:.3f} of draws agree (seed={seed})"


@pytest.mark.parametrize("backend,device", PAIRS)
def test_sample_peaked(backend, device):
    """z equal to a code and a tiny temperature: every other weight underflows to 0, so
    every draw is that code, whatever the uniform."""
    require(backend, device, torch.float32)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    codebook = randn(40, 8, g=g).float()
    pick = torch.randint(0, 40, (30,), generator=g)
    z = codebook[pick]
    out = vq_sample(z.to(device), codebook.to(device), 4, temperature=1e-3, backend="triton")
    assert (out.cpu() == pick[:, None]).all(), f"seed={seed}"


@pytest.mark.parametrize("backend,device", PAIRS)
def test_sample_fallback_last_positive(backend, device):
    """Targets no cumulative weight exceeds take the last code of positive weight.
    Uniforms >= 1 (outside the op's contract, so through the kernel module) force that
    path: the last code for a spread distribution, the only positive one when peaked."""
    require(backend, device, torch.float32)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    K = 37
    codebook = randn(K, 6, g=g).float().to(device)
    pick = torch.randint(0, K - 1, (20,), generator=g)
    z = codebook[pick.to(device)].contiguous()
    u = torch.tensor([[0.5, 1.5, 2.0]], device=device).expand(20, 3).contiguous()
    out = torch.full((20, 3), -1, dtype=torch.int64, device=device)
    triton_vq.sample(z, codebook, u, 1e3, out)  # T = 1e-3: only `pick` has weight
    assert (out.cpu() == pick[:, None]).all(), f"seed={seed}"
    out.fill_(-1)
    triton_vq.sample(z * 1e-3, codebook * 1e-3, u, 1.0, out)  # all weights ~1
    assert (out[:, 1:].cpu() == K - 1).all(), f"seed={seed}"
    assert ((out[:, 0] >= 0) & (out[:, 0] < K - 1)).all(), f"seed={seed}"


# ----------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("state", [torch.float32, torch.float64], ids=DT_IDS)
@pytest.mark.parametrize("zdtype", [torch.float32, torch.bfloat16], ids=DT_IDS)
@pytest.mark.parametrize("decay", [0.99, 0.0])
def test_ema_update(backend, device, S, state, zdtype, decay):
    """Few codes (many atomic adds on each), D spanning two column tiles (cluster_size
    must be counted once), against the reference on the same rounded z."""
    require(backend, device, zdtype)
    seed = fresh_seed()
    g = torch.Generator().manual_seed(seed)
    K, N, D = 5, 53, 21
    cs = torch.rand(K, generator=g, dtype=torch.float64).to(device, state)
    es = randn(K, D, g=g).to(device, state)
    z = randn(N, D, g=g).to(device, zdtype)
    idx = torch.randint(0, K, (N, S) if S > 1 else (N,), generator=g).to(device)
    want_c, want_e = vq_ema_update_reference(cs.cpu(), es.cpu(), z.cpu(), idx.cpu(), decay)
    vq_ema_update(cs, es, z, idx, decay=decay, backend="triton")
    assert cs.dtype == state and es.dtype == state
    msg = f"seed={seed} S={S} state={state} z={zdtype} decay={decay}"
    assert rel_err(cs, want_c) <= TOL[state], f"cluster_size ({msg})"
    assert rel_err(es, want_e) <= TOL[state], f"embed_sum ({msg})"


@pytest.mark.parametrize("backend,device", PAIRS)
def test_opcheck(backend, device):
    """The three custom ops pass torch.library.opcheck on the triton backend."""
    require(backend, device, torch.float32)
    g = torch.Generator().manual_seed(fresh_seed())
    z = randn(7, 5, g=g).float().to(device)
    e = randn(9, 5, g=g).float().to(device)
    u = torch.sort(torch.rand(7, 3, generator=g), -1).values.to(device)
    idx = torch.randint(0, 9, (7, 2), generator=g).to(device)
    state = (torch.rand(9, generator=g).to(device), randn(9, 5, g=g).float().to(device))
    torch.library.opcheck(torch.ops.dqk.vq_nearest.default, (z, e, "triton"))
    torch.library.opcheck(torch.ops.dqk.vq_sample.default, (z, e, u, 1.0, "triton"))
    torch.library.opcheck(torch.ops.dqk.vq_ema_update.default, (*state, z, idx, 0.9, "triton"))
