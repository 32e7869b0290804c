"""``dqk train``: train a model and write its metrics, plots, samples and checkpoint.

``dqk train pixelcnn`` trains a small PixelCNN with the discretized logistic mixture
likelihood (:func:`dqkernels.ops.dmol_nll`) on scikit-learn's 8x8 digits (17 grey
levels, no download) or on binarized MNIST, printing bits/dim. Into ``--out`` it writes:

* ``metrics.jsonl``: one JSON object per epoch (train and test bits/dim, lr, times);
* ``learning_curve.png``: train and test bits/dim against the epoch;
* ``samples.png``: a grid of images drawn from the model, pixel by pixel;
* ``checkpoint.pt``: model, optimizer and scheduler state, epoch, arguments, written
  atomically after every epoch.

Bits/dim is the NLL in nats summed over the images, divided by ``N * C*H*W * ln 2``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import sys
import time

import torch

MODELS = ("pixelcnn",)
DATASET_CHOICES = ("digits", "binarized_mnist")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dqkernels.backends import CHOICES

    parser.add_argument("model", choices=MODELS, help="the model to train")
    parser.add_argument("--dataset", choices=DATASET_CHOICES, default="digits",
                        help="digits: scikit-learn's 8x8 digits, 17 levels, bundled (default); "
                             "binarized_mnist: the .amat files in --data-dir")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory of binarized_mnist_{train,valid,test}.amat[.gz] "
                             "(default ../shared/data/binarized_mnist)")
    parser.add_argument("--epochs", type=int, default=30, metavar="N", help="default 30")
    parser.add_argument("--batch-size", type=int, default=64, metavar="B", help="default 64")
    parser.add_argument("--lr", type=float, default=2e-3,
                        help="Adam learning rate, cosine-annealed to 0 (default 2e-3)")
    parser.add_argument("--width", type=int, default=96, help="hidden channels (default 96)")
    parser.add_argument("--blocks", type=int, default=5,
                        help="residual blocks (default 5)")
    parser.add_argument("--dropout", type=float, default=0.1,
                        help="dropout in the residual blocks (default 0.1)")
    parser.add_argument("--mixtures", type=int, default=5, metavar="M",
                        help="logistic mixture components per pixel (default 5)")
    parser.add_argument("--backend", choices=CHOICES, default=None,
                        help="dqkernels backend of the dmol ops (default: the one in force, "
                             "normally auto)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output directory (default runs/<model>-<dataset>)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="use only the first N training images (smoke tests)")
    parser.add_argument("--samples", type=int, default=64, metavar="N",
                        help="images to draw for samples.png (default 64; 0 skips it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- helpers


class _UsageError(Exception):
    """A bad argument or input: reported in one line, exit status 2."""


def _check_args(args) -> None:
    for name in ("epochs", "batch_size", "width", "mixtures"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be >= 1; got "
                              f"{getattr(args, name)}")
    if args.blocks < 0:
        raise _UsageError(f"--blocks must be >= 0; got {args.blocks}")
    if args.limit is not None and args.limit < 1:
        raise _UsageError(f"--limit must be >= 1; got {args.limit}")
    if args.samples < 0:
        raise _UsageError(f"--samples must be >= 0; got {args.samples}")
    if not 0.0 <= args.dropout < 1.0:
        raise _UsageError(f"--dropout must be in [0, 1); got {args.dropout}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise _UsageError(f"--lr must be a positive number; got {args.lr}")


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: no CUDA device is available to this torch "
                          f"({torch.__version__}); use --device cpu")
    return torch.device(name)


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file in ``path``'s directory, then ``os.replace``:
    a reader never sees a half-written file, and a crash leaves the old one intact."""
    directory, name = os.path.split(os.path.abspath(path))
    # open(..., "x") rather than mkstemp, so the file gets the usual umask permissions
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _bits_per_dim(nll_nats: float, num_images: int, num_dims: int) -> float:
    return nll_nats / (num_images * num_dims * math.log(2.0))


