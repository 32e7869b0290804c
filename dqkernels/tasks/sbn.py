"""``dqk train sbn``: sigmoid belief networks trained by a chosen gradient estimator
(Tokui & Sato 2017 and its baselines; :mod:`dqkernels.models.sbn_estimators`).

``dqk train sbn --estimator NAME --layers 200,200 [--nonlinear]`` on binary vectors
(``--dataset digits``, the bundled 8x8 digits thresholded, or ``binarized_mnist``).
Units: nats per example. The training metric is minus the one-sample ELBO of the drawn
``z`` (averaged over the epoch); the test metric is minus the importance-weighted bound
with ``--eval-samples`` samples per example at the end (default 1000) and
``--epoch-eval-samples`` (default 50) after each epoch, both upper bounds on the NLL.
"""

from __future__ import annotations

import math
import os

import torch

from dqkernels.data import BINARY_DATASETS
from dqkernels.trainer import SAMPLE_KEY, Task, Units, UsageError, check_at_least

__all__ = ["TASK", "SBNTask", "parse_widths"]


def parse_widths(text: str, flag: str) -> tuple[int, ...]:
    """``"200,200"`` -> ``(200, 200)``; a UsageError naming ``flag`` otherwise."""
    try:
        widths = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise UsageError(
            f"{flag} must be comma-separated positive integers, e.g. 200,200; got {text!r}"
        )
    return widths


class SBNTask(Task):
    name = "sbn"
    description = "a sigmoid belief network trained by a chosen gradient estimator"
    datasets = BINARY_DATASETS  # digits (bundled) first
    dataset_help = "binary vectors: digits (bundled, thresholded) or binarized_mnist"
    defaults = {"epochs": 20, "batch_size": 24, "lr": 3e-4}
    runtime_args = ("eval_samples", "epoch_eval_samples", "eval_rows")

    def add_arguments(self, parser) -> None:
        from dqkernels.models.sbn_estimators import ESTIMATORS

        g = parser.add_argument_group("sigmoid belief network")
        g.add_argument(
            "--estimator",
            choices=sorted(ESTIMATORS),
            default="tokui",
            help="gradient estimator of the recognition network (default tokui)",
        )
        g.add_argument(
            "--layers",
            default="200,200",
            metavar="H1,H2,..",
            help="stochastic layer widths from the data up (default 200,200)",
        )
        g.add_argument(
            "--nonlinear",
            action="store_true",
            help="each stochastic connection an MLP with tanh hidden layers (--hidden)",
        )
        g.add_argument(
            "--hidden",
            default="100,100",
            metavar="W1,W2,..",
            help="hidden widths of the --nonlinear connections (default 100,100)",
        )
        g.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="the relaxation temperature of --estimator gumbel (default 0.5)",
        )
        g.add_argument(
            "--eval-samples",
            type=int,
            default=1000,
            metavar="K",
            help="importance samples per test example for the final test bound (default 1000)",
        )
        g.add_argument(
            "--epoch-eval-samples",
            type=int,
            default=50,
            metavar="K",
            help="importance samples per test example after each epoch (default 50)",
        )
        g.add_argument(
            "--eval-rows",
            type=int,
            default=100000,
            metavar="N",
            help="rows (examples x samples) per evaluation pass (default 100000)",
        )

    def check_args(self, args) -> None:
        parse_widths(args.layers, "--layers")
        parse_widths(args.hidden, "--hidden")
        check_at_least(args, 1, "eval_samples", "epoch_eval_samples", "eval_rows")
        if args.temperature is not None:
            if args.estimator != "gumbel":
                raise UsageError("--temperature applies to --estimator gumbel only")
            if not (args.temperature > 0 and math.isfinite(args.temperature)):
                raise UsageError(f"--temperature must be a positive number; got {args.temperature}")

    def load_data(self, args):
        from dqkernels.data import binary_vectors

        return binary_vectors(args.dataset, args.data_dir)

    def units(self, data):
        return Units.nats_per_example()

    def build(self, args, data) -> torch.nn.Module:
        from dqkernels.models.sbn import SBN
        from dqkernels.models.sbn_estimators import SBNTraining, make_estimator

        sbn = SBN(
            data.num_dims,
            parse_widths(args.layers, "--layers"),
            nonlinear=args.nonlinear,
            hidden=parse_widths(args.hidden, "--hidden"),
        )
        options = {} if args.temperature is None else {"temperature": args.temperature}
        return SBNTraining(sbn, make_estimator(args.estimator, sbn, **options))

    def banner(self, model, args) -> str:
        sbn = model.sbn
        kind = f"nonlinear (tanh MLPs {args.hidden})" if sbn.nonlinear else "linear"
        est = model.estimator
        t = f" (temperature {est.temperature:g})" if args.estimator == "gumbel" else ""
        bias = "" if est.unbiased else ", biased"
        return (
            f"SBN {'-'.join(map(str, reversed(sbn.sizes)))} {kind}; estimator "
            f"{args.estimator}{t}{bias}; test: IW bound with {args.epoch_eval_samples} "
            f"samples per epoch, {args.eval_samples} at the end"
        )

    def evaluate(self, model, x, args, *, final):
        k = args.eval_samples if final else args.epoch_eval_samples
        chunk = max(1, args.eval_rows // max(1, x.shape[0]))
        return -model.sbn.iw_bound(x, k, chunk=chunk)

    def write_outputs(self, model, data, args, ctx):
        from dqkernels.plots import save_image_grid

        side = math.isqrt(data.num_dims)
        if side * side != data.num_dims:
            return []
        with ctx.fork_rng(SAMPLE_KEY):
            means = model.sbn.sample(64).float().cpu()
        path = os.path.join(ctx.out_dir, "samples.png")
        save_image_grid(
            (means * 16).round().long().view(-1, 1, side, side),
            17,
            path,
            f"{ctx.title}: sample means p(x | z_1)",
        )
        return [path]


TASK = SBNTask()
