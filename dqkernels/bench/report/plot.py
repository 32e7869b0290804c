"""The result document as a PNG: the speedup over eager of every implementation, per case.
matplotlib is imported when a chart is drawn."""

from __future__ import annotations

from typing import IO

from dqkernels.bench.modes import result_mode


def plot_results(result: dict, path: str | IO[bytes]) -> None:
    """Grouped bar chart: speedup of the timed call over the fastest eager row, per
    implementation, per case (log scale when the bars span more than 20x); a PNG at
    ``path`` (a file name or a binary file)."""
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
            ax.annotate(
                f"{y:.2g}",
                (x, y),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
        del bars
    ax.axhline(1.0, color="black", lw=0.8)
    if use_log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([labels[c] for c in cases], fontsize=7)
    ax.set_ylabel(result_mode(result).plot_label)
    env = result["environment"]
    ax.set_title(
        f"{result['op']}: {env.get('device_name')} (torch {env.get('torch')})", fontsize=10
    )
    ax.legend(fontsize=8, ncol=min(n, 4))
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
