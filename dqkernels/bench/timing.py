"""Timing of one callable: medians over repeats.

CPU: ``time.perf_counter`` around each call, a warm-up, then as many repeats as fit in a
budget. CUDA: ``triton.testing.do_bench`` (L2 flushed between runs, median), or CUDA events
with the same protocol when triton is missing or a call needs an untimed ``setup`` first.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class TimingConfig:
    cpu_budget_s: float = 0.5  # per timed quantity on CPU (fwd gets half)
    cpu_min_reps: int = 3
    cpu_max_reps: int = 200
    cuda_rep_ms: int = 100
    cuda_warmup_ms: int = 25
    # on CPU a call of at least cpu_long_call_s is timed over min(3, cpu_long_budget_s /
    # its time) repeats, at least 1, its checked call (the first) counting as one of them
    cpu_long_call_s: float = 2.0
    cpu_long_budget_s: float = 10.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(
    fn: Callable[[], Any],
    budget_s: float = 1.0,
    min_reps: int = 3,
    max_reps: int = 200,
    warmup: int = 1,
    setup: Callable[[], Any] | None = None,
) -> tuple[float, int]:
    """Median wall time of ``fn`` in ms (``time.perf_counter``), with ``warmup`` calls
    first, then as many repeats as fit in ``budget_s`` (at least ``min_reps``). ``setup``,
    when given, runs untimed before every call."""

    def once() -> float:
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    est = math.inf
    for _ in range(max(1, warmup)):
        est = min(est, once())
    if est < 0.25 * budget_s:
        # one more warm-up when it is cheap (first-touch allocations, caches)
        est = min(est, once())
    n = int(budget_s / max(est, 1e-7))
    n = max(min_reps, min(max_reps, n))
    times = [once() for _ in range(n)]
    return statistics.median(times) * 1e3, n


def time_cuda(
    fn: Callable[[], Any],
    rep_ms: int = 100,
    warmup_ms: int = 25,
    setup: Callable[[], Any] | None = None,
) -> tuple[float, int]:
    """Median GPU time of ``fn`` in ms: ``triton.testing.do_bench`` (L2 flushed between
    runs) when triton is importable and there is no ``setup``, otherwise CUDA events with
    the same protocol (``setup`` runs before the flush, outside the events)."""
    do_bench: Callable[..., Any] | None = None
    if setup is None:
        try:
            from triton.testing import do_bench as triton_do_bench

            do_bench = triton_do_bench
        except Exception:  # noqa: BLE001 - triton missing or broken: use events
            pass
    if do_bench is not None:
        try:
            ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        except TypeError:  # older triton without return_mode
            ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5])
            ms = ms[0] if isinstance(ms, (list, tuple)) else ms
        return float(ms), -1
    return _time_cuda_events(fn, rep_ms, warmup_ms, setup or (lambda: None))


def _time_cuda_events(fn, rep_ms: int, warmup_ms: int, setup) -> tuple[float, int]:
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.int32, device="cuda")
    setup()
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        setup()
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 5, 1e-4)
    for _ in range(max(1, int(warmup_ms / est))):
        setup()
        fn()
    n = max(5, min(10000, int(rep_ms / est)))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for i in range(n):
        setup()
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)), n


def time_call(
    fn: Callable[[], Any],
    device: torch.device,
    cfg: TimingConfig,
    first_call_s: float | None = None,
    setup: Callable[[], Any] | None = None,
    budget_scale: float = 1.0,
) -> tuple[float, int]:
    """Median time of ``fn`` in ms and the number of timed repeats (-1: do_bench's).

    ``first_call_s``: the seconds of a call just made (the checked one). On CPU a long
    one (at least ``cfg.cpu_long_call_s``) gets no warm-up: it is the first of
    ``min(3, cpu_long_budget_s / first_call_s)`` timed repeats (at least 1), so that a
    sweep of calls of tens of seconds stays short. ``setup`` runs untimed before every
    call (e.g. restoring state that the call updates in place). ``budget_scale`` scales
    the repeat budget."""
    if device.type == "cuda":
        return time_cuda(
            fn,
            rep_ms=max(1, int(cfg.cuda_rep_ms * budget_scale)),
            warmup_ms=cfg.cuda_warmup_ms,
            setup=setup,
        )
    if first_call_s is not None and first_call_s >= cfg.cpu_long_call_s:
        n = max(1, min(3, int(cfg.cpu_long_budget_s / first_call_s)))
        times = [first_call_s]
        for _ in range(n - 1):
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3, n
    return time_cpu(
        fn,
        budget_s=cfg.cpu_budget_s * budget_scale,
        min_reps=cfg.cpu_min_reps,
        max_reps=cfg.cpu_max_reps,
        setup=setup,
    )


def timing_note(
    cfg: TimingConfig, device_type: str, times_forward: bool, restores: bool, long_calls: bool
) -> str:
    """How :func:`time_call` timed a sweep, for the result's notes."""
    restore = "; the state is restored, untimed, before every call" if restores else ""
    if device_type == "cuda":
        if restores:
            return "timing: CUDA events (L2 flushed before each run, warm-up, median)" + restore
        return (
            "timing: triton.testing.do_bench (L2 flushed before each run, median) "
            "or CUDA events with the same protocol when triton is missing"
        )
    budget = f"{cfg.cpu_budget_s:g} s" + (" (half that for fwd_ms)" if times_forward else "")
    warm = (
        f"after the checked call, 1 more warm-up (2 when cheap), then repeats filling "
        f"{budget} (at least {cfg.cpu_min_reps}), median"
    )
    if not long_calls:
        return "timing: time.perf_counter; " + warm + restore
    return (
        f"timing: time.perf_counter; calls under {cfg.cpu_long_call_s:g} s: {warm}; "
        f"longer calls: min(3, {cfg.cpu_long_budget_s:g} s / call) repeats, at least 1, "
        "the first being the checked call itself (made under the memory profiler "
        "unless --no-memory; no warm-up), median (reps in the JSON)" + restore
    )
