"""The codebook EMA sweep (``vq_ema_update``, forward only): the in-place update of the
float32 statistics ``cluster_size [K]`` and ``embed_sum [K, D]`` from N = 65536 vectors
and their codes, against the one-hot matmul of VQ-VAE code (eager and
``torch.compile``'d) and ``index_add_``. Memory-bound: GB/s over the minimal bytes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dqkernels.bench.cases.vq_nearest import CPU_CHUNK_BYTES, chunk_note, chunk_rows
from dqkernels.bench.spec import BenchOp, Case, Impl

N = 65536
DECAY = 0.99
#: bytes per element of the N x K one-hot: F.one_hot's int64, then its float32 copy
ONEHOT_BYTES_PER_ELEM = 12


def _case(name: str, n: int, d: int, k: int, **where) -> Case:
    return Case(name, {"N": n, "D": d, "K": k}, f"N={n} D={d} K={k}", **where)


def onehot_stats(z: torch.Tensor, indices: torch.Tensor, K: int):
    """``(counts [K], sums [K, D])`` through a float32 one-hot matrix, as VQ-VAE code
    computes them: ``onehot.sum(0)`` and ``onehot.T @ z``."""
    onehot = F.one_hot(indices, K).to(torch.float32)
    return onehot.sum(0), onehot.T @ z.to(torch.float32)


def _mix(cluster_size, embed_sum, counts, sums, decay):
    cluster_size.mul_(decay).add_(counts, alpha=1.0 - decay)
    embed_sum.mul_(decay).add_(sums, alpha=1.0 - decay)
    return cluster_size, embed_sum


def _onehot_update(stats, rows: int):
    """An EMA update whose statistics come from ``stats(z, indices, K)``, evaluated
    ``rows`` vectors at a time (the chunks' statistics summed)."""

    def run(cluster_size, embed_sum, z, indices, decay, **_):
        K = cluster_size.shape[0]
        if rows >= z.shape[0]:
            counts, sums = stats(z, indices, K)
        else:
            counts = torch.zeros_like(cluster_size)
            sums = torch.zeros_like(embed_sum)
            for r0 in range(0, z.shape[0], rows):
                c, s = stats(z[r0 : r0 + rows], indices[r0 : r0 + rows], K)
                counts += c
                sums += s
        return _mix(cluster_size, embed_sum, counts, sums, decay)

    return run


def index_add_update(cluster_size, embed_sum, z, indices, decay, **_):
    """The EMA update with two ``index_add_`` calls (no one-hot)."""
    w = torch.full((z.shape[0],), 1.0 - decay, dtype=cluster_size.dtype, device=z.device)
    cluster_size.mul_(decay).index_add_(0, indices, w)
    embed_sum.mul_(decay).index_add_(0, indices, z.to(embed_sum.dtype), alpha=1.0 - decay)
    return cluster_size, embed_sum


class VQEmaUpdateBench(BenchOp):
    name = "vq_ema_update"
    family = "vq"
    description = (
        "vq_ema_update: in-place EMA of the codebook statistics (cluster_size "
        "[K], embed_sum [K, D], float32) from N vectors and their codes."
    )
    mode = "state-update"
    state_inputs = ("cluster_size", "embed_sum")
    notes = (
        "inputs: z ~ randn(N, D) in the case's dtype; indices uniform in [0, K), one code "
        "per vector (hard EM: S = 1); state float32 (cluster_size ~ U[0.5, 1.5), embed_sum "
        f"~ randn); decay {DECAY}",
        "eager-onehot: onehot = F.one_hot(idx, K).float(); counts = onehot.sum(0); sums = "
        "onehot.T @ z.float(); then the state mixes in place; compile: torch.compile of "
        "the counts/sums part (the mixing stays eager); eager-index_add: index_add_ of "
        "(1 - decay) into cluster_size and of (1 - decay) z into embed_sum after the decay",
        f"CPU: the one-hot rows run in chunks when the N x K one-hot (int64 then float32, "
        f"{ONEHOT_BYTES_PER_ELEM} B per element) would exceed {CPU_CHUNK_BYTES / 2**30:g} "
        "GiB (the row's note says so), the chunks' statistics summed; on CUDA it runs whole "
        "and an out-of-memory error is recorded as the row's error",
        "CPU grid: K up to 8192 (at K = 65536 the one-hot matmul alone is 2 N K D = "
        "0.55-2.2 TFLOP per call, tens of seconds on a small CPU)",
        "out err: (cluster_size, embed_sum) after one update; the float64 reference is "
        "the index_add update (vq_ema_update_reference's N x K one-hot would not fit)",
        "bytes_min = z and the indices read, the state read and written; GB/s over it",
    )

    def cases(self) -> list[Case]:
        # CPU: K up to 8192 (see the notes)
        return [_case("tiny", 37, 13, 29, quick=True)] + [
            _case(f"n{N}-d{d}-k{k}", N, d, k, device="cuda" if k > 8192 else None)
            for d in (64, 256)
            for k in (512, 8192, 65536)
        ]

    def make_inputs(self, case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
        n, d, k = case.dims["N"], case.dims["D"], case.dims["K"]
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
        indices = torch.randint(0, k, (n,), generator=g).to(device)
        cluster_size = (torch.rand(k, generator=g) + 0.5).to(device)
        embed_sum = torch.randn(k, d, generator=g).to(device)
        return {
            "cluster_size": cluster_size,
            "embed_sum": embed_sum,
            "z": z,
            "indices": indices,
            "decay": DECAY,
        }

    def reference(self, cluster_size, embed_sum, z, indices, decay):
        """The update by ``index_add_`` (called in float64 for the check: the same as
        ``vq_ema_update_reference`` without its N x K one-hot)."""
        return index_add_update(cluster_size, embed_sum, z, indices, decay)

    def min_bytes(self, inputs: dict, backward: bool) -> int:
        state = inputs["cluster_size"].nbytes + inputs["embed_sum"].nbytes
        return inputs["z"].nbytes + inputs["indices"].nbytes + 2 * state

    def baselines(self, inputs: dict, device: torch.device, dtype: torch.dtype):
        n, k = inputs["z"].shape[0], inputs["cluster_size"].shape[0]
        rows = chunk_rows(n, k, ONEHOT_BYTES_PER_ELEM, device)
        note = chunk_note(rows, n)
        return [
            Impl("eager-onehot", _onehot_update(onehot_stats, rows), note=note),
            Impl(
                "compile",
                _onehot_update(torch.compile(onehot_stats, dynamic=False), rows),
                kind="compile",
                note=note,
            ),
            Impl("eager-index_add", index_add_update),
        ]

    def kernel(self, backend: str, cluster_size, embed_sum, z, indices, decay, **_):
        from dqkernels.ops.vq import vq_ema_update

        vq_ema_update(cluster_size, embed_sum, z, indices, decay=decay, backend=backend)
        return cluster_size, embed_sum


OP = VQEmaUpdateBench()