@torch.no_grad()
def evaluate(model, x: torch.Tensor, batch_size: int) -> float:
    """Bits/dim of the grid values ``x`` under ``model`` (eval mode)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        total += model.nll(x[i:i + batch_size]).double().sum().item()
    model.train(was_training)
    return _bits_per_dim(total, x.shape[0], x[0].numel())


def _figure(width: float, height: float):
    # The object-oriented API with an Agg canvas: no pyplot state, no backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_image_grid(levels: torch.Tensor, num_levels: int, path: str, title: str = "") -> None:
    """Write ``[N, C, H, W]`` integer levels as a grid PNG (grey for C == 1, RGB for C == 3)."""
    import numpy as np

    n, c, h, w = levels.shape
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    pad = 1
    img = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 0.5, dtype=np.float32)
    vals = (levels.float() / (num_levels - 1)).permute(0, 2, 3, 1).cpu().numpy()
    for k in range(n):
        r, q = divmod(k, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        img[y:y + h, x:x + w] = vals[k]
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


def save_learning_curve(history: list[dict], path: str, title: str = "",
                        baseline: float | None = None) -> None:
    """Train and test bits/dim against the epoch."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_bpd"] for h in history], "o-", label="train")
    ax.plot(epochs, [h["test_bpd"] for h in history], "s-", label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits/dim")
    if title:
        ax.set_title(title + (f"  (uniform baseline {baseline:.3f})" if baseline else ""),
                     fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- training


def _train_pixelcnn(args) -> int:
    from tqdm.auto import tqdm

    from dqkernels import backends
    from dqkernels.data import grid_to_levels, levels_to_grid, load_dataset
    from dqkernels.models import PixelCNN

    _check_args(args)
    device = _device(args.device)
    try:
        backend = backends.resolve("dmol_nll", device, torch.float32, args.backend)
    except backends.BackendUnavailableError as exc:
        raise _UsageError(str(exc)) from None
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise _UsageError(str(exc)) from None

    out = args.out or os.path.join("runs", f"{args.model}-{args.dataset}")
    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in
             ("metrics.jsonl", "learning_curve.png", "samples.png", "checkpoint.pt")}

    torch.manual_seed(args.seed)
    L = data.num_levels
    train_levels = data.train if args.limit is None else data.train[:args.limit]
    x_train = levels_to_grid(train_levels, L).to(device)
    x_test = levels_to_grid(data.test, L).to(device)
    C, H, W = data.image_shape
    num_dims = C * H * W
    baseline = math.log2(L)

    model = PixelCNN(in_channels=C, num_levels=L, width=args.width, num_blocks=args.blocks,
                     num_mixtures=args.mixtures, dropout=args.dropout,
                     backend=args.backend).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps_per_epoch = math.ceil(x_train.shape[0] / args.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(args.seed)
    eval_batch = max(args.batch_size, 256)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pixelcnn on {args.dataset}: {x_train.shape[0]} train / {x_test.shape[0]} test "
          f"images of {C}x{H}x{W}, {L} levels; {n_params:,} parameters; device {device}, "
          f"dmol backend {backend}", flush=True)

    title = f"PixelCNN on {args.dataset}"
    run_args = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    history: list[dict] = []
    start = time.perf_counter()
    with open(paths["metrics.jsonl"], "w") as metrics:
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(x_train.shape[0], generator=shuffle).to(device)
            total, seen = 0.0, 0
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}",
                       unit="batch", leave=True, dynamic_ncols=True, file=sys.stderr,
                       mininterval=0.5, disable=args.no_progress)
            for i in range(0, x_train.shape[0], args.batch_size):
                x = x_train[perm[i:i + args.batch_size]]
                nll = model.nll(x).sum()
                loss = nll / (x.shape[0] * num_dims * math.log(2.0))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                value = nll.item()
                if not math.isfinite(value):
                    bar.close()
                    print(f"dqk train: error: the loss became {value} in epoch {epoch}; "
                          f"try a smaller --lr", file=sys.stderr)
                    return 1
                total += value
                seen += x.shape[0]
                bar.set_postfix(bpd=f"{_bits_per_dim(total, seen, num_dims):.3f}")
                bar.update()
            bar.close()
            train_bpd = _bits_per_dim(total, seen, num_dims)
            test_bpd = evaluate(model, x_test, eval_batch)
            record = {"epoch": epoch, "train_bpd": train_bpd, "test_bpd": test_bpd,
                      "lr": opt.param_groups[0]["lr"],
                      "epoch_time_s": time.perf_counter() - t0,
                      "elapsed_s": time.perf_counter() - start}
            history.append(record)
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            print(f"epoch {epoch}/{args.epochs}: train {train_bpd:.4f} bits/dim, "
                  f"test {test_bpd:.4f} bits/dim ({record['epoch_time_s']:.1f} s)", flush=True)
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "shuffle_rng": shuffle.get_state(),
                         "epoch": epoch, "args": run_args, "model_name": args.model,
                         "model_config": model.config, "dataset": args.dataset,
                         "num_levels": L, "image_shape": (C, H, W), "history": history},
                        paths["checkpoint.pt"])
            save_learning_curve(history, paths["learning_curve.png"], title, baseline)

    train_time = time.perf_counter() - start
    written = [paths["metrics.jsonl"], paths["learning_curve.png"]]
    if args.samples:
        t0 = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(args.seed)
        grid = model.sample(args.samples, (H, W), generator=gen)
        save_image_grid(grid_to_levels(grid, L), L, paths["samples.png"],
                        f"{title}: {args.samples} samples, test {history[-1]['test_bpd']:.3f} "
                        f"bits/dim")
        print(f"drew {args.samples} samples in {time.perf_counter() - t0:.1f} s", flush=True)
        written.append(paths["samples.png"])
    written.append(paths["checkpoint.pt"])
    print(f"trained {args.epochs} epochs in {train_time:.1f} s")
    print(f"test bits/dim: {history[-1]['test_bpd']:.3f} (uniform baseline log2({L}) = "
          f"{baseline:.3f})")
    print("wrote " + ", ".join(written))
    return 0


def run(args) -> int:
    try:
        if args.model == "pixelcnn":
            return _train_pixelcnn(args)
    except _UsageError as exc:
        print(f"dqk train: error: {exc}", file=sys.stderr)
        return 2
    print(f"dqk train: error: unknown model {args.model!r}", file=sys.stderr)
    return 2
