"""The nearest-code sweep (``vq_nearest``, forward only): N = 65536 vectors against
codebooks of K in {512, 8192, 65536} codes of D in {64, 256}, against the ways people
compute it today: ``torch.cdist(...).argmin``, the FAISS formulation
``argmin(|e|^2 - 2 z e^T)`` through ``torch.addmm`` (eager and ``torch.compile``'d),
FAISS's exact flat index and ``vector_quantize_pytorch``'s ``VectorQuantize``.

Each row is scored by ``exact_frac``: on 256 fixed rows, the fraction whose chosen code's
float64 distance is within 1e-5 relative of the float64 minimum (the op's exactness
contract)."""

from __future__ import annotations

import torch

from dqkernels.bench.spec import BenchOp, Case, Impl

N = 65536
CHECK_ROWS = 256
EXACT_RTOL = 1e-5
#: CPU: eager/compile/vqtorch run in row chunks when their N x K temporaries would
#: exceed this; on CUDA they run whole (an out-of-memory error is recorded as such)
CPU_CHUNK_BYTES = 2 << 30
#: peak bytes per element of the N x K temporaries, beyond the inputs: cdist and addmm
#: hold one matrix of the case's dtype; vqtorch's float32 path holds its distances, a few
#: elementwise intermediates and the one-hot (int64, then float32) it builds even in eval
VQTORCH_BYTES_PER_ELEM = 24


def _case(name: str, n: int, d: int, k: int, quick: bool = False) -> Case:
    return Case(
        name,
        {"N": n, "D": d, "K": k},
        f"N={n} D={d} K={k} ({2 * n * k * d / 1e9:.3g} GFLOP)",
        quick=quick,
    )


