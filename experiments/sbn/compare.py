"""Every SBN gradient estimator at the same number of iterations and at the same wall-clock
budget (issue 13 item 5): the two-layer linear 200-200-784 SBN on binarized MNIST.

    python experiments/sbn/compare.py --out experiments/sbn/train-bmnist \
        --iterations 8000 --seconds 200 --seeds 0,1 --jobs 2

One run per (estimator, seed), ``--jobs`` at a time, each in its own process on one thread
(so the runs of a batch share the machine alike). A run trains with Adam (``--lr``, batch
``--batch-size``) until it has done ``--iterations`` steps AND spent ``--seconds`` seconds
of training time (the evaluations are not counted), and evaluates

* after every eighth of the iterations and every eighth of the seconds: the test
  importance-weighted bound with ``--curve-samples`` samples on the first
  ``--curve-images`` test images (the curves);
* at exactly ``--iterations`` steps and at the first step past ``--seconds``: the bound with
  ``--eval-samples`` samples on the whole test set (the table), and the training ELBO
  averaged over the last ``--elbo-window`` steps' minibatches (one sample each: the number
  the RELAX paper's table reports).

Every finished run is written to ``OUT/per-run/<estimator>-seed<S>.json`` (atomically); a rerun
skips the runs already there, so an interrupted comparison resumes. Then (and with
``--report`` alone) ``OUT/results.md``, ``results.csv`` and ``curves.png`` are written from
every run found. A run that fails (e.g. a non-finite ELBO) is reported and left out; the
others go on.

With ``--jobs 2`` the runs of a pair share the machine: one run's evaluations (not timed)
slow the other's timed training a little, alike for every estimator on average; use
``--jobs 1`` for timings free of that.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import math
import multiprocessing as mp
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: the RELAX paper's table (Grathwohl et al. 2018, Table 2): training ELBO of the two-layer
#: linear SBN on MNIST after 2M iterations of batch 24
RUNS = "per-run"  # OUT/per-run/<estimator>-seed<S>.json (runs/ is the trainer's, ignored by git)
PUBLISHED = {"nvil": -99.6, "muprop": -99.07, "gumbel": -99.62, "REBAR": -98.22, "RELAX": -98.00}


def _run(cfg: dict) -> dict:
    """One (estimator, seed) run; returns its record."""
    import torch

    from dqkernels.data import binary_vectors
    from dqkernels.models.sbn import SBN
    from dqkernels.models.sbn_estimators import SBNTraining, make_estimator

    torch.set_num_threads(1)
    torch.manual_seed(cfg["seed"])
    data = binary_vectors("binarized_mnist", cfg["data_dir"])
    train, test = data.train.float(), data.test.float()
    sbn = SBN(train.shape[1], tuple(cfg["layers"]))
    model = SBNTraining(sbn, make_estimator(cfg["estimator"], sbn))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    order_gen = torch.Generator().manual_seed(cfg["seed"])
    B, N, T = cfg["batch_size"], cfg["iterations"], cfg["seconds"]
    curve_x = test[: cfg["curve_images"]]

    def bound(x: torch.Tensor, k: int) -> float:
        """The IW bound per example, nats. Its samples come from a forked
        RNG (seeded per evaluation), so training draws the same uniforms whether or not,
        and however often, it is evaluated: equal seeds give equal runs."""
        model.eval()
        total = 0.0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg["seed"] * 1_000_003 + step)
            for i in range(0, x.shape[0], 1000):
                xb = x[i : i + 1000]
                total += sbn.iw_bound(xb, k, chunk=max(1, 20000 // xb.shape[0])).sum().item()
        model.train()
        return total / x.shape[0]

    marks_it = {round(N * j / 8) for j in range(1, 9)}
    marks_t = [T * j / 8 for j in range(1, 9)]
    curve, table, elbos = [], {}, []
    step, train_time, order, pos = 0, 0.0, torch.randperm(len(train), generator=order_gen), 0
    t_run = time.perf_counter()
    while step < N or train_time < T:
        if pos + B > len(order):
            order, pos = torch.randperm(len(train), generator=order_gen), 0
        x = train[order[pos : pos + B]]
        pos += B
        t0 = time.perf_counter()
        out = model(x)["loss"]
        opt.zero_grad(set_to_none=True)
        out.mean().backward()
        opt.step()
        train_time += time.perf_counter() - t0
        step += 1
        elbos.append(-out.detach().mean().item())
        if not math.isfinite(elbos[-1]):
            raise FloatingPointError(
                f"{cfg['estimator']} seed {cfg['seed']}: ELBO {elbos[-1]} at step {step}"
            )
        crossed_t = bool(marks_t) and train_time >= marks_t[0]
        while marks_t and train_time >= marks_t[0]:
            marks_t.pop(0)
        if step in marks_it or crossed_t:
            window = elbos[-cfg["elbo_window"] :]
            point = {
                "step": step,
                "train_time_s": train_time,
                "train_elbo": sum(window) / len(window),
                "test_bound_subset": bound(curve_x, cfg["curve_samples"]),
            }
            curve.append(point)
            for key, hit in (("iterations", step == N), ("seconds", crossed_t and not marks_t)):
                if hit:
                    table[key] = {**point, "test_bound": bound(test, cfg["eval_samples"])}
    return {
        "config": cfg,
        "steps": step,
        "train_time_s": train_time,
        "wall_s": time.perf_counter() - t_run,
        "ms_per_step": 1e3 * train_time / step,
        "test_images": test.shape[0],
        "curve": curve,
        "table": table,
    }


def _write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _load_runs(out: str) -> list[dict]:
    d = os.path.join(out, RUNS)
    if not os.path.isdir(d):
        return []
    runs = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".json"):
            with open(os.path.join(d, name)) as f:
                runs.append(json.load(f))
    return runs


def report(out: str) -> str:
    """results.md / results.csv / curves.png from every run in ``out/runs``."""
    runs = _load_runs(out)
    if not runs:
        raise SystemExit(f"no runs in {out}/{RUNS}")
    by_est: dict[str, list[dict]] = {}
    for r in runs:
        by_est.setdefault(r["config"]["estimator"], []).append(r)
    cfg = runs[0]["config"]
    N, T = cfg["iterations"], cfg["seconds"]
    arch = "-".join(str(h) for h in reversed(cfg["layers"])) + "-784"
    n_test = runs[0].get("test_images", 10000)

    def stat(rs, key, field):
        v = [r["table"][key][field] for r in rs if key in r["table"]]
        if not v:
            return None, None, 0
        m = sum(v) / len(v)
        return m, max(v) - min(v), len(v)

    rows = []
    for est, rs in by_est.items():
        row = {
            "estimator": est,
            "seeds": len(rs),
            "ms_per_step": sum(r["ms_per_step"] for r in rs) / len(rs),
        }
        for key in ("iterations", "seconds"):
            for field in ("test_bound", "train_elbo"):
                m, spread, _ = stat(rs, key, field)
                row[f"{key}_{field}"], row[f"{key}_{field}_spread"] = m, spread
            steps = [r["table"][key]["step"] for r in rs if key in r["table"]]
            row[f"{key}_step"] = sum(steps) / len(steps) if steps else None
        row["published_train_elbo"] = PUBLISHED.get(est)
        rows.append(row)
    rows.sort(key=lambda r: -(r["iterations_test_bound"] or -1e9))

    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def fmt(v, spread=None):
        if v is None:
            return "-"
        return f"{v:.2f}" if spread is None else f"{v:.2f} (±{spread / 2:.2f})"

    lines = [
        f"Linear SBN {arch}, binarized MNIST, batch {cfg['batch_size']}, Adam lr "
        f"{cfg['lr']}; mean over seeds (± half the spread between seeds). Test bound: the "
        f"importance-weighted bound with {cfg['eval_samples']} samples on the {n_test} test "
        f"images, nats; train ELBO: one-sample ELBO of the last {cfg['elbo_window']} "
        f"training minibatches.",
        "",
        f"| estimator | ms/step | test bound @ {N} it | train ELBO @ {N} it | steps in {T:g} s "
        f"| test bound @ {T:g} s | train ELBO @ {T:g} s | RELAX table (2M it) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['ms_per_step']:.1f} | "
            f"{fmt(r['iterations_test_bound'], r['iterations_test_bound_spread'])} | "
            f"{fmt(r['iterations_train_elbo'], r['iterations_train_elbo_spread'])} | "
            f"{'-' if r['seconds_step'] is None else round(r['seconds_step'])} | "
            f"{fmt(r['seconds_test_bound'], r['seconds_test_bound_spread'])} | "
            f"{fmt(r['seconds_train_elbo'], r['seconds_train_elbo_spread'])} | "
            f"{fmt(r['published_train_elbo'])} |"
        )
    lines.append("")
    lines.append(
        "RELAX table, not in our runs: REBAR -98.22, RELAX -98.00 (training ELBO, 2M iterations)."
    )
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    _plot(by_est, os.path.join(out, "curves.png"), cfg)
    return text


def _plot(by_est: dict, path: str, cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    cmap = plt.get_cmap("tab10")
    for i, (est, rs) in enumerate(sorted(by_est.items())):
        for j, r in enumerate(rs):
            c = r["curve"]
            kw = {"color": cmap(i % 10), "lw": 1.3, "alpha": 0.9 if j == 0 else 0.5}
            lab = est if j == 0 else None
            axes[0].plot(
                [p["step"] for p in c], [p["test_bound_subset"] for p in c], label=lab, **kw
            )
            axes[1].plot([p["train_time_s"] for p in c], [p["test_bound_subset"] for p in c], **kw)
    axes[0].set_xscale("log")
    axes[1].set_xscale("log")
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("training time (s, one CPU thread)")
    axes[0].set_ylabel(
        f"test IW bound ({cfg['curve_samples']} samples, "
        f"first {cfg['curve_images']} test images), nats"
    )
    axes[0].legend(fontsize=8, ncol=2)
    lo = min(
        p["test_bound_subset"]
        for rs in by_est.values()
        for r in rs
        for p in r["curve"][len(r["curve"]) // 3 :]
    )
    hi = max(p["test_bound_subset"] for rs in by_est.values() for r in rs for p in r["curve"])
    axes[0].set_ylim(lo - 5, hi + 3)
    arch = "-".join(str(h) for h in reversed(cfg["layers"])) + "-784"
    fig.suptitle(f"SBN {arch} on binarized MNIST: every estimator (lines: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    from dqkernels.models.sbn_estimators import ESTIMATORS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="experiments/sbn/train-bmnist")
    p.add_argument("--estimators", default=",".join(sorted(ESTIMATORS)))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--iterations", type=int, default=8000)
    p.add_argument("--seconds", type=float, default=200.0)
    p.add_argument("--layers", default="200,200")
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-samples", type=int, default=100)
    p.add_argument("--curve-samples", type=int, default=50)
    p.add_argument("--curve-images", type=int, default=1000)
    p.add_argument("--elbo-window", type=int, default=500)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--report", action="store_true", help="only write the report from OUT/runs")
    args = p.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    if args.iterations < 1 or not args.seconds >= 0:
        p.error("--iterations must be >= 1 and --seconds >= 0")
    names = args.estimators.split(",")
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        p.error(f"--estimators: unknown {unknown}; choose from {sorted(ESTIMATORS)}")
    os.makedirs(os.path.join(args.out, RUNS), exist_ok=True)
    todo = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            path = os.path.join(args.out, RUNS, f"{name}-seed{seed}.json")
            cfg = {
                "estimator": name,
                "seed": seed,
                "iterations": args.iterations,
                "seconds": args.seconds,
                "layers": [int(h) for h in args.layers.split(",")],
                "batch_size": args.batch_size,
                "lr": args.lr,
                "eval_samples": args.eval_samples,
                "curve_samples": args.curve_samples,
                "curve_images": args.curve_images,
                "elbo_window": args.elbo_window,
                "data_dir": args.data_dir,
            }
            if os.path.exists(path):  # done before: it must be the same experiment
                with open(path) as f:
                    old = {k: v for k, v in json.load(f)["config"].items() if k != "data_dir"}
                new = {k: v for k, v in cfg.items() if k != "data_dir"}
                if old != new:
                    p.error(f"{path} was run with other settings {old}; use another --out")
                continue
            todo.append((path, cfg))
    print(f"{len(todo)} runs to do, {args.jobs} at a time", flush=True)
    t0, failed = time.time(), []
    with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run, cfg): path for path, cfg in todo}
        for i, fut in enumerate(cf.as_completed(futures), 1):
            try:
                rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the rest
                failed.append(futures[fut])
                print(f"[{i}/{len(todo)}] FAILED {futures[fut]}: {exc!r}", flush=True)
                continue
            _write_json(futures[fut], rec)
            c = rec["config"]
            tb = {k: round(v["test_bound"], 2) for k, v in rec["table"].items()}
            print(
                f"[{i}/{len(todo)} {time.time() - t0:.0f}s] {c['estimator']} seed {c['seed']}: "
                f"{rec['steps']} steps, {rec['ms_per_step']:.1f} ms/step, test bound {tb}",
                flush=True,
            )
    if len(todo) > len(failed) or _load_runs(args.out):
        print(report(args.out))
    if failed:
        print(f"{len(failed)} runs failed (rerun to retry them): {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
