"""The training loop every model of dqkernels shares (``dqk train <model>``).

A model plugs in as a :class:`Task` (see ``dqkernels/tasks/``); the trainer owns
everything else:

* data: a :class:`~dqkernels.data.LevelDataset` by ``--dataset``/``--data-dir``, held on the
  device as integer levels; every epoch a fresh permutation of the training images from
  a generator seeded with ``--seed``, cut into global batches of ``--batch-size``;
* optimisation: Adam, ``--warmup-steps`` of linear warm-up then cosine decay to 0 over
  all ``--epochs``, optional ``--grad-clip`` (global norm), ``--bf16`` autocast around the
  forward, ``--compile`` (``torch.compile`` of the training module), the dqkernels
  ``--backend`` set for the whole run;
* outputs in ``--out`` (rank 0 only): ``metrics.jsonl`` (one JSON object per epoch),
  ``learning_curve.png``, ``samples.png`` (``--grid`` images, 0 skips it) and
  ``checkpoint-<step>.pt`` (the last two kept);
* checkpoints written atomically at the end of every epoch, every ``--checkpoint-every``
  steps, at ``--max-steps``, and on SIGINT/SIGTERM; they hold everything a run depends
  on (model, optimizer, scheduler, the position inside the epoch, the shuffle generator,
  every RNG of every rank, the partial-epoch sums, the metric history), so that
  ``--resume`` continues bit-for-bit: an interrupted and resumed run ends with the same
  parameters as one that never stopped;
* a non-finite loss or gradient norm stops the run before the bad update (exit 1), and
  the last good checkpoint stays the newest;
* multi-process data parallel training under ``torchrun``: DistributedDataParallel,
  each rank taking its slice of every global batch, evaluation sharded over the ranks.

Units: a task's ``forward`` returns per-example losses in nats; the trainer minimises
their batch mean divided by ``D ln 2`` (``D = C*H*W``), i.e. bits/dim, and logs train
bits/dim (the mean training loss of the epoch / ``D ln 2``) and test bits/dim (from
:meth:`Task.evaluate`).

Exit status of :func:`train`: 0 done (or stopped at ``--max-steps``), 1 non-finite loss,
2 bad arguments or input, 128 + signal number when stopped by SIGINT (130) or SIGTERM
(143).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import secrets
import signal
import sys
import threading
import time

import numpy as np
import torch

__all__ = ["Task", "UsageError", "configure_parser", "train", "save_atomic",
           "list_checkpoints", "latest_checkpoint", "load_checkpoint", "bits_per_dim",
           "WarmupCosine"]

LN2 = math.log(2.0)
KEEP_CHECKPOINTS = 2
# keys of the forked RNG streams of the end-of-run sampling and extra outputs (evaluation
# after epoch e uses key e)
_SAMPLE_KEY, _EXTRA_KEY = 2**31 - 1, 2**31 - 2
_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


class UsageError(Exception):
    """A bad flag or input: reported in one line (``dqk train: error: ...``), exit status 2."""


# ------------------------------------------------------------------------------- the Task


class Task:
    """A model as the trainer sees it. Subclass it in ``dqkernels/tasks/<name>.py`` and
    expose an instance there as ``TASK``; add the module to ``dqkernels.train.TASKS``.

    Required attributes: ``name`` (the CLI name, e.g. ``"pixelcnn"``) and ``description``
    (one line for ``--help``). Optional ones:

    * ``defaults``: values for the common flags that suit this model (e.g.
      ``{"epochs": 30, "lr": 2e-3}``), applied to its sub-parser;
    * ``runtime_args``: names (argparse ``dest``) of this task's flags that only affect
      evaluation, sampling or speed, so that ``--resume`` may change them (every other
      flag is part of the run's definition: on resume an explicitly given value must agree
      with the checkpoint, and flags left at their default take the checkpoint's value).

    Randomness: the trainer seeds torch, numpy and ``random`` before :meth:`build` with
    ``--seed`` (so every rank builds the same initial model), then reseeds them per rank
    for the noise of the forward (dropout, dequantization noise). Draw training noise from
    those global generators (or from generators you keep in the module as buffers): the
    trainer saves and restores them, which is what makes resume exact. Evaluation and
    sampling run inside a forked RNG seeded by the trainer, so they never disturb training.
    """

    name: str = ""
    description: str = ""
    defaults: dict = {}
    runtime_args: tuple = ()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add this model's own flags (the common ones are already there)."""

    def check_args(self, args: argparse.Namespace) -> None:
        """Validate this model's flags; raise :class:`UsageError` with a one-line message."""

    def build(self, args: argparse.Namespace, data) -> torch.nn.Module:
        """The training module for ``data`` (a :class:`~dqkernels.data.LevelDataset`).

        Its ``forward(x)`` takes integer levels ``x``: int64 ``[B, C, H, W]`` on the device,
        and returns a dict with ``"loss"``: the per-example training loss in nats, shape
        ``[B]``; any other entry is a per-example ``[B]`` or a scalar tensor that the
        trainer averages over the epoch and logs under ``extras`` (e.g. ``"elbo"``). The
        trainer calls it through DDP and ``torch.compile`` wrappers, so everything the
        training step needs must happen in ``forward``.
        """
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace,
                 *, final: bool) -> torch.Tensor:
        """Per-example NLL in nats, ``[N]``, of the levels ``x`` (int64 ``[N, C, H, W]``, one
        chunk of at most ``--eval-batch-size`` test images). ``model`` is the unwrapped
        module, in eval mode, under ``torch.no_grad``. ``final`` is True for the evaluation
        after the last epoch (e.g. more importance samples then)."""
        raise NotImplementedError

    def sample(self, model: torch.nn.Module, n: int, generator: torch.Generator
               ) -> torch.Tensor:
        """``n`` images as integer levels ``[n, C, H, W]`` (unwrapped model, eval mode,
        ``no_grad``); ``generator`` lives on the model's device."""
        raise NotImplementedError

    def extra_outputs(self, model: torch.nn.Module, data, out_dir: str,
                      args: argparse.Namespace) -> list[str]:
        """Extra files (PNGs, ...) written into ``out_dir`` at the end of training (rank 0,
        eval mode, ``no_grad``); returns their paths."""
        return []

    def banner(self, model: torch.nn.Module, args: argparse.Namespace) -> str:
        """One line describing the model, printed at the start."""
        return ""


