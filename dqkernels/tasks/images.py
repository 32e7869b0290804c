"""What every image model's task shares: :class:`ImageTask`.

Data: a :class:`~dqkernels.data.LevelDataset` by ``--dataset`` / ``--data-dir`` (scikit-
learn's digits by default, binarized MNIST, CIFAR-10, MNIST), batches of int64 levels
``[B, C, H, W]``. Units: bits per dimension (``C*H*W``), with the uniform baseline
``log2(L)``. Outputs: a grid of ``--grid`` samples (``samples.png``) and the model's
:meth:`ImageTask.extra_outputs`.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from dqkernels.data import DATASETS, load_dataset
from dqkernels.trainer.args import check_at_least
from dqkernels.trainer.task import EXTRA_KEY, SAMPLE_KEY, OutputContext, Task, Units

__all__ = ["ImageTask"]


class ImageTask(Task):
    """A :class:`~dqkernels.trainer.Task` of images of integer levels. Subclasses
    implement ``build``, ``evaluate`` (per-image NLL in nats) and :meth:`sample`; they call
    ``super().add_arguments`` / ``super().check_args`` when they override those."""

    datasets = DATASETS
    dataset_help = (
        "digits: scikit-learn's 8x8 digits, 17 levels, bundled (default); "
        "binarized_mnist, cifar10, mnist: the standard files in --data-dir"
    )
    data_dir_help = (
        "directory of the dataset's files (default ../shared/data/<dataset>): "
        "binarized_mnist_{train,valid,test}.amat[.gz]; CIFAR-10's python "
        "(data_batch_1..5, test_batch) or binary (*.bin) batches; MNIST's "
        "{train,t10k}-images-idx3-ubyte[.gz]"
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("image outputs")
        g.add_argument(
            "--grid",
            type=int,
            default=64,
            metavar="N",
            help="images in the sample grid samples.png (default %(default)s; 0 skips it)",
        )

    def check_args(self, args: argparse.Namespace) -> None:
        check_at_least(args, 0, "grid")

    def runtime_flags(self) -> set[str]:
        return super().runtime_flags() | {"grid"}

    def load_data(self, args: argparse.Namespace):
        return load_dataset(args.dataset, args.data_dir)

    def units(self, data) -> Units:
        return Units.bits_per_dim(data.num_dims, data.num_levels)

    # ------------------------------------------------------------------ outputs

    def sample(self, model: torch.nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images as integer levels ``[n, C, H, W]`` (unwrapped model, eval mode,
        ``no_grad``); ``generator`` lives on the model's device."""
        raise NotImplementedError

    def extra_outputs(
        self, model: torch.nn.Module, data, out_dir: str, args: argparse.Namespace, metrics: dict
    ) -> list[str]:
        """The model's own files besides the samples (``metrics``: the final
        evaluation's); returns their paths."""
        return []

    def write_outputs(self, model, data, args, ctx: OutputContext) -> list[str]:
        """``samples.png`` (``--grid`` images drawn from the model), then
        :meth:`extra_outputs`."""
        from dqkernels.plots import save_image_grid

        written = []
        if args.grid:
            t0 = time.perf_counter()
            gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
            with ctx.fork_rng(SAMPLE_KEY):
                levels = self.sample(model, args.grid, gen)
            shape = (args.grid, *data.image_shape)
            if tuple(levels.shape) != shape:
                raise ValueError(
                    f"{type(self).__name__}.sample must return "
                    f"[{', '.join(map(str, shape))}] levels; got "
                    f"{tuple(levels.shape)}"
                )
            path = os.path.join(ctx.out_dir, "samples.png")
            value = ctx.metrics.get(ctx.units.key)
            shown = f", test {value:.3f} {ctx.units.label}" if value is not None else ""
            save_image_grid(
                levels.cpu(), data.num_levels, path, f"{ctx.title}: {args.grid} samples{shown}"
            )
            print(f"drew {args.grid} samples in {time.perf_counter() - t0:.1f} s", flush=True)
            written.append(path)
        with ctx.fork_rng(EXTRA_KEY):
            written.extend(self.extra_outputs(model, data, ctx.out_dir, args, ctx.metrics))
        return written
