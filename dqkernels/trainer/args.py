"""The common flags of ``dqk train <model>``, their checks, and how ``--resume`` merges
them with the checkpoint's."""

from __future__ import annotations

import argparse

from dqkernels.cli import SEED, float_in
from dqkernels.trainer.task import Task, UsageError, one_line

__all__ = [
    "check_at_least",
    "check_common_args",
    "configure_parser",
    "merge_resumed_args",
    "run_args",
]

# Flags that --resume takes from the command line as given (never from the checkpoint).
RESUME_FREE = frozenset({"out", "resume", "max_steps", "device", "overwrite", "dump_params"})
# Flags that --resume may change, but that default to the checkpoint's value.
RESUME_RUNTIME = frozenset(
    {
        "backend",
        "compile",
        "checkpoint_every",
        "eval_every",
        "eval_batch_size",
        "data_dir",
        "no_progress",
    }
)


# Adam's step is lr / (1 - beta1^t) <= 10 lr, a float32 scalar (at most 3.4e38)
LR_MAX = 3.4e37
# the types of the flags whose ranges argparse checks (check_common_args checks them too)
RANGED = {"lr": float_in(0, LR_MAX), "grad_clip": float_in(0), "seed": SEED}


def configure_parser(parser: argparse.ArgumentParser, task: Task) -> None:
    """Add the common flags, then ``task``'s own, then ``task.defaults``. Their types
    check ranges (finite floats, a seed every generator accepts); lower bounds of ints are
    :func:`check_common_args`'s."""
    from dqkernels.backends import CHOICES

    g = parser.add_argument_group("data")
    datasets = tuple(task.datasets)
    if datasets:
        g.add_argument(
            "--dataset",
            choices=datasets,
            default=datasets[0],
            help=task.dataset_help or "default %(default)s",
        )
    else:
        g.add_argument("--dataset", default=None, help="the data set (task specific)")
    g.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help=task.data_dir_help
        or "directory of the dataset's files (default ../shared/data/<dataset>)",
    )
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N training examples (smoke tests)",
    )

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="default %(default)s")
    g.add_argument(
        "--batch-size",
        type=int,
        default=64,
        metavar="B",
        help="GLOBAL batch size, split evenly over the processes of a torchrun "
        "(default %(default)s)",
    )
    g.add_argument(
        "--lr",
        type=RANGED["lr"],
        default=1e-3,
        help="Adam learning rate; linear warm-up over --warmup-steps, then cosine "
        "decay to 0 at the end of the last epoch (default %(default)s)",
    )
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        metavar="N",
        help="optimizer steps of linear learning-rate warm-up (default %(default)s)",
    )
    g.add_argument(
        "--grad-clip",
        type=RANGED["grad_clip"],
        default=None,
        metavar="NORM",
        help="clip the global gradient norm to NORM (default: no clipping)",
    )
    g.add_argument(
        "--seed", type=RANGED["seed"], default=0, help="in [0, 2^63 - 1] (default %(default)s)"
    )
    g.add_argument(
        "--bf16",
        action="store_true",
        help="torch.autocast to bfloat16 around the training forward (CPU and CUDA)",
    )
    g.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="torch.compile the training module (BACKEND default inductor; "
        "e.g. aot_eager, cudagraphs)",
    )
    g.add_argument(
        "--backend",
        choices=CHOICES,
        default=None,
        help="dqkernels backend of every op for the run (default: the one in force, normally auto)",
    )
    g.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="default: cuda when available, else cpu",
    )

    g = parser.add_argument_group("outputs and checkpoints")
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory (default runs/<model>-<dataset>)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=1,
        metavar="E",
        help="evaluate the test set every E epochs and after the last one (default %(default)s)",
    )
    g.add_argument(
        "--eval-batch-size",
        type=int,
        default=256,
        metavar="B",
        help="test examples per evaluation batch (default %(default)s)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="also write a checkpoint every N optimizer steps (default: only at "
        "the end of every epoch)",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help="stop after N optimizer steps in total, writing a checkpoint",
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="continue from checkpoint PATH (no PATH: the newest in --out); the "
        "run keeps the settings it was started with",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds checkpoints of an earlier run (they are deleted)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    # for tests: every rank saves its final parameters to PATH ("{rank}" is replaced)
    g.add_argument("--dump-params", default=None, help=argparse.SUPPRESS)

    task.add_arguments(parser)
    defaults = dict(getattr(task, "defaults", None) or {})
    if defaults:
        parser.set_defaults(**defaults)
    actions = {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS}
    # (for --resume: the defaults tell a flag left out, the actions check a restored value)
    parser.set_defaults(
        _defaults={dest: parser.get_default(dest) for dest in actions}, _actions=actions
    )


def check_at_least(args: argparse.Namespace, minimum: int, *names: str) -> None:
    """A UsageError for the first of the options ``names`` (``args`` attribute names) whose
    value is below ``minimum``; a value of None (an option left to its default rule) passes."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}; got {value}")


def check_common_args(args, world: int) -> None:
    """Raise :class:`UsageError` for a bad common flag (``world``: the processes)."""
    check_at_least(
        args, 1, "epochs", "batch_size", "eval_batch_size", "eval_every", "limit", "max_steps"
    )
    check_at_least(args, 0, "warmup_steps", "checkpoint_every")
    for name, parse in RANGED.items():  # (set by argparse, these passed already)
        value = getattr(args, name)
        if value is not None:
            try:
                parse(str(value))
            except argparse.ArgumentTypeError as exc:
                raise UsageError(f"--{name.replace('_', '-')} {exc}") from None
    if args.compile:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in known:
            raise UsageError(
                f"--compile {args.compile}: not a torch.compile backend; choose "
                f"one of {', '.join(sorted(known))}"
            )
    if args.batch_size % world:
        raise UsageError(
            f"--batch-size {args.batch_size} (the global batch) is not divisible "
            f"by the {world} processes of this run"
        )


def run_args(args) -> dict:
    """The arguments as saved in a checkpoint (plain values, no private entries)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def merge_resumed_args(args, saved: dict, task: Task) -> list[str]:
    """Take the run's settings from the checkpoint: flags left at their default get the
    saved value, which must be one the command line could give (:func:`restored_value`);
    an explicitly different value of a defining flag is an error, and so is a saved entry
    that is no flag. Returns the runtime flags that were changed (for a note)."""
    defaults = getattr(args, "_defaults", {})
    actions = getattr(args, "_actions", {})
    runtime = RESUME_RUNTIME | task.runtime_flags()
    changed, conflicts = [], []
    for name, old in saved.items():
        if not isinstance(name, str) or not hasattr(args, name) or name.startswith("_"):
            raise UsageError(f"--resume: the checkpoint's arguments hold {name!r}, not a flag")
        if name in RESUME_FREE:
            continue
        new = getattr(args, name)
        if new == old and type(new) is type(old):
            continue
        if name in defaults and new == defaults[name]:
            # not given now: the run's own value
            setattr(args, name, restored_value(actions[name], old) if name in actions else old)
        elif name in runtime:
            changed.append(f"--{name.replace('_', '-')} {new} (was {old})")
        else:
            conflicts.append(
                f"--{name.replace('_', '-')} {new} differs from the checkpoint's {old}"
            )
    if conflicts:
        raise UsageError(
            "--resume: " + "; ".join(conflicts) + ". A resumed run keeps the "
            "settings it was started with; leave those flags out (or start a new "
            "run in another --out)."
        )
    return changed


def restored_value(action: argparse.Action, value):
    """``value``, a flag's value restored from a checkpoint, as the command line would
    give it: through the flag's argparse type (its ranges included) and choices; else a
    :class:`UsageError` naming the flag."""
    flag = action.option_strings[0] if action.option_strings else action.dest

    def refuse(why: str):
        raise UsageError(f"--resume: the checkpoint's {flag} {value!r} {why}")

    if value is None and action.default is None:
        return None  # left unset, as the command line leaves it
    if action.nargs == 0:  # store_true / store_false
        if not isinstance(value, bool):
            refuse("is not true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        refuse("is not a value of this flag")
    if action.type is not None:
        try:
            parsed = action.type(str(value))  # (str of a float is its shortest round trip)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            refuse(f"is refused: {one_line(exc)}")
        if parsed != value:
            refuse("is not a value of this flag")
        value = parsed
    elif not isinstance(value, str):
        refuse("is not a value of this flag")
    if action.choices is not None and value not in action.choices:
        refuse(f"is not one of {', '.join(map(str, action.choices))}")
    return value
