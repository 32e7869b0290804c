"""The codebook EMA sweep (``vq_ema_update``, forward only): the in-place update of the
float32 statistics ``cluster_size [K]`` and ``embed_sum [K, D]`` from N = 65536 vectors
and their codes, against the one-hot matmul of VQ-VAE code (eager and
``torch.compile``'d) and ``index_add_``. Memory-bound: GB/s over the minimal bytes."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dqkernels.bench.harness import Baseline, BenchOp, Shape
from dqkernels.bench.vq_nearest import CPU_CHUNK_BYTES, chunk_note, chunk_rows

N = 65536
DECAY = 0.99
#: bytes per element of the N x K one-hot: F.one_hot's int64, then its float32 copy
ONEHOT_BYTES_PER_ELEM = 12


def _shape(name: str, n: int, d: int, k: int) -> Shape:
    return Shape(name, {"N": n, "D": d, "K": k}, f"N={n} D={d} K={k}")


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
                c, s = stats(z[r0:r0 + rows], indices[r0:r0 + rows], K)
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
    description = ("vq_ema_update: in-place EMA of the codebook statistics (cluster_size "
                   "[K], embed_sum [K, D], float32) from N vectors and their codes.")
    forward_only = True
    notes = (
        "inputs: z ~ randn(N, D) in the case's dtype; indices uniform in [0, K), one code "
        "per vector (hard EM: S = 1); state float32 (cluster_size ~ U[0.5, 1.5), embed_sum "
        f"~ randn); decay {DECAY}",
        "every timed call updates the state in place (it keeps decaying: the timing does "
        "not depend on it); the checked call starts from the initial state",
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
        "out err: relative norm error of (cluster_size, embed_sum) after one update "
        "against the same update in float64 (index_add of the already rounded inputs)",
        "bytes_min = z and the indices read, the state read and written; GB/s over it",
    )

    def shapes(self, device_type: str, quick: bool) -> list[Shape]:
        if quick:
            return [_shape("tiny", 37, 13, 29)]
        ks = (512, 8192) if device_type == "cpu" else (512, 8192, 65536)
        return [_shape(f"n{N}-d{d}-k{k}", N, d, k) for d in (64, 256) for k in ks]

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device: torch.device,
                    seed: int) -> dict:
        n, d, k = shape.dims["N"], shape.dims["D"], shape.dims["K"]
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
        indices = torch.randint(0, k, (n,), generator=g).to(device)
        cs0 = (torch.rand(k, generator=g) + 0.5).to(device)
        es0 = torch.randn(k, d, generator=g).to(device)
        w = torch.full((n,), 1.0 - DECAY, dtype=torch.float64, device=device)
        gold_cs = (DECAY * cs0.double()).index_add_(0, indices, w)
        gold_es = (DECAY * es0.double()).index_add_(0, indices, z.double(), alpha=1.0 - DECAY)
        return {"cluster_size": cs0.clone(), "embed_sum": es0.clone(), "z": z,
                "indices": indices, "decay": DECAY, "cluster_size0": cs0, "embed_sum0": es0,
                "gold_cluster_size": gold_cs, "gold_embed_sum": gold_es}

    def reset(self, inputs: dict) -> None:
        inputs["cluster_size"].copy_(inputs["cluster_size0"])
        inputs["embed_sum"].copy_(inputs["embed_sum0"])

    def min_bytes(self, inputs: dict, backward: bool) -> int:
        state = inputs["cluster_size"].nbytes + inputs["embed_sum"].nbytes
        return inputs["z"].nbytes + inputs["indices"].nbytes + 2 * state

    def baselines(self, inputs: dict, device: torch.device, dtype: torch.dtype):
        n, k = inputs["z"].shape[0], inputs["cluster_size"].shape[0]
        rows = chunk_rows(n, k, ONEHOT_BYTES_PER_ELEM, device)
        note = chunk_note(rows, n)
        return [
            Baseline("eager-onehot", _onehot_update(onehot_stats, rows), note=note),
            Baseline("compile", _onehot_update(torch.compile(onehot_stats, dynamic=False),
                                               rows), kind="compile", note=note),
            Baseline("eager-index_add", index_add_update),
        ]

    def backend_forward(self, backend: str, cluster_size, embed_sum, z, indices, decay, **_):
        from dqkernels.ops.vq import vq_ema_update
        vq_ema_update(cluster_size, embed_sum, z, indices, decay=decay, backend=backend)
        return cluster_size, embed_sum

    def check(self, inputs: dict, output) -> dict[str, float]:
        """out_rel_err of the updated ``(cluster_size, embed_sum)`` against float64."""
        num = den = 0.0
        for got, gold in zip(output, (inputs["gold_cluster_size"], inputs["gold_embed_sum"])):
            num += float(((got.double() - gold) ** 2).sum())
            den += float((gold * gold).sum())
        return {"out_rel_err": (num / den) ** 0.5}


OP = VQEmaUpdateBench()
