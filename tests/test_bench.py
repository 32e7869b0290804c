"""Smoke test of the benchmark harness: the quick CPU sweep writes JSON, markdown and PNG.
The forward-only VQ sweeps also: their baselines, correctness checks, row chunking and
error rows, case selection, and the timing of long calls.

Nothing here asserts on speed: timings in a test process mean nothing. It only checks
that the harness runs end to end and writes well-formed results.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from dqkernels import bench  # noqa: E402
from dqkernels.bench import harness  # noqa: E402


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # --no-memory: the profiler-based CPU memory probe costs ~0.4 s a call; it is
    # tested on its own below
    rc = bench.main(["--quick", "--device", "cpu", "--no-compile", "--no-progress",
                     "--no-memory", "--ops", "dmol", "--out", str(out)])
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return rc, folders[0]


def test_quick_sweep_writes_results(quick_result):
    rc, folder = quick_result
    # 1 means some implementation failed; that must be a recorded backend error (a
    # broken kernel is its own tests' business), never the baselines
    assert rc in (0, 1)
    doc = json.loads((folder / "dmol.json").read_text())
    bad = [r for r in doc["records"] if r["status"] == "error"]
    assert (rc == 1) == bool(bad)
    for r in bad:
        assert r["impl"] not in ("eager", "torch") and r["error"], r
    assert folder.name == harness.device_slug(harness.torch.device("cpu"))
    assert folder.name.startswith("cpu-")
    for ext in ("json", "md", "png"):
        path = folder / f"dmol.{ext}"
        assert path.is_file() and path.stat().st_size > 0, path
    assert (folder / "dmol.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_sweep_json_content(quick_result):
    _, folder = quick_result
    doc = json.loads((folder / "dmol.json").read_text())
    for key in ("schema", "op", "environment", "ceilings", "settings", "notes", "records"):
        assert key in doc, key
    assert doc["op"] == "dmol"
    env = doc["environment"]
    for key in ("device_name", "device_slug", "torch", "python", "date_utc", "git_commit"):
        assert key in env, key
    assert "hostname" not in json.dumps(env).lower()
    assert doc["ceilings"]["copy_gbps"] > 0
    assert doc["ceilings"]["matmul_fp32_tflops"] > 0

    records = doc["records"]
    assert records
    for r in records:
        assert set(harness.RECORD_KEYS) <= set(r), set(harness.RECORD_KEYS) - set(r)
    ok = {(r["case"], r["dtype"], r["impl"]): r for r in records if r["status"] == "ok"}
    cases = {(r["case"], r["dtype"]) for r in records}
    assert {d for _, d in cases} == {"fp32", "bf16"}
    assert not any(r["impl"] == "compile" for r in records)        # --no-compile
    assert not any(r["impl"] == "triton" for r in records)         # never on CPU
    for case, dtype in cases:
        for impl in ("eager", "torch"):
            r = ok.get((case, dtype, impl))
            assert r is not None, (case, dtype, impl)
            assert r["ms"] > 0 and r["fwd_ms"] > 0
            assert r["reps"] >= 3
            assert r["speedup_vs_eager"] > 0 and r["gbps"] > 0
            # the gradient agrees with float64 (loosely: bf16 reference runs in bf16)
            assert r["grad_rel_err"] is not None
            assert r["grad_rel_err"] < (1e-4 if dtype == "fp32" else 0.2)
        assert ok[(case, dtype, "eager")]["speedup_vs_eager"] == pytest.approx(1.0)


def test_quick_sweep_markdown(quick_result):
    _, folder = quick_result
    md = (folder / "dmol.md").read_text()
    assert "| case | shape | dtype | impl |" in md
    assert "| eager |" in md and "| torch |" in md


def test_min_bytes_dmol():
    import torch

    from dqkernels.bench.dmol import OP
    shape = harness.Shape("t", {"B": 2, "C": 3, "H": 4, "W": 5, "M": 2})
    inputs = OP.make_inputs(shape, torch.float32, torch.device("cpu"), seed=0)
    x, p = inputs["x"], inputs["params"]
    assert p.shape == (2, 2 * (1 + 3 * 3), 4, 5) and p.requires_grad
    assert OP.min_bytes(inputs, backward=True) == x.nbytes + 2 * p.nbytes
    assert OP.min_bytes(inputs, backward=False) == x.nbytes + p.nbytes + 2 * 4 * 5 * 4
    # x lies on the 256-level grid
    k = (x + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_cpu_peak_memory_sees_allocations():
    import torch

    x = torch.randn(1000, requires_grad=True)

    def step():
        y = x.repeat(256)                      # 1 MB intermediate
        return torch.autograd.grad((y * y).sum(), [x])

    peak = harness.peak_extra_memory(step, torch.device("cpu"))
    assert peak is not None
    assert 2 * 2**20 <= peak < 64 * 2**20


def test_device_slug():
    cpu = harness.torch.device("cpu")
    assert harness.device_slug(cpu, "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz") == \
        "cpu-intel-xeon-platinum-8480"
    assert harness.device_slug(cpu, "AMD EPYC 7763 64-Core Processor") == "cpu-amd-epyc-7763"
    cuda = harness.torch.device("cuda")
    assert harness.device_slug(cuda, "NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_unknown_op_and_dtype_are_rejected(tmp_path, capsys):
    assert bench.main(["--quick", "--device", "cpu", "--ops", "nope", "--out",
                       str(tmp_path)]) == 2
    assert "unknown op 'nope'" in capsys.readouterr().err
    assert bench.main(["--quick", "--device", "cpu", "--dtypes", "int8", "--out",
                       str(tmp_path)]) == 2
    assert "unknown dtype 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize("op", ["affine_coupling", "mixlogcdf_coupling", "mixlogcdf_inverse",
                                "masked_linear", "masked_conv2d", "flow_train_step"])
def test_quick_sweep_coupling_ops(op, tmp_path):
    """Each coupling, masked and end-to-end benchmark runs end to end: every
    implementation ok, gradients close to float64."""
    rc = bench.main(["--quick", "--device", "cpu", "--no-compile", "--no-progress",
                     "--no-memory", "--dtypes", "fp32", "--ops", op, "--out", str(tmp_path)])
    assert rc == 0
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    doc = json.loads((folder / f"{op}.json").read_text())
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    impls = {r["impl"] for r in ok}
    # the end-to-end step compares whole models on a backend with the torch model (eager)
    assert impls >= ({"eager", "cpp"} if op == "flow_train_step" else {"eager", "torch"})
    for r in ok:
        assert r["ms"] > 0 and r["fwd_ms"] > 0
        assert r["grad_rel_err"] < 1e-4, r


def test_min_bytes_coupling():
    from dqkernels.bench.affine_coupling import OP as AFF
    from dqkernels.bench.mixlogcdf_coupling import OP as MIX
    shape = harness.Shape("s", {"B": 2, "C": 3, "H": 4, "W": 5, "K": 6})
    t = MIX.make_inputs(shape, torch.float32, torch.device("cpu"), 0)
    n, k = 2 * 3 * 4 * 5 * 4, 2 * 3 * 4 * 5 * 6 * 4
    assert MIX.min_bytes(t, backward=False) == 3 * k + 4 * n
    assert MIX.min_bytes(t, backward=True) == 9 * k + 11 * n
    a = AFF.make_inputs(harness.Shape("s", {"B": 2, "C": 3, "H": 4, "W": 5}), torch.float32,
                        torch.device("cpu"), 0)
    assert AFF.min_bytes(a, backward=True) == 11 * n and AFF.min_bytes(a, backward=False) == 4 * n


# ----------------------------------------------------------------------------- VQ (forward-only)


def _run_py():
    """``benchmarks/run.py`` as a module."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
    spec = importlib.util.spec_from_file_location("dqk_benchmarks_run", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vq_quick(tmp_path_factory):
    """``dqk bench --ops vq_nearest,vq_ema_update --quick`` on the torch backend, through
    ``benchmarks/run.py`` with ``--cases``."""
    out = tmp_path_factory.mktemp("vq")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DQK_BENCH_CASES", raising=False)     # run.py sets it from --cases
        rc = _run_py().run(["--quick", "--device", "cpu", "--no-compile", "--no-progress",
                            "--no-memory", "--backends", "torch", "--ops",
                            "vq_nearest,vq_ema_update", "--cases", "tiny", "--out", str(out)])
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return rc, {op: json.loads((folder / f"{op}.json").read_text())
                for op in ("vq_nearest", "vq_ema_update")}, folder


def _external_ok_or_missing(r, module):
    """faiss / vqtorch rows run where the library imports, else are skipped saying so."""
    if r["status"] == "skipped":
        assert f"{module} not importable" in r["error"], r
        return False
    assert r["status"] == "ok", r
    return True


def test_vq_nearest_quick_sweep(vq_quick):
    rc, docs, folder = vq_quick
    assert rc == 0
    doc = docs["vq_nearest"]
    assert doc["forward_only"] is True
    assert doc["settings"]["cases"] == ["tiny"]
    assert doc["ceilings"]["matmul_bf16_tflops"] > 0      # bf16 ceiling measured on CPU too
    recs = {(r["dtype"], r["impl"]): r for r in doc["records"]}
    assert {d for d, _ in recs} == {"fp32", "bf16"}
    assert not any(r["impl"] == "compile" for r in doc["records"])   # --no-compile
    for dtype in ("fp32", "bf16"):
        for impl in ("eager-cdist", "eager-addmm", "torch"):
            r = recs[(dtype, impl)]
            assert r["status"] == "ok", r
            assert r["kind"] == ("backend" if impl == "torch" else "eager")
            assert r["ms"] > 0 and r["reps"] >= 3 and r["fwd_ms"] is None
            assert r["flops"] == 2 * 37 * 29 * 13 and r["tflops"] > 0 and r["frac_matmul"] > 0
            assert r["exact_frac"] == 1.0
            assert r["grad_rel_err"] is None
            assert set(r["vs"]) >= {"eager-cdist", "eager-addmm"}
            assert r["vs"]["eager-addmm"] == pytest.approx(recs[(dtype, "eager-addmm")]["ms"]
                                                           / r["ms"])
        fastest = min(recs[(dtype, i)]["ms"] for i in ("eager-cdist", "eager-addmm"))
        assert recs[(dtype, "torch")]["speedup_vs_eager"] == pytest.approx(
            fastest / recs[(dtype, "torch")]["ms"])
        if _external_ok_or_missing(recs[(dtype, "vqtorch")], "vector_quantize_pytorch"):
            assert recs[(dtype, "vqtorch")]["exact_frac"] == 1.0
    if _external_ok_or_missing(recs[("fp32", "faiss")], "faiss"):
        assert recs[("fp32", "faiss")]["exact_frac"] == 1.0
        assert "faiss" in recs[("fp32", "torch")]["vs"]
    assert recs[("bf16", "faiss")]["status"] == "skipped"
    assert "float32" in recs[("bf16", "faiss")]["error"]
    md = (folder / "vq_nearest.md").read_text()
    assert "| ms | vs eager | vs compile |" in md and "| exact % |" in md
    assert "| TFLOP/s | % matmul |" in md and "fwd+bwd ms" not in md
    assert (folder / "vq_nearest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vq_ema_update_quick_sweep(vq_quick):
    _, docs, folder = vq_quick
    doc = docs["vq_ema_update"]
    assert doc["forward_only"] is True
    recs = {(r["dtype"], r["impl"]): r for r in doc["records"]}
    for dtype in ("fp32", "bf16"):
        for impl in ("eager-onehot", "eager-index_add", "torch"):
            r = recs[(dtype, impl)]
            assert r["status"] == "ok", r
            assert r["ms"] > 0 and r["gbps"] > 0 and r["frac_copy_bw"] > 0
            assert r["flops"] is None and r["tflops"] is None
            assert r["out_rel_err"] < 1e-6, r       # float32 state, float64 gold
            assert r["note"] is None                 # the tiny one-hot is not chunked
    md = (folder / "vq_ema_update.md").read_text()
    assert "| GB/s | % copy BW |" in md and "| out err |" in md


def test_vq_backend_failure_is_an_error_row(monkeypatch):
    """A kernel that raises (e.g. "vq: not built" before the C++ kernels land) gives an
    error row; the other rows still run."""
    from dqkernels.kernels.vq import torch as torch_vq

    def broken(*args):
        raise RuntimeError("vq: not built")

    monkeypatch.setattr(torch_vq, "nearest", broken)
    cfg = harness.SweepConfig(device=torch.device("cpu"), dtypes=[torch.float32], quick=True,
                              compile=False, backends=["torch"], memory=False, progress=False,
                              timing=harness.TimingConfig(cpu_budget_s=0.005))
    recs = {r.impl: r for r in harness.run_op(harness.get_op("vq_nearest"), cfg, {})}
    assert recs["torch"].status == "error"
    assert recs["torch"].error == "RuntimeError: vq: not built"
    assert recs["torch"].ms is None
    assert recs["eager-addmm"].status == "ok" and recs["eager-addmm"].exact_frac == 1.0
    assert "| torch | error: RuntimeError: vq: not built |" in harness.markdown_table(
        {"op": "vq_nearest", "environment": {}, "forward_only": True,
         "records": [dataclasses.asdict(r) for r in recs.values()]})


def test_vq_chunked_baselines(monkeypatch):
    """Over the CPU memory budget the eager, compile and one-hot rows run in row chunks,
    say so in their note, and still give the right answer."""
    from dqkernels.bench import vq_nearest
    monkeypatch.setattr(vq_nearest, "CPU_CHUNK_BYTES", 29 * 24 * 4)   # K=29: tiny budget
    cfg = harness.SweepConfig(device=torch.device("cpu"), dtypes=[torch.float32], quick=True,
                              compile=True, backends=[], memory=False, progress=False,
                              timing=harness.TimingConfig(cpu_budget_s=0.005))
    near = {r.impl: r for r in harness.run_op(harness.get_op("vq_nearest"), cfg, {})}
    for impl in ("eager-cdist", "eager-addmm", "compile"):
        assert near[impl].status == "ok", near[impl]
        assert near[impl].note == "chunked (16 rows per chunk)"     # 37 rows: 16 + 16 + 5
        assert near[impl].exact_frac == 1.0
    assert near["compile"].compile_s > 0
    if near["vqtorch"].status == "ok":
        assert near["vqtorch"].note == "chunked (4 rows per chunk)"
        assert near["vqtorch"].exact_frac == 1.0
    cfg.compile = False
    ema = {r.impl: r for r in harness.run_op(harness.get_op("vq_ema_update"), cfg, {})}
    assert ema["eager-onehot"].note == "chunked (8 rows per chunk)"
    assert ema["eager-onehot"].out_rel_err < 1e-6
    assert ema["eager-index_add"].note is None


def test_vq_checks_catch_wrong_outputs():
    from dqkernels.bench.vq_ema_update import OP as EMA
    from dqkernels.bench.vq_nearest import OP as NEAR
    from dqkernels.reference.vq import vq_nearest_reference
    shape = harness.Shape("s", {"N": 300, "D": 7, "K": 50})
    inputs = NEAR.make_inputs(shape, torch.float32, torch.device("cpu"), seed=1)
    assert inputs["check_rows"].numel() == 256
    gold, _ = vq_nearest_reference(inputs["z"], inputs["codebook"])
    assert NEAR.check(inputs, gold) == {"exact_frac": 1.0}
    assert NEAR.check(inputs, (gold, None)) == {"exact_frac": 1.0}
    wrong = (gold + 1) % 50
    assert NEAR.check(inputs, wrong)["exact_frac"] < 0.1
    out_of_range = gold.clone()
    out_of_range[inputs["check_rows"][:64]] = 50
    assert NEAR.check(inputs, out_of_range)["exact_frac"] == pytest.approx(0.75)
    assert NEAR.flops(inputs, backward=False) == 2 * 300 * 50 * 7
    assert NEAR.min_bytes(inputs, backward=False) == (300 + 50) * 7 * 4 + 300 * 12

    e = EMA.make_inputs(shape, torch.bfloat16, torch.device("cpu"), seed=1)
    assert e["cluster_size"].dtype == torch.float32 and e["z"].dtype == torch.bfloat16
    assert EMA.min_bytes(e, backward=False) == 300 * 7 * 2 + 300 * 8 + 2 * (50 + 50 * 7) * 4
    EMA.reset(e)
    assert EMA.check(e, (e["cluster_size"], e["embed_sum"]))["out_rel_err"] > 1e-3  # no update
    cs, es = e["cluster_size"], e["embed_sum"]
    EMA.backend_forward("torch", cs, es, e["z"], e["indices"], e["decay"])
    assert EMA.check(e, (cs, es))["out_rel_err"] < 1e-6
    EMA.reset(e)
    assert torch.equal(cs, e["cluster_size0"]) and torch.equal(es, e["embed_sum0"])


def test_case_selection(monkeypatch):
    shapes = [harness.Shape(n, {"N": 1}) for n in ("n65536-d64-k512", "n65536-d256-k512",
                                                    "n65536-d64-k8192")]

    def names(patterns):
        return [s.name for s in harness.select_shapes(shapes, patterns)]

    assert names(None) == [s.name for s in shapes]
    assert names(["*-d64-*"]) == ["n65536-d64-k512", "n65536-d64-k8192"]
    assert names(["n65536-d256-k512", "nope"]) == ["n65536-d256-k512"]
    cfg = harness.SweepConfig(device=torch.device("cpu"), dtypes=[torch.float32])
    monkeypatch.setenv("DQK_BENCH_CASES", " *-k8192 , ")
    assert harness._case_patterns(cfg) == ["*-k8192"]
    cfg.cases = ["*-k512"]
    assert harness._case_patterns(cfg) == ["*-k512"]
    assert [s.name for s in harness.get_op("vq_nearest").shapes("cpu", quick=False)] == [
        f"n65536-d{d}-k{k}" for d in (64, 256) for k in (512, 8192, 65536)]


def test_time_forward_long_calls_count_the_first_call():
    calls = []
    cfg = harness.TimingConfig(cpu_long_call_s=2.0, cpu_long_budget_s=10.0)
    cpu = torch.device("cpu")
    # a 4 s call: it is the first of min(3, 10 / 4) = 2 repeats; the other is a no-op here
    ms, reps = harness.time_forward(lambda: calls.append(1), cpu, cfg, first_call_s=4.0)
    assert reps == 2 and len(calls) == 1
    assert ms == pytest.approx(2000.0, rel=1e-3)       # median of 4 s and ~0 s
    calls.clear()
    ms, reps = harness.time_forward(lambda: calls.append(1), cpu, cfg, first_call_s=30.0)
    assert (ms, reps, calls) == (30000.0, 1, [])
    # a short call: the usual warm-up, then repeats
    ms, reps = harness.time_forward(lambda: calls.append(1), cpu,
                                    harness.TimingConfig(cpu_budget_s=0.001), first_call_s=0.1)
    assert reps >= 3 and len(calls) >= reps + 1 and ms < 100
