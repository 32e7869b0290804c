"""``dqk train flow``: dequantization flows (Hoogeboom, Cohen, Tomczak 2020).

A :class:`~dqkernels.models.flow.MultiScaleFlow` on dequantized images with a uniform,
variational (Flow++) or autoregressive (ARD) dequantizer, trained by the ELBO, the
importance-weighted bound or the Rényi bound (see :mod:`dqkernels.models.dequantization`).
Test bits/dim are the importance-weighted bound with ``--eval-samples`` samples per image
at the end (default 1000) and ``--epoch-eval-samples`` after each epoch.

The defaults (a 2-scale x 2-step mixture-of-logistics flow, nets 32 wide, ARD with two
masked layers, 15 epochs) are the configuration of the reproduction table in
``experiments/dequantization/README.md``: about a minute on two idle CPU cores for digits.
Grow ``--width``, ``--steps``, ``--components`` and ``--epochs`` for larger data.
"""

from __future__ import annotations

import math

import torch

from dqkernels.tasks.images import ImageTask
from dqkernels.trainer import UsageError, check_at_least

__all__ = ["TASK", "FlowTask"]


class FlowTask(ImageTask):
    name = "flow"
    defaults = {"epochs": 15, "batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "grad_clip": 100.0}
    runtime_args = ("eval_samples", "epoch_eval_samples", "eval_rows", "temperature")
    _temperature = 1.0
    description = (
        "a multi-scale flow with uniform, variational or autoregressive (ARD) "
        "dequantization, trained by the ELBO, IW or Renyi bound"
    )

    def add_arguments(self, parser) -> None:
        from dqkernels.models.dequantization import ARD_NETS, DEQUANTIZERS, OBJECTIVES
        from dqkernels.models.flow import COUPLINGS

        super().add_arguments(parser)
        g = parser.add_argument_group("flow model")
        g.add_argument(
            "--dequant",
            choices=DEQUANTIZERS,
            default="ard",
            help="dequantizer q(u|x): uniform noise, a variational flow (Flow++) "
            "or an autoregressive flow (ARD; default)",
        )
        g.add_argument(
            "--objective",
            choices=OBJECTIVES,
            default="elbo",
            help="training bound: elbo (default), iw (importance weighted) or renyi",
        )
        g.add_argument(
            "--samples",
            type=int,
            default=None,
            metavar="K",
            help="dequantization samples per image in the training bound "
            "(default 1 for elbo, 4 for iw and renyi)",
        )
        g.add_argument(
            "--alpha",
            type=float,
            default=0.5,
            metavar="A",
            help="Renyi alpha in [0, 1) (default 0.5; 0 is iw)",
        )
        g.add_argument(
            "--coupling",
            choices=COUPLINGS,
            default="mixlog",
            help="coupling layers: mixture-of-logistics CDF (Flow++, default) or affine (Glow)",
        )
        g.add_argument("--scales", type=int, default=2, help="flow scales (default 2)")
        g.add_argument("--steps", type=int, default=2, help="flow steps per scale (default 2)")
        g.add_argument(
            "--width",
            type=int,
            default=32,
            help="hidden channels of the conditioning nets (default 32)",
        )
        g.add_argument(
            "--blocks", type=int, default=1, help="residual blocks per conditioning net (default 1)"
        )
        g.add_argument(
            "--components",
            type=int,
            default=4,
            metavar="K",
            help="mixture components per mixlog coupling (default 4)",
        )
        g.add_argument(
            "--dequant-steps",
            type=int,
            default=2,
            help="layers of the variational/ARD dequantizer flow (default 2)",
        )
        g.add_argument(
            "--dequant-width",
            type=int,
            default=None,
            help="hidden channels of the dequantizer nets (default --width)",
        )
        g.add_argument(
            "--ard-net",
            choices=ARD_NETS,
            default="conv",
            help="ARD's masked nets: PixelCNN-masked convolutions (default) or "
            "MADE (masked linear layers over all C*H*W dimensions)",
        )
        g.add_argument(
            "--context-channels",
            type=int,
            default=16,
            help="channels of the dequantizer's context of x (default 16)",
        )
        g.add_argument(
            "--eval-samples",
            type=int,
            default=1000,
            metavar="S",
            help="importance samples per test image for the final test bits/dim (default 1000)",
        )
        g.add_argument(
            "--epoch-eval-samples",
            type=int,
            default=8,
            metavar="S",
            help="importance samples per test image after each epoch (default 8)",
        )
        g.add_argument(
            "--eval-rows",
            type=int,
            default=8192,
            metavar="N",
            help="flow rows (images x samples) per evaluation pass (default 8192)",
        )
        g.add_argument(
            "--temperature",
            type=float,
            default=1.0,
            help="temperature of the sample grid (default 1.0)",
        )

    def check_args(self, args) -> None:
        super().check_args(args)
        check_at_least(
            args,
            1,
            "scales",
            "steps",
            "width",
            "components",
            "dequant_steps",
            "context_channels",
            "eval_samples",
            "epoch_eval_samples",
            "eval_rows",
        )
        check_at_least(args, 0, "blocks")
        check_at_least(args, 1, "samples", "dequant_width")
        if not 0.0 <= args.alpha < 1.0:
            raise UsageError(f"--alpha must be in [0, 1); got {args.alpha}")
        if not (args.temperature > 0 and math.isfinite(args.temperature)):
            raise UsageError(f"--temperature must be a positive number; got {args.temperature}")

    def build(self, args, data) -> torch.nn.Module:
        from dqkernels.models.dequantization import (
            AutoregressiveDequantizer,
            DequantizationFlow,
            UniformDequantizer,
            VariationalDequantizer,
        )
        from dqkernels.models.flow import MultiScaleFlow

        C, H, W = data.image_shape
        L = data.num_levels
        flow = MultiScaleFlow(
            C,
            H,
            W,
            num_scales=args.scales,
            steps_per_scale=args.steps,
            coupling=args.coupling,
            hidden=args.width,
            num_blocks=args.blocks,
            num_components=args.components,
        )
        dw = args.dequant_width or args.width
        if args.dequant == "uniform":
            deq = UniformDequantizer()
        elif args.dequant == "variational":
            deq = VariationalDequantizer(
                C,
                L,
                num_steps=args.dequant_steps,
                coupling=args.coupling,
                hidden=dw,
                num_blocks=args.blocks,
                num_components=args.components,
                context_channels=args.context_channels,
            )
        else:
            deq = AutoregressiveDequantizer(
                C,
                H,
                W,
                L,
                num_steps=args.dequant_steps,
                net=args.ard_net,
                hidden=dw,
                num_blocks=args.blocks,
                context_channels=args.context_channels,
            )
        samples = args.samples or (1 if args.objective == "elbo" else 4)
        self._temperature = args.temperature
        return DequantizationFlow(
            flow, deq, L, objective=args.objective, num_samples=samples, alpha=args.alpha
        )

    def evaluate(self, model, x: torch.Tensor, args, *, final: bool) -> torch.Tensor:
        s = args.eval_samples if final else args.epoch_eval_samples
        return model.iw_nll(x, s, max_rows=args.eval_rows)

    def sample(self, model, n: int, generator: torch.Generator) -> torch.Tensor:
        return model.sample(n, generator=generator, temperature=self._temperature)

    def banner(self, model, args) -> str:
        extra = f", alpha {args.alpha}" if args.objective == "renyi" else ""
        return (
            f"{args.coupling} flow, {args.scales} scales x {args.steps} steps, "
            f"{args.dequant} dequantization, {args.objective} objective with "
            f"K={model.num_samples}{extra}"
        )


TASK = FlowTask()
