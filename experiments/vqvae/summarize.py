"""Markdown tables of ``experiments/vqvae/run_digits.sh``'s runs.

    python experiments/vqvae/summarize.py runs/vqvae-digits

reads ``<dir>/<row>-seed<s>/vq_test_metrics.json`` (the final test-set statistics written
by ``dqk train vqvae``) and ``metrics.jsonl`` (the last epoch's training extras and the
run's training + evaluation time), and prints one line per run and one per row (the mean
over its seeds).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import defaultdict


def load(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "vq_test_metrics.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stats = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if line.strip()][-1]
    stats["train_bpd"] = last["train_bpd"]
    stats["train_perplexity"] = last["extras"]["perplexity"]
    stats["train_s"] = last["elapsed_s"]
    return stats


def main(out: str) -> int:
    rows = defaultdict(list)
    missing = []
    for name in sorted(os.listdir(out)):
        m = re.fullmatch(r"(.+)-seed(\d+)", name)
        if not m or not os.path.isdir(os.path.join(out, name)):
            continue
        stats = load(os.path.join(out, name))
        if stats is None:
            missing.append(name)
            continue
        rows[m.group(1)].append((int(m.group(2)), stats))
    cols = ("bound_bpd", "recon_bpd", "rate_bpd", "perplexity", "used_codes", "dead_codes")
    print(
        "| run | test bound bpd | recon bpd | rate bpd | test perplexity | used / K | dead "
        "| train perplexity (last epoch) | train + eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row, runs in rows.items():
        for seed, s in sorted(runs):
            print(
                f"| {row} seed {seed} | {s['bound_bpd']:.4f} | {s['recon_bpd']:.4f} | "
                f"{s['rate_bpd']:.4f} | {s['perplexity']:.1f} | {s['used_codes']} / "
                f"{s['num_codes']} | {s['dead_codes']} | {s['train_perplexity']:.1f} | "
                f"{s['train_s']:.0f} |"
            )
    print()
    print(
        "| row | seeds | test bound bpd | recon bpd | rate bpd | test perplexity | used / K "
        "| dead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row, runs in rows.items():
        n = len(runs)
        mean = {c: sum(s[c] for _, s in runs) / n for c in cols}
        K = runs[0][1]["num_codes"]
        print(
            f"| {row} | {n} | **{mean['bound_bpd']:.4f}** | {mean['recon_bpd']:.4f} | "
            f"{mean['rate_bpd']:.4f} | {mean['perplexity']:.1f} | {mean['used_codes']:.1f} / "
            f"{K} | {mean['dead_codes']:.1f} |"
        )
    if missing:
        print(f"\nunfinished runs (no vq_test_metrics.json): {', '.join(missing)}")
    return 1 if missing else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
