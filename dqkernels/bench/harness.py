"""Benchmark machinery shared by every op: timing, device ceilings, result records,
the sweep driver and the writers (JSON, markdown, PNG).

An op plugs in through :class:`BenchOp` (see :mod:`dqkernels.bench.dmol`): it lists its
shape cases, builds inputs, and gives a scalar loss for the eager reference and for each
dqkernels backend. The harness derives every implementation from those: ``eager`` (the
reference as written), ``compile`` (``torch.compile`` of the reference loss, compiled once
per case) and one row per backend. Each is timed forward+backward (``autograd.grad`` of
the loss with respect to the op's differentiable inputs) and forward only (grad enabled,
as in a training step), checked against a float64 evaluation of the reference, and its
peak extra memory is measured in a separate, untimed call.

A *forward-only* op (``BenchOp.forward_only``, see :mod:`dqkernels.bench.vq_nearest`)
has no loss and no gradient: it names its implementations itself (:class:`Baseline`:
eager formulations, a ``torch.compile``'d one, external libraries), the harness adds one
row per backend (:meth:`BenchOp.backend_forward`), times one call of each, and the op's
:meth:`BenchOp.check` hook scores the output of its first call (the one whose peak
memory is measured).

Nothing here runs at import time beyond importing torch; matplotlib, tqdm and triton are
imported where they are used.
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib
import json
import math
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch

from dqkernels.bench.ceilings import measure_ceilings  # noqa: F401
from dqkernels.bench.environment import (  # noqa: F401
    device_name,
    device_slug,
    environment,
    inductor_cache_settings,
    slugify,
)
from dqkernels.bench.memory import call_measuring_memory, memory_note, peak_extra_memory  # noqa: F401
from dqkernels.bench.records import (  # noqa: F401
    CHECK_FIELDS,
    DTYPES,
    RECORD_KEYS,
    SCHEMA_VERSION,
    Record,
    dtype_name,
)
from dqkernels.bench.records import short_error as _short_error
from dqkernels.bench.timing import TimingConfig, time_call, timing_note  # noqa: F401
from dqkernels.bench.timing import sync as _sync

CPU_MEMORY_NOTE = memory_note("cpu", "one untimed fwd+bwd", "")
CUDA_MEMORY_NOTE = memory_note("cuda", "one untimed fwd+bwd", "the returned gradients")


# name -> module exposing ``OP`` (a BenchOp). New ops add a line here.
OP_MODULES: dict[str, str] = {
    "dmol": "dqkernels.bench.dmol",
    "affine_coupling": "dqkernels.bench.affine_coupling",
    "mixlogcdf_coupling": "dqkernels.bench.mixlogcdf_coupling",
    "mixlogcdf_inverse": "dqkernels.bench.mixlogcdf_inverse",
    "masked_conv2d": "dqkernels.bench.masked_conv2d",
    "masked_linear": "dqkernels.bench.masked_linear",
    "flow_train_step": "dqkernels.bench.flow_train_step",
    "vq_nearest": "dqkernels.bench.vq_nearest",
    "vq_ema_update": "dqkernels.bench.vq_ema_update",
}


def op_names() -> list[str]:
    return list(OP_MODULES)


def get_op(name: str) -> "BenchOp":
    if name not in OP_MODULES:
        raise ValueError(f"unknown op {name!r}; known: {', '.join(OP_MODULES)}")
    return importlib.import_module(OP_MODULES[name]).OP


# ----------------------------------------------------------------------------- op interface


@dataclass
class Shape:
    """One shape case of an op: a short name and its dimensions."""
    name: str
    dims: dict[str, int]
    label: str = ""           # human-readable, e.g. "B=64 C=3 32x32 M=10"

    def __post_init__(self):
        if not self.label:
            self.label = " ".join(f"{k}={v}" for k, v in self.dims.items())


@dataclass
class Baseline:
    """An implementation a forward-only op names itself (see :meth:`BenchOp.baselines`).

    ``kind`` is ``eager`` (plain PyTorch as a user writes it; the fastest eager row is the
    reference of ``vs eager``), ``compile`` (``fn`` is a ``torch.compile``'d callable: the
    harness resets dynamo before its first call, reports that call as ``compile_s`` and
    leaves the row out under ``--no-compile``) or ``external`` (another library).
    """
    name: str
    fn: Callable[..., Any] | None      # called as fn(**inputs); None when skipped
    skip: str | None = None            # why it is not run (then fn is None)
    kind: str = "eager"
    note: str | None = None            # shown in the row, e.g. "chunked (8192 rows per chunk)"




class BenchOp:
    """What an op supplies to the harness. Subclass and register in ``OP_MODULES``.

    A differentiable op implements :meth:`grad_inputs`, :meth:`reference_loss` and
    :meth:`backend_loss`; a forward-only op sets ``forward_only = True`` and implements
    :meth:`baselines`, :meth:`backend_forward` and :meth:`check` instead."""

    name: str = ""
    #: one line for the report header: what is timed and what "loss" means
    description: str = ""
    #: notes copied into the JSON and markdown (how baselines are run, what bytes count)
    notes: tuple[str, ...] = ()
    #: time one forward call per implementation (no loss, no gradient, no float64 gradient
    #: check); the implementations come from :meth:`baselines` and :meth:`backend_forward`
    forward_only: bool = False

    def shapes(self, device_type: str, quick: bool) -> list[Shape]:
        raise NotImplementedError

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device: torch.device,
                    seed: int) -> dict[str, torch.Tensor]:
        """Fresh inputs; the differentiable ones have ``requires_grad`` set."""
        raise NotImplementedError

    def grad_inputs(self) -> tuple[str, ...]:
        """Names of the inputs the backward differentiates with respect to."""
        raise NotImplementedError

    def reference_loss(self, **inputs) -> torch.Tensor:
        """Scalar loss through the plain-PyTorch reference (what eager/compile time)."""
        raise NotImplementedError

    def backend_loss(self, backend: str, **inputs) -> torch.Tensor:
        """Scalar loss through the dqkernels op on ``backend``."""
        raise NotImplementedError

    def min_bytes(self, inputs: dict[str, torch.Tensor], backward: bool) -> int:
        """Bytes a perfect kernel must move (read inputs, write outputs/gradients)."""
        raise NotImplementedError

    def flops(self, inputs: dict[str, torch.Tensor], backward: bool) -> float | None:
        """Floating-point operations of one timed call (None: not a FLOP-bound op); gives
        the records' TFLOP/s and fraction of the matmul ceiling of the case's dtype."""
        return None

    # -- forward-only ops

    def baselines(self, inputs: dict[str, Any], device: torch.device,
                  dtype: torch.dtype) -> list[Baseline]:
        """The case's non-dqkernels implementations, in report order (forward-only ops)."""
        return []

    def backend_forward(self, backend: str, **inputs) -> Any:
        """One call of the dqkernels op on ``backend`` (forward-only ops)."""
        raise NotImplementedError

    def check(self, inputs: dict[str, Any], output: Any) -> dict[str, float]:
        """Correctness of one implementation's ``output``: values for fields of
        :data:`CHECK_FIELDS` (forward-only ops)."""
        return {}

    def reset(self, inputs: dict[str, Any]) -> None:
        """Restore state that the calls modify in place, before the checked call
        (forward-only ops that update their inputs)."""

    def backends(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        """dqkernels backends worth timing here (by default all that are available,
        except ``triton`` on CPU, which only runs in the interpreter)."""
        from dqkernels import backends as B
        names = B.available(device, dtype)
        if device.type == "cpu":
            names = [b for b in names if b != "triton"]
        return names


# ----------------------------------------------------------------------------- records


def _rel_err(got: Iterable[torch.Tensor], gold: Iterable[torch.Tensor]) -> float:
    num = den = 0.0
    for g, r in zip(got, gold):
        if g is None:
            return math.inf
        d = g.detach().to(torch.float64) - r
        num += float(torch.sum(d * d))
        den += float(torch.sum(r * r))
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


# ----------------------------------------------------------------------------- sweep


@dataclass
class SweepConfig:
    device: torch.device
    dtypes: list[torch.dtype]
    quick: bool = False
    compile: bool = True
    backends: list[str] | None = None   # None: every available backend
    timing: TimingConfig = field(default_factory=TimingConfig)
    check: bool = True                  # float64 gradient check per case
    memory: bool = True
    seed: int = 0
    progress: bool = True
    cold_compile: bool = False          # disable Inductor's on-disk caches for compile_s
    # shape cases to run: fnmatch patterns on the case names (None: $DQK_BENCH_CASES,
    # comma-separated, when set; otherwise every case)
    cases: list[str] | None = None


def select_shapes(shapes: list[Shape], patterns: list[str] | None) -> list[Shape]:
    """The shapes whose name matches one of the fnmatch ``patterns`` (all for None)."""
    if patterns is None:
        return shapes
    return [s for s in shapes if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


def _case_patterns(cfg: SweepConfig) -> list[str] | None:
    if cfg.cases is not None:
        return cfg.cases
    env = os.environ.get("DQK_BENCH_CASES", "").strip()
    return [p.strip() for p in env.split(",") if p.strip()] or None


def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(iterable, total=total, desc=desc, unit="case", dynamic_ncols=True,
                        file=sys.stderr)
        except Exception:  # noqa: BLE001 - tqdm missing: plain iteration
            pass
    return iterable


def _backend_rows(op: BenchOp, cfg: SweepConfig,
                  dtype: torch.dtype) -> list[tuple[str, str | None]]:
    """(backend, skip reason or None): the op's backends, restricted to ``cfg.backends``
    when given, where a requested backend that cannot run gets its reason."""
    from dqkernels import backends as B
    names = op.backends(cfg.device, dtype)
    rows: list[tuple[str, str | None]] = []
    if cfg.backends is not None:
        for b in cfg.backends:
            if b in names:
                continue
            why = B.why_unavailable(b, cfg.device, dtype) if b in B.BACKENDS else "unknown backend"
            if why is None and cfg.device.type == "cpu" and b == "triton":
                why = "triton on CPU runs only in the interpreter; not benchmarked"
            rows.append((b, why))
        names = [b for b in names if b in cfg.backends]
    return [(b, None) for b in names] + rows


def _implementations(op: BenchOp, cfg: SweepConfig, dtype: torch.dtype):
    """(name, kind, loss function or None, skip reason) in report order."""
    impls: list[tuple[str, str, Callable | None, str | None]] = [
        ("eager", "reference", op.reference_loss, None)]
    if cfg.compile:
        impls.append(("compile", "compile", None, None))   # built per case
    for b, why in _backend_rows(op, cfg, dtype):
        impls.append((b, "backend", None if why else _bind(op.backend_loss, b), why))
    # keep skipped rows after the runnable ones
    return [i for i in impls if i[3] is None] + [i for i in impls if i[3] is not None]


def _bind(f, backend):
    def loss(**inputs):
        return f(backend, **inputs)
    return loss


def run_op(op: BenchOp, cfg: SweepConfig, ceilings: dict) -> list[Record]:
    device = cfg.device
    all_shapes = op.shapes(device.type, cfg.quick)
    patterns = _case_patterns(cfg)
    shapes = select_shapes(all_shapes, patterns)
    if not shapes:
        _warn(f"{op.name}: no case matches {', '.join(patterns or [])}; its cases: "
              + ", ".join(s.name for s in all_shapes))
    cases = [(s, dt) for s in shapes for dt in cfg.dtypes]
    run_case = _run_forward_case if op.forward_only else _run_case
    records: list[Record] = []
    bar = _progress(cases, len(cases), f"bench {op.name}", cfg.progress)
    for shape, dtype in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{shape.name} {dtype_name(dtype)}")
        records.extend(run_case(op, cfg, shape, dtype, ceilings))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if hasattr(bar, "close"):
        bar.close()
    return records


def _run_case(op: BenchOp, cfg: SweepConfig, shape: Shape, dtype: torch.dtype,
              ceilings: dict) -> list[Record]:
    device = cfg.device
    base = _case_fields(op, shape, dtype, device)
    inputs = op.make_inputs(shape, dtype, device, cfg.seed)
    names = op.grad_inputs()
    leaves = [inputs[n] for n in names]
    bytes_bwd = op.min_bytes(inputs, backward=True)
    bytes_fwd = op.min_bytes(inputs, backward=False)
    copy_gbps = ceilings.get("copy_gbps")

    gold = None
    if cfg.check:
        try:
            gold = _gold_grads(op, inputs, names)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory in float64
            gold = None
            _warn(f"{op.name} {shape.name} {dtype_name(dtype)}: float64 check skipped "
                  f"({_short_error(exc)})")

    records: list[Record] = []
    flops = op.flops(inputs, backward=True)
    for name, kind, loss_fn, skip in _implementations(op, cfg, dtype):
        rec = Record(impl=name, bytes_min=bytes_bwd, fwd_bytes_min=bytes_fwd, flops=flops,
                     kind="eager" if kind == "reference" else kind, **base)
        records.append(rec)
        if skip is not None:
            rec.status, rec.error = "skipped", skip
            continue
        try:
            if kind == "compile":
                torch._dynamo.reset()   # compile once for this case, from scratch
                loss_fn = torch.compile(op.reference_loss, dynamic=False)

            def fwd(loss_fn=loss_fn):
                return loss_fn(**inputs)

            def step(loss_fn=loss_fn):
                return torch.autograd.grad(loss_fn(**inputs), leaves)

            if kind == "compile":
                rec.compile_s = _first_compiled_call(step, cfg)
            # one untimed call gives the memory high-water mark and the gradient check
            grads = None
            if cfg.memory:
                try:
                    grads, rec.peak_mem_bytes = call_measuring_memory(step, device)
                except Exception as exc:  # noqa: BLE001 - the profiler, not the op
                    _warn(f"peak memory of {name} not measured: {_short_error(exc)}")
            if grads is None:
                grads = step()
            if gold is not None:
                rec.grad_rel_err = _rel_err(grads, gold)
            del grads
            rec.ms, rec.reps = time_call(step, device, cfg.timing)
            rec.fwd_ms, rec.fwd_reps = time_call(fwd, device, cfg.timing, budget_scale=0.5)
        except Exception as exc:  # noqa: BLE001 - one failing impl must not stop the sweep
            _record_failure(rec, exc, device)
        finally:
            if kind == "compile":
                torch._dynamo.reset()
    _fill_derived(records, copy_gbps)
    _fill_flops(records, ceilings, dtype)
    return records


def _run_forward_case(op: BenchOp, cfg: SweepConfig, shape: Shape, dtype: torch.dtype,
                      ceilings: dict) -> list[Record]:
    """One case of a forward-only op: every baseline and backend, one call each timed."""
    device = cfg.device
    base = _case_fields(op, shape, dtype, device)
    inputs = op.make_inputs(shape, dtype, device, cfg.seed)
    bytes_min = op.min_bytes(inputs, backward=False) or None
    flops = op.flops(inputs, backward=False)
    impls = [b for b in op.baselines(inputs, device, dtype)
             if cfg.compile or b.kind != "compile"]
    for b, why in _backend_rows(op, cfg, dtype):
        impls.append(Baseline(b, None if why else _bind(op.backend_forward, b), why,
                              kind="backend"))
    impls = [b for b in impls if b.skip is None] + [b for b in impls if b.skip is not None]

    records: list[Record] = []
    for impl in impls:
        rec = Record(impl=impl.name, kind=impl.kind, note=impl.note, bytes_min=bytes_min,
                     flops=flops, **base)
        records.append(rec)
        if impl.skip is not None or impl.fn is None:
            rec.status, rec.error = "skipped", impl.skip or "no implementation"
            continue

        def call(fn=impl.fn):
            with torch.no_grad():
                return fn(**inputs)

        try:
            if impl.kind == "compile":
                torch._dynamo.reset()   # compile once for this case, from scratch
                rec.compile_s = _first_compiled_call(call, cfg)
            # the checked call: memory high-water mark, the check, the warm-up (or, for
            # a long call on CPU, the first timed repeat: see time_forward)
            op.reset(inputs)
            out = None
            t0 = time.perf_counter()
            if cfg.memory:
                try:
                    out, rec.peak_mem_bytes = call_measuring_memory(call, device)
                except Exception as exc:  # noqa: BLE001 - the profiler, not the op
                    _warn(f"peak memory of {impl.name} not measured: {_short_error(exc)}")
            if out is None:
                out = call()
            _sync(device)
            first_s = time.perf_counter() - t0
            if cfg.check:
                for key, value in op.check(inputs, out).items():
                    if key not in CHECK_FIELDS:
                        raise KeyError(f"{op.name}.check returned {key!r}; allowed: "
                                       f"{', '.join(CHECK_FIELDS)}")
                    setattr(rec, key, float(value))
            del out
            rec.ms, rec.reps = time_call(call, device, cfg.timing, first_call_s=first_s)
        except Exception as exc:  # noqa: BLE001 - one failing impl must not stop the sweep
            _record_failure(rec, exc, device)
        finally:
            if impl.kind == "compile":
                torch._dynamo.reset()
    _fill_forward_derived(records, ceilings.get("copy_gbps"))
    _fill_flops(records, ceilings, dtype)
    return records


def _case_fields(op: BenchOp, shape: Shape, dtype: torch.dtype,
                 device: torch.device) -> dict:
    """The Record fields every row of one case shares."""
    return dict(op=op.name, case=shape.name, shape=shape.label, dims=dict(shape.dims),
                dtype=dtype_name(dtype), device=device.type)


def _first_compiled_call(fn: Callable[[], Any], cfg: SweepConfig) -> float:
    """Seconds of the first call of a compiled function (the compile itself)."""
    t0 = time.perf_counter()
    with _inductor_caches(enabled=not cfg.cold_compile):
        fn()
    _sync(cfg.device)
    return time.perf_counter() - t0


def _record_failure(rec: Record, exc: BaseException, device: torch.device) -> None:
    """Mark a row as failed (the sweep goes on with the next implementation)."""
    rec.status, rec.error = "error", _short_error(exc)
    if os.environ.get("DQK_BENCH_TRACEBACK"):
        traceback.print_exc()
    if device.type == "cuda":
        torch.cuda.empty_cache()


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


def _gold_grads(op: BenchOp, inputs: dict, names) -> list[torch.Tensor]:
    gold_inputs = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().to(torch.float64).requires_grad_(k in names)
        gold_inputs[k] = v
    loss = op.reference_loss(**gold_inputs)
    return [g.detach() for g in torch.autograd.grad(loss, [gold_inputs[n] for n in names])]


def _fill_derived(records: list[Record], copy_gbps: float | None) -> None:
    ok = {r.impl: r for r in records if r.status == "ok" and r.ms}
    eager, comp = ok.get("eager"), ok.get("compile")
    for r in records:
        if r.status != "ok" or not r.ms:
            continue
        if eager is not None:
            r.speedup_vs_eager = eager.ms / r.ms
            if r.fwd_ms and eager.fwd_ms:
                r.fwd_speedup_vs_eager = eager.fwd_ms / r.fwd_ms
        if comp is not None:
            r.speedup_vs_compile = comp.ms / r.ms
        if r.bytes_min:
            r.gbps = r.bytes_min / (r.ms * 1e-3) / 1e9
            if copy_gbps:
                r.frac_copy_bw = r.gbps / copy_gbps
        if r.fwd_bytes_min and r.fwd_ms:
            r.fwd_gbps = r.fwd_bytes_min / (r.fwd_ms * 1e-3) / 1e9


def _fill_forward_derived(records: list[Record], copy_gbps: float | None) -> None:
    """Speedups of a forward-only case: ``vs eager`` over the fastest eager baseline,
    ``vs compile``, and ``vs`` over every baseline (eager, compile, external)."""
    ok = [r for r in records if r.status == "ok" and r.ms]
    eager = min((r for r in ok if r.kind == "eager"), key=lambda r: r.ms, default=None)
    comp = next((r for r in ok if r.kind == "compile"), None)
    baselines = [r for r in ok if r.kind in ("eager", "compile", "external")]
    for r in ok:
        if eager is not None:
            r.speedup_vs_eager = eager.ms / r.ms
        if comp is not None:
            r.speedup_vs_compile = comp.ms / r.ms
        r.vs = {b.impl: b.ms / r.ms for b in baselines} or None
        if r.bytes_min:
            r.gbps = r.bytes_min / (r.ms * 1e-3) / 1e9
            if copy_gbps:
                r.frac_copy_bw = r.gbps / copy_gbps


def _fill_flops(records: list[Record], ceilings: dict, dtype: torch.dtype) -> None:
    """TFLOP/s of the timed quantity (ms) and its fraction of the matmul rate measured
    for the case's dtype (fp32 with TF32 off)."""
    peak = ceilings.get(f"matmul_{dtype_name(dtype)}_tflops")
    for r in records:
        if r.status == "ok" and r.ms and r.flops:
            r.tflops = r.flops / (r.ms * 1e-3) / 1e12
            if peak:
                r.frac_matmul = r.tflops / peak


def _warn(msg: str) -> None:
    print(f"[dqk bench] {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- results


def run_benchmark(op_name: str, cfg: SweepConfig, ceilings: dict | None = None,
                  env: dict | None = None) -> dict:
    """Run one op's sweep and return the result document (what the JSON holds)."""
    op = get_op(op_name)
    env = env if env is not None else environment(cfg.device)
    ceilings = ceilings if ceilings is not None else measure_ceilings(cfg.device, cfg.quick)
    t0 = time.perf_counter()
    records = run_op(op, cfg, ceilings)
    notes = list(op.notes) + (_forward_notes(cfg) if op.forward_only else _train_notes(cfg))
    return {
        "schema": SCHEMA_VERSION,
        "op": op.name,
        "description": op.description,
        "forward_only": op.forward_only,
        "environment": env,
        "ceilings": ceilings,
        "settings": {"quick": cfg.quick, "compile": cfg.compile,
                     "dtypes": [dtype_name(d) for d in cfg.dtypes],
                     "backends": cfg.backends, "seed": cfg.seed,
                     "cases": _case_patterns(cfg),
                     "timing": asdict(cfg.timing),
                     "cold_compile": cfg.cold_compile,
                     "inductor_caches": inductor_cache_settings(),
                     "sweep_seconds": None},
        "notes": notes,
        "records": [asdict(r) for r in records],
        "_elapsed": time.perf_counter() - t0,
    }


def _compile_note(cfg: SweepConfig, what: str, first_call: str) -> str:
    return (f"compile: torch.compile({what}, dynamic=False), compiled once per case after "
            f"torch._dynamo.reset(); compile_s is its {first_call}, excluded from the "
            "timings" + (", compiled cold (Inductor caches disabled)" if cfg.cold_compile
                         else "; it hits Inductor's on-disk caches when an earlier run "
                         "compiled the same graph (--cold-compile disables them)"))


def _timing_note(cfg: SweepConfig, forward_only: bool) -> str:
    if cfg.device.type == "cuda":
        return ("timing: triton.testing.do_bench (L2 flushed before each run, median) "
                "or CUDA events with the same protocol when triton is missing")
    t = cfg.timing
    if forward_only:
        return ("timing: time.perf_counter; calls under "
                f"{t.cpu_long_call_s:g} s: after the checked call, 1 more warm-up (2 when "
                f"cheap), then repeats filling {t.cpu_budget_s:g} s (at least "
                f"{t.cpu_min_reps}), median; longer calls: min(3, {t.cpu_long_budget_s:g} s "
                "/ call) repeats, at least 1, the first being the checked call itself "
                "(made under the memory profiler unless --no-memory; no warm-up), median "
                "(reps in the JSON)")
    return ("timing: time.perf_counter, 1 warm-up call (2 when cheap), then repeats filling "
            f"the budget ({t.cpu_budget_s:g} s fwd+bwd, half that fwd; at least "
            f"{t.cpu_min_reps}), median")


def _train_notes(cfg: SweepConfig) -> list[str]:
    return [
        CUDA_MEMORY_NOTE if cfg.device.type == "cuda" else CPU_MEMORY_NOTE,
        "ms: median of fwd+bwd (loss, then torch.autograd.grad to the differentiable "
        "inputs); fwd_ms: median of the forward alone with grad enabled, as in training",
        "GB/s: bytes_min / ms; frac_copy_bw: that over the copy bandwidth measured in this "
        "run (read + write of a large dst.copy_(src))",
        "grad_rel_err: relative norm error of the gradient against autograd of the "
        "reference in float64 on the same (already rounded) inputs",
        _compile_note(cfg, "reference loss", "first fwd+bwd call"),
        _timing_note(cfg, forward_only=False),
    ]


def _forward_notes(cfg: SweepConfig) -> list[str]:
    memory = (CUDA_MEMORY_NOTE if cfg.device.type == "cuda" else CPU_MEMORY_NOTE)
    return [
        memory.replace("one untimed fwd+bwd", "the row's first call").replace(
            ", including the returned gradients", ", including the outputs"),
        "forward-only op: ms is the median time of one call under torch.no_grad(); no "
        "backward, no fwd_ms; each row's first call gives its peak memory and its check",
        "vs eager (speedup_vs_eager): time of the FASTEST eager baseline of the case over "
        "this row's time; vs compile: the compile row's; vs <name> (JSON: vs): each "
        "baseline's (eager, compile, external) time over this row's",
        "TFLOP/s: flops / ms; % matmul (frac_matmul): that over the matmul rate measured "
        "in this run for the case's dtype (fp32 with TF32 off); GB/s: bytes_min / ms, "
        "% copy BW over the measured copy bandwidth",
        _compile_note(cfg, "the eager formulation named in the op's notes", "first call"),
        _timing_note(cfg, forward_only=True),
    ]


def finalize(result: dict) -> dict:
    result["settings"]["sweep_seconds"] = round(result.pop("_elapsed", 0.0), 1)
    return result


def write_json(result: dict, path: str) -> None:
    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o
    with open(path, "w") as f:
        json.dump(clean(result), f, indent=1)
        f.write("\n")


def _speed(v) -> str:
    return "–" if v is None else f"{v:.2f}x"


def _num(v) -> str:
    """3 significant digits without exponents for ordinary magnitudes."""
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def _fmt_err(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, str) or not math.isfinite(v):
        return str(v)
    return f"{v:.1e}"


def markdown_table(result: dict) -> str:
    """The records as a markdown table, with a header on device and ceilings."""
    env, ceil = result["environment"], result.get("ceilings", {})
    lines = [f"## {result['op']} on {env.get('device_name')}", ""]
    vers = [f"torch {env.get('torch')}"]
    if env.get("torch_cuda"):
        vers.append(f"CUDA {env['torch_cuda']}")
    if env.get("triton"):
        vers.append(f"triton {env['triton']}")
    vers.append(f"python {env.get('python')}")
    if env.get("git_commit"):
        vers.append(f"commit {env['git_commit'][:10]}{'+dirty' if env.get('git_dirty') else ''}")
    lines.append(", ".join(vers) + f"; {env.get('date_utc')}")
    lines.append("")
    c = []
    if "copy_gbps" in ceil:
        c.append(f"copy {_num(ceil['copy_gbps'])} GB/s")
    for k in ("fp32", "bf16"):
        if f"matmul_{k}_tflops" in ceil:
            c.append(f"matmul {k} {_num(ceil[f'matmul_{k}_tflops'])} TFLOP/s "
                     f"(n={ceil[f'matmul_{k}_n']}{', TF32 off' if k == 'fp32' else ''})")
    if c:
        lines += ["Measured ceilings: " + "; ".join(c) + ".", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    if result.get("forward_only"):
        lines += _forward_table(result["records"])
    else:
        lines += _train_table(result["records"])
    compiles = [r for r in result["records"] if r.get("compile_s") is not None]
    if compiles:
        first = "first call" if result.get("forward_only") else "first fwd+bwd"
        lines += ["", f"Compile time of torch.compile ({first}, excluded): " + ", ".join(
            f"{r['case']}/{r['dtype']} {r['compile_s']:.1f} s" for r in compiles) + "."]
    if result.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _train_table(records: list[dict]) -> list[str]:
    """Rows of a differentiable op (TFLOP/s columns only when the op counts FLOP)."""
    has_flops = any(r.get("tflops") for r in records)
    head = ("| case | shape | dtype | impl | fwd+bwd ms | fwd ms | vs eager | vs compile "
            "| GB/s | % copy BW |" + (" TFLOP/s | % matmul |" if has_flops else "")
            + " extra mem MiB | grad err |")
    ncols = 14 if has_flops else 12
    lines = [head, "|" + "---|" * ncols]
    for r in records:
        if r["status"] != "ok":
            lines.append(f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['impl']} | "
                         f"{r['status']}: {str(r['error'])[:120].replace('|', '/')} "
                         + "| " * (ncols - 5) + "|")
            continue
        mem = r.get("peak_mem_bytes")
        flops = ""
        if has_flops:
            frac = r.get("frac_matmul")
            flops = (f"| {_num(r.get('tflops'))} "
                     f"| {_num(None if frac is None else 100 * frac)} ")
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['impl']} "
            f"| {_num(r['ms'])} | {_num(r['fwd_ms'])} "
            f"| {_speed(r['speedup_vs_eager'])} | {_speed(r['speedup_vs_compile'])} "
            f"| {_num(r['gbps'])} "
            f"| {_num(None if r['frac_copy_bw'] is None else 100 * r['frac_copy_bw'])} "
            + flops +
            f"| {_num(None if mem is None else mem / 2**20)} "
            f"| {_fmt_err(r.get('grad_rel_err'))} |")
    return lines


def _forward_table(records: list[dict]) -> list[str]:
    """Rows of a forward-only op: one "vs" column per external baseline; TFLOP/s when
    the op counts FLOP, else GB/s; the check columns the op fills; the row's note."""
    external: list[str] = []
    for r in records:
        if r.get("kind") == "external" and r["impl"] not in external:
            external.append(r["impl"])
    has_flops = any(r.get("flops") for r in records)
    has_bytes = not has_flops and any(r.get("bytes_min") for r in records)
    has_exact = any(r.get("exact_frac") is not None for r in records)
    has_err = any(r.get("out_rel_err") is not None for r in records)
    cols = ["case", "shape", "dtype", "impl", "ms", "vs eager", "vs compile"]
    cols += [f"vs {n}" for n in external]
    cols += ["TFLOP/s", "% matmul"] if has_flops else []
    cols += ["GB/s", "% copy BW"] if has_bytes else []
    cols += ["extra mem MiB"] + (["exact %"] if has_exact else [])
    cols += (["out err"] if has_err else []) + ["note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        head = [r["case"], r["shape"], r["dtype"], r["impl"]]
        if r["status"] != "ok":
            text = f"{r['status']}: {str(r.get('error'))[:160]}"
            if r.get("note"):
                text += f" ({r['note']})"
            cells = head + [_cell(text)] + [""] * (len(cols) - 5)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        vs = r.get("vs") or {}
        mem = r.get("peak_mem_bytes")
        cells = head + [_num(r["ms"]), _speed(r.get("speedup_vs_eager")),
                        _speed(r.get("speedup_vs_compile"))]
        cells += [_speed(vs.get(n)) for n in external]
        if has_flops:
            frac = r.get("frac_matmul")
            cells += [_num(r.get("tflops")), _num(None if frac is None else 100 * frac)]
        if has_bytes:
            frac = r.get("frac_copy_bw")
            cells += [_num(r.get("gbps")), _num(None if frac is None else 100 * frac)]
        cells.append(_num(None if mem is None else mem / 2**20))
        if has_exact:
            v = r.get("exact_frac")
            cells.append("–" if v is None else f"{100 * v:.1f}")
        if has_err:
            cells.append(_fmt_err(r.get("out_rel_err")))
        cells.append(_cell(r.get("note") or ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot_results(result: dict, path: str) -> None:
    """Grouped bar chart: speedup over eager (fwd+bwd; for forward-only ops the call, over
    the fastest eager baseline), per implementation, per case."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [r for r in result["records"] if r["status"] == "ok" and r.get("speedup_vs_eager")]
    cases: list[tuple[str, str]] = []
    impls: list[str] = []
    for r in result["records"]:
        key = (r["case"], r["dtype"])
        if key not in cases:
            cases.append(key)
        if r["impl"] not in impls and r["status"] == "ok":
            impls.append(r["impl"])
    labels = {}
    for r in result["records"]:
        labels[(r["case"], r["dtype"])] = f"{r['case']} {r['dtype']}\n{r['shape']}"
    val = {(r["case"], r["dtype"], r["impl"]): r["speedup_vs_eager"] for r in recs}
    fig_w = min(16.0, max(6.0, 0.32 * len(cases) * max(1, len(impls)) + 2))
    fig, ax = plt.subplots(figsize=(fig_w, 4.8))
    n = max(1, len(impls))
    width = 0.8 / n
    values = [v for v in val.values() if v and v > 0]
    use_log = bool(values) and max(values) / min(values) > 20
    for i, impl in enumerate(impls):
        xs, ys = [], []
        for j, case in enumerate(cases):
            v = val.get((case[0], case[1], impl))
            if v:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(v)
        bars = ax.bar(xs, ys, width=width, label=impl)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2g}", (x, y), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 1), textcoords="offset points")
        del bars
    ax.axhline(1.0, color="black", lw=0.8)
    if use_log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([labels[c] for c in cases], fontsize=7)
    ax.set_ylabel("speedup over the fastest eager baseline (x)" if result.get("forward_only")
                  else "speedup of fwd+bwd over eager (x)")
    env = result["environment"]
    ax.set_title(f"{result['op']}: {env.get('device_name')} (torch {env.get('torch')})",
                 fontsize=10)
    ax.legend(fontsize=8, ncol=min(n, 4))
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(result: dict, out_dir: str) -> dict[str, str | None]:
    """Write ``<out>/<slug>/<op>.json``, ``.md`` and ``.png``; returns their paths (the
    PNG's is None with a warning if matplotlib is missing or fails)."""
    slug = result["environment"]["device_slug"]
    folder = os.path.join(out_dir, slug)
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, result["op"])
    paths: dict[str, str | None] = {"json": stem + ".json", "md": stem + ".md",
                                    "png": stem + ".png"}
    write_json(result, paths["json"])
    with open(paths["md"], "w") as f:
        f.write(markdown_table(result))
    try:
        plot_results(result, paths["png"])
    except Exception as exc:  # noqa: BLE001 - a missing matplotlib must not lose results
        _warn(f"plot not written: {_short_error(exc)}")
        paths["png"] = None
    return paths
