"""dqkernels.nn.VectorQuantizer: straight-through estimate, commitment loss, EMA codebook
(decay, Laplace smoothing), hard and soft EM, dead codes and their re-initialisation,
usage metrics, dtypes, bad arguments, and the all-reduced statistics of 2 gloo processes."""

import math
import multiprocessing
import os
from datetime import timedelta

import pytest
import torch
from conftest import fresh_seed

from dqkernels.backends import use_backend
from dqkernels.nn import VectorQuantizer
from dqkernels.ops import vq_sample
from dqkernels.reference.vq import vq_ema_update_reference, vq_nearest_reference


@pytest.fixture(autouse=True)
def _torch_backend():
    with use_backend("torch"):
        yield


def _laplace_codebook(cluster_size, embed_sum, eps):
    n = cluster_size.sum()
    K = cluster_size.shape[0]
    return embed_sum / ((cluster_size + eps) / (n + K * eps) * n)[:, None]


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("em", ["hard", "soft"])
def test_straight_through_gradient_and_value(em):
    seed = fresh_seed()
    torch.manual_seed(seed)
    vq = VectorQuantizer(12, 5, em=em, num_samples=4, init="normal")
    codebook = vq.codebook().clone()
    z = torch.randn(3, 4, 5, requires_grad=True)
    out = vq(z)
    w = torch.randn_like(z)
    (out.quantized * w).sum().backward()
    assert torch.equal(z.grad, w), seed  # the gradient of z is the output's gradient
    expect = codebook[out.indices]  # [3, 4, D] or [3, 4, m, D]
    if em == "soft":
        assert out.indices.shape == (3, 4, 4)
        expect = expect.mean(-2)
    torch.testing.assert_close(out.quantized.detach(), expect, rtol=1e-6, atol=1e-6)
    assert vq.embed_sum.grad is None and not vq.embed_sum.requires_grad


def test_commitment_loss_is_beta_times_the_squared_distance_per_example():
    torch.manual_seed(fresh_seed())
    vq = VectorQuantizer(10, 3, beta=0.7, init="normal")
    codebook = vq.codebook().clone()
    z = torch.randn(4, 2, 5, 3, requires_grad=True)
    out = vq(z)
    zq = codebook[out.indices]
    expect = 0.7 * ((z.detach() - zq) ** 2).sum((1, 2, 3))
    assert out.commitment.shape == (4,) and out.commitment.dtype == torch.float32
    torch.testing.assert_close(out.commitment.detach(), expect, rtol=1e-5, atol=1e-6)
    out.commitment.sum().backward()  # reaches z only: d/dz = 2 beta (z - sg(z_q))
    torch.testing.assert_close(z.grad, 2 * 0.7 * (z.detach() - zq), rtol=1e-5, atol=1e-6)


def test_hard_em_takes_the_nearest_code_and_eval_mode_does_too():
    seed = fresh_seed()
    torch.manual_seed(seed)
    vq = VectorQuantizer(50, 6, em="soft", init="normal")
    z = torch.randn(7, 9, 6)
    vq.eval()
    idx, _ = vq_nearest_reference(z.reshape(-1, 6), vq.codebook())
    before = vq.state_dict()
    out = vq(z)  # soft EM in eval mode: the nearest code, no EMA update
    assert torch.equal(out.indices, idx.view(7, 9)), seed
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k
    hard = VectorQuantizer(50, 6, em="hard", init="normal")
    hard.load_state_dict(before)
    assert torch.equal(hard(z).indices, idx.view(7, 9)), seed


