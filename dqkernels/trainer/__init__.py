"""The trainer every model of dqkernels shares (``dqk train <model>``).

A model plugs in as a :class:`Task` (``dqkernels/tasks/<name>.py``): its data, units,
evaluation and outputs. The trainer owns everything else:

* data: the task's training split, held on the device; every epoch a fresh permutation
  from a generator seeded with ``--seed``, cut into global batches of ``--batch-size``
  (each torchrun process takes its slice);
* optimisation: Adam, ``--warmup-steps`` of linear warm-up then cosine decay to 0 over
  all ``--epochs``, optional ``--grad-clip`` (global norm), ``--bf16`` autocast around the
  forward, ``--compile`` (``torch.compile`` of the training module), the dqkernels
  ``--backend`` set for the whole run;
* units: the module returns per-example losses in nats; the trainer minimises their
  total over the total weight of the examples (:class:`Units`: e.g. bits/dim, nats per
  example, nats per token) and logs the epoch's train metric and the test metric;
* evaluation over the whole test split every ``--eval-every`` epochs and after the last:
  batches dealt round-robin to the ranks, the task's additive statistics summed over
  batches and ranks;
* outputs in ``--out`` (rank 0 only): ``metrics.jsonl`` (one JSON object per epoch),
  ``learning_curve.png``, the task's own files (samples, ...), ``checkpoint-<step>.pt``
  (the last two kept) and ``run.json`` (the run's id);
* a run folder belongs to one run (:mod:`.rundir`): a run holds ``<out>/.lock`` while it
  writes there (a second run into it is refused), a fresh run refuses a folder holding an
  earlier run's outputs and ``--resume`` one holding another run's (``--overwrite``
  replaces them), and temporary files of killed writes are removed;
* checkpoints written atomically, each with a SHA-256 of its contents verified on load,
  at the end of every epoch, every ``--checkpoint-every`` steps, at ``--max-steps``, and
  on SIGINT/SIGTERM; they hold everything a run depends on
  (model, optimizer, schedule and the :class:`RunState`: position, shuffle state, every
  rank's RNG states, partial-epoch sums, history), so that ``--resume`` continues bit for
  bit;
* a non-finite loss or gradient norm stops the run before the bad update (exit 1), and
  the last good checkpoint stays the newest;
* multi-process data parallel training under ``torchrun``: DistributedDataParallel.

Modules: :mod:`.task` (the contract), :mod:`.loop` (the loop, top to bottom), :mod:`.state`
(the run state), :mod:`.checkpoint`, :mod:`.rundir` (the ``--out`` folder), :mod:`.rng`,
:mod:`.metrics` (files), :mod:`.args` (common flags, resume rules), :mod:`.dist`,
:mod:`.signals`, :mod:`.schedule`.

Exit status of :func:`train`: 0 done (or stopped at ``--max-steps``), 1 non-finite loss,
2 bad arguments or input (one line: flags, flags restored by ``--resume``, ``--out``,
checkpoints, data files, a model too large for memory), 128 + signal number when
stopped by SIGINT (130) or SIGTERM (143).
"""

from dqkernels.trainer.args import check_at_least, check_common_args, configure_parser
from dqkernels.trainer.checkpoint import (
    KEEP_CHECKPOINTS,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_atomic,
)
from dqkernels.trainer.loop import Run, train
from dqkernels.trainer.schedule import WarmupCosine
from dqkernels.trainer.state import RunState
from dqkernels.trainer.task import EXTRA_KEY, SAMPLE_KEY, OutputContext, Task, Units, UsageError

__all__ = [
    "EXTRA_KEY",
    "KEEP_CHECKPOINTS",
    "CheckpointError",
    "SAMPLE_KEY",
    "OutputContext",
    "Run",
    "RunState",
    "Task",
    "Units",
    "UsageError",
    "WarmupCosine",
    "check_at_least",
    "check_common_args",
    "configure_parser",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_atomic",
    "train",
]
