"""``dqk train <model>``: train a model of dqkernels with the shared trainer.

Every model is a :class:`dqkernels.trainer.Task` in the module named by :data:`TASKS`;
``dqk train <model> --help`` lists the common flags (data, optimisation, outputs,
checkpoints, see :mod:`dqkernels.trainer`) and the model's own. Into ``--out`` a run
writes:

* ``metrics.jsonl``: one JSON object per epoch (the train and test metric in the task's
  units, e.g. ``train_bpd``/``test_bpd`` in bits/dim for images; extra metrics, learning
  rate, times);
* ``learning_curve.png``: the train and test metric against the epoch;
* the task's outputs, e.g. ``samples.png`` (a grid of ``--grid`` images) for image models;
* ``checkpoint-<step>.pt``: everything needed to continue exactly (``--resume``), written
  atomically at the end of every epoch (the last two are kept).

Bits/dim is the NLL in nats summed over the images, divided by ``N * C*H*W * ln 2``.
Multi-GPU: ``torchrun --nproc_per_node G -m dqkernels.cli train <model> ...``.
"""

from __future__ import annotations

import argparse
import importlib

# model name -> module exposing TASK (imported when the parser is built; a module that
# is not there yet is left out of the CLI)
TASKS = {
    "pixelcnn": "dqkernels.tasks.pixelcnn",
    "flow": "dqkernels.tasks.flow",
    "vqvae": "dqkernels.tasks.vqvae",
    "sbn": "dqkernels.tasks.sbn",
}


def load_task(name: str):
    """The ``TASK`` of model ``name``; None when its module does not exist."""
    module_name = TASKS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # only the task module itself being absent is "not there yet"; a missing
        # dependency inside it is a real error
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            return None
        raise
    return module.TASK


def available_tasks() -> dict:
    """``{name: task}`` of the models whose modules exist, in :data:`TASKS` order."""
    found = {}
    for name in TASKS:
        task = load_task(name)
        if task is not None:
            found[name] = task
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dqkernels.trainer import configure_parser

    sub = parser.add_subparsers(
        dest="model", metavar="MODEL", title="models (dqk train MODEL --help for its flags)"
    )
    sub.required = True
    for name, task in available_tasks().items():
        p = sub.add_parser(name, help=task.description, description=task.description)
        configure_parser(p, task)


def run(args) -> int:
    from dqkernels.trainer import train

    return train(load_task(args.model), args)
