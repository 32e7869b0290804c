"""The contract between a model and the trainer: :class:`Task`, its :class:`Units` and the
:class:`OutputContext` of its end-of-run outputs.

A task owns what is particular to a model: its data (any dataset of
:mod:`dqkernels.data`: images, binary vectors, token pairs), its units (what the training
loss is normalised by and what the evaluation reports), its evaluation over a whole split
(as additive statistics of batches, which the trainer sums over batches and DDP ranks),
and its outputs (samples, reconstructions, translations). The trainer owns everything
else: the loop, optimisation, checkpoints, processes, logging (:mod:`dqkernels.trainer`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch

__all__ = [
    "EXTRA_KEY",
    "SAMPLE_KEY",
    "OutputContext",
    "Task",
    "Units",
    "UsageError",
    "one_line",
]

LN2 = math.log(2.0)
# keys of forked RNG streams for outputs (OutputContext.fork_rng); the evaluation after
# epoch e forks with key e
SAMPLE_KEY, EXTRA_KEY = 2**31 - 1, 2**31 - 2


class UsageError(Exception):
    """A bad flag or input: reported in one line (``dqk train: error: ...``), exit status 2."""


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line (for a :class:`UsageError` built from it)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class Units:
    """What a task's loss is normalised by, and how its metric is named.

    The training module returns per-example losses in nats. The trainer minimises, and
    reports as ``train_<key>`` / ``test_<key>`` in ``label``, the total loss divided by the
    total weight of the examples and by ``log_base`` (``ln 2`` for bits, 1 for nats). Every
    example weighs ``per_example`` (e.g. ``C*H*W`` for bits/dim; 1 for nats per example);
    with ``per_example=None`` the module returns each example's weight itself as
    ``"weight"`` (e.g. its number of target tokens, for a per-token NLL).

    ``baseline`` (with ``baseline_label``) is a reference value that the learning curve and
    the final line show, e.g. the uniform model's ``log2(L)`` bits/dim.
    """

    label: str
    key: str
    log_base: float = 1.0
    per_example: int | float | None = 1
    baseline: float | None = None
    baseline_label: str = ""

    @classmethod
    def bits_per_dim(cls, num_dims: int, num_levels: int | None = None) -> Units:
        """Bits per dimension of examples of ``num_dims`` dimensions (images: ``C*H*W``);
        with ``num_levels`` the uniform baseline ``log2(num_levels)``."""
        base = None if num_levels is None else math.log2(num_levels)
        return cls(
            "bits/dim",
            "bpd",
            LN2,
            int(num_dims),
            base,
            "" if num_levels is None else f"uniform baseline log2({num_levels})",
        )

    @classmethod
    def nats_per_example(cls) -> Units:
        return cls("nats", "nats", 1.0, 1)

    @classmethod
    def nats_per_token(cls) -> Units:
        """A per-token NLL: the module returns ``"weight"``, the tokens of each example."""
        return cls("nats/token", "nll", 1.0, None)

    def total_weight(self, count: int, weight_sum: float | None) -> float:
        """The weight of ``count`` examples (``weight_sum`` when the module weighs them)."""
        if self.per_example is not None:
            return count * self.per_example
        if weight_sum is None:
            raise ValueError(
                f"{self.label}: the examples' weights are missing (the module must return 'weight')"
            )
        return weight_sum

    def value(self, loss_sum: float, count: int, weight_sum: float | None = None) -> float:
        """The metric of ``count`` examples with summed loss ``loss_sum`` (nats)."""
        if self.per_example is not None:
            # the mean loss of an example over its weight: bits/dim as it always was
            return (loss_sum / count) / (self.per_example * self.log_base)
        return loss_sum / weight_sum / self.log_base


@dataclass
class OutputContext:
    """What a task's :meth:`Task.write_outputs` gets from the trainer.

    ``metrics``: the latest evaluation (the trainer's metric under ``units.key`` and what
    :meth:`Task.eval_metrics` added, tensors included; empty if none ran). ``fork_rng(key)``:
    a context manager in which torch's RNGs are seeded from the run's seed and ``key`` and
    restored afterwards, so outputs never disturb training and are the same on every run.
    """

    out_dir: str
    device: torch.device
    seed: int
    title: str
    units: Units
    metrics: dict = field(default_factory=dict)
    fork_rng: Callable[[int], ContextManager] = lambda key: contextlib.nullcontext()


class Task:
    """A model as the trainer sees it. Subclass it in ``dqkernels/tasks/<name>.py`` and
    expose an instance there as ``TASK``; add the module to ``dqkernels.train.TASKS``.
    Image models derive from :class:`dqkernels.tasks.images.ImageTask`, which fills in
    data, units and outputs for them.

    Attributes: ``name`` (the CLI name, e.g. ``"pixelcnn"``), ``description`` (one line
    for ``--help``), ``datasets`` (the ``--dataset`` choices, the first the default),
    ``defaults`` (values of common flags that suit this model, e.g. ``{"epochs": 30}``),
    ``runtime_args`` (this task's flags that only affect evaluation, outputs or speed, so
    that ``--resume`` may change them; every other flag is part of the run's definition).

    Randomness: the trainer seeds torch, numpy and ``random`` with ``--seed`` before
    :meth:`build` (so every rank builds the same model), then reseeds them per rank for
    the forward's noise (dropout, dequantization noise, sampled codes). Draw training
    noise from those global generators: the trainer saves and restores them, which makes
    resume exact. Evaluation and outputs run inside forked, seeded RNGs.
    """

    name: str = ""
    description: str = ""
    datasets: tuple[str, ...] = ()
    dataset_help: str = ""  # --help of --dataset and --data-dir (defaults are generic)
    data_dir_help: str = ""
    defaults: dict = {}
    runtime_args: tuple = ()

    # ------------------------------------------------------------------ flags

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this model's own flags (the common ones are already there)."""

    def check_args(self, args: argparse.Namespace) -> None:
        """Validate this model's flags; raise :class:`UsageError` with a one-line message."""

    def runtime_flags(self) -> set[str]:
        """``dest`` names of the flags ``--resume`` may change (see ``runtime_args``)."""
        return set(self.runtime_args)

    # ------------------------------------------------------------------ data and units

    def load_data(self, args: argparse.Namespace) -> Any:
        """The dataset named by ``args.dataset`` (``args.data_dir``: its files), an object
        of :mod:`dqkernels.data` (see :mod:`dqkernels.data.examples` for what the trainer
        uses of it). Raise FileNotFoundError/ValueError for missing or malformed files."""
        raise NotImplementedError

    def units(self, data: Any) -> Units:
        """The units of the loss and the metric (see :class:`Units`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the model

    def build(self, args: argparse.Namespace, data: Any) -> torch.nn.Module:
        """The training module for ``data``.

        Its ``forward(batch)`` takes a batch of the training split (``data.examples(
        "train").take(...)``, on the device) and returns a dict with ``"loss"``: the
        per-example training loss in nats, ``[B]``; ``"weight"``, ``[B]``, when the units
        weigh examples by the module (``Units.per_example is None``); any other entry is a
        per-example ``[B]`` or a scalar tensor that the trainer averages over the epoch and
        logs under ``extras``. The trainer calls it through DDP and ``torch.compile``
        wrappers, so everything the training step needs must happen in ``forward``.
        """
        raise NotImplementedError

    def banner(self, model: torch.nn.Module, args: argparse.Namespace) -> str:
        """One line describing the model, printed at the start."""
        return ""

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, model: torch.nn.Module, batch: Any, args: argparse.Namespace, *, final: bool
    ) -> torch.Tensor:
        """The loss in nats of each example of ``batch``, ``[len(batch)]`` (for the default
        :meth:`eval_step`: a likelihood model's NLL)."""
        raise NotImplementedError

    def eval_step(
        self, model: torch.nn.Module, batch: Any, args: argparse.Namespace, *, final: bool
    ) -> dict[str, Any]:
        """Additive statistics of one evaluation batch, which the trainer adds up over the
        batches of the split and over the DDP ranks (``+``: tensors elementwise, numbers,
        lists concatenated in rank order). ``"loss"`` is required: the summed loss in nats
        (float64); so is ``"weight"`` when the module weighs examples. ``model`` is the
        unwrapped module in eval mode under ``torch.no_grad``; ``final`` is True for the
        evaluation after the last epoch (e.g. more importance samples then).

        The default sums :meth:`evaluate`."""
        nll = self.evaluate(model, batch, args, final=final)
        if nll.shape != (len(batch),):
            raise ValueError(
                f"{type(self).__name__}.evaluate must return the loss of each "
                f"example, shape ({len(batch)},); got {tuple(nll.shape)}"
            )
        return {"loss": nll.double().sum()}

    def eval_metrics(
        self,
        model: torch.nn.Module,
        totals: dict[str, Any],
        count: int,
        args: argparse.Namespace,
        *,
        final: bool,
    ) -> dict[str, Any]:
        """Metrics beyond the trainer's own (``test_<units.key>``) from the statistics of
        :meth:`eval_step` summed over the ``count`` examples of the split. Scalars are
        logged (``test_extras`` in ``metrics.jsonl``); tensors are kept for
        :meth:`write_outputs` (``ctx.metrics``)."""
        return {}

    # ------------------------------------------------------------------ outputs

    def write_outputs(
        self, model: torch.nn.Module, data: Any, args: argparse.Namespace, ctx: OutputContext
    ) -> list[str]:
        """Files written at the end of training into ``ctx.out_dir`` (rank 0, eval mode,
        ``no_grad``): samples, reconstructions, translations, ...; returns their paths."""
        return []
