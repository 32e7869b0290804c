"""Where a run is: :class:`RunState`, everything that changes as it trains besides the
model, the optimizer and the schedule, in one object with ``state_dict()`` /
``load_state_dict()``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dqkernels.trainer import rng
from dqkernels.trainer.dist import Dist

__all__ = ["Accumulators", "RunState"]


@dataclass
class Accumulators:
    """Sums over the steps of the current epoch (all-reduced over the ranks): the loss in
    nats, the examples, their weight (when the module weighs them), the extras
    (``name -> [kind, sum, count]``, kind ``"example"`` or ``"scalar"``) and the training
    seconds."""

    loss: float = 0.0
    count: int = 0
    weight: float = 0.0
    extras: dict = field(default_factory=dict)
    time: float = 0.0

    def add_extra(self, name: str, kind: str, value: float, count: int) -> None:
        e = self.extras.setdefault(name, [kind, 0.0, 0])
        e[1] += value
        e[2] += count

    def extra_means(self) -> dict[str, float]:
        return {k: s / max(c, 1) for k, (_, s, c) in sorted(self.extras.items())}

    def state_dict(self) -> dict:
        return {
            "loss": self.loss,
            "count": self.count,
            "weight": self.weight,
            "extras": self.extras,
            "time": self.time,
        }

    @classmethod
    def from_state_dict(cls, sd: dict) -> Accumulators:
        return cls(sd["loss"], sd["count"], sd.get("weight", 0.0), dict(sd["extras"]), sd["time"])


class RunState:
    """The position of a run and what it has accumulated.

    * ``step`` (optimizer steps done), ``epoch`` (epochs done = index of the current one),
      ``batch`` (batches done in the current epoch);
    * the shuffle generator and its state at the start of the current epoch (what a
      checkpoint stores, so that a resumed run draws the same permutation);
    * ``acc``: the current epoch's :class:`Accumulators`; ``history``: one record per
      finished epoch; ``elapsed``: training and evaluation seconds over all invocations;
      ``last_eval``: the metrics of the latest evaluation (tensors included);
    * every rank's RNG states, gathered by :meth:`state_dict` (a collective: every rank
      calls it) and restored by :meth:`load_state_dict` on each rank.
    """

    def __init__(self, seed: int, dist: Dist, device: torch.device):
        self.seed, self.dist, self.device = seed, dist, device
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.shuffle = torch.Generator().manual_seed(seed)
        self.epoch_start = self.shuffle.get_state()
        self.acc = Accumulators()
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.last_eval: dict = {}
        self.notes: list[str] = []  # said once by the loop (e.g. after an inexact resume)

    def permutation(self, n: int) -> torch.Tensor:
        """The current epoch's order of the ``n`` training examples (the same every time
        it is asked for, before and after a resume)."""
        self.shuffle.set_state(self.epoch_start)
        return torch.randperm(n, generator=self.shuffle)

    def end_epoch(self, record: dict, metrics: dict | None) -> None:
        """Close the current epoch with its ``record`` and evaluation ``metrics``."""
        self.history.append(record)
        if metrics is not None:
            self.last_eval = metrics
        self.epoch += 1
        self.batch = 0
        self.acc = Accumulators()
        self.epoch_start = self.shuffle.get_state()

    def state_dict(self) -> dict:
        """Everything above, every rank's RNG states included (a collective)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "shuffle_state": self.epoch_start,
            "accumulators": self.acc.state_dict(),
            "history": self.history,
            "elapsed_s": self.elapsed,
            "last_eval": self.last_eval,
            "rng": self.dist.gather_objects(rng.capture_rng(self.device)),
        }

    def load_state_dict(self, sd: dict) -> None:
        """Continue from ``sd``; this rank's RNGs come back exactly when the run has as many
        processes as the one that wrote it (otherwise they are reseeded, with a note)."""
        self.step, self.epoch, self.batch = sd["step"], sd["epoch"], sd["batch"]
        self.epoch_start = sd["shuffle_state"]
        self.shuffle.set_state(self.epoch_start)
        self.acc = Accumulators.from_state_dict(sd["accumulators"])
        self.history = list(sd["history"])
        self.elapsed = sd["elapsed_s"]
        self.last_eval = dict(sd.get("last_eval", {}))
        states = sd["rng"]
        if len(states) == self.dist.world:
            rng.restore_rng(states[self.dist.rank], self.device)
        else:
            # the batches split differently anyway: not an exact continuation
            self.notes.append(
                f"note: the checkpoint was written by {len(states)} processes, "
                f"this run has {self.dist.world}; the forward's noise is "
                f"reseeded"
            )
            rng.seed_all(rng.derive_seed(self.seed, 2, self.step, self.dist.rank))
