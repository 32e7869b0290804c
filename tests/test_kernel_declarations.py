"""Backends declare what they support per op family (dqkernels.kernels.registry), and
``auto``, ``why_unavailable``, ``available``, every rejection message and ``dqk info`` read
those declarations."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
import torch

from dqkernels import backends
from dqkernels.kernels import registry
from dqkernels.ops import dmol_nll

F32 = torch.float32


@pytest.fixture
def fake_family():
    """An op family with only a torch backend."""
    registry.register("fake", [registry.torch_kernels(registry.FLOATS)])
    yield "fake"
    registry.unregister("fake")


def test_family_without_a_backend_has_none(fake_family):
    assert backends.resolve("op", "cpu", F32, "auto", family="fake") == "torch"
    assert backends.available("cpu", F32, "fake") == ["torch"]
    assert backends.why_unavailable("triton", "cpu", F32, "fake") == "no triton kernels for fake"
    with pytest.raises(backends.BackendUnavailableError) as err:
        backends.resolve("fake_op", "cpu", F32, "cpp", family="fake")
    msg = str(err.value)
    assert msg.startswith(
        "fake_op: backend 'cpp' cannot run on cpu tensors of dtype float32: "
        "no cpp kernels for fake.\nAll backends here:\n"
    )
    assert "\n  torch: available" in msg
    for b in ("cpp", "cuda", "triton"):
        assert f"\n  {b}: no {b} kernels for fake" in msg


def test_fake_family_does_not_change_other_families(fake_family):
    want = "cpp" if backends.why_unavailable("cpp", "cpu", F32, "dmol") is None else "torch"
    assert backends.resolve("op", "cpu", F32, "auto", family="dmol") == want
    # without a family: "any family", so the fake family's lack of cpp does not matter
    assert backends.resolve("--backend", "cpu", F32, "auto") == want


def test_declared_dtypes_and_needs_decide():
    off = registry.Need("a switch", lambda device: "switched off for this test")
    registry.register(
        "narrow",
        [registry.torch_kernels(("float32",)), registry.cpp_kernels(("float32",), needs=(off,))],
    )
    try:
        assert (
            backends.why_unavailable("torch", "cpu", torch.float64, "narrow")
            == "dtype float64 is not supported (it takes float32)"
        )
        assert backends.why_unavailable("cpp", "cpu", F32, "narrow") in (
            "switched off for this test",
            registry.EXTENSION.missing(torch.device("cpu")),
        )
        assert backends.resolve("op", "cpu", F32, "auto", family="narrow") == "torch"
        with pytest.raises(
            backends.BackendUnavailableError,
            match=r"op: no backend can run on cpu tensors of dtype torch.float64:\n"
            r"  torch: dtype float64 is not supported \(it takes float32\)",
        ):
            backends.resolve("op", "cpu", torch.float64, "auto", family="narrow")
    finally:
        registry.unregister("narrow")


def test_any_family_joins_differing_reasons(monkeypatch):
    registry.families()
    monkeypatch.setattr(registry, "_families", {})
    registry.register("a", [registry.torch_kernels(("float32",))])
    registry.register("b", [registry.torch_kernels(("float16",))])
    registry.register("c", [registry.torch_kernels(("float16",))])
    assert backends.why_unavailable("torch", "cpu", F32) is None
    assert backends.why_unavailable("torch", "cpu", torch.float64) == (
        "a: dtype float64 is not supported (it takes float32); b, c: dtype float64 is not "
        "supported (it takes float16)"
    )
    assert backends.why_unavailable("cpp", "cpu", F32) == "no cpp kernels for any op family"


def test_op_without_a_backend_says_so(monkeypatch):
    decls = registry.declared("dmol")
    monkeypatch.setitem(
        registry._families, "dmol", {b: k for b, k in decls.items() if b != "triton"}
    )
    x, p = torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2)
    with pytest.raises(
        backends.BackendUnavailableError,
        match=r"dmol_nll: backend 'triton' cannot run on cpu tensors of dtype "
        r"float32: no triton kernels for dmol\.",
    ):
        dmol_nll(x, p, backend="triton")
    assert dmol_nll(x, p, backend="auto").shape == (1, 2, 2)


def test_unknown_family_and_backend():
    with pytest.raises(ValueError, match=r"unknown op family 'nope'; the families are affine, "):
        backends.why_unavailable("torch", "cpu", F32, "nope")
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        backends.why_unavailable("fast", "cpu", F32)
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        registry.Kernels("fast", registry.CPU, registry.FLOATS)


@pytest.mark.parametrize("family", sorted(registry.families()))
def test_every_declared_module_has_the_interface(family):
    """Each family declares the four backends it ships, and each backend's module provides
    the family's interface."""
    package = importlib.import_module(f"dqkernels.kernels.{family}")
    assert set(registry.declared(family)) == set(backends.BACKENDS)
    for backend, kernels in registry.declared(family).items():
        if backend == "triton" and not registry.triton_installed():
            continue
        mod = registry.module(family, backend)
        assert mod.__name__ == f"dqkernels.kernels.{family}.{backend}" == kernels.module
        for fn in package.INTERFACE:
            assert callable(getattr(mod, fn, None)), f"{mod.__name__} lacks {fn}"


def test_reading_declarations_imports_no_kernel_module():
    """Declarations are read without importing any backend module (no triton kernels are
    compiled or imported by asking what can run)."""
    code = (
        "import sys, torch\n"
        "from dqkernels import backends, info\n"
        "backends.available('cpu', torch.float32, 'vq')\n"
        "backends.why_unavailable('triton', 'cpu', torch.float32)\n"
        "info.collect()\n"
        "loaded = [m for m in sys.modules if m.startswith('dqkernels.kernels.') and\n"
        "          m.rsplit('.', 1)[-1] in ('torch', 'cpp', 'cuda', 'triton')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert out.strip() == "[]", out  # (torch itself may import triton)


def test_info_lists_families(capsys):
    from dqkernels.cli import main

    assert main(["info", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["families"]) == set(registry.families())
    vq = data["families"]["vq"]
    assert vq["declared"]["triton"]["dtypes"] == list(registry.FLOATS_BELOW_64)
    assert vq["declared"]["cpp"]["devices"] == ["cpu"]
    assert vq["cpu"]["auto"] == backends.resolve("info", "cpu", F32, "auto", family="vq")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "op families: the dtypes each backend's kernels take" in out
    assert "\n  masked_linear  f16,bf16,f32,f64  " in out
