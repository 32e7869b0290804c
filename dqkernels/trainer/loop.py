"""The training loop of ``dqk train <model>``, readable top to bottom.

:func:`train` sets a run up (:class:`Run`: flags and ``--resume``, backend, the task's data,
model, optimizer, schedule, run state, DDP and ``torch.compile``), then :meth:`Run.fit`
goes over the epochs: each global batch is one optimizer step (:meth:`Run.train_step`),
each epoch ends with an evaluation over the test split (:meth:`Run.evaluate`), a record
and a checkpoint. :meth:`Run.finish` writes the task's outputs.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from dqkernels.trainer import rng
from dqkernels.trainer.args import check_common_args, merge_resumed_args, run_args
from dqkernels.trainer.checkpoint import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from dqkernels.trainer.dist import Dist, available_memory, pick_device
from dqkernels.trainer.metrics import MetricsLog
from dqkernels.trainer.rundir import RunDir, locked_run_dir, new_run_id
from dqkernels.trainer.schedule import WarmupCosine
from dqkernels.trainer.signals import StopRequest
from dqkernels.trainer.state import RunState
from dqkernels.trainer.task import OutputContext, Task, UsageError, one_line

__all__ = ["Run", "train"]

CHECKPOINT_FORMAT = 2


def train(task: Task, args) -> int:
    """Run ``task`` with the parsed flags ``args`` (see
    :func:`~dqkernels.trainer.configure_parser`); returns the exit status: 0 done (or
    stopped at ``--max-steps``), 1 non-finite loss, 2 bad arguments or input, 128 + signal
    number when stopped by SIGINT (130) or SIGTERM (143). Under torchrun (``WORLD_SIZE``
    > 1) it joins the process group and leaves it on return, errors included."""
    from dqkernels import backends

    dist = Dist()
    previous_backend = backends._global_default
    run = None
    try:
        if args.out is None:
            if args.resume:
                args.out = os.path.dirname(os.path.abspath(args.resume))
            else:
                args.out = os.path.join("runs", f"{task.name}-{args.dataset}")
        device = pick_device(args.device, dist)
        dist.init(device)
        with locked_run_dir(args.out, dist, device) as run_dir:
            run = Run(task, args, dist, device, run_dir)
            with run.stop:
                status = run.fit()
                return status if status is not None else run.finish()
    except UsageError as exc:
        if dist.main:
            print(f"dqk train: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        backends.set_backend(previous_backend)
        # Release the run (its DistributedDataParallel wrapper) before the process group:
        # were the wrapper's reducer the group's last owner, the group would be torn down
        # in the reducer's destructor, which holds the GIL while it joins gloo's worker
        # threads, and a worker still dropping a finished collective's tensors needs the
        # GIL: a deadlock (seen once in the 2-process tests). destroy_process_group drops
        # the last reference without the GIL.
        run = None
        if dist.enabled:
            gc.collect()  # the run's reference cycles, if any
        dist.destroy()


class NonFinite(Exception):
    """A step's loss or gradient norm was not finite (the update was not applied)."""

    def __init__(self, loss_mean: float, grad_norm: float):
        super().__init__(loss_mean, grad_norm)
        self.loss_mean, self.grad_norm = loss_mean, grad_norm


@dataclass
class StepResult:
    """What one optimizer step reports (summed over the ranks)."""

    loss_sum: float
    stop_requested: bool
    grad_norm: float


