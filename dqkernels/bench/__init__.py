"""``dqk bench``: sweep ops over shapes, dtypes and backends against the eager and
``torch.compile`` references, with the device's measured copy bandwidth and matmul rate
as ceilings. Results: ``<out>/<device-slug>/<op>.{json,md,png}``, written atomically; a
result file is never replaced by one with fewer records unless ``--replace``, and a
selection that matches no case writes nothing (exit status 2).

Also reachable as ``python benchmarks/run.py`` (same arguments). Heavy imports (the
runner, matplotlib, tqdm, triton) happen inside :func:`run`, so building the ``dqk``
parser stays cheap.

The package: ``cases/<op>.py`` (one op's cases and implementations, see :mod:`.spec`),
:mod:`.modes` (how a call is measured), :mod:`.selection` (which cases run),
:mod:`.runner` (the sweep), :mod:`.timing`, :mod:`.memory`, :mod:`.ceilings`,
:mod:`.environment`, :mod:`.records` and :mod:`.report` (JSON, markdown, PNG).
"""

from __future__ import annotations

import argparse
import sys

from dqkernels.cli import SEED, Parser, float_in, int_in

__all__ = ["add_arguments", "run", "main"]

DEFAULT_OUT = "benchmarks/results"


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _known_ops() -> list[str]:
    from dqkernels.bench.cases import op_names

    return op_names()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ops",
        default=None,
        help="comma-separated ops to benchmark (default: all; known: "
        + ", ".join(_known_ops())
        + ")",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the tiny cases only, few repeats (smoke tests, CI)"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="device to benchmark (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--dtypes",
        default="fp32,bf16",
        help="comma-separated dtypes: fp32, bf16, fp16 (default: fp32,bf16)",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"output folder; files go to OUT/<device-slug>/ (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace an op's result file even when it holds more records than the new "
        "result (without it, such a file is kept and the run ends with status 2)",
    )
    parser.add_argument(
        "--no-compile", dest="compile", action="store_false", help="skip the torch.compile baseline"
    )
    parser.add_argument(
        "--cold-compile",
        action="store_true",
        help="compile without Inductor's on-disk caches, so the reported "
        "compile time is a cold one (slower sweep)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated dqkernels backends to time (default: every "
        "available one; triton is never timed on CPU)",
    )
    parser.add_argument(
        "--budget",
        type=float_in(0),
        default=None,
        help="CPU seconds of timed repeats per fwd+bwd measurement, half that "
        "for fwd (default 0.5, quick 0.02)",
    )
    parser.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip the float64 gradient check of each implementation",
    )
    parser.add_argument(
        "--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement"
    )
    parser.add_argument(
        "--threads",
        type=int_in(1),
        default=None,
        help="torch.set_num_threads for CPU runs (default: torch's default)",
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated fnmatch patterns on shape case names, e.g. "
        "'n65536-d64-*' (default: every case; also $DQK_BENCH_CASES)",
    )
    parser.add_argument(
        "--select",
        default=None,
        help="comma-separated fnmatch patterns on op/case names, e.g. "
        "'vq_*/n65536-d64-*,dmol/cifar10' (an op alone: all its cases); "
        "instead of --ops and --cases, which mean their product",
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the selected op/case names and shapes, run nothing",
    )
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random inputs")
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from dqkernels.bench import report
    from dqkernels.bench.cases import get_op, op_names
    from dqkernels.bench.ceilings import measure_ceilings
    from dqkernels.bench.environment import environment
    from dqkernels.bench.records import DTYPES
    from dqkernels.bench.runner import SweepConfig, finalize, run_benchmark
    from dqkernels.bench.selection import Selection
    from dqkernels.bench.timing import TimingConfig

    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda" and not torch.cuda.is_available() and not args.list:
        print(
            "dqk bench: --device cuda but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built with CUDA {torch.version.cuda})",
            file=sys.stderr,
        )
        return 2
    device = torch.device(device_type)

    known = op_names()
    for name in _csv(args.ops):
        if name not in known:
            print(f"dqk bench: unknown op {name!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
    try:
        dtypes = [DTYPES[d.lower()] for d in _csv(args.dtypes)]
    except KeyError as exc:
        print(f"dqk bench: unknown dtype {exc.args[0]!r}; use fp32, bf16, fp16", file=sys.stderr)
        return 2
    try:
        sel = Selection.from_flags(
            ops=_csv(args.ops) or None,
            cases=_csv(args.cases) if args.cases else None,
            select=_csv(args.select) or None,
            quick=args.quick,
            dtypes=dtypes,
            backends=_csv(args.backends) if args.backends else None,
        )
    except ValueError as exc:
        print(f"dqk bench: {exc}", file=sys.stderr)
        return 2
    ops = sel.op_names(known)
    if not ops:
        print(
            f"dqk bench: no op matches {', '.join(sel.patterns)}; known: {', '.join(known)}",
            file=sys.stderr,
        )
        return 2
    cases = {name: sel.cases(get_op(name), device_type) for name in ops}
    if args.list:
        for name in ops:
            for case in cases[name]:
                print(f"{name}/{case.name}\t{case.label}")
        return 0
    if not any(cases.values()):
        tier = "quick" if args.quick else "full"
        print(
            f"dqk bench: error: no {tier} {device_type} case matches {', '.join(sel.patterns)}; "
            "nothing was run and no result file was touched (dqk bench --list shows the cases)",
            file=sys.stderr,
        )
        return 2
    for name in [n for n in ops if not cases[n]]:
        print(
            f"dqk bench: {name}: no case matches; its results are left as they are", file=sys.stderr
        )
    ops = [n for n in ops if cases[n]]

    timing = TimingConfig()
    if args.quick:
        timing = TimingConfig(
            cpu_budget_s=0.02, cpu_min_reps=3, cpu_max_reps=20, cuda_rep_ms=10, cuda_warmup_ms=5
        )
    if args.budget is not None:
        timing.cpu_budget_s = args.budget
    cfg = SweepConfig(
        device=device,
        selection=sel,
        compile=args.compile,
        timing=timing,
        check=args.check,
        memory=args.memory,
        seed=args.seed,
        progress=args.progress,
        cold_compile=args.cold_compile,
    )

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = environment(device)
    if not args.replace:
        for name in ops:
            path = report.result_path(args.out, env["device_slug"], name)
            held = {(r.get("case"), r.get("dtype")) for r in report.records_held(path)}
            planned = len(cases[name]) * len(dtypes)
            if planned < len(held):
                print(
                    f"dqk bench: error: {path} holds results of {len(held)} cases x dtypes, "
                    f"this run would measure {planned}; pass --replace to replace it, or "
                    "another --out",
                    file=sys.stderr,
                )
                return 2
    load, ncpu = env.get("loadavg_1m_at_start"), env.get("cpu_count")
    if device_type == "cpu" and load is not None and ncpu and load > 0.5 * ncpu:
        print(
            f"dqk bench: warning: the machine is busy (1-minute load {load} on {ncpu} "
            "CPUs); CPU timings will be noisy, multi-threaded ones most (try --threads 1)",
            file=sys.stderr,
        )
    print(
        f"dqk bench: {env['device_name']} ({env['device_slug']}), torch {env['torch']}; "
        "measuring ceilings...",
        file=sys.stderr,
    )
    ceilings = measure_ceilings(device, quick=args.quick)
    failed = kept = 0
    for name in ops:
        result = finalize(run_benchmark(name, cfg, ceilings=ceilings, env=env))
        print(report.markdown_table(result))
        try:
            paths = report.write_outputs(result, args.out, replace=args.replace)
        except report.ShrinkingResult as exc:
            print(f"dqk bench: error: {exc}", file=sys.stderr)
            kept += 1
            continue
        print("wrote " + ", ".join(p for p in paths.values() if p), file=sys.stderr)
        bad = [r for r in result["records"] if r["status"] == "error"]
        for r in bad:
            print(
                f"dqk bench: FAILED {r['op']} {r['case']} {r['dtype']} {r['impl']}: {r['error']}",
                file=sys.stderr,
            )
        failed += len(bad)
    if failed:
        print(
            f"dqk bench: {failed} implementation(s) failed; see the error fields in the JSON",
            file=sys.stderr,
        )
    return 2 if kept else 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="dqk bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return int(run(parser.parse_args(argv)) or 0)
