"""Smoke test of the benchmark harness: the quick CPU sweep writes JSON, markdown and PNG.

Nothing here asserts on speed: timings in a test process mean nothing. It only checks
that the harness runs end to end and writes well-formed results.
"""
from __future__ import annotations

import json

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