# ----------------------------------------------------------------------------- arguments

# Flags that --resume takes from the command line as given (never from the checkpoint).
_RESUME_FREE = frozenset({"out", "resume", "max_steps", "device", "overwrite", "dump_params"})
# Flags that --resume may change, but that default to the checkpoint's value.
_RESUME_RUNTIME = frozenset({"backend", "compile", "checkpoint_every", "eval_every",
                             "eval_batch_size", "grid", "data_dir", "no_progress"})


def configure_parser(parser: argparse.ArgumentParser, task: Task) -> None:
    """Add the common flags, then ``task``'s own, then ``task.defaults``."""
    from dqkernels.backends import CHOICES
    from dqkernels.data import DATASETS

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits",
                   help="digits: scikit-learn's 8x8 digits, 17 levels, bundled (default); "
                        "binarized_mnist, cifar10, mnist: the standard files in --data-dir")
    g.add_argument("--data-dir", default=None, metavar="DIR",
                   help="directory of the dataset's files (default ../shared/data/<dataset>): "
                        "binarized_mnist_{train,valid,test}.amat[.gz]; CIFAR-10's python "
                        "(data_batch_1..5, test_batch) or binary (*.bin) batches; MNIST's "
                        "{train,t10k}-images-idx3-ubyte[.gz]")
    g.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use only the first N training images (smoke tests)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10, metavar="N", help="default %(default)s")
    g.add_argument("--batch-size", type=int, default=64, metavar="B",
                   help="GLOBAL batch size, split evenly over the processes of a torchrun "
                        "(default %(default)s)")
    g.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate; linear warm-up over --warmup-steps, then cosine "
                        "decay to 0 at the end of the last epoch (default %(default)s)")
    g.add_argument("--warmup-steps", type=int, default=0, metavar="N",
                   help="optimizer steps of linear learning-rate warm-up (default %(default)s)")
    g.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help="clip the global gradient norm to NORM (default: no clipping)")
    g.add_argument("--seed", type=int, default=0, help="default %(default)s")
    g.add_argument("--bf16", action="store_true",
                   help="torch.autocast to bfloat16 around the training forward (CPU and CUDA)")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the training module (BACKEND default inductor; "
                        "e.g. aot_eager, cudagraphs)")
    g.add_argument("--backend", choices=CHOICES, default=None,
                   help="dqkernels backend of every op for the run (default: the one in "
                        "force, normally auto)")
    g.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")

    g = parser.add_argument_group("outputs and checkpoints")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output directory (default runs/<model>-<dataset>)")
    g.add_argument("--eval-every", type=int, default=1, metavar="E",
                   help="evaluate the test set every E epochs and after the last one "
                        "(default %(default)s)")
    g.add_argument("--eval-batch-size", type=int, default=256, metavar="B",
                   help="test images per evaluation chunk (default %(default)s)")
    g.add_argument("--grid", type=int, default=64, metavar="N",
                   help="images in the sample grid samples.png (default %(default)s; 0 skips it)")
    g.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also write a checkpoint every N optimizer steps (default: only at "
                        "the end of every epoch)")
    g.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after N optimizer steps in total, writing a checkpoint")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="PATH",
                   help="continue from checkpoint PATH (no PATH: the newest in --out); the "
                        "run keeps the settings it was started with")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds checkpoints of an earlier run "
                        "(they are deleted)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    # for tests: every rank saves its final parameters to PATH ("{rank}" is replaced)
    g.add_argument("--dump-params", default=None, help=argparse.SUPPRESS)

    task.add_arguments(parser)
    defaults = dict(getattr(task, "defaults", None) or {})
    if defaults:
        parser.set_defaults(**defaults)
    parser.set_defaults(_defaults={a.dest: parser.get_default(a.dest)
                                   for a in parser._actions if a.dest != argparse.SUPPRESS})