def chunk_rows(n: int, k: int, bytes_per_elem: int, device: torch.device) -> int:
    """Rows per chunk keeping ``rows x K x bytes_per_elem`` under the CPU budget (a power
    of two, so that N = 65536 splits evenly); N on CUDA or when it fits."""
    if device.type != "cpu" or n * k * bytes_per_elem <= CPU_CHUNK_BYTES:
        return n
    rows = max(1, CPU_CHUNK_BYTES // (k * bytes_per_elem))
    return 1 << (rows.bit_length() - 1)


def chunk_note(rows: int, n: int) -> str | None:
    return None if rows >= n else f"chunked ({rows} rows per chunk)"


def _by_rows(fn, z: torch.Tensor, rows: int) -> torch.Tensor:
    """``fn(z)`` (int64 indices ``[N]``), evaluated ``rows`` rows at a time."""
    if rows >= z.shape[0]:
        return fn(z)
    out = torch.empty(z.shape[0], dtype=torch.int64, device=z.device)
    for r0 in range(0, z.shape[0], rows):
        out[r0 : r0 + rows] = fn(z[r0 : r0 + rows])
    return out


def cdist_argmin(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``torch.cdist(z, e).argmin(1)``: the usual one-liner."""
    return torch.cdist(z, codebook).argmin(1)


def addmm_argmin(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """``argmin_k |e_k|^2 - 2 z.e_k`` with ``torch.addmm`` (|z|^2 does not change the
    argmin): the FAISS formulation, in the inputs' dtype."""
    norms = (codebook * codebook).sum(1)
    return torch.addmm(norms[None], z, codebook.T, alpha=-2.0).argmin(1)


def _faiss_baseline(D: int, device: torch.device, dtype: torch.dtype) -> Impl:
    if dtype != torch.float32:
        return Impl(
            "faiss", None, "faiss IndexFlatL2 searches float32 vectors only", kind="external"
        )
    try:
        import faiss
    except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
        return Impl(
            "faiss", None, f"faiss not importable: {type(exc).__name__}: {exc}", kind="external"
        )
    if device.type == "cuda":
        if not (hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
            return Impl(
                "faiss",
                None,
                f"faiss {faiss.__version__} has no GPU support here (a faiss-cpu "
                "build or no GPU visible to it); a CPU search is no GPU baseline",
                kind="external",
            )
        import faiss.contrib.torch_utils  # GPU indexes then take torch tensors

        res = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = device.index if device.index is not None else torch.cuda.current_device()

        def gpu_search(z, codebook, **_):
            index = faiss.GpuIndexFlatL2(res, D, config)
            index.add(codebook)
            return index.search(z, 1)[1][:, 0]

        return Impl("faiss", gpu_search, kind="external", note="GpuIndexFlatL2, built per call")
    faiss.omp_set_num_threads(torch.get_num_threads())

    def cpu_search(z, codebook, **_):
        index = faiss.IndexFlatL2(D)
        index.add(codebook.numpy())
        return torch.from_numpy(index.search(z.numpy(), 1)[1][:, 0])

    return Impl("faiss", cpu_search, kind="external", note="IndexFlatL2, built per call")


def _vqtorch_baseline(inputs: dict, device: torch.device) -> Impl:
    try:
        from vector_quantize_pytorch import VectorQuantize
    except Exception as exc:  # noqa: BLE001 - any import failure is a skip reason
        return Impl(
            "vqtorch",
            None,
            f"vector_quantize_pytorch not importable: {type(exc).__name__}: {exc}",
            kind="external",
        )
    K, D = inputs["codebook"].shape
    N = inputs["z"].shape[0]
    vq = VectorQuantize(dim=D, codebook_size=K).to(device).eval()
    with torch.no_grad():
        vq.codebook = inputs["codebook"].float()  # the setter copies into its buffer
    rows = chunk_rows(N, K, VQTORCH_BYTES_PER_ELEM, device)

    def run(z, codebook, **_):
        return _by_rows(lambda zc: vq(zc[None])[1].reshape(-1), z, rows)

    return Impl("vqtorch", run, kind="external", note=chunk_note(rows, N))


class VQNearestBench(BenchOp):
    name = "vq_nearest"
    family = "vq"
    description = (
        "vq_nearest forward: index of the nearest of K codes for each of N "
        "vectors (argmin of the squared distance; exact for fp32)."
    )
    mode = "forward"
    notes = (
        "inputs: codebook ~ randn(K, D); z = codebook[random code] + 0.5 * randn(N, D), "
        "each vector near one code as after training (its own code at squared distance "
        "~0.25 D, the others ~2.25 D); bf16 cases round both",
        "eager-cdist: torch.cdist(z, e).argmin(1); eager-addmm: torch.addmm(|e|^2, z, e.T, "
        "alpha=-2).argmin(1), the FAISS formulation; both in the case's dtype (bf16 scores "
        "in bf16; fp32 at torch's default matmul precision, which dqk bench leaves as it "
        "is: 'highest', no TF32); compile: torch.compile of eager-addmm. The backends also "
        "return the squared distance, the baselines only the indices",
        f"CPU: eager, compile and vqtorch run in row chunks when their N x K temporaries "
        f"would exceed {CPU_CHUNK_BYTES / 2**30:g} GiB (the row's note says so); on CUDA "
        "they run whole and an out-of-memory error is recorded as the row's error",
        "faiss: IndexFlatL2 (GpuIndexFlatL2 on CUDA, when faiss has GPU support) built and "
        "filled with the codebook inside every timed call (the codebook changes every "
        "training step), search k=1; float32 only; on CPU with torch's thread count",
        "vqtorch: vector_quantize_pytorch.VectorQuantize(dim=D, codebook_size=K) in eval "
        "mode, its codebook set to e, forward on z[None]; it computes in float32 whatever "
        "the input dtype and builds the N x K distances and a one-hot",
        f"exact %: on {CHECK_ROWS} fixed rows, the fraction whose chosen code's float64 "
        f"distance (explicit differences of the already rounded inputs) is within "
        f"{EXACT_RTOL:g} relative of the float64 minimum",
        "flops = 2 N K D, the nominal work of the distance products (a kernel that skips "
        "codes it can rule out does less, and can pass 100% of the matmul ceiling); "
        "bytes_min = z and the codebook read, the int64 indices and fp32 distances written",
        "CPU peak memory does not see faiss's own allocations (made outside torch)",
    )

    def cases(self) -> list[Case]:
        return [_case("tiny", 37, 13, 29, quick=True)] + [
            _case(f"n{N}-d{d}-k{k}", N, d, k) for d in (64, 256) for k in (512, 8192, 65536)
        ]

    def make_inputs(self, case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
        n, d, k = case.dims["N"], case.dims["D"], case.dims["K"]
        g = torch.Generator().manual_seed(seed)
        codebook = torch.randn(k, d, generator=g)
        own = torch.randint(0, k, (n,), generator=g)
        z = codebook[own] + 0.5 * torch.randn(n, d, generator=g)
        z = z.to(device=device, dtype=dtype)
        codebook = codebook.to(device=device, dtype=dtype)
        rows = torch.linspace(0, n - 1, min(n, CHECK_ROWS), device=device).round().long()
        rows = torch.unique(rows)
        return {
            "z": z,
            "codebook": codebook,
            "check_rows": rows,
            "check_bound": _distance_bound(z[rows], codebook),
        }

    def flops(self, inputs: dict, backward: bool) -> float:
        n, d = inputs["z"].shape
        return 2.0 * n * inputs["codebook"].shape[0] * d

    def min_bytes(self, inputs: dict, backward: bool) -> int:
        z, e = inputs["z"], inputs["codebook"]
        return z.nbytes + e.nbytes + z.shape[0] * (8 + 4)

    def baselines(self, inputs: dict, device: torch.device, dtype: torch.dtype):
        (n, d), k = inputs["z"].shape, inputs["codebook"].shape[0]
        rows = chunk_rows(n, k, inputs["z"].element_size(), device)
        note = chunk_note(rows, n)
        compiled = torch.compile(addmm_argmin, dynamic=False)
        return [
            Impl(
                "eager-cdist",
                lambda z, codebook, **_: _by_rows(lambda c: cdist_argmin(c, codebook), z, rows),
                note=note,
            ),
            Impl(
                "eager-addmm",
                lambda z, codebook, **_: _by_rows(lambda c: addmm_argmin(c, codebook), z, rows),
                note=note,
            ),
            Impl(
                "compile",
                lambda z, codebook, **_: _by_rows(lambda c: compiled(c, codebook), z, rows),
                kind="compile",
                note=note,
            ),
            _faiss_baseline(d, device, dtype),
            _vqtorch_baseline(inputs, device),
        ]

    def kernel(self, backend: str, z, codebook, **_):
        from dqkernels.ops.vq import vq_nearest

        return vq_nearest(z, codebook, backend=backend)

    def check(self, inputs: dict, output) -> dict[str, float]:
        """exact_frac of the indices in ``output`` (a tensor, or the op's tuple)."""
        idx = output[0] if isinstance(output, tuple) else output
        z, codebook, rows = inputs["z"], inputs["codebook"], inputs["check_rows"]
        idx = torch.as_tensor(idx).reshape(-1).to(device=z.device, dtype=torch.int64)[rows]
        valid = (idx >= 0) & (idx < codebook.shape[0])
        chosen = codebook.index_select(0, idx.clamp(0, codebook.shape[0] - 1)).double()
        dist = ((z[rows].double() - chosen) ** 2).sum(1)
        exact = valid & (dist <= inputs["check_bound"])
        return {"exact_frac": float(exact.double().mean())}


def _distance_bound(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Per row: the float64 minimum squared distance times ``1 + EXACT_RTOL``, plus the
    rounding bound of the float64 expansion ``|z|^2 + |e|^2 - 2 z.e`` it is computed by."""
    z64, e64 = z.double(), codebook.double()
    zn, en = (z64 * z64).sum(1), (e64 * e64).sum(1)
    dmin = (torch.addmm(en[None], z64, e64.T, alpha=-2.0).min(1).values + zn).clamp_min(0.0)
    D = z.shape[1]
    gamma = (D + 2) * 2.0**-53 / (1 - (D + 2) * 2.0**-53)
    emax = float(en.max())
    rounding = 2 * gamma * (zn + emax + 2 * torch.sqrt(zn * emax))
    return dmin * (1 + EXACT_RTOL) + rounding


OP = VQNearestBench()