def test_soft_em_output_is_the_mean_of_the_sampled_codes():
    torch.manual_seed(3)
    vq = VectorQuantizer(8, 4, em="soft", num_samples=6, temperature=2.5, init="normal")
    z = torch.randn(5, 4) * 0.5
    codebook = vq.codebook().clone()
    torch.manual_seed(11)
    out = vq(z)
    torch.manual_seed(11)
    drawn = vq_sample(z, codebook, 6, temperature=2.5)
    assert torch.equal(out.indices, drawn)
    assert len(set(drawn.flatten().tolist())) > 1  # really a draw, not one code
    torch.testing.assert_close(out.quantized, codebook[drawn].mean(1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("em", ["hard", "soft"])
def test_ema_update_follows_the_formula(em):
    """cluster_size and embed_sum move by the decay with weight 1/m per sample; the
    codebook is embed_sum over the Laplace-smoothed counts."""
    seed = fresh_seed()
    torch.manual_seed(seed)
    K, D, decay, eps = 9, 4, 0.8, 1e-3
    vq = VectorQuantizer(K, D, em=em, num_samples=3, decay=decay, eps=eps, init="normal")
    with torch.no_grad():
        vq.cluster_size.uniform_(0.5, 2.0)
    cs, es = vq.cluster_size.clone(), vq.embed_sum.clone()
    z = torch.randn(6, 5, D)
    out = vq(z)
    exp_cs, exp_es = vq_ema_update_reference(
        cs, es, z.reshape(-1, D), out.indices.reshape(30, -1), decay
    )
    torch.testing.assert_close(vq.cluster_size.double(), exp_cs, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(vq.embed_sum.double(), exp_es, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        vq.codebook().double(), _laplace_codebook(exp_cs, exp_es, eps), rtol=1e-5, atol=1e-6
    )
    # hand check of one code: counts over the 30 rows with weight 1/m per sample
    rows = out.indices.reshape(30, -1)
    k = int(rows[0, 0])
    count = float((rows == k).double().sum()) / rows.shape[1]
    expect = decay * float(cs[k]) + (1 - decay) * count
    assert float(vq.cluster_size[k]) == pytest.approx(expect, rel=1e-6)


def test_perplexity_and_used_codes():
    vq = VectorQuantizer(6, 2, init="normal")
    vq.eval()
    codebook = vq.codebook()
    # codes 0, 0, 0, 1, 4 (the vectors are the codes themselves)
    z = codebook[torch.tensor([0, 0, 0, 1, 4])].view(5, 1, 2)
    out = vq(z)
    assert out.indices.flatten().tolist() == [0, 0, 0, 1, 4]
    p = torch.tensor([3, 1, 1], dtype=torch.float64) / 5
    assert float(out.perplexity) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-6)
    assert int(out.used_codes) == 3
    # training mode: the same statistics of the step's assignments
    vq.train()
    out = vq(z)
    assert int(out.used_codes) == 3
    assert float(out.perplexity) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-6)


def test_channels_first_equals_channels_last():
    torch.manual_seed(fresh_seed())
    vq = VectorQuantizer(7, 3, init="normal").eval()
    z = torch.randn(2, 3, 4, 5)
    a = vq(z, channel_dim=1)
    b = vq(z.movedim(1, -1))
    assert torch.equal(a.quantized, b.quantized.movedim(-1, 1))
    assert torch.equal(a.indices, b.indices) and a.indices.shape == (2, 4, 5)
    assert torch.equal(a.commitment, b.commitment)


def test_empty_batch():
    vq = VectorQuantizer(4, 3)
    out = vq(torch.zeros(0, 2, 3))
    assert out.quantized.shape == (0, 2, 3) and out.commitment.shape == (0,)
    assert not vq.is_initialized()  # nothing to initialise from: the next batch does
    assert int(out.used_codes) == 0 and float(out.perplexity) == 1.0


# ----------------------------------------------------------------------------- state


def test_batch_initialisation_draws_distinct_batch_vectors_once():
    torch.manual_seed(fresh_seed())
    vq = VectorQuantizer(8, 3, decay=1.0)  # decay 1: the EMA keeps the initial codebook
    vq.eval()
    vq(torch.randn(4, 3))
    assert not vq.is_initialized()  # eval mode does not initialise
    vq.train()
    z = torch.randn(20, 3)
    vq(z)
    assert vq.is_initialized() and bool(vq.initialized)
    codebook = vq.codebook()
    assert torch.equal(vq.cluster_size, torch.ones(8))
    match = (codebook[:, None, :] == z[None]).all(-1)  # [K, N]
    assert (match.sum(1) == 1).all()  # every code is a batch vector
    assert (match.sum(0) <= 1).all()  # distinct ones
    vq(torch.randn(20, 3) + 100)  # a later batch does not re-init
    assert torch.equal(vq.codebook(), codebook)
    fresh = VectorQuantizer(8, 3)
    fresh.load_state_dict(vq.state_dict())
    assert fresh.is_initialized() and torch.equal(fresh.codebook(), codebook)


def test_dead_codes_counted_and_reinitialised():
    torch.manual_seed(fresh_seed())
    vq = VectorQuantizer(6, 2, decay=0.5, dead_threshold=0.1, init="normal")
    with torch.no_grad():
        vq.embed_sum.copy_(
            torch.tensor(
                [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [50.0, 50.0], [-50.0, 50.0], [50.0, -50.0]]
            )
        )
    # every vector is near code 0, 1 or 2; codes 3..5 get nothing
    z = torch.tensor([[0.1, 0.0], [9.9, 0.0], [0.0, 10.1], [0.2, 0.1]])
    # counts 1 -> 0.5 -> 0.25 -> 0.125 -> 0.0625: dead after the 4th step
    for step in range(4):
        out = vq(z)
        assert int(out.dead_codes) == (3 if step == 3 else 0)
    assert vq.dead_mask().tolist() == [False, False, False, True, True, True]
    vq.reinit_dead = True
    kept = vq.embed_sum[:3].clone()
    out = vq(z)
    assert int(out.dead_codes) == 3  # counted before the re-initialisation
    assert not vq.dead_mask().any()
    assert torch.equal(vq.cluster_size[3:], torch.ones(3))
    for k in range(3, 6):  # each re-initialised code is a batch vector
        assert (vq.embed_sum[k] == z).all(1).any()
    torch.testing.assert_close(
        vq.embed_sum[:3], 0.5 * kept + 0.5 * torch.stack([z[[0, 3]].sum(0), z[1], z[2]])
    )


def test_state_stays_float32_under_bf16_autocast_and_half_conversion():
    torch.manual_seed(fresh_seed())
    vq = VectorQuantizer(16, 8, decay=0.9)
    z = torch.randn(32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zb = torch.nn.functional.linear(z, torch.eye(8))  # a bf16 activation
        assert zb.dtype == torch.bfloat16
        out = vq(zb)
    assert out.quantized.dtype == torch.bfloat16
    assert out.commitment.dtype == torch.float32
    assert vq.cluster_size.dtype == vq.embed_sum.dtype == torch.float32
    # vectors of the bf16 batch, accumulated in fp32
    assert float(vq.cluster_size.sum()) == pytest.approx(0.9 * 16 + 0.1 * 32, rel=1e-6)
    state = vq.embed_sum.clone()
    for convert in (lambda m: m.to(torch.bfloat16), lambda m: m.half()):
        convert(vq)
        assert vq.embed_sum.dtype == torch.float32 and torch.equal(vq.embed_sum, state)
    vq.double()
    assert vq.embed_sum.dtype == torch.float64
    out = vq(z.double())
    assert out.commitment.dtype == torch.float64


def test_bad_arguments():
    cases = [
        (dict(num_codes=0, dim=2), ValueError, "num_codes must be >= 1; got 0"),
        (dict(num_codes=2.0, dim=2), TypeError, "num_codes must be an int; got float"),
        (dict(num_codes=2, dim=0), ValueError, "dim must be >= 1; got 0"),
        (
            dict(num_codes=2, dim=2, em="medium"),
            ValueError,
            "em must be one of hard, soft; got 'medium'",
        ),
        (dict(num_codes=2, dim=2, num_samples=0), ValueError, "num_samples must be >= 1"),
        (dict(num_codes=2, dim=2, decay=1.5), ValueError, r"decay must be in \[0, 1\]; got 1.5"),
        (dict(num_codes=2, dim=2, eps=0.0), ValueError, r"eps must be in \(0, inf\); got 0"),
        (dict(num_codes=2, dim=2, beta=-1), ValueError, r"beta must be in \[0, inf\); got -1"),
        (
            dict(num_codes=2, dim=2, temperature=0),
            ValueError,
            r"temperature must be in \(0, inf\); got 0",
        ),
        (
            dict(num_codes=2, dim=2, dead_threshold=float("nan")),
            ValueError,
            "dead_threshold must be in",
        ),
        (
            dict(num_codes=2, dim=2, init="zeros"),
            ValueError,
            "init must be one of batch, normal; got 'zeros'",
        ),
        (dict(num_codes=2, dim=2, decay="0.9"), TypeError, "decay must be a number; got str"),
    ]
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            VectorQuantizer(**kwargs)
    vq = VectorQuantizer(4, 3)
    with pytest.raises(
        ValueError,
        match=r"z must be \[B, \.\.\., 3\] \(channels last, D = 3\); "
        r"got shape \(2, 4\)",
    ):
        vq(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"z must be \[B, \.\.\., 3\]"):
        vq(torch.zeros(3))
    with pytest.raises(TypeError, match="z must be a floating tensor; got dtype int64"):
        vq(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="z must be a torch.Tensor; got list"):
        vq([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="channel_dim must be -1 .* or 1 .*; got 2"):
        vq(torch.zeros(2, 3), channel_dim=2)
    with pytest.raises(ValueError, match=r"z must be \[B, \.\.\., 3\].*got shape \(2, 5, 4\)"):
        vq(torch.zeros(2, 4, 5), channel_dim=1)


# ----------------------------------------------------------------------------- DDP

_K, _D = 6, 3
# vectors per step on rank 0 and rank 1: ranks with none, both with none, uneven sizes
_SIZES = [(5, 0), (0, 9), (7, 3), (0, 0), (4, 11), (2, 6)]
_CASES = {
    "hard": dict(em="hard", decay=0.7, init="normal"),
    # soft EM at T -> 0 draws the nearest code every time: deterministic, m = 3 per row
    "soft_cold": dict(em="soft", num_samples=3, temperature=1e-6, decay=0.7, init="normal"),
    # decay 1 keeps the codebook of the batch initialisation
    "batch_init": dict(em="hard", decay=1.0),
    # decay 0: the state is the last step's statistics; unused codes die at once and are
    # re-initialised (not at the step where both ranks are empty)
    "reinit": dict(em="hard", decay=0.0, dead_threshold=0.5, reinit_dead=True, init="normal"),
}


def _step_batches():
    g = torch.Generator().manual_seed(2024)
    return [tuple(torch.randn(n, _D, generator=g) * 2 for n in sizes) for sizes in _SIZES]


def _run_case(kwargs, batches):
    torch.manual_seed(99)  # the same initial codebook for every process
    vq = VectorQuantizer(_K, _D, **kwargs)
    dead = [int(vq(z).dead_codes) for z in batches]
    return {**{k: v.clone() for k, v in vq.state_dict().items()}, "dead": torch.tensor(dead)}


def _ddp_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.manual_seed(rank)  # per-rank randomness (as the trainer does) where used
        with use_backend("torch"):
            steps = _step_batches()
            result = {name: _run_case(kw, [s[rank] for s in steps]) for name, kw in _CASES.items()}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_hold_the_codebook_of_the_union():
    """Two processes see different batch sizes (a rank, or both, with no vectors at some
    steps): after the steps both hold the same EMA state, equal to one process that saw
    the concatenated batches (no DDP wrapper that could broadcast buffers here); the
    batch initialisation and re-initialisation agree across ranks and pick vectors of the
    union. A hang fails the test after the timeout."""
    import tempfile

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("no gloo")
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        init_file = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_ddp_worker, args=(r, 2, init_file, tmp)) for r in (0, 1)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join(timeout=120)
            hung = [p.pid for p in procs if p.is_alive()]
            assert not hung, f"DDP workers {hung} did not finish in time (a hang?)"
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
        assert [p.exitcode for p in procs] == [0, 0]
        r0 = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
        r1 = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=True)
    steps = _step_batches()
    union = [torch.cat(s) for s in steps]
    for name in _CASES:
        for k in r0[name]:
            assert torch.equal(r0[name][k], r1[name][k]), (name, k)
    for name in ("hard", "soft_cold"):
        one = _run_case(_CASES[name], union)
        alone = _run_case(_CASES[name], [s[0] for s in steps])
        for k in ("cluster_size", "embed_sum"):
            torch.testing.assert_close(r0[name][k], one[k], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(r0[name]["embed_sum"], alone["embed_sum"])
    # the batch init drew from rank 0 alone: rank 1 had no vectors at the first step
    state = r0["batch_init"]
    assert bool(state["initialized"])
    assert (state["embed_sum"][:, None] == steps[0][0][None]).all(-1).any(1).all()
    state = r0["reinit"]
    assert state["dead"].sum() > 0 and (state["cluster_size"] >= 0.5).all()
    # a code of count 1 holds one vector: re-initialised or assigned once at the last step
    fresh = state["embed_sum"][state["cluster_size"] == 1.0]
    assert fresh.shape[0] >= state["dead"][-1] > 0
    assert (fresh[:, None] == union[-1][None]).all(-1).any(1).all()