def _check_common_args(args, world: int) -> None:
    def positive(name):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1; got {value}")

    for name in ("epochs", "batch_size", "eval_batch_size", "eval_every", "limit", "max_steps"):
        positive(name)
    for name in ("warmup_steps", "grid", "checkpoint_every", "seed"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0; got "
                             f"{getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be a positive number; got {args.lr}")
    if args.grad_clip is not None and not (args.grad_clip > 0 and math.isfinite(args.grad_clip)):
        raise UsageError(f"--grad-clip must be a positive number; got {args.grad_clip}")
    if args.compile:
        import torch._dynamo

        known = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in known:
            raise UsageError(f"--compile {args.compile}: not a torch.compile backend; choose "
                             f"one of {', '.join(sorted(known))}")
    if args.batch_size % world:
        raise UsageError(f"--batch-size {args.batch_size} (the global batch) is not divisible "
                         f"by the {world} processes of this run")


def _run_args(args) -> dict:
    """The arguments as saved in a checkpoint (plain values, no private entries)."""
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _merge_resumed_args(args, saved: dict, task: Task) -> list[str]:
    """Take the run's settings from the checkpoint: flags left at their default get the
    saved value; an explicitly different value of a defining flag is an error. Returns
    the runtime flags that were changed (for a note)."""
    defaults = getattr(args, "_defaults", {})
    runtime = _RESUME_RUNTIME | set(getattr(task, "runtime_args", ()) or ())
    changed, conflicts = [], []
    for name, old in saved.items():
        if name in _RESUME_FREE or name.startswith("_") or not hasattr(args, name):
            continue
        new = getattr(args, name)
        if new == old:
            continue
        if name in defaults and new == defaults[name]:
            setattr(args, name, old)  # not given now: the run's own value
        elif name in runtime:
            changed.append(f"--{name.replace('_', '-')} {new} (was {old})")
        else:
            conflicts.append(f"--{name.replace('_', '-')} {new} differs from the checkpoint's "
                             f"{old}")
    if conflicts:
        raise UsageError("--resume: " + "; ".join(conflicts) + ". A resumed run keeps the "
                         "settings it was started with; leave those flags out (or start a new "
                         "run in another --out).")
    return changed


# ----------------------------------------------------------------------------- checkpoints


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


def list_checkpoints(out_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>.pt`` in ``out_dir``, oldest first."""
    try:
        names = os.listdir(out_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(out_dir, n))
             for n in names if (m := _CKPT_RE.match(n))]
    return sorted(found)


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint with the highest step in ``out_dir``, or None."""
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def load_checkpoint(path: str) -> dict:
    """A trainer checkpoint, loaded on the CPU with ``weights_only=True`` (no code runs)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _np_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_np_state(s: dict) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"],
                         s["has_gauss"], s["cached"]))


def _capture_rng(device: torch.device) -> dict:
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(), "numpy": _np_state(),
             "python": [version, list(internal), gauss]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    _set_np_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``)."""
    a, b = np.random.SeedSequence(list(keys)).generate_state(2)
    return (int(a) << 31 ^ int(b)) & ((1 << 63) - 1)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ----------------------------------------------------------------------------- schedule


class WarmupCosine:
    """LR factor of optimizer step ``s`` (0-based): ``(s+1)/warmup`` during the warm-up,
    then ``(1 + cos(pi * (s - warmup) / (total - warmup))) / 2``. A callable object (not a
    closure) so ``LambdaLR`` keeps its settings in ``state_dict``."""

    def __init__(self, warmup: int, total: int):
        self.warmup = int(warmup)
        self.total = int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))


def bits_per_dim(nats: float, num_dims: int) -> float:
    """Mean NLL per image in nats -> bits per dimension."""
    return nats / (num_dims * LN2)


# ----------------------------------------------------------------------------- processes


