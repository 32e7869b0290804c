"""Backend selection: per call, context manager, global default, environment variable;
errors that explain every rejected backend."""

from __future__ import annotations

import pytest
import torch

import dqkernels
from dqkernels import backends
from dqkernels.ops import dmol, dmol_nll


@pytest.fixture
def record(monkeypatch):
    """Record which backend the op layer hands each call to."""
    seen = []
    real = dmol.kernels

    def spy(backend, family):
        seen.append(backend)
        return real(backend, family)

    monkeypatch.setattr(dmol, "kernels", spy)
    return seen


def inputs():
    return torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2)


def test_precedence(record, monkeypatch):
    x, p = inputs()
    monkeypatch.setenv("DQK_BACKEND", "torch")
    dmol_nll(x, p)
    assert record[-1] == "torch"
    dqkernels.set_backend("auto")
    try:
        dmol_nll(x, p)
        assert record[-1] == backends.resolve("op", torch.device("cpu"), torch.float32, "auto")
        with dqkernels.use_backend("torch"):
            assert dqkernels.get_backend() == "torch"
            dmol_nll(x, p)
            assert record[-1] == "torch"
            if "cpp" in backends.available("cpu", torch.float32):
                dmol_nll(x, p, backend="cpp")
                assert record[-1] == "cpp"
        assert dqkernels.get_backend() == "auto"
    finally:
        dqkernels.set_backend(None)
    assert dqkernels.get_backend() == "torch"  # back to the environment variable


def test_auto_picks_fastest_available():
    name = backends.resolve("op", torch.device("cpu"), torch.float32, "auto")
    want = "cpp" if backends.why_unavailable("cpp", "cpu", torch.float32) is None else "torch"
    assert name == want


def test_bad_environment_variable(monkeypatch):
    monkeypatch.setenv("DQK_BACKEND", "fast")
    with pytest.raises(
        ValueError,
        match=r"environment variable DQK_BACKEND must be one of "
        r"torch, cpp, cuda, triton, auto; got 'fast'",
    ):
        dmol_nll(*inputs())


def test_unavailable_backend_lists_every_backend_and_reason():
    x, p = inputs()
    with pytest.raises(backends.BackendUnavailableError) as err:
        dmol_nll(x, p, backend="cuda")
    msg = str(err.value)
    assert (
        "dmol_nll: backend 'cuda' cannot run on cpu tensors of dtype float32: runs on CUDA "
        "tensors only; these are on cpu." in msg
    )
    for b in backends.BACKENDS:
        assert f"\n  {b}: " in msg
    with pytest.raises(
        backends.BackendUnavailableError,
        match=r"backend 'triton' cannot run on cpu tensors of dtype float64: "
        r"dtype float64 is not supported \(it takes float16, bfloat16, "
        r"float32\)",
    ):
        dmol_nll(x.double(), p.double(), backend="triton")


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = backends.why_unavailable("triton", "cpu", torch.float32)
    if backends.triton_installed():
        assert why == "needs a GPU; on CPU it runs only under TRITON_INTERPRET=1 (for tests)"
    else:
        assert why == "triton is not installed"


def test_context_manager_restores_on_error():
    with pytest.raises(RuntimeError):
        with dqkernels.use_backend("torch"):
            raise RuntimeError("boom")
    assert backends._context.get() is None


def test_info_reports_backends(capsys):
    from dqkernels.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch    " + torch.__version__ in out
    assert "backends for cpu tensors" in out
    for b in backends.BACKENDS:
        assert f"  {b:<7} " in out


def test_cuda_kernels_built_when_required():
    """A build asked to include CUDA (DQK_CUDA=1, as CI does where nvcc exists) really
    compiled the CUDA kernels into dqkernels._C, even on a machine without a GPU."""
    import os

    from dqkernels import _ext

    if os.environ.get("DQK_CUDA", "").lower() not in ("1", "on", "true"):
        pytest.skip("DQK_CUDA=1 not set for this build")
    assert _ext.has_cpu_kernels(), _ext.LOAD_ERROR
    assert _ext.has_cuda_kernels()
    assert _ext.build_info()["cuda_archs"]
