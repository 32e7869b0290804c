"""``dqk train pixelcnn``: a small PixelCNN with the discretized logistic mixture likelihood
(:func:`dqkernels.ops.dmol_nll`), the model in :mod:`dqkernels.models.pixelcnn`."""

from __future__ import annotations

import torch
import torch.nn as nn

from dqkernels.tasks.images import ImageTask, check_at_least
from dqkernels.trainer import UsageError

__all__ = ["PixelCNNTask", "LevelPixelCNN", "TASK"]


class LevelPixelCNN(nn.Module):
    """A :class:`~dqkernels.models.PixelCNN` (as ``.net``) that takes integer levels: its
    ``forward(k)`` maps ``k`` to the grid ``2k/(L-1) - 1`` and returns
    ``{"loss": NLL in nats per image}``, the trainer's contract."""

    def __init__(self, net: nn.Module, image_shape: tuple[int, int, int]):
        super().__init__()
        self.net = net
        self.image_shape = tuple(image_shape)
        self.num_levels = net.num_levels
        self.config = net.config

    def grid(self, levels: torch.Tensor) -> torch.Tensor:
        from dqkernels.data import levels_to_grid

        return levels_to_grid(levels, self.num_levels, self.net.input.weight.dtype)

    def forward(self, levels: torch.Tensor) -> dict:
        return {"loss": self.net.nll(self.grid(levels))}


class PixelCNNTask(ImageTask):
    name = "pixelcnn"
    description = "a small PixelCNN with the fused discretized logistic mixture likelihood"
    defaults = {"epochs": 30, "batch_size": 64, "lr": 2e-3}

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        g = parser.add_argument_group("pixelcnn")
        g.add_argument("--width", type=int, default=96, help="hidden channels (default 96)")
        g.add_argument("--blocks", type=int, default=5, help="residual blocks (default 5)")
        g.add_argument(
            "--dropout",
            type=float,
            default=0.1,
            help="dropout in the residual blocks (default 0.1)",
        )
        g.add_argument(
            "--mixtures",
            type=int,
            default=5,
            metavar="M",
            help="logistic mixture components per pixel (default 5)",
        )

    def check_args(self, args) -> None:
        super().check_args(args)
        check_at_least(args, 1, "width", "mixtures")
        check_at_least(args, 0, "blocks")
        if not 0.0 <= args.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1); got {args.dropout}")

    def build(self, args, data) -> nn.Module:
        from dqkernels.models import PixelCNN

        C = data.image_shape[0]
        if C not in (1, 3):
            raise UsageError(f"pixelcnn models 1 or 3 channels; {args.dataset} has {C}")
        # backend None: the ops follow the trainer's --backend (set for the whole run)
        net = PixelCNN(
            in_channels=C,
            num_levels=data.num_levels,
            width=args.width,
            num_blocks=args.blocks,
            num_mixtures=args.mixtures,
            dropout=args.dropout,
        )
        return LevelPixelCNN(net, data.image_shape)

    def evaluate(self, model, x, args, *, final):
        return model.net.nll(model.grid(x))

    def sample(self, model, n, generator):
        from dqkernels.data import grid_to_levels

        _, H, W = model.image_shape
        grid = model.net.sample(n, (H, W), generator=generator)
        return grid_to_levels(grid, model.num_levels)

    def banner(self, model, args) -> str:
        c = model.config
        return (
            f"PixelCNN: width {c['width']}, {c['num_blocks']} gated residual blocks, "
            f"{c['num_mixtures']} logistic mixtures per pixel, dropout {c['dropout']}"
        )


TASK = PixelCNNTask()
