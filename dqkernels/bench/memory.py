"""Peak extra memory of one call: what it allocates at its high-water mark beyond what was
allocated before it. CUDA: the allocator's peak statistics. CPU: the profiler's memory
events (allocations through PyTorch's CPU allocator only)."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import tempfile
from typing import Any, Callable

import torch


def memory_note(device_type: str, call: str, includes: str) -> str:
    """How the peak memory of ``call`` (e.g. "the row's first call") was measured, for
    the result's notes; ``includes``: what it counts beyond the inputs."""
    if device_type == "cuda":
        return (
            f"CUDA peak memory: torch.cuda.max_memory_allocated() during {call} minus "
            f"memory_allocated() before it: memory beyond the inputs, including "
            f"{includes}"
        )
    return (
        "CPU peak memory: high-water mark of the bytes allocated through PyTorch's CPU "
        f"allocator during {call}, from the profiler's memory events (allocations made "
        "by OpenMP worker threads or outside torch's allocator are not seen)"
    )


def call_measuring_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Any, int | None]:
    """Call ``fn`` once; return its output and the bytes it allocated at its high-water
    mark beyond what was allocated before (None where that cannot be measured)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, int(torch.cuda.max_memory_allocated(device) - base)
    if device.type == "cpu":
        return _cpu_peak_memory(fn)
    return fn(), None


def peak_extra_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes allocated by ``fn`` at its high-water mark beyond what was allocated before."""
    out, peak = call_measuring_memory(fn, device)
    del out
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging) for the duration; Python exceptions
    still propagate."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_memory(fn) -> tuple[Any, int | None]:
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        with _quiet_stderr():  # kineto prints profiler_start/stop lines on fd 2
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                out = fn()
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = [
        e
        for e in trace.get("traceEvents", [])
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    if not events:
        return out, None
    events.sort(key=lambda e: e.get("ts", 0))
    cur = peak = 0
    for e in events:
        cur += int(e["args"].get("Bytes", 0))
        peak = max(peak, cur)
    return out, int(peak)
