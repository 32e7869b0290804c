"""PNG figures the trainer and the tasks write: image grids, learning curves, codebook usage.

Matplotlib's object-oriented API on an Agg canvas: no pyplot state, no global backend
switch, safe to call from any thread or process.
"""

from __future__ import annotations

import math

import torch

__all__ = ["save_codebook_usage", "save_image_grid", "save_learning_curve"]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_image_grid(levels: torch.Tensor, num_levels: int, path: str, title: str = "") -> None:
    """Write ``[N, C, H, W]`` integer levels as a grid PNG (grey for C == 1, RGB for C == 3)."""
    import numpy as np

    n, c, h, w = levels.shape
    if c not in (1, 3):
        raise ValueError(f"save_image_grid: images must have 1 or 3 channels; got {c}")
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    pad = 1
    img = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 0.5, dtype=np.float32)
    vals = (levels.float() / (num_levels - 1)).permute(0, 2, 3, 1).cpu().numpy()
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        img[y : y + h, x : x + w] = vals[k]
    # about 6 inches on the long side at 100 dpi, at least 3 screen pixels per image pixel
    inches = min(12.0, max(6.0, 3 * max(img.shape[:2]) / 100))
    fig_w = inches * img.shape[1] / max(img.shape[:2])
    fig_h = inches * img.shape[0] / max(img.shape[:2])
    head = 0.4 if title else 0.0
    fig = _figure(fig_w, fig_h + head)
    ax = fig.add_axes((0, 0, 1, fig_h / (fig_h + head)))
    if c == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)


def save_learning_curve(
    history: list[dict],
    path: str,
    title: str = "",
    baseline: float | None = None,
    *,
    key: str = "bpd",
    label: str = "bits/dim",
    baseline_label: str = "uniform baseline",
) -> None:
    """Train and test ``train_<key>`` / ``test_<key>`` (in ``label``) against the epoch;
    epochs without an evaluation (see ``--eval-every``) have ``test_<key>`` None and are
    left out of the test curve."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(
        [h["epoch"] for h in history], [h[f"train_{key}"] for h in history], "o-", label="train"
    )
    tested = [h for h in history if h.get(f"test_{key}") is not None]
    ax.plot([h["epoch"] for h in tested], [h[f"test_{key}"] for h in tested], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    if title:
        ax.set_title(
            title + (f"  ({baseline_label} = {baseline:.3f})" if baseline else ""), fontsize=10
        )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def save_codebook_usage(
    usage, ema_counts, path: str, title: str = "", dead_threshold: float | None = None
) -> None:
    """A VQ codebook's usage, two panels of bars over the codes sorted by usage (log y):
    left ``usage[k]`` (e.g. how many test latents chose code ``k``; unused codes have no
    bar and are counted in the panel title), right the codebook's EMA counts ``ema_counts[k]``
    in the same order. Codes with an EMA count below ``dead_threshold`` are red in both
    panels, and the threshold is drawn as a line on the right."""
    import numpy as np

    usage = torch.as_tensor(usage).double().cpu().numpy()
    ema = torch.as_tensor(ema_counts).double().cpu().numpy()
    if usage.shape != ema.shape or usage.ndim != 1:
        raise ValueError(
            f"save_codebook_usage: usage and ema_counts must both be [K]; got "
            f"{usage.shape} and {ema.shape}"
        )
    K = usage.shape[0]
    order = np.lexsort((-ema, -usage))  # by usage, then EMA count, descending
    dead = ema < dead_threshold if dead_threshold is not None else np.zeros(K, dtype=bool)
    colors = np.where(dead[order], "tab:red", "tab:blue")
    fig = _figure(11.0, 4.0)
    pos = np.arange(K)
    for i, (values, label) in enumerate(((usage, "usage count"), (ema, "EMA count"))):
        ax = fig.add_subplot(1, 2, i + 1)
        shown = values[order]
        ax.bar(pos, np.where(shown > 0, shown, np.nan), width=1.0, color=colors)
        ax.set_yscale("log")
        ax.set_xlim(-0.5, K - 0.5)
        ax.set_xlabel("codes, sorted by usage (then EMA count)")
        ax.set_ylabel(label)
        notes = [f"{int((values <= 0).sum())} of {K} codes at 0"]
        if dead_threshold is not None:
            notes.append(f"{int(dead.sum())} dead (red: EMA count < {dead_threshold:g})")
        if i == 1 and dead_threshold is not None and dead_threshold > 0:
            ax.axhline(dead_threshold, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title("; ".join(notes), fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
