"""Shared test setup.

- Without a CUDA GPU, Triton kernels run under the interpreter (TRITON_INTERPRET=1 must be
  set before triton compiles anything, hence here).
- Every op output starts as NaN (poisoned), so an element a kernel fails to write fails.
- `BACKEND_DEVICES` lists (backend, device) pairs; pairs that cannot run here are skipped
  with the registry's reason, and CUDA ones carry the `gpu` marker.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dqkernels import backends  # noqa: E402
from dqkernels.ops import _common  # noqa: E402

HAS_GPU = torch.cuda.is_available()

TOL = {  # relative norm error allowed against the float64 reference, by input dtype
    torch.float64: 1e-8,  # conditioning: sigmoid differences at scales e^-7
    torch.float32: 2e-5,
    torch.float16: 2e-3,  # outputs stored in fp16
    torch.bfloat16: 1.6e-2,  # outputs stored in bf16 (8 significant bits)
}
# Gradients in float32 inherit the rounding of the grid value x (6e-8) amplified by 1/s,
# up to e^7 ~ 1100 at the default clamp: ~6.5e-5 in a = (x + d - mean)/s. Eager float32
# PyTorch reaches 2.8e-5 on the tests' inputs (40 seeds), and so do the kernels.
GRAD_TOL = {**TOL, torch.float32: 1e-4}


def pytest_report_header(config):
    """What this build holds (``dqk info``), at the top of every test run's log."""
    from dqkernels.info import collect, format_report

    return ["dqk info:"] + ["  " + line for line in format_report(collect()).splitlines()]


@pytest.fixture(autouse=True)
def _poison_outputs():
    old = _common.poison_outputs
    _common.poison_outputs = True
    yield
    _common.poison_outputs = old


def backend_param(backend: str, device: str):
    marks = [pytest.mark.gpu] if device == "cuda" else []
    return pytest.param(backend, device, marks=marks, id=f"{backend}-{device}")


BACKEND_DEVICES = [
    backend_param("torch", "cpu"),
    backend_param("cpp", "cpu"),
    backend_param("triton", "cpu"),
    backend_param("torch", "cuda"),
    backend_param("cuda", "cuda"),
    backend_param("triton", "cuda"),
]


def require(backend: str, device: str, dtype: torch.dtype = torch.float32) -> None:
    """Skip (with the registry's reason) unless `backend` runs on `device` and `dtype`."""
    if device == "cuda" and not HAS_GPU:
        pytest.skip("no CUDA GPU")
    why = backends.why_unavailable(backend, device, dtype)
    if why is not None:
        pytest.skip(f"{backend} on {device} {dtype}: {why}")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative norm error; NaN anywhere in `actual` gives inf (NaN never passes).

    Values below the smallest normal number of `actual`'s dtype count as zero on both
    sides (agreement up to flush-to-zero): a float32 gradient of 1e-40 carries nothing.
    """
    tiny = torch.finfo(actual.dtype).tiny if actual.dtype.is_floating_point else 0.0
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    a = torch.where(a.abs() < tiny, torch.zeros_like(a), a)
    e = torch.where(e.abs() < tiny, torch.zeros_like(e), e)
    assert a.shape == e.shape, (a.shape, e.shape)
    if torch.isnan(a).any() or torch.isinf(a).any() != torch.isinf(e).any():
        return float("inf")
    if e.numel() == 0:
        return 0.0
    finite = torch.isfinite(e)
    if not torch.equal(a[~finite], e[~finite]):
        return float("inf")
    num = (a[finite] - e[finite]).norm().item()
    den = e[finite].norm().item()
    return num / den if den > 0 else num


def fresh_seed() -> int:
    """A new seed per run (printed in failure messages), so inputs differ run to run."""
    return int.from_bytes(os.urandom(4), "little")


def assert_compiled_grads_match(loss, inputs, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """loss compiled whole (``torch.compile(fullgraph=True)``, aot_eager: no graph break
    allowed) gives the same gradients with respect to every one of inputs as loss run eagerly
    (each run on its own clones of inputs)."""
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    l1 = [t.clone().requires_grad_() for t in inputs]
    l2 = [t.clone().requires_grad_() for t in inputs]
    compiled(*l1).backward()
    loss(*l2).backward()
    for p, q in zip(l1, l2):
        assert torch.allclose(p.grad, q.grad, rtol=rtol, atol=atol)
