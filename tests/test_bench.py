"""Smoke test of the benchmark runner: the quick CPU sweep writes JSON, markdown and PNG.
The forward-only VQ sweeps also: their baselines, correctness checks, row chunking and
error rows, case selection, and the timing of long calls. Each measurement mode on a toy
op; the reading and redrawing of the committed results.

Nothing here asserts on speed: timings in a test process mean nothing. It only checks
that the runner runs end to end and writes well-formed results.
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
from dqkernels.bench import modes, report, runner  # noqa: E402
from dqkernels.bench.cases import get_op  # noqa: E402
from dqkernels.bench.environment import device_slug  # noqa: E402
from dqkernels.bench.memory import peak_extra_memory  # noqa: E402
from dqkernels.bench.records import RECORD_KEYS  # noqa: E402
from dqkernels.bench.selection import Selection  # noqa: E402
from dqkernels.bench.spec import BenchOp, Case, TrainStepOp  # noqa: E402
from dqkernels.bench.timing import TimingConfig, time_call  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


# a quick CPU sweep; --no-memory: the profiler-based CPU memory probe costs ~0.4 s a call
# (it is tested on its own below)
QUICK_CPU = "--quick --device cpu --no-compile --no-progress --no-memory".split()


def _quick_sweep(out, *argv):
    """``bench.main`` on QUICK_CPU and argv into out: its exit status and the one results
    folder it wrote."""
    rc = bench.main([*QUICK_CPU, *argv, "--out", str(out)])
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return rc, folders[0]


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    return _quick_sweep(tmp_path_factory.mktemp("bench"), "--ops", "dmol")


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
    assert folder.name == device_slug(torch.device("cpu"))
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
        assert set(RECORD_KEYS) <= set(r), set(RECORD_KEYS) - set(r)
    ok = {(r["case"], r["dtype"], r["impl"]): r for r in records if r["status"] == "ok"}
    cases = {(r["case"], r["dtype"]) for r in records}
    assert {d for _, d in cases} == {"fp32", "bf16"}
    assert not any(r["impl"] == "compile" for r in records)  # --no-compile
    assert not any(r["impl"] == "triton" for r in records)  # never on CPU
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
    from dqkernels.bench.cases.dmol import OP

    shape = Case("t", {"B": 2, "C": 3, "H": 4, "W": 5, "M": 2})
    inputs = OP.make_inputs(shape, torch.float32, torch.device("cpu"), seed=0)
    x, p = inputs["x"], inputs["params"]
    assert p.shape == (2, 2 * (1 + 3 * 3), 4, 5) and p.requires_grad
    assert OP.min_bytes(inputs, backward=True) == x.nbytes + 2 * p.nbytes
    assert OP.min_bytes(inputs, backward=False) == x.nbytes + p.nbytes + 2 * 4 * 5 * 4
    # x lies on the 256-level grid
    k = (x + 1) * 127.5
    assert torch.allclose(k, k.round(), atol=1e-4)


def test_cpu_peak_memory_sees_allocations():
    x = torch.randn(1000, requires_grad=True)

    def step():
        y = x.repeat(256)  # 1 MB intermediate
        return torch.autograd.grad((y * y).sum(), [x])

    peak = peak_extra_memory(step, torch.device("cpu"))
    assert peak is not None
    assert 2 * 2**20 <= peak < 64 * 2**20


def test_device_slug():
    cpu = torch.device("cpu")
    assert (
        device_slug(cpu, "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz")
        == "cpu-intel-xeon-platinum-8480"
    )
    assert device_slug(cpu, "AMD EPYC 7763 64-Core Processor") == "cpu-amd-epyc-7763"
    cuda = torch.device("cuda")
    assert device_slug(cuda, "NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_unknown_op_and_dtype_are_rejected(tmp_path, capsys):
    assert bench.main(["--quick", "--device", "cpu", "--ops", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown op 'nope'" in capsys.readouterr().err
    assert (
        bench.main(["--quick", "--device", "cpu", "--dtypes", "int8", "--out", str(tmp_path)]) == 2
    )
    assert "unknown dtype 'int8'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "op",
    [
        "affine_coupling",
        "mixlogcdf_coupling",
        "mixlogcdf_inverse",
        "masked_linear",
        "masked_conv2d",
        "flow_train_step",
        "bernoulli_flip_loglik",
        "sbn_train_step",
    ],
)
def test_quick_sweep_coupling_ops(op, tmp_path):
    """Each coupling, masked and end-to-end benchmark runs end to end: every
    implementation ok, gradients close to float64."""
    rc, folder = _quick_sweep(tmp_path, "--dtypes", "fp32", "--ops", op)
    assert rc == 0
    doc = json.loads((folder / f"{op}.json").read_text())
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    impls = {r["impl"] for r in ok}
    # the end-to-end steps compare whole models on a backend with the eager model
    steps = ("flow_train_step", "sbn_train_step")
    assert impls >= ({"eager", "cpp"} if op in steps else {"eager", "torch"})
    for r in ok:
        assert r["ms"] > 0 and r["fwd_ms"] > 0
        assert r["grad_rel_err"] < 1e-4, r


def test_min_bytes_coupling():
    from dqkernels.bench.cases.affine_coupling import OP as AFF
    from dqkernels.bench.cases.mixlogcdf_coupling import OP as MIX

    shape = Case("s", {"B": 2, "C": 3, "H": 4, "W": 5, "K": 6})
    t = MIX.make_inputs(shape, torch.float32, torch.device("cpu"), 0)
    n, k = 2 * 3 * 4 * 5 * 4, 2 * 3 * 4 * 5 * 6 * 4
    assert MIX.min_bytes(t, backward=False) == 3 * k + 4 * n
    assert MIX.min_bytes(t, backward=True) == 9 * k + 11 * n
    a = AFF.make_inputs(
        Case("s", {"B": 2, "C": 3, "H": 4, "W": 5}), torch.float32, torch.device("cpu"), 0
    )
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
        mp.delenv("DQK_BENCH_CASES", raising=False)  # only --cases picks here
        picks = "--backends torch --ops vq_nearest,vq_ema_update --cases tiny".split()
        rc = _run_py().run([*QUICK_CPU, *picks, "--out", str(out)])
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return (
        rc,
        {
            op: json.loads((folder / f"{op}.json").read_text())
            for op in ("vq_nearest", "vq_ema_update")
        },
        folder,
    )


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
    assert doc["ceilings"]["matmul_bf16_tflops"] > 0  # bf16 ceiling measured on CPU too
    recs = {(r["dtype"], r["impl"]): r for r in doc["records"]}
    assert {d for d, _ in recs} == {"fp32", "bf16"}
    assert not any(r["impl"] == "compile" for r in doc["records"])  # --no-compile
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
            assert r["vs"]["eager-addmm"] == pytest.approx(
                recs[(dtype, "eager-addmm")]["ms"] / r["ms"]
            )
        fastest = min(recs[(dtype, i)]["ms"] for i in ("eager-cdist", "eager-addmm"))
        assert recs[(dtype, "torch")]["speedup_vs_eager"] == pytest.approx(
            fastest / recs[(dtype, "torch")]["ms"]
        )
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
            assert r["out_rel_err"] < 1e-6, r  # float32 state, float64 gold
            assert r["note"] is None  # the tiny one-hot is not chunked
    md = (folder / "vq_ema_update.md").read_text()
    assert "| GB/s | % copy BW |" in md and "| out err |" in md


def test_vq_backend_failure_is_an_error_row(monkeypatch):
    """A kernel that raises (e.g. "vq: not built" before the C++ kernels land) gives an
    error row; the other rows still run."""
    from dqkernels.kernels.vq import torch as torch_vq

    def broken(*args):
        raise RuntimeError("vq: not built")

    monkeypatch.setattr(torch_vq, "nearest", broken)
    cfg = runner.SweepConfig(
        device=torch.device("cpu"),
        selection=Selection(quick=True, dtypes=[torch.float32], backends=["torch"]),
        compile=False,
        memory=False,
        progress=False,
        timing=TimingConfig(cpu_budget_s=0.005),
    )
    recs = {r.impl: r for r in runner.run_op(get_op("vq_nearest"), cfg, {})}
    assert recs["torch"].status == "error"
    assert recs["torch"].error == "RuntimeError: vq: not built"
    assert recs["torch"].ms is None
    assert recs["eager-addmm"].status == "ok" and recs["eager-addmm"].exact_frac == 1.0
    assert "| torch | error: RuntimeError: vq: not built |" in report.markdown_table(
        {
            "op": "vq_nearest",
            "environment": {},
            "forward_only": True,
            "records": [dataclasses.asdict(r) for r in recs.values()],
        }
    )


def test_vq_chunked_baselines(monkeypatch):
    """Over the CPU memory budget the eager, compile and one-hot rows run in row chunks,
    say so in their note, and still give the right answer."""
    from dqkernels.bench.cases import vq_nearest

    monkeypatch.setattr(vq_nearest, "CPU_CHUNK_BYTES", 29 * 24 * 4)  # K=29: tiny budget
    cfg = runner.SweepConfig(
        device=torch.device("cpu"),
        selection=Selection(quick=True, dtypes=[torch.float32], backends=[]),
        compile=True,
        memory=False,
        progress=False,
        timing=TimingConfig(cpu_budget_s=0.005),
    )
    near = {r.impl: r for r in runner.run_op(get_op("vq_nearest"), cfg, {})}
    for impl in ("eager-cdist", "eager-addmm", "compile"):
        assert near[impl].status == "ok", near[impl]
        assert near[impl].note == "chunked (16 rows per chunk)"  # 37 rows: 16 + 16 + 5
        assert near[impl].exact_frac == 1.0
    assert near["compile"].compile_s > 0
    if near["vqtorch"].status == "ok":
        assert near["vqtorch"].note == "chunked (4 rows per chunk)"
        assert near["vqtorch"].exact_frac == 1.0
    cfg.compile = False
    ema = {r.impl: r for r in runner.run_op(get_op("vq_ema_update"), cfg, {})}
    assert ema["eager-onehot"].note == "chunked (8 rows per chunk)"
    assert ema["eager-onehot"].out_rel_err < 1e-6
    assert ema["eager-index_add"].note is None


def test_vq_checks_catch_wrong_outputs():
    from dqkernels.bench.cases.vq_ema_update import OP as EMA
    from dqkernels.bench.cases.vq_nearest import OP as NEAR
    from dqkernels.reference.vq import vq_ema_update_reference, vq_nearest_reference

    shape = Case("s", {"N": 300, "D": 7, "K": 50})
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

    # the state-update mode: float64 gold, check, restore
    mode = modes.get_mode(EMA.mode)
    prep = mode.prepare(EMA, shape, torch.bfloat16, torch.device("cpu"), seed=1)
    e = prep.inputs
    assert e["cluster_size"].dtype == torch.float32 and e["z"].dtype == torch.bfloat16
    assert EMA.min_bytes(e, backward=False) == 300 * 7 * 2 + 300 * 8 + 2 * (50 + 50 * 7) * 4
    gold = mode.gold(EMA, prep)
    # the gold is the reference's update in float64 (index_add: no N x K one-hot)
    ref = vq_ema_update_reference(
        e["cluster_size"], e["embed_sum"], e["z"], e["indices"], e["decay"]
    )
    assert all(torch.allclose(g, r, rtol=1e-12, atol=1e-12) for g, r in zip(gold, ref))
    cs, es = e["cluster_size"], e["embed_sum"]
    cs0, es0 = cs.clone(), es.clone()
    assert mode.check(EMA, prep, (cs, es), gold)["out_rel_err"] > 1e-3  # no update
    calls = mode.calls(EMA, mode.backend(EMA, "torch", prep), prep)
    assert calls.restore is not None and mode.restore_each_call
    assert mode.check(EMA, prep, calls.step(), gold)["out_rel_err"] < 1e-6
    assert not torch.equal(cs, cs0)
    calls.step()  # a second update
    assert mode.check(EMA, prep, (cs, es), gold)["out_rel_err"] > 1e-3
    calls.restore()
    assert torch.equal(cs, cs0) and torch.equal(es, es0)


class _Named:
    """An op stand-in for the selection: a name and cases."""

    def __init__(self, name, cases):
        self.name, self._cases = name, cases

    def cases(self):
        return self._cases


def test_case_selection(monkeypatch):
    cases = [Case(n, {"N": 1}) for n in ("n65536-d64-k512", "n65536-d256-k512", "n65536-d64-k8192")]
    op = _Named("vq_nearest", cases)

    def names(patterns):
        sel = Selection() if patterns is None else Selection.from_flags(cases=patterns, environ={})
        return [c.name for c in sel.cases(op, "cpu")]

    assert names(None) == [c.name for c in cases]
    assert names(["*-d64-*"]) == ["n65536-d64-k512", "n65536-d64-k8192"]
    assert names(["n65536-d256-k512", "nope"]) == ["n65536-d256-k512"]
    # $DQK_BENCH_CASES is --cases when the flag is not given
    monkeypatch.setenv("DQK_BENCH_CASES", " *-k8192 , ")
    assert Selection.from_flags().case_patterns() == ["*-k8192"]
    assert Selection.from_flags(cases=["*-k512"]).case_patterns() == ["*-k512"]
    assert [c.name for c in Selection.from_flags().cases(op, "cpu")] == ["n65536-d64-k8192"]
    monkeypatch.delenv("DQK_BENCH_CASES")
    assert Selection.from_flags().case_patterns() is None
    sel = Selection(quick=False)
    assert [c.name for c in sel.cases(get_op("vq_nearest"), "cpu")] == [
        f"n65536-d{d}-k{k}" for d in (64, 256) for k in (512, 8192, 65536)
    ]


def test_selection_is_one_mechanism():
    """--ops x --cases, --select, the quick tier and the device all pick through one
    Selection; dtypes and backends ride along as row filters."""
    known = ["dmol", "vq_ema_update", "vq_nearest"]
    sel = Selection.from_flags(ops=["vq_nearest", "dmol"], cases=["tiny*"], environ={})
    assert sel.patterns == ["vq_nearest/tiny*", "dmol/tiny*"]
    assert sel.op_names(known) == ["vq_nearest", "dmol"]  # the order given
    assert Selection.from_flags(environ={}).op_names(known) == known
    sel = Selection.from_flags(select=["vq_*/n65536-d64-*", "dmol"], environ={})
    assert sel.op_names(known) == ["vq_ema_update", "vq_nearest", "dmol"]
    assert sel.case_patterns() == ["n65536-d64-*", "*"]
    with pytest.raises(ValueError, match="--select"):
        Selection.from_flags(ops=["dmol"], select=["dmol/*"])
    op = _Named(
        "x",
        [
            Case("tiny", {"N": 1}, quick=True),
            Case("big", {"N": 9}),
            Case("big", {"N": 99}, device="cuda"),
            Case("cpu-only", {"N": 5}, device="cpu"),
        ],
    )
    full, quick = Selection(), Selection(quick=True)
    assert [(c.name, c.dims["N"]) for c in full.cases(op, "cpu")] == [("big", 9), ("cpu-only", 5)]
    assert [(c.name, c.dims["N"]) for c in full.cases(op, "cuda")] == [("big", 9), ("big", 99)]
    assert [c.name for c in quick.cases(op, "cpu")] == ["tiny"]
    assert Selection.from_flags(cases=["tiny"], environ={}).cases(op, "cpu") == []
    assert [c.name for c in Selection(patterns=["x/c*"]).cases(op, "cpu")] == ["cpu-only"]
    assert Selection(patterns=["y/*"]).cases(op, "cpu") == []
    # every op's cases: unique names per device and tier
    for name in bench._known_ops():
        for device in ("cpu", "cuda"):
            for tier in (full, quick):
                got = [c.name for c in tier.cases(get_op(name), device)]
                assert got and len(got) == len(set(got)), (name, device, got)


def test_cli_select_and_list(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DQK_BENCH_CASES", raising=False)
    assert bench.main(["--list", "--quick", "--device", "cpu", "--select", "vq_*"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["vq_ema_update/tiny", "vq_nearest/tiny"]
    assert (
        bench.main(
            ["--list", "--device", "cpu", "--ops", "dmol,vq_nearest", "--cases", "*-d64-k512,small"]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["dmol/small", "vq_nearest/n65536-d64-k512"]
    monkeypatch.setenv("DQK_BENCH_CASES", "cifar10")
    assert bench.main(["--list", "--device", "cuda", "--ops", "dmol"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "dmol/cifar10"
    assert bench.main(["--list", "--ops", "dmol", "--select", "dmol/*"]) == 2
    assert "--select replaces --ops and --cases" in capsys.readouterr().err
    assert bench.main(["--list", "--select", "nope*"]) == 2
    assert "no op matches" in capsys.readouterr().err


def test_time_call_long_calls_count_the_first_call():
    calls = []
    cfg = TimingConfig(cpu_long_call_s=2.0, cpu_long_budget_s=10.0)
    cpu = torch.device("cpu")
    # a 4 s call: it is the first of min(3, 10 / 4) = 2 repeats; the other is a no-op here
    ms, reps = time_call(lambda: calls.append(1), cpu, cfg, first_call_s=4.0)
    assert reps == 2 and len(calls) == 1
    assert ms == pytest.approx(2000.0, rel=1e-3)  # median of 4 s and ~0 s
    calls.clear()
    ms, reps = time_call(lambda: calls.append(1), cpu, cfg, first_call_s=30.0)
    assert (ms, reps, calls) == (30000.0, 1, [])
    # a short call: the usual warm-up, then repeats
    ms, reps = time_call(
        lambda: calls.append(1), cpu, TimingConfig(cpu_budget_s=0.001), first_call_s=0.1
    )
    assert reps >= 3 and len(calls) >= reps + 1 and ms < 100


# ----------------------------------------------------------------------------- modes on toy ops


_CEILINGS = {"copy_gbps": 10.0, "matmul_fp32_tflops": 1.0}


def _cfg(**kw) -> runner.SweepConfig:
    kw.setdefault("compile", False)
    kw.setdefault("memory", False)
    return runner.SweepConfig(
        device=torch.device("cpu"),
        progress=False,
        selection=Selection(quick=True, dtypes=[torch.float32]),
        timing=TimingConfig(cpu_budget_s=0.002),
        **kw,
    )


class _ToyOp(BenchOp):
    """x, w [N]; the ``bad`` backend is off by a factor (its check must say so)."""

    name = "toy"
    grad_inputs = ("x", "w")
    N = 64

    def cases(self):
        return [Case("t", {"N": self.N}, quick=True)]

    def make_inputs(self, case, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        return {
            k: torch.randn(case.dims["N"], generator=g).to(device, dtype).requires_grad_()
            for k in ("x", "w")
        }

    def kernel(self, backend, **inputs):
        out = self.reference(**inputs)
        return out * 1.5 if backend == "bad" else out

    def min_bytes(self, inputs, backward):
        return inputs["x"].nbytes * (5 if backward else 3)

    def flops(self, inputs, backward):
        return 1e3 * (3 if backward else 1)

    def backends(self, device, dtype):
        return ["torch", "bad"]


class _ToyLoss(_ToyOp):
    def reference(self, x, w):
        return (x * w).square().sum()


class _ToyForward(_ToyOp):
    mode = "forward"

    def reference(self, x, w):
        return torch.exp(x) * w


class _ToyState(_ToyOp):
    """acc <- acc / 2 + x in place; every call records the state it starts from."""

    mode = "state-update"
    state_inputs = ("acc",)

    def __init__(self):
        self.seen = []

    def make_inputs(self, case, dtype, device, seed):
        inputs = super().make_inputs(case, dtype, device, seed)
        inputs["acc"] = torch.ones(case.dims["N"], dtype=dtype, device=device)
        return inputs

    def reference(self, acc, x, w):
        return acc.mul_(0.5).add_(x)

    def kernel(self, backend, acc, x, w):
        self.seen.append(acc.clone())
        return super().kernel(backend, acc=acc, x=x, w=w)


def test_mode_forward_backward_on_a_toy_op():
    op = _ToyLoss()
    recs = {
        r.impl: r
        for r in runner.run_case(op, _cfg(memory=True), op.cases()[0], torch.float32, _CEILINGS)
    }
    assert list(recs) == ["eager", "torch", "bad"]
    for r in recs.values():
        assert r.status == "ok", r
        assert r.ms > 0 and r.fwd_ms > 0 and r.reps >= 3 and r.fwd_reps >= 3
        assert r.bytes_min == 64 * 4 * 5 and r.fwd_bytes_min == 64 * 4 * 3
        assert r.gbps == pytest.approx(r.bytes_min / r.ms / 1e6)
        assert r.frac_copy_bw == pytest.approx(r.gbps / 10.0)
        assert r.fwd_gbps == pytest.approx(r.fwd_bytes_min / r.fwd_ms / 1e6)
        assert r.flops == 3e3 and r.tflops == pytest.approx(3e3 / r.ms / 1e9)
        assert r.frac_matmul == pytest.approx(r.tflops)
        assert r.speedup_vs_eager == pytest.approx(recs["eager"].ms / r.ms)
        assert r.fwd_speedup_vs_eager == pytest.approx(recs["eager"].fwd_ms / r.fwd_ms)
        assert r.vs is None and r.out_rel_err is None and r.speedup_vs_compile is None
        assert r.peak_mem_bytes is not None
    assert recs["eager"].kind == "eager" and recs["torch"].kind == "backend"
    assert recs["eager"].grad_rel_err < 1e-6 and recs["torch"].grad_rel_err < 1e-6
    assert recs["bad"].grad_rel_err == pytest.approx(0.5, rel=1e-4)


def test_mode_forward_on_a_toy_op():
    op = _ToyForward()
    recs = {r.impl: r for r in runner.run_case(op, _cfg(), op.cases()[0], torch.float32, _CEILINGS)}
    assert list(recs) == ["eager", "torch", "bad"]
    for r in recs.values():
        assert r.status == "ok", r
        assert r.fwd_ms is None and r.grad_rel_err is None and r.fwd_bytes_min is None
        assert r.bytes_min == 64 * 4 * 3 and r.flops == 1e3
        assert set(r.vs) == {"eager"} and r.vs["eager"] == pytest.approx(r.speedup_vs_eager)
    assert recs["torch"].out_rel_err < 1e-6
    assert recs["bad"].out_rel_err == pytest.approx(0.5, rel=1e-4)
    # the compile row: torch.compile of the reference by default
    base = op.baselines(
        op.make_inputs(op.cases()[0], torch.float32, torch.device("cpu"), 0),
        torch.device("cpu"),
        torch.float32,
    )
    assert [(b.name, b.kind) for b in base] == [("eager", "eager"), ("compile", "compile")]


def test_compile_rows_are_measured_last(monkeypatch):
    """The compile row is reported after eager but measured after every other row: what a
    compile leaves behind must not slow the rows timed after it."""
    op = _ToyForward()
    measured = []
    monkeypatch.setattr(runner, "_measure", lambda rec, *a: measured.append(rec.impl))
    recs = runner.run_case(op, _cfg(compile=True), op.cases()[0], torch.float32, _CEILINGS)
    assert [r.impl for r in recs] == ["eager", "compile", "torch", "bad"]
    assert measured == ["eager", "torch", "bad", "compile"]


def test_mode_state_update_restores_the_state_before_every_call():
    op = _ToyState()
    recs = {r.impl: r for r in runner.run_case(op, _cfg(), op.cases()[0], torch.float32, _CEILINGS)}
    assert list(recs) == ["eager", "torch", "bad"]
    assert all(r.status == "ok" and r.ms > 0 for r in recs.values())
    assert recs["eager"].out_rel_err < 1e-6 and recs["torch"].out_rel_err < 1e-6
    assert recs["bad"].out_rel_err > 0.1
    # every call of the kernel (the checked one, the warm-ups, the timed ones) started
    # from the initial state
    assert len(op.seen) >= 2 * (1 + 1 + 3)  # torch and bad: checked, warm-up, >= 3 timed
    assert all(torch.equal(s, torch.ones(64)) for s in op.seen)
    # the same op timed as a plain forward keeps updating its state: the test can fail
    op.seen.clear()
    op.mode = "forward"
    runner.run_case(op, _cfg(check=False), op.cases()[0], torch.float32, _CEILINGS)
    assert not all(torch.equal(s, torch.ones(64)) for s in op.seen)


class _Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class _ToyTrain(TrainStepOp):
    """A small MLP regression; the ``bad`` backend's model scales its output."""

    name = "toy_train"

    def __init__(self):
        self.models = []

    def cases(self):
        return [Case("t", {"B": 16, "D": 5}, quick=True)]

    def build_model(self, case, backend):
        torch.manual_seed(0)
        layers = [torch.nn.Linear(case.dims["D"], 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)]
        model = torch.nn.Sequential(*layers, _Scale(1.5 if backend == "bad" else 1.0))
        self.models.append(model)
        return model

    def make_batch(self, model, case, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(case.dims["B"], case.dims["D"], generator=g)
        return {
            "x": x.to(device, dtype),
            "y": torch.randn(case.dims["B"], 1, generator=g).to(device, dtype),
        }

    def loss(self, model, x, y):
        return (model(x) - y).square().mean()

    def optimizer(self, params):
        return torch.optim.SGD(params, lr=0.2)

    def backends(self, device, dtype):
        return ["cpp", "bad"]


def test_mode_train_step_on_a_toy_model():
    op = _ToyTrain()
    recs = {
        r.impl: r
        for r in runner.run_case(op, _cfg(compile=True), op.cases()[0], torch.float32, _CEILINGS)
    }
    assert list(recs) == ["eager", "compile", "cpp", "bad"]
    for r in recs.values():
        assert r.status == "ok", r
        assert r.ms > 0 and r.fwd_ms > 0 and r.vs is None
        assert r.bytes_min is None and r.gbps is None and r.flops is None
    assert recs["compile"].compile_s > 0 and recs["compile"].kind == "compile"
    # every row's checked step starts from the same parameters (the eager row trained
    # the torch model before the compile row used it; the compiled first call stepped)
    for impl in ("eager", "compile", "cpp"):
        assert recs[impl].grad_rel_err < 1e-5, recs[impl]
    assert recs["bad"].grad_rel_err > 0.1
    # the timed call includes the optimizer step: the models moved away from the start
    first = op.models[0]
    start = op.build_model(op.cases()[0], "torch")
    assert not torch.equal(first[0].weight, start[0].weight)
    notes = runner.sweep_notes(op, _cfg())
    assert any("optimizer.step() with SGD at lr 0.2" in n for n in notes)


# ----------------------------------------------------------------------------- committed results


COMMITTED = sorted(RESULTS.glob("*/*.json"))


def _split_md(md: str):
    """(column names, rows as dicts, the lines outside the table)."""
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    body = [dict(zip(head, (c.strip() for c in r.strip("|").split("|")))) for r in rows[1:]]
    return head, body, [line for line in lines if not line.startswith("|")]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_results_read_round_trip_and_regenerate(path, tmp_path):
    doc = report.read_result(str(path))
    assert doc["schema"] == 1 and doc["mode"] in modes.MODES
    assert doc["forward_only"] == (doc["mode"] in ("forward", "state-update"))
    assert doc["records"] and all(set(RECORD_KEYS) <= set(r) for r in doc["records"])
    report.write_json(doc, str(tmp_path / "again.json"))
    assert report.read_result(str(tmp_path / "again.json")) == doc
    # the one table writer gives the committed table again: the same header, compile
    # times and notes, every committed column with the same cells; the columns differ at
    # most by GB/s and % copy BW (shown whenever the records hold them)
    head, rows, rest = _split_md(report.markdown_table(doc))
    head0, rows0, rest0 = _split_md(path.with_suffix(".md").read_text())
    assert rest == rest0
    assert set(head) ^ set(head0) <= {"GB/s", "% copy BW"}
    assert len(rows) == len(rows0)
    for row, row0 in zip(rows, rows0):
        assert {k: row[k] for k in head0 if k in row} == {
            k: v for k, v in row0.items() if k in head
        }


def test_plot_script_redraws_a_committed_result(tmp_path):
    import shutil

    src = RESULTS / "cpu-amd-epyc" / "vq_ema_update.json"
    shutil.copy(src, tmp_path / "r.json")
    spec = importlib.util.spec_from_file_location(
        "dqk_benchmarks_plot", Path(__file__).resolve().parents[1] / "benchmarks" / "plot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "r.json"), "--md"]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.md").read_text() == src.with_suffix(".md").read_text()


def test_result_reader_versions():
    doc = {"schema": 1, "op": "x", "records": [{"impl": "eager"}]}
    assert report.upgrade(dict(doc))["mode"] == "forward+backward"
    up = report.upgrade({**doc, "forward_only": True, "records": [{"impl": "eager"}]})
    assert up["mode"] == "forward" and up["records"][0]["ms"] is None
    assert report.upgrade({**doc, "mode": "train-step"})["forward_only"] is False
    with pytest.raises(ValueError, match="newer"):
        report.upgrade({**doc, "schema": 2})


def test_bench_times_the_backends_of_its_op_family():
    """An op's benchmark rows are the backends its kernel family declares: a family with a
    torch backend only gets no cpp row, and a requested cpp row says why."""
    from dqkernels.bench.runner import SweepConfig, backend_rows
    from dqkernels.bench.selection import Selection
    from dqkernels.bench.spec import BenchOp
    from dqkernels.kernels import registry

    class TorchOnly(BenchOp):
        name, family = "torch_only", "bench_torch_only"

    registry.register("bench_torch_only", [registry.torch_kernels(registry.FLOATS)])
    try:
        cpu = torch.device("cpu")
        assert TorchOnly().backends(cpu, torch.float32) == ["torch"]
        cfg = SweepConfig(device=cpu, selection=Selection(backends=["torch", "cpp"]))
        rows = dict(backend_rows(TorchOnly(), cfg, torch.float32))
        assert rows["torch"] is None and "no cpp kernels for bench_torch_only" in rows["cpp"]
    finally:
        registry.unregister("bench_torch_only")
