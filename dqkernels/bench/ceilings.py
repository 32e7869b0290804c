"""The device's ceilings, measured in the same run as the sweep: copy bandwidth (GB/s,
read + write of a large ``dst.copy_(src)``) and the matmul rate per dtype (TFLOP/s; fp32
with TF32 off). The runner divides each row's GB/s and TFLOP/s by them."""

from __future__ import annotations

from typing import Any

import torch

from dqkernels.bench.records import short_error
from dqkernels.bench.timing import TimingConfig, time_call


def measure_ceilings(device: torch.device, quick: bool = False) -> dict:
    """Copy bandwidth (GB/s, bytes = read + write) and matmul rates (TFLOP/s) measured now."""
    out: dict[str, Any] = {}
    cfg = TimingConfig(cpu_budget_s=0.05 if quick else 1.0, cuda_rep_ms=20 if quick else 200)
    if device.type == "cuda":
        copy_bytes = (64 if quick else 1024) * 2**20
        mm = [
            ("fp32", torch.float32, 1024 if quick else 8192),
            ("bf16", torch.bfloat16, 1024 if quick else 8192),
        ]
    else:
        copy_bytes = (16 if quick else 256) * 2**20
        mm = [
            ("fp32", torch.float32, 256 if quick else 2048),
            ("bf16", torch.bfloat16, 256 if quick else 2048),
        ]
    try:
        ms = _time_copy(copy_bytes, device, cfg)
        out["copy_buffer_bytes"] = copy_bytes
        out["copy_gbps"] = 2 * copy_bytes / (ms * 1e-3) / 1e9
    except Exception as exc:  # noqa: BLE001
        out["copy_error"] = short_error(exc)
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 means IEEE fp32: TF32 off
    try:
        for name, dt, n in mm:
            try:
                ms = _time_matmul(n, dt, device, cfg)
                out[f"matmul_{name}_n"] = n
                out[f"matmul_{name}_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
            except Exception as exc:  # noqa: BLE001
                out[f"matmul_{name}_error"] = short_error(exc)
    finally:
        torch.set_float32_matmul_precision(prev)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _time_copy(nbytes: int, device: torch.device, cfg: TimingConfig) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return time_call(lambda: dst.copy_(src), device, cfg)[0]


def _time_matmul(n: int, dtype: torch.dtype, device: torch.device, cfg: TimingConfig) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return time_call(lambda: torch.mm(a, b), device, cfg)[0]