class Run:
    """One invocation of the trainer: built by its constructor, run by :meth:`fit` and
    :meth:`finish`."""

    # ================================================================= set up

    def __init__(self, task: Task, args, dist: Dist, device: torch.device, run_dir: RunDir):
        self.task, self.args, self.dist, self.device = task, args, dist, device
        self.out, self.run_dir = args.out, run_dir
        self.stop = StopRequest()
        self.metrics = MetricsLog(self.out)

        ckpt = self._resume_checkpoint()  # merges the run's saved flags into args
        check_common_args(args, dist.world)
        task.check_args(args)
        self.backend = self._select_backend()

        self.data = self._load_data()
        train_set = self.data.examples("train")
        if args.limit is not None:
            train_set = train_set.head(args.limit)
        self.train_set = train_set.to(device)
        self.test_set = self.data.examples("test").to(device)
        self.units = task.units(self.data)
        n, B, W = len(self.train_set), args.batch_size, dist.world
        # a last partial batch too small to give every rank an example is dropped
        self.steps_per_epoch = n // B + (1 if n % B >= W else 0)
        if self.steps_per_epoch == 0:
            raise UsageError(
                f"{n} training examples cannot give each of the {W} processes an example per batch"
            )

        self._check_model_size()
        # the initial model is the same on every rank: seeded with --seed alone
        rng.seed_all(args.seed)
        self.model = self._build_model()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TypeError(
                f"{type(task).__name__}.build returned a module without trainable parameters"
            )
        self.opt = torch.optim.Adam(self.params, lr=args.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, WarmupCosine(args.warmup_steps, args.epochs * self.steps_per_epoch)
        )
        # the forward's noise differs between ranks
        rng.seed_all(rng.derive_seed(args.seed, 1, dist.rank))

        self.state = RunState(args.seed, dist, device)
        if ckpt is not None:
            self._restore(ckpt)
            del ckpt
        self.train_module = self._wrap_for_training(self.model)
        self._start_outputs()

    def _resume_checkpoint(self) -> dict | None:
        """The checkpoint to continue (``--resume``), its flags merged into ``args``; or
        None for a fresh run. Sets the run's identity (``run_id``) and whether the outputs
        in --out are to be replaced (``replace_outputs``): a fresh run must not overwrite
        an earlier run's outputs, nor a resumed run another run's (without --overwrite)."""
        args, task = self.args, self.task
        self.changed: list[str] = []
        self.resume_path: str | None = None
        held = self.run_dir.outputs()
        if args.resume is None:
            if held and not args.overwrite:
                raise UsageError(
                    f"{self.out!r} holds {held[0]} of an earlier run ({held[1]}); pass "
                    f"--resume to continue it, --overwrite to start afresh there, or another --out"
                )
            self.run_id, self.replace_outputs = new_run_id(), True
            return None
        path = args.resume or latest_checkpoint(self.out)
        if not path:
            raise UsageError(
                f"--resume: no checkpoint-<step>.pt in {self.out!r} "
                f"(resolved to {os.path.abspath(self.out)})"
            )
        if not os.path.isfile(path):
            raise UsageError(f"--resume: checkpoint {path!r} does not exist")
        try:
            ckpt, verified = read_checkpoint(path)
        except CheckpointError as exc:
            raise UsageError(f"--resume: {exc}") from None
        if not verified:
            self._print(
                f"warning: {path} has no checksum (written before checkpoints carried one); "
                "resuming from it unverified",
                file=sys.stderr,
            )
        if ckpt.get("task") != task.name:
            raise UsageError(
                f"--resume: {path!r} is a checkpoint of model "
                f"{ckpt.get('task')!r}, not {task.name!r}"
            )
        self.run_id, self.replace_outputs = self._continued_run(path, ckpt.get("run_id"), held)
        self.changed = merge_resumed_args(args, ckpt["args"], task)
        self.resume_path = path
        return ckpt

    def _continued_run(
        self, path: str, ckpt_run: str | None, held: tuple[str, str] | None
    ) -> tuple[str, bool]:
        """``(run id, replace outputs)`` of a run resumed from checkpoint ``path`` of run
        ``ckpt_run`` (None: a checkpoint older than run ids) into --out, which holds
        ``held``. Into its own run's folder it continues that run; into an empty folder
        it branches off as a new run; another run's folder is refused without
        --overwrite."""
        if held is None:
            return new_run_id(), False
        owner = self.run_dir.owner()
        own_folder = self.run_dir.is_folder_of(path)
        if ckpt_run is not None and (owner == ckpt_run or (owner is None and own_folder)):
            return ckpt_run, False
        if ckpt_run is None and own_folder:  # (no id to compare: the folder decides)
            return owner or new_run_id(), False
        if not self.args.overwrite:
            raise UsageError(
                f"--resume: --out {self.out!r} holds {held[0]} of another run ({held[1]}: run "
                f"{owner or 'without id'}; {path!r} is of run {ckpt_run or 'without id'}); "
                f"pass --overwrite to replace them, or another --out"
            )
        return ckpt_run or new_run_id(), True

    def _select_backend(self) -> str:
        """The dqkernels backend of the run (``--backend``, else the one in force)."""
        from dqkernels import backends

        try:
            name = backends.resolve("--backend", self.device, torch.float32, self.args.backend)
        except backends.BackendUnavailableError as exc:
            raise UsageError(str(exc)) from None
        if self.args.backend is not None:
            backends.set_backend(self.args.backend)
        return name

    def _load_data(self) -> Any:
        """The task's data; a missing, unreadable or malformed file is a UsageError (a
        ``DataFileError``'s message starts with the file's path)."""
        try:
            return self.task.load_data(self.args)
        except (OSError, ValueError) as exc:
            raise UsageError(one_line(exc)) from None
        except EOFError as exc:  # (a truncated compressed file)
            raise UsageError(
                f"--data-dir {self.args.data_dir}: a file of {self.args.dataset} ended early: "
                f"{one_line(exc)}"
            ) from None

    def _check_model_size(self) -> None:
        """Refuse a model whose parameters with their gradients and Adam's two moments
        would not fit in the memory available on the device, counted on the model built on
        the meta device (which allocates nothing; a task whose build cannot run there is
        not checked)."""
        try:
            with torch.device("meta"):
                meta = self.task.build(self.args, self.data)
            size = sum(p.numel() * p.element_size() for p in meta.parameters())
            count = sum(p.numel() for p in meta.parameters())
        except Exception:  # noqa: BLE001 - the real build says what is wrong
            return
        need, free = 4 * size, available_memory(self.device)
        if free is not None and need > free:
            where = "the sizes restored by --resume" if self.resume_path else "its size flags"
            raise UsageError(
                f"the {self.task.name} model would have {count:,} parameters, "
                f"{need / 2**30:.3g} GiB with gradients and Adam's moments, more than the "
                f"{free / 2**30:.3g} GiB available on {self.device}; check {where} "
                f"(e.g. --width)"
            )

    def _build_model(self) -> torch.nn.Module:
        try:
            model = self.task.build(self.args, self.data)
        except (MemoryError, RuntimeError) as exc:
            if not isinstance(exc, (MemoryError, torch.OutOfMemoryError)) and (
                "can't allocate memory" not in str(exc)
            ):
                raise
            where = "the sizes restored by --resume" if self.resume_path else "its size flags"
            raise UsageError(
                f"the {self.task.name} model does not fit in memory ({one_line(exc)[:200]}); "
                f"check {where} (e.g. --width)"
            ) from None
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"{type(self.task).__name__}.build must return a torch.nn.Module; "
                f"got {type(model).__name__}"
            )
        return model.to(self.device)

    def _restore(self, ckpt: dict) -> None:
        if ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise UsageError(
                f"--resume: the checkpoint has {ckpt['steps_per_epoch']} steps per epoch, this "
                f"run {self.steps_per_epoch} (other data, --limit or number of processes)"
            )
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            _check_optimizer_state(self.opt)
            self.sched.load_state_dict(ckpt["scheduler"])
            # format 1 kept the run's state at the top level, under the same names
            self.state.load_state_dict(ckpt.get("run", ckpt))
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise UsageError(
                f"--resume: {self.resume_path}: does not fit this run: {one_line(exc)}"
            ) from None

    def _wrap_for_training(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel under torchrun, then ``torch.compile`` with --compile."""
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.args.compile:
            module = torch.compile(module, backend=self.args.compile)
        return module

    def _start_outputs(self) -> None:
        """Prepare --out (rank 0) and say what this run is."""
        args, dist, state = self.args, self.dist, self.state
        if dist.main:
            if self.changed:
                print("note: resumed with " + ", ".join(self.changed), flush=True)
            if self.replace_outputs:  # a fresh start, or --overwrite
                self.run_dir.clear(keep=self.resume_path)
            self.run_dir.write_record(self.run_id, self.task.name)
            if args.resume is not None:
                self.metrics.trim(state.history, state.epoch)
        for note in state.notes:
            self._print(note)
        n_params = sum(p.numel() for p in self.params)
        procs = f" x {dist.world} processes" if dist.enabled else ""
        self._print(
            f"{self.task.name} on {args.dataset}: {len(self.train_set)} train / "
            f"{len(self.test_set)} test {self.data.describe()}; {n_params:,} "
            f"parameters; device {self.device}{procs}, backend {self.backend}"
            + (", bf16 autocast" if args.bf16 else "")
            + (f", torch.compile({args.compile})" if args.compile else "")
        )
        banner = self.task.banner(self.model, args)
        if banner:
            self._print(banner)
        if args.resume is not None:
            self._print(
                f"resumed from {self.resume_path} at step {state.step} (epoch "
                f"{state.epoch + 1}, batch {state.batch}/{self.steps_per_epoch})"
            )

    # ================================================================= the loop

    def fit(self) -> int | None:
        """Train to the end of the last epoch: None when all epochs are done, else the exit
        status of a run that stopped early."""
        from tqdm.auto import tqdm

        args, state, units = self.args, self.state, self.units
        E, S, B = args.epochs, self.steps_per_epoch, args.batch_size
        if args.max_steps is not None and state.step >= args.max_steps and state.epoch < E:
            self._print(
                f"already at step {state.step} (--max-steps {args.max_steps}); nothing to do"
            )
            return 0
        while state.epoch < E:
            order = state.permutation(len(self.train_set))
            t_start = time.perf_counter() - state.acc.time
            bar = tqdm(
                total=S,
                initial=state.batch,
                desc=f"epoch {state.epoch + 1}/{E}",
                unit="batch",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=0.5,
                disable=args.no_progress or not self.dist.main,
            )
            stop_after_epoch = False
            with contextlib.closing(bar):
                while state.batch < S:
                    t0 = time.perf_counter()
                    try:
                        step = self.train_step(order[state.batch * B : (state.batch + 1) * B])
                    except NonFinite as bad:
                        return self._non_finite(bad)
                    now = time.perf_counter()
                    state.acc.time = now - t_start
                    state.elapsed += now - t0
                    bar.set_postfix({units.key: f"{self._train_metric():.4f}"}, refresh=False)
                    bar.update()
                    if step.stop_requested:  # a rank got SIGINT/SIGTERM
                        return self._interrupted()
                    at_max = args.max_steps is not None and state.step >= args.max_steps
                    if at_max and state.batch < S:
                        return self._stopped_at_max()
                    if at_max:
                        stop_after_epoch = True
                    elif (
                        args.checkpoint_every
                        and state.step % args.checkpoint_every == 0
                        and state.batch < S
                    ):  # (the end of the epoch writes one anyway)
                        self.checkpoint()
            self._end_epoch(train_time=state.acc.time)
            self.checkpoint()
            if self._stop_requested():
                return self._interrupted(written=True)
            if stop_after_epoch and state.epoch < E:
                return self._stopped_at_max(written=True)
        return None

    def train_step(self, idx: torch.Tensor) -> StepResult:
        """One optimizer step on the global batch ``idx`` (indices into the training
        split; this rank takes its slice). Raises :class:`NonFinite`, without applying the
        update, when the loss or the gradient norm is not finite."""
        dist, state, units = self.dist, self.state, self.units
        n_global = idx.shape[0]
        mine = idx.tensor_split(dist.world)[dist.rank].to(self.device)
        batch = self.train_set.take(mine)
        n = mine.shape[0]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.bf16):
            out = self.train_module(batch)
        if not isinstance(out, dict) or "loss" not in out:
            raise TypeError(
                f"the {self.task.name} module's forward must return a dict with "
                f"'loss'; got {type(out).__name__}"
            )
        loss = out["loss"].float()
        if loss.shape != (n,):
            raise ValueError(
                f"the {self.task.name} module's 'loss' must be per example, shape "
                f"({n},); got {tuple(loss.shape)}"
            )
        weight_sum = None
        if units.per_example is None:  # the module weighs its examples: sum over the ranks
            weight_sum = dist.all_reduce(self._weight(out, n).sum().double()).item()
        # the per-rank sum scaled so that DDP's average over ranks is the global mean
        objective = loss.sum() * (
            dist.world / (units.total_weight(n_global, weight_sum) * units.log_base)
        )
        self.opt.zero_grad(set_to_none=True)
        objective.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.params, self.args.grad_clip if self.args.grad_clip else float("inf")
        )

        # one all-reduce: the loss, the stop flag and the extras
        names = sorted(k for k in out if k not in ("loss", "weight"))
        stats = [
            loss.detach().sum().double(),
            torch.tensor(float(self.stop.signum != 0), dtype=torch.float64, device=self.device),
        ]
        kinds = []
        for k in names:
            v = out[k].detach().double()
            if v.dim() == 0:
                kinds.append("scalar")
                stats.append(v / dist.world)
            elif v.shape == (n,):
                kinds.append("example")
                stats.append(v.sum())
            else:
                raise ValueError(
                    f"the {self.task.name} module's {k!r} must be a scalar or per "
                    f"example ({n},); got {tuple(v.shape)}"
                )
        reduced = dist.all_reduce(torch.stack(stats)).tolist()
        loss_sum, stop_flag, extras = reduced[0], reduced[1], reduced[2:]
        grad_norm = gnorm.item()
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            raise NonFinite(loss_sum / n_global, grad_norm)
        self.opt.step()
        self.sched.step()
        state.step += 1
        state.batch += 1
        acc = state.acc
        acc.loss += loss_sum
        acc.count += n_global
        if weight_sum is not None:
            acc.weight += weight_sum
        for k, kind, v in zip(names, kinds, extras):
            acc.add_extra(k, kind, v, n_global if kind == "example" else 1)
        return StepResult(loss_sum, stop_flag > 0, grad_norm)

    def _weight(self, out: dict, n: int) -> torch.Tensor:
        w = out.get("weight")
        if w is None or tuple(w.shape) != (n,):
            raise ValueError(
                f"the {self.task.name} module must return 'weight', the weight "
                f"of each example in {self.units.label}, shape ({n},); got "
                f"{None if w is None else tuple(w.shape)}"
            )
        return w.detach()

    def _train_metric(self) -> float:
        acc = self.state.acc
        return self.units.value(acc.loss, max(acc.count, 1), acc.weight)

    def _end_epoch(self, train_time: float) -> None:
        """Evaluate (every --eval-every epochs and after the last), record, log, plot."""
        args, state, units = self.args, self.state, self.units
        E = args.epochs
        last = state.epoch + 1 == E
        metrics, eval_time = None, 0.0
        if last or (state.epoch + 1) % args.eval_every == 0:
            t0 = time.perf_counter()
            metrics = self.evaluate(final=last)
            eval_time = time.perf_counter() - t0
            state.elapsed += eval_time
        acc = state.acc
        test = None if metrics is None else metrics[units.key]
        noun = self.data.noun[0]
        record = {
            "epoch": state.epoch + 1,
            "step": state.step,
            f"train_{units.key}": self._train_metric(),
            f"test_{units.key}": test,
            "extras": acc.extra_means(),
            "lr": self.opt.param_groups[0]["lr"],
            noun: acc.count,
            "epoch_time_s": train_time,
            "eval_time_s": eval_time,
            f"{noun}_per_s": acc.count / train_time if train_time > 0 else None,
            "elapsed_s": state.elapsed,
        }
        test_extras = {
            k: v
            for k, v in (metrics or {}).items()
            if k != units.key and isinstance(v, (int, float))
        }
        if test_extras:
            record["test_extras"] = test_extras
        state.end_epoch(record, metrics)
        if self.dist.main:
            self.metrics.append(record)
            self.metrics.plot(state.history, units, self._title())
        extras = "".join(f", {k} {v:.4g}" for k, v in record["extras"].items())
        shown = f"test {test:.4f} {units.label}" if test is not None else "no test"
        rate = record[f"{noun}_per_s"] or 0
        self._print(
            f"epoch {record['epoch']}/{E}: train {record[f'train_{units.key}']:.4f} "
            f"{units.label}, {shown}{extras}; lr {record['lr']:.3g} "
            f"({train_time:.1f} s, {rate:.0f} {self.data.noun[1]}/s"
            + (f", eval {eval_time:.1f} s)" if test is not None else ")")
        )

    # ================================================================= evaluation

    def evaluate(self, final: bool) -> dict | None:
        """The metrics of the test split, or None without test examples: batches of
        --eval-batch-size dealt round-robin to the ranks, the task's statistics summed over
        batches and ranks, then the trainer's metric and the task's."""
        args, dist = self.args, self.dist
        B, n = args.eval_batch_size, len(self.test_set)
        totals: dict[str, Any] = {}
        count = 0
        with self._eval_mode(), self._forked_rng(self.state.epoch):
            for i in range(dist.rank * B, n, dist.world * B):
                batch = self.test_set.take(slice(i, i + B))
                stats = self.task.eval_step(self.model, batch, args, final=final)
                if "loss" not in stats:
                    raise ValueError(
                        f"{type(self.task).__name__}.eval_step must return "
                        f"'loss', the summed loss in nats; got {sorted(stats)}"
                    )
                totals = _add(totals, stats)
                count += len(batch)
        if dist.enabled:
            totals, count = _sum_over_ranks(dist.gather_objects((_to_cpu(totals), count)))
        if count == 0:  # no test examples
            return None
        weight = totals.get("weight")
        metrics = {
            self.units.key: self.units.value(
                _number(totals["loss"]), count, None if weight is None else _number(weight)
            )
        }
        with self._eval_mode():
            metrics.update(self.task.eval_metrics(self.model, totals, count, args, final=final))
        return metrics

    @contextlib.contextmanager
    def _eval_mode(self):
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was)

    def _forked_rng(self, key: int):
        return rng.forked_rng(self.device, rng.derive_seed(self.args.seed, 3, key, self.dist.rank))

    # ================================================================= checkpoints and stops

    def checkpoint(self) -> str:
        """Write ``checkpoint-<step>.pt`` (rank 0; every rank must call it: the run state
        gathers every rank's RNG states), keeping the newest two."""
        run = self.state.state_dict()
        path = checkpoint_path(self.out, self.state.step)
        if not self.dist.main:
            return path
        payload = {
            "format": CHECKPOINT_FORMAT,
            "task": self.task.name,
            "run_id": self.run_id,
            "args": run_args(self.args),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "run": run,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.dist.world,
            "dataset": self.args.dataset,
            "data": self.data.info(),
            "torch_version": str(torch.__version__),
        }
        config = getattr(self.model, "config", None)
        if isinstance(config, dict):
            payload["model_config"] = config
        return write_checkpoint(self.out, self.state.step, payload)

    def _stop_requested(self) -> bool:
        return self.dist.any(self.stop.signum != 0, self.device)

    def _resume_hint(self) -> str:
        cmd = f"dqk train {self.task.name} --out {self.out} --resume"
        if self.dist.enabled:
            cmd = (
                f"torchrun --nproc_per_node {self.dist.world} -m dqkernels.cli "
                + cmd[len("dqk ") :]
            )
        return cmd

    def _interrupted(self, written: bool = False) -> int:
        state = self.state
        path = self.checkpoint() if not written else checkpoint_path(self.out, state.step)
        signum = self.stop.signum or signal.SIGTERM  # another rank's signal
        self._print(
            f"dqk train: stopped by {signal.Signals(signum).name} at step {state.step} "
            f"(epoch {state.epoch + (state.batch > 0)}, batch {state.batch}/"
            f"{self.steps_per_epoch}); wrote {path}\nresume with: {self._resume_hint()}",
            file=sys.stderr,
        )
        self._dump_params()
        return 128 + int(signum)

    def _stopped_at_max(self, written: bool = False) -> int:
        path = self.checkpoint() if not written else checkpoint_path(self.out, self.state.step)
        self._print(
            f"stopped after {self.state.step} steps (--max-steps {self.args.max_steps}"
            f"); wrote {path}\nresume with: {self._resume_hint()}"
        )
        self._dump_params()
        return 0

    def _non_finite(self, bad: NonFinite) -> int:
        state = self.state
        step = state.step + 1
        if not math.isfinite(bad.loss_mean):
            what = f"the training loss became {bad.loss_mean}"
        else:
            what = f"the gradient norm became {bad.grad_norm}"
            if self.units.per_example is not None:  # (a mean per example: in units)
                what += f" (loss {self.units.value(bad.loss_mean, 1):.4f} {self.units.label})"
        last = latest_checkpoint(self.out) if self.dist.main else None
        kept = (
            f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
        )
        self._print(
            f"dqk train: error: {what} at step {step} (epoch {state.epoch + 1}, batch "
            f"{state.batch + 1}/{self.steps_per_epoch}); the update was not applied "
            f"and no checkpoint was written; {kept}. Try a smaller --lr, --grad-clip "
            f"or --warmup-steps.",
            file=sys.stderr,
        )
        return 1

    # ================================================================= the end

    def finish(self) -> int:
        """After the last epoch: the task's outputs (rank 0), the final lines."""
        args, state, units = self.args, self.state, self.units
        written = [self.metrics.path, self.metrics.curve_path]
        test = next(
            (
                h[f"test_{units.key}"]
                for h in reversed(state.history)
                if h.get(f"test_{units.key}") is not None
            ),
            None,
        )
        if self.dist.main and not self.stop.signum:
            metrics = dict(state.last_eval)
            if test is not None:
                metrics.setdefault(units.key, test)
            ctx = OutputContext(
                self.out, self.device, args.seed, self._title(), units, metrics, self._forked_rng
            )
            with self._eval_mode():
                written.extend(self.task.write_outputs(self.model, self.data, args, ctx) or [])
        written.append(checkpoint_path(self.out, state.step))
        self._dump_params()
        self._print(f"trained {args.epochs} epochs ({state.step} steps) in {state.elapsed:.1f} s")
        if test is not None:
            base = (
                f" ({units.baseline_label} = {units.baseline:.3f})"
                if units.baseline is not None
                else ""
            )
            self._print(f"test {units.label}: {test:.3f}{base}")
        self._print("wrote " + ", ".join(written))
        return 0

    # ================================================================= small helpers

    def _title(self) -> str:
        return f"{self.task.name} on {self.args.dataset}"

    def _print(self, msg: str, file=None) -> None:
        if self.dist.main:
            print(msg, file=file or sys.stdout, flush=True)

    def _dump_params(self) -> None:
        path = self.args.dump_params
        if not path:
            return
        path = path.replace("{rank}", str(self.dist.rank))
        torch.save({k: v.detach().cpu() for k, v in self.model.state_dict().items()}, path)


def _check_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """A ValueError unless every tensor of the optimizer's restored state (Adam's moments)
    has the shape of its parameter and finite values (``step`` counts are scalars)."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(
                        f"optimizer state {name!r} has shape {tuple(value.shape)}, its "
                        f"parameter {tuple(p.shape)}"
                    )
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise ValueError(f"optimizer state {name!r} is not finite")


# ----------------------------------------------------------------------------- statistics


def _add(totals: dict, stats: dict) -> dict:
    """``totals + stats`` key by key (tensors elementwise, numbers, lists concatenated)."""
    out = dict(totals)
    for k, v in stats.items():
        out[k] = v if k not in out else out[k] + v
    return out


def _to_cpu(stats: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in stats.items()}


def _sum_over_ranks(gathered: list) -> tuple[dict, int]:
    totals: dict = {}
    count = 0
    for stats, n in gathered:
        totals = _add(totals, stats)
        count += n
    return totals, count


def _number(v) -> float:
    return v.item() if isinstance(v, torch.Tensor) else float(v)