class _Dist:
    """The process group of a torchrun launch (``WORLD_SIZE`` > 1), or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0")) if self.world > 1 else 0
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0")) if self.world > 1 else 0
        self.owns_group = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        if dist.get_world_size() != self.world:
            raise UsageError(f"WORLD_SIZE is {self.world} but the process group has "
                             f"{dist.get_world_size()} processes")

    def destroy(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal sets a flag that the loop checks after
    every step; a second SIGINT interrupts at once."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        # os.write: safe inside a handler that may interrupt a print
        os.write(2, f"\ndqk train: got {signal.Signals(signum).name}; finishing the current "
                    f"step, then writing a checkpoint\n".encode())


# ----------------------------------------------------------------------------- the loop


class _NonFinite(Exception):
    pass


class _Run:
    def __init__(self, task: Task, args, dist: _Dist, device: torch.device):
        self.task, self.args, self.dist, self.device = task, args, dist, device
        self.stop = _StopRequest()

    # ----------------------------------------------------------------- setup

    def setup(self) -> None:
        args, task, dist = self.args, self.task, self.dist
        self.out = args.out
        ckpt = None
        if args.resume is not None:
            path = args.resume or latest_checkpoint(self.out)
            if not path:
                raise UsageError(f"--resume: no checkpoint-<step>.pt in {self.out!r} "
                                 f"(resolved to {os.path.abspath(self.out)})")
            if not os.path.isfile(path):
                raise UsageError(f"--resume: checkpoint {path!r} does not exist")
            try:
                ckpt = load_checkpoint(path)
            except Exception as exc:
                raise UsageError(f"--resume: cannot read {path!r}: {exc}") from None
            if ckpt.get("task") != task.name:
                raise UsageError(f"--resume: {path!r} is a checkpoint of model "
                                 f"{ckpt.get('task')!r}, not {task.name!r}")
            self.changed = _merge_resumed_args(args, ckpt["args"], task)
            self.resume_path = path
        else:
            self.changed = []
            found = list_checkpoints(self.out)
            if found and not args.overwrite:
                raise UsageError(
                    f"{self.out!r} holds checkpoints of an earlier run "
                    f"({os.path.basename(found[-1][1])}); pass --resume to continue it, "
                    f"--overwrite to start afresh there, or another --out")
        _check_common_args(args, dist.world)
        task.check_args(args)

        from dqkernels import backends

        try:
            self.backend = backends.resolve("--backend", self.device, torch.float32,
                                            args.backend)
        except backends.BackendUnavailableError as exc:
            raise UsageError(str(exc)) from None
        if args.backend is not None:
            backends.set_backend(args.backend)

        from dqkernels.data import load_dataset

        try:
            data = load_dataset(args.dataset, args.data_dir)
        except (FileNotFoundError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        self.data = data
        self.num_levels = data.num_levels
        self.image_shape = tuple(data.image_shape)
        self.num_dims = data.num_dims
        train = data.train if args.limit is None else data.train[:args.limit]
        self.x_train = train.to(self.device)
        self.x_test = data.test.to(self.device)
        n, B, W = self.x_train.shape[0], args.batch_size, dist.world
        # a last partial batch too small to give every rank an image is dropped
        self.steps_per_epoch = n // B + (1 if n % B >= W else 0)
        if self.steps_per_epoch == 0:
            raise UsageError(f"{n} training images cannot give each of the {W} processes an "
                             f"image per batch")
        self.total_steps = args.epochs * self.steps_per_epoch

        # the initial model is the same on every rank: seeded with --seed alone
        _seed_all(args.seed)
        model = task.build(args, data)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{type(task).__name__}.build must return a torch.nn.Module; got "
                            f"{type(model).__name__}")
        self.model = model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TypeError(f"{type(task).__name__}.build returned a module without "
                            f"trainable parameters")
        self.params = params
        self.opt = torch.optim.Adam(params, lr=args.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, WarmupCosine(args.warmup_steps, self.total_steps))
        # the forward's noise differs between ranks
        _seed_all(_derive_seed(args.seed, 1, dist.rank))
        self.shuffle = torch.Generator().manual_seed(args.seed)

        self.step = 0
        self.epoch = 0           # completed epochs = index of the current one
        self.batch = 0           # batches done in the current epoch
        self.acc = self._fresh_accumulators()
        self.history: list[dict] = []
        self.elapsed = 0.0       # training + evaluation seconds over all invocations
        if ckpt is not None:
            self._restore(ckpt)
            del ckpt

        module = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if args.compile:
            module = torch.compile(module, backend=args.compile)
        self.train_module = module

    def _fresh_accumulators(self) -> dict:
        return {"loss": 0.0, "count": 0, "extras": {}, "time": 0.0}

    def _restore(self, ckpt: dict) -> None:
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise UsageError(
                f"--resume: the checkpoint has {ckpt['steps_per_epoch']} steps per epoch, this "
                f"run {self.steps_per_epoch} (other data, --limit or number of processes)")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step, self.epoch, self.batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        self.shuffle.set_state(ckpt["shuffle_state"])
        self.acc = ckpt["accumulators"]
        self.history = list(ckpt["history"])
        self.elapsed = ckpt["elapsed_s"]
        states = ckpt["rng"]
        if len(states) == self.dist.world:
            _restore_rng(states[self.dist.rank], self.device)
        else:
            # the batches split differently anyway: not an exact continuation
            self._print(f"note: the checkpoint was written by {len(states)} processes, this "
                        f"run has {self.dist.world}; the forward's noise is reseeded")
            _seed_all(_derive_seed(self.args.seed, 2, self.step, self.dist.rank))

    # ----------------------------------------------------------------- helpers

    def _print(self, msg: str, file=None) -> None:
        if self.dist.main:
            print(msg, file=file or sys.stdout, flush=True)

    def _checkpoint(self) -> str:
        """Write ``checkpoint-<step>.pt`` (rank 0; all ranks must call it: RNG states are
        gathered), then delete all but the newest two."""
        rngs = self.dist.gather_objects(_capture_rng(self.device))
        path = os.path.join(self.out, f"checkpoint-{self.step}.pt")
        if not self.dist.main:
            return path
        config = getattr(self.model, "config", None)
        state = {
            "format": 1, "task": self.task.name, "args": _run_args(self.args),
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "step": self.step, "epoch": self.epoch,
            "batch": self.batch, "steps_per_epoch": self.steps_per_epoch,
            "shuffle_state": self.epoch_shuffle_state, "rng": rngs,
            "accumulators": self.acc, "history": self.history, "elapsed_s": self.elapsed,
            "world_size": self.dist.world, "dataset": self.args.dataset,
            "num_levels": self.num_levels, "image_shape": self.image_shape,
            "torch_version": str(torch.__version__),
        }
        if isinstance(config, dict):
            state["model_config"] = config
        save_atomic(state, path)
        for _, old in list_checkpoints(self.out)[:-KEEP_CHECKPOINTS]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        return path

    def _stop_requested(self) -> bool:
        flag = torch.tensor([float(self.stop.signum != 0)], dtype=torch.float64,
                            device=self.device)
        return self.dist.all_reduce(flag).item() > 0

    def _eval_rng(self, key: int):
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        ctx = torch.random.fork_rng(devices=devices)
        seed = _derive_seed(self.args.seed, 3, key, self.dist.rank)

        @contextlib.contextmanager
        def scope():
            with ctx:
                torch.manual_seed(seed)
                yield

        return scope()

    @contextlib.contextmanager
    def _eval_mode(self):
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was)

    def _write_metrics(self, record: dict | None = None, truncate: bool = False) -> None:
        path = os.path.join(self.out, "metrics.jsonl")
        if truncate:
            with open(path, "w"):
                pass
        if record is not None:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _trim_metrics(self) -> None:
        """On resume: keep the records of the epochs the checkpoint has completed (a later
        epoch's record came from the part of the run that is being redone)."""
        path = os.path.join(self.out, "metrics.jsonl")
        kept = []
        if os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) \
                            and rec["epoch"] <= self.epoch:
                        kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(self.history):  # missing or edited file: the checkpoint's own
            kept = [json.dumps(r) + "\n" for r in self.history]
        tmp = path + f".{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)

    # ----------------------------------------------------------------- evaluation

    def evaluate(self, final: bool) -> float | None:
        """Test bits/dim: chunks of --eval-batch-size dealt round-robin to the ranks, sums
        all-reduced."""
        B = self.args.eval_batch_size
        n = self.x_test.shape[0]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with self._eval_mode(), self._eval_rng(self.epoch):
            for i in range(self.dist.rank * B, n, self.dist.world * B):
                x = self.x_test[i:i + B].long()
                nll = self.task.evaluate(self.model, x, self.args, final=final)
                if nll.shape != (x.shape[0],):
                    raise ValueError(f"{type(self.task).__name__}.evaluate must return the NLL "
                                     f"of each image, shape ({x.shape[0]},); got "
                                     f"{tuple(nll.shape)}")
                total[0] += nll.double().sum()
                total[1] += x.shape[0]
        total = self.dist.all_reduce(total)
        if total[1].item() == 0:  # no test images
            return None
        return bits_per_dim(total[0].item() / total[1].item(), self.num_dims)

    # ----------------------------------------------------------------- training

    def _train_step(self, idx: torch.Tensor) -> list[float]:
        """One optimizer step on the global batch ``idx``; returns the all-reduced
        ``[loss sum, stop flag, extras..., grad norm]`` without applying the update when
        anything is non-finite (raises _NonFinite)."""
        n_global = idx.shape[0]
        mine = idx.tensor_split(self.dist.world)[self.dist.rank].to(self.device)
        x = self.x_train[mine].long()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            out = self.train_module(x)
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError(f"the {self.task.name} module's forward must return a dict with "
                            f"'loss'; got {type(out).__name__}")
        loss = out["loss"].float()
        if loss.shape != (x.shape[0],):
            raise ValueError(f"the {self.task.name} module's 'loss' must be per example, shape "
                             f"({x.shape[0]},); got {tuple(loss.shape)}")
        # the per-rank sum scaled so that DDP's average over ranks is the global batch mean
        objective = loss.sum() * (self.dist.world / (n_global * self.num_dims * LN2))
        self.opt.zero_grad(set_to_none=True)
        objective.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.params, self.args.grad_clip if self.args.grad_clip else float("inf"))

        names = sorted(k for k in out if k != "loss")
        stats = [loss.detach().sum().double(),
                 torch.tensor(float(self.stop.signum != 0), dtype=torch.float64,
                              device=self.device)]
        kinds = []
        for k in names:
            v = out[k].detach().double()
            if v.dim() == 0:
                kinds.append("scalar")
                stats.append(v / self.dist.world)
            elif v.shape == (x.shape[0],):
                kinds.append("example")
                stats.append(v.sum())
            else:
                raise ValueError(f"the {self.task.name} module's {k!r} must be a scalar or per "
                                 f"example ({x.shape[0]},); got {tuple(v.shape)}")
        reduced = self.dist.all_reduce(torch.stack(stats))
        values = torch.cat([reduced, gnorm.detach().double().reshape(1)]).tolist()
        loss_sum, gn = values[0], values[-1]
        if not (math.isfinite(loss_sum) and math.isfinite(gn)):
            raise _NonFinite(loss_sum / n_global, gn)
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.batch += 1
        acc = self.acc
        acc["loss"] += loss_sum
        acc["count"] += n_global
        for k, kind, v in zip(names, kinds, values[2:-1]):
            e = acc["extras"].setdefault(k, [kind, 0.0, 0])
            e[1] += v
            e[2] += n_global if kind == "example" else 1
        return values

    def _epoch_record(self, train_time: float, eval_time: float,
                      test_bpd: float | None) -> dict:
        acc = self.acc
        return {
            "epoch": self.epoch + 1, "step": self.step,
            "train_bpd": bits_per_dim(acc["loss"] / max(acc["count"], 1), self.num_dims),
            "test_bpd": test_bpd,
            "extras": {k: s / max(c, 1) for k, (_, s, c) in sorted(acc["extras"].items())},
            "lr": self.opt.param_groups[0]["lr"],
            "images": acc["count"],
            "epoch_time_s": train_time, "eval_time_s": eval_time,
            "images_per_s": acc["count"] / train_time if train_time > 0 else None,
            "elapsed_s": self.elapsed,
        }

    def run(self) -> int:
        args, dist = self.args, self.dist
        self.setup()
        if dist.main:
            os.makedirs(self.out, exist_ok=True)
            if self.changed:
                print("note: resumed with " + ", ".join(self.changed), flush=True)
            if args.resume is None:
                for _, old in list_checkpoints(self.out):  # --overwrite
                    os.unlink(old)
                self._write_metrics(truncate=True)
            else:
                self._trim_metrics()
        C, H, W = self.image_shape
        n_params = sum(p.numel() for p in self.params)
        extra = self.task.banner(self.model, args) if hasattr(self.task, "banner") else ""
        procs = f" x {dist.world} processes" if dist.enabled else ""
        self._print(f"{self.task.name} on {args.dataset}: {self.x_train.shape[0]} train / "
                    f"{self.x_test.shape[0]} test images of {C}x{H}x{W}, {self.num_levels} "
                    f"levels; {n_params:,} parameters; device {self.device}{procs}, backend "
                    f"{self.backend}" + (", bf16 autocast" if args.bf16 else "")
                    + (f", torch.compile({args.compile})" if args.compile else ""))
        if extra:
            self._print(extra)
        if args.resume is not None:
            self._print(f"resumed from {self.resume_path} at step {self.step} (epoch "
                        f"{self.epoch + 1}, batch {self.batch}/{self.steps_per_epoch})")
        self.stop.install()
        try:
            status = self._loop()
            return status if status is not None else self._finish()
        finally:
            self.stop.restore()

    def _loop(self) -> int | None:
        """Train to the end; None when all epochs are done, else an exit status."""
        from tqdm.auto import tqdm

        args = self.args
        E, S, B = args.epochs, self.steps_per_epoch, args.batch_size
        title = f"{self.task.name} on {args.dataset}"
        self.epoch_shuffle_state = self.shuffle.get_state()
        if args.max_steps is not None and self.step >= args.max_steps and self.epoch < E:
            self._print(f"already at step {self.step} (--max-steps {args.max_steps}); "
                        f"nothing to do")
            return 0
        while self.epoch < E:
            # the state before this epoch's permutation: what a checkpoint stores, so a
            # resumed run draws the same permutation
            self.epoch_shuffle_state = self.shuffle.get_state()
            perm = torch.randperm(self.x_train.shape[0], generator=self.shuffle)
            t_start = time.perf_counter() - self.acc["time"]
            bar = tqdm(total=S, initial=self.batch, desc=f"epoch {self.epoch + 1}/{E}",
                       unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr,
                       mininterval=0.5, disable=args.no_progress or not self.dist.main)
            stop = False
            try:
                while self.batch < S:
                    t0 = time.perf_counter()
                    try:
                        values = self._train_step(perm[self.batch * B:(self.batch + 1) * B])
                    except _NonFinite as bad:
                        bar.close()
                        return self._non_finite(*bad.args)
                    now = time.perf_counter()
                    self.acc["time"] = now - t_start
                    self.elapsed += now - t0
                    bar.set_postfix(bpd=f"{bits_per_dim(self.acc['loss'] / self.acc['count'], self.num_dims):.4f}",
                                    refresh=False)
                    bar.update()
                    if values[1] > 0:  # a rank got SIGINT/SIGTERM
                        bar.close()
                        return self._interrupted()
                    at_max = args.max_steps is not None and self.step >= args.max_steps
                    if at_max and self.batch < S:
                        bar.close()
                        return self._stopped_at_max()
                    if at_max:
                        stop = True
                    elif (args.checkpoint_every and self.step % args.checkpoint_every == 0
                          and self.batch < S):  # (the end of the epoch writes one anyway)
                        self._checkpoint()
            finally:
                bar.close()
            train_time = self.acc["time"]

            # end of the epoch: evaluate (every --eval-every epochs and after the last)
            last = self.epoch + 1 == E
            test_bpd, eval_time = None, 0.0
            if last or (self.epoch + 1) % args.eval_every == 0:
                t0 = time.perf_counter()
                test_bpd = self.evaluate(final=last)
                eval_time = time.perf_counter() - t0
                self.elapsed += eval_time
            record = self._epoch_record(train_time, eval_time, test_bpd)
            self.history.append(record)
            self.epoch += 1
            self.batch = 0
            self.acc = self._fresh_accumulators()
            self.epoch_shuffle_state = self.shuffle.get_state()
            if self.dist.main:
                self._write_metrics(record)
                from dqkernels.plots import save_learning_curve

                save_learning_curve(self.history, os.path.join(self.out, "learning_curve.png"),
                                    title, math.log2(self.num_levels))
            extras = "".join(f", {k} {v:.4g}" for k, v in record["extras"].items())
            test = f"test {test_bpd:.4f} bits/dim" if test_bpd is not None else "no test"
            self._print(f"epoch {record['epoch']}/{E}: train {record['train_bpd']:.4f} "
                        f"bits/dim, {test}{extras}; lr {record['lr']:.3g} "
                        f"({train_time:.1f} s, {record['images_per_s'] or 0:.0f} img/s"
                        + (f", eval {eval_time:.1f} s)" if test_bpd is not None else ")"))
            self._checkpoint()
            if self._stop_requested():
                return self._interrupted(written=True)
            if stop and self.epoch < E:
                return self._stopped_at_max(written=True)
        return None

    def _resume_hint(self) -> str:
        cmd = f"dqk train {self.task.name} --out {self.out} --resume"
        if self.dist.enabled:
            cmd = (f"torchrun --nproc_per_node {self.dist.world} -m dqkernels.cli "
                   + cmd[len("dqk "):])
        return cmd

    def _interrupted(self, written: bool = False) -> int:
        path = os.path.join(self.out, f"checkpoint-{self.step}.pt")
        if not written:
            path = self._checkpoint()
        signum = self.stop.signum or signal.SIGTERM  # another rank's signal
        self._print(f"dqk train: stopped by {signal.Signals(signum).name} at step {self.step} "
                    f"(epoch {self.epoch + (self.batch > 0)}, batch {self.batch}/"
                    f"{self.steps_per_epoch}); wrote {path}\nresume with: {self._resume_hint()}",
                    file=sys.stderr)
        self._dump_params()
        return 128 + int(signum)

    def _stopped_at_max(self, written: bool = False) -> int:
        path = os.path.join(self.out, f"checkpoint-{self.step}.pt")
        if not written:
            path = self._checkpoint()
        self._print(f"stopped after {self.step} steps (--max-steps {self.args.max_steps}); "
                    f"wrote {path}\nresume with: {self._resume_hint()}")
        self._dump_params()
        return 0

    def _non_finite(self, loss_mean: float, gnorm: float) -> int:
        step = self.step + 1
        what = (f"the training loss became {loss_mean}" if not math.isfinite(loss_mean)
                else f"the gradient norm became {gnorm} (loss {bits_per_dim(loss_mean, self.num_dims):.4f} bits/dim)")
        last = latest_checkpoint(self.out) if self.dist.main else None
        kept = (f"the last good checkpoint is {last}" if last
                else "no checkpoint had been written yet")
        self._print(f"dqk train: error: {what} at step {step} (epoch {self.epoch + 1}, batch "
                    f"{self.batch + 1}/{self.steps_per_epoch}); the update was not applied and "
                    f"no checkpoint was written; {kept}. Try a smaller --lr, --grad-clip or "
                    f"--warmup-steps.", file=sys.stderr)
        return 1

    def _dump_params(self) -> None:
        path = self.args.dump_params
        if not path:
            return
        path = path.replace("{rank}", str(self.dist.rank))
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path)

    def _finish(self) -> int:
        args = self.args
        written = [os.path.join(self.out, n) for n in ("metrics.jsonl", "learning_curve.png")]
        L = self.num_levels
        title = f"{self.task.name} on {args.dataset}"
        test_bpd = next((h["test_bpd"] for h in reversed(self.history)
                         if h.get("test_bpd") is not None), None)
        if self.dist.main:
            from dqkernels.plots import save_image_grid

            if args.grid and not self.stop.signum:
                t0 = time.perf_counter()
                gen = torch.Generator(device=self.device).manual_seed(args.seed)
                with self._eval_mode(), self._eval_rng(_SAMPLE_KEY):
                    levels = self.task.sample(self.model, args.grid, gen)
                if tuple(levels.shape) != (args.grid, *self.image_shape):
                    raise ValueError(f"{type(self.task).__name__}.sample must return "
                                     f"[{args.grid}, {', '.join(map(str, self.image_shape))}] "
                                     f"levels; got {tuple(levels.shape)}")
                path = os.path.join(self.out, "samples.png")
                bpd = f", test {test_bpd:.3f} bits/dim" if test_bpd is not None else ""
                save_image_grid(levels.cpu(), L, path, f"{title}: {args.grid} samples{bpd}")
                print(f"drew {args.grid} samples in {time.perf_counter() - t0:.1f} s",
                      flush=True)
                written.append(path)
            extra = getattr(self.task, "extra_outputs", None)
            if extra is not None and not self.stop.signum:
                with self._eval_mode(), self._eval_rng(_EXTRA_KEY):
                    written.extend(extra(self.model, self.data, self.out, args) or [])
        written.append(os.path.join(self.out, f"checkpoint-{self.step}.pt"))
        self._dump_params()
        self._print(f"trained {args.epochs} epochs ({self.step} steps) in {self.elapsed:.1f} s")
        if test_bpd is not None:
            self._print(f"test bits/dim: {test_bpd:.3f} (uniform baseline log2({L}) = "
                        f"{math.log2(L):.3f})")
        self._print("wrote " + ", ".join(written))
        return 0


def _device(name: str | None, dist: _Dist) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available to this torch "
                             f"({torch.__version__}); use --device cpu")
        if dist.local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {dist.local_rank} has no GPU: "
                             f"{torch.cuda.device_count()} visible")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")


def train(task: Task, args: argparse.Namespace) -> int:
    """Run ``task`` with the parsed flags ``args`` (see :func:`configure_parser`); returns
    the exit status. Under torchrun (``WORLD_SIZE`` > 1) it joins the process group and
    leaves it on return, errors included."""
    from dqkernels import backends

    dist = _Dist()
    previous_backend = backends._global_default
    try:
        if args.out is None:
            if args.resume:
                args.out = os.path.dirname(os.path.abspath(args.resume))
            else:
                args.out = os.path.join("runs", f"{task.name}-{args.dataset}")
        device = _device(args.device, dist)
        dist.init(device)
        return _Run(task, args, dist, device).run()
    except UsageError as exc:
        if dist.main:
            print(f"dqk train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        backends.set_backend(previous_backend)
        dist.destroy()
