"""The sweep: for every selected case and dtype of an op, every implementation (the op's
baselines, then one row per dqkernels backend) is called once under the memory probe and
checked, then timed; one step derives the speedups and rates; the result document holds
the records, the environment, the ceilings, the settings and the notes.

How a call is built, checked and which derived fields apply is the op's measurement mode
(:mod:`dqkernels.bench.modes`); which cases run is the :class:`~dqkernels.bench.selection.
Selection`. Nothing here runs at import time beyond importing torch; tqdm is imported
where it is used.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from dqkernels.bench.cases import get_op
from dqkernels.bench.ceilings import measure_ceilings
from dqkernels.bench.environment import environment, inductor_cache_settings
from dqkernels.bench.memory import call_measuring_memory, memory_note
from dqkernels.bench.modes import Mode, Prepared, get_mode
from dqkernels.bench.records import SCHEMA_VERSION, Record, dtype_name, short_error
from dqkernels.bench.selection import Selection
from dqkernels.bench.spec import BenchOp, Case, Impl
from dqkernels.bench.timing import TimingConfig, sync, time_call, timing_note


@dataclass
class SweepConfig:
    device: torch.device
    selection: Selection = field(default_factory=Selection)
    compile: bool = True
    timing: TimingConfig = field(default_factory=TimingConfig)
    check: bool = True  # float64 check of each implementation
    memory: bool = True
    seed: int = 0
    progress: bool = True
    cold_compile: bool = False  # disable Inductor's on-disk caches for compile_s


def warn(msg: str) -> None:
    print(f"[dqk bench] {msg}", file=sys.stderr)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(
                iterable, total=total, desc=desc, unit="case", dynamic_ncols=True, file=sys.stderr
            )
        except Exception:  # noqa: BLE001 - tqdm missing: plain iteration
            pass
    return iterable


# ----------------------------------------------------------------------------- the sweep


def run_op(op: BenchOp, cfg: SweepConfig, ceilings: dict) -> list[Record]:
    """Every selected case x dtype of ``op``: its records."""
    device, sel = cfg.device, cfg.selection
    cases = sel.cases(op, device.type)
    if not cases:
        warn(
            f"{op.name}: no case matches {', '.join(sel.patterns)}; its cases: "
            + ", ".join(c.name for c in sel.tier(op, device.type))
        )
    work = [(c, dt) for c in cases for dt in sel.dtypes]
    records: list[Record] = []
    bar = _progress(work, len(work), f"bench {op.name}", cfg.progress)
    for case, dtype in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{case.name} {dtype_name(dtype)}")
        records.extend(run_case(op, cfg, case, dtype, ceilings))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if hasattr(bar, "close"):
        bar.close()
    return records


def run_case(
    op: BenchOp, cfg: SweepConfig, case: Case, dtype: torch.dtype, ceilings: dict
) -> list[Record]:
    """One case and dtype: a record per implementation, derived fields filled."""
    mode = get_mode(op.mode)
    prep = mode.prepare(op, case, dtype, cfg.device, cfg.seed)
    gold = None
    if cfg.check:
        try:
            gold = mode.gold(op, prep)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory in float64
            warn(
                f"{op.name} {case.name} {dtype_name(dtype)}: float64 check skipped "
                f"({short_error(exc)})"
            )
    inputs = prep.inputs
    base: dict[str, Any] = dict(
        op=op.name,
        case=case.name,
        shape=case.label,
        dims=dict(case.dims),
        dtype=dtype_name(dtype),
        device=cfg.device.type,
        bytes_min=op.min_bytes(inputs, backward=mode.backward) or None,
        fwd_bytes_min=(op.min_bytes(inputs, backward=False) or None)
        if mode.times_forward
        else None,
        flops=op.flops(inputs, backward=mode.backward),
    )
    rows = [
        (impl, Record(impl=impl.name, kind=impl.kind, note=impl.note, **base))
        for impl in implementations(op, mode, cfg, prep)
    ]
    records = [rec for _, rec in rows]
    # Measured with the compile rows last (reported in their place): after a compile,
    # Inductor's worker pool and caches linger and slowed the rows timed next (the flow
    # training step's cpp row by 1.6x on the 2-core CPU).
    for impl, rec in sorted(rows, key=lambda row: row[0].kind == "compile"):
        if impl.skip is not None or impl.fn is None:
            rec.status, rec.error = "skipped", impl.skip or "no implementation"
            continue
        try:
            _measure(rec, op, mode, impl, prep, gold, cfg)
        except Exception as exc:  # noqa: BLE001 - one failing impl must not stop the sweep
            rec.status, rec.error = "error", short_error(exc)
            if os.environ.get("DQK_BENCH_TRACEBACK"):
                traceback.print_exc()
            if cfg.device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            if impl.kind == "compile":
                torch._dynamo.reset()
    fill_derived(records, mode, ceilings, dtype)
    return records


def implementations(op: BenchOp, mode: Mode, cfg: SweepConfig, prep: Prepared) -> list[Impl]:
    """The case's rows in report order: the baselines (without ``compile`` ones under
    ``--no-compile``), then the backends; skipped rows last."""
    impls = [b for b in mode.baselines(op, prep) if cfg.compile or b.kind != "compile"]
    for name, why in backend_rows(op, cfg, prep.dtype):
        impls.append(Impl(name, None, why, kind="backend") if why else mode.backend(op, name, prep))
    return [i for i in impls if i.skip is None] + [i for i in impls if i.skip is not None]


def backend_rows(op: BenchOp, cfg: SweepConfig, dtype: torch.dtype) -> list[tuple[str, str | None]]:
    """(backend, skip reason or None): the op's backends, restricted to the selection's
    backends when given, where a requested backend that cannot run gets its reason."""
    from dqkernels import backends as B

    names = op.backends(cfg.device, dtype)
    wanted = cfg.selection.backends
    rows: list[tuple[str, str | None]] = []
    if wanted is not None:
        for b in wanted:
            if b in names:
                continue
            why = (
                B.why_unavailable(b, cfg.device, dtype, op.family)
                if b in B.BACKENDS
                else "unknown backend"
            )
            if why is None and cfg.device.type == "cpu" and b == "triton":
                why = "triton on CPU runs only in the interpreter; not benchmarked"
            rows.append((b, why))
        names = [b for b in names if b in wanted]
    return [(b, None) for b in names] + rows


def _measure(
    rec: Record, op: BenchOp, mode: Mode, impl: Impl, prep: Prepared, gold: Any, cfg: SweepConfig
) -> None:
    """Time one row: (compile,) restore, the checked call under the memory probe, then
    the timed repeats of the call and, where the mode has one, of the forward alone."""
    device = cfg.device
    calls = mode.calls(op, impl, prep)
    if impl.kind == "compile":
        torch._dynamo.reset()  # compile once for this case, from scratch
        rec.compile_s = _first_compiled_call(calls.step, cfg)
    if calls.restore is not None:
        calls.restore()
    out = None
    t0 = time.perf_counter()
    if cfg.memory:
        try:
            out, rec.peak_mem_bytes = call_measuring_memory(calls.step, device)
        except Exception as exc:  # noqa: BLE001 - the profiler, not the op
            warn(f"peak memory of {impl.name} not measured: {short_error(exc)}")
            if calls.restore is not None:
                calls.restore()
            t0 = time.perf_counter()
    if out is None:
        out = calls.step()
    sync(device)
    first_s = time.perf_counter() - t0
    if cfg.check:
        for key, value in mode.check(op, prep, out, gold).items():
            setattr(rec, key, value)
    del out
    rec.ms, rec.reps = time_call(
        calls.step,
        device,
        cfg.timing,
        first_call_s=first_s if mode.long_calls else None,
        setup=calls.restore if mode.restore_each_call else None,
    )
    if calls.fwd is not None and mode.times_forward:
        rec.fwd_ms, rec.fwd_reps = time_call(calls.fwd, device, cfg.timing, budget_scale=0.5)


def _first_compiled_call(fn: Callable[[], Any], cfg: SweepConfig) -> float:
    """Seconds of the first call of a compiled function (the compile itself)."""
    t0 = time.perf_counter()
    with _inductor_caches(enabled=not cfg.cold_compile):
        fn()
    sync(cfg.device)
    return time.perf_counter() - t0


@contextlib.contextmanager
def _inductor_caches(enabled: bool):
    """With ``enabled=False``, compile from scratch (Inductor's FX graph and AOTAutograd
    on-disk caches off), so that compile_s is a cold compile."""
    if enabled:
        yield
        return
    import warnings

    from torch._inductor import config as inductor_config

    with inductor_config.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*force_disable_caches.*")
        yield


def fill_derived(records: list[Record], mode: Mode, ceilings: dict, dtype: torch.dtype) -> None:
    """Speedups and rates of one case's rows. ``vs eager``: the fastest eager row's time
    over the row's; ``vs compile``: the compile row's; ``vs`` (modes with
    ``per_baseline``): every baseline's (eager, compile, external); GB/s from
    ``bytes_min`` (and ``fwd_bytes_min``) against the copy ceiling; TFLOP/s from ``flops``
    against the matmul ceiling of the dtype (fp32 with TF32 off)."""
    copy_gbps = ceilings.get("copy_gbps")
    matmul = ceilings.get(f"matmul_{dtype_name(dtype)}_tflops")
    ms = {id(r): r.ms for r in records if r.status == "ok" and r.ms}
    ok = [r for r in records if id(r) in ms]
    eager = min((r for r in ok if r.kind == "eager"), key=lambda r: ms[id(r)], default=None)
    comp = next((r for r in ok if r.kind == "compile"), None)
    baselines = [r for r in ok if r.kind in ("eager", "compile", "external")]
    for r in ok:
        t = ms[id(r)]
        if eager is not None:
            r.speedup_vs_eager = ms[id(eager)] / t
            if r.fwd_ms and eager.fwd_ms:
                r.fwd_speedup_vs_eager = eager.fwd_ms / r.fwd_ms
        if comp is not None:
            r.speedup_vs_compile = ms[id(comp)] / t
        if mode.per_baseline:
            r.vs = {b.impl: ms[id(b)] / t for b in baselines} or None
        if r.bytes_min:
            r.gbps = gbps = r.bytes_min / (t * 1e-3) / 1e9
            if copy_gbps:
                r.frac_copy_bw = gbps / copy_gbps
        if r.fwd_bytes_min and r.fwd_ms:
            r.fwd_gbps = r.fwd_bytes_min / (r.fwd_ms * 1e-3) / 1e9
        if r.flops:
            r.tflops = tflops = r.flops / (t * 1e-3) / 1e12
            if matmul:
                r.frac_matmul = tflops / matmul


# ----------------------------------------------------------------------------- results


def sweep_notes(op: BenchOp, cfg: SweepConfig) -> list[str]:
    """Every note of a result: the op's, then how each number was obtained."""
    mode = get_mode(op.mode)
    device = cfg.device.type
    notes = list(op.notes)
    notes.append(memory_note(device, mode.memory_call, mode.memory_includes))
    notes += mode.notes(op)
    if mode.per_baseline:
        notes.append(
            "vs eager (speedup_vs_eager): time of the FASTEST eager baseline of the "
            "case over this row's time; vs compile: the compile row's; vs <name> "
            "(JSON: vs): each baseline's (eager, compile, external) time over "
            "this row's"
        )
    notes.append(
        "GB/s: bytes_min / ms (fwd_gbps: fwd_bytes_min / fwd_ms); % copy BW "
        "(frac_copy_bw): that over the copy bandwidth measured in this run (read + "
        "write of a large dst.copy_(src)); TFLOP/s: flops / ms; % matmul "
        "(frac_matmul): that over the matmul rate measured in this run for the "
        "case's dtype (fp32 with TF32 off)"
    )
    notes.append(
        f"compile: torch.compile({mode.compiles(op)}, dynamic=False), compiled once "
        f"per case after torch._dynamo.reset(); compile_s is the time of its "
        f"{mode.first_call}, excluded from the timings"
        + (
            ", compiled cold (Inductor caches disabled)"
            if cfg.cold_compile
            else "; it hits Inductor's on-disk caches when an earlier run compiled "
            "the same graph (--cold-compile disables them)"
        )
    )
    notes.append(
        timing_note(cfg.timing, device, mode.times_forward, mode.restore_each_call, mode.long_calls)
    )
    return notes


def run_benchmark(
    op_name: str, cfg: SweepConfig, ceilings: dict | None = None, env: dict | None = None
) -> dict:
    """Run one op's sweep and return the result document (what the JSON holds)."""
    op = get_op(op_name)
    mode = get_mode(op.mode)
    env = env if env is not None else environment(cfg.device)
    sel = cfg.selection
    ceilings = ceilings if ceilings is not None else measure_ceilings(cfg.device, sel.quick)
    t0 = time.perf_counter()
    records = run_op(op, cfg, ceilings)
    return {
        "schema": SCHEMA_VERSION,
        "op": op.name,
        "description": op.description,
        "mode": mode.name,
        "forward_only": not mode.backward,
        "environment": env,
        "ceilings": ceilings,
        "settings": {
            "quick": sel.quick,
            "compile": cfg.compile,
            "dtypes": [dtype_name(d) for d in sel.dtypes],
            "backends": sel.backends,
            "seed": cfg.seed,
            "cases": sel.case_patterns(),
            "select": list(sel.patterns),
            "timing": asdict(cfg.timing),
            "cold_compile": cfg.cold_compile,
            "inductor_caches": inductor_cache_settings(),
            "sweep_seconds": None,
        },
        "notes": sweep_notes(op, cfg),
        "records": [asdict(r) for r in records],
        "_elapsed": time.perf_counter() - t0,
    }


def finalize(result: dict) -> dict:
    result["settings"]["sweep_seconds"] = round(result.pop("_elapsed", 0.0), 1)
    return result
