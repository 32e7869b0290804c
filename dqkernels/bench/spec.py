"""What a benchmark case module defines: its cases (:class:`Case`), and a :class:`BenchOp`
(or :class:`TrainStepOp`) saying how to build inputs and what each implementation computes.

The op's ``mode`` names how it is measured (:mod:`dqkernels.bench.modes`):

- ``"forward+backward"``: ``reference(**inputs)`` and ``kernel(backend, **inputs)`` return a
  scalar loss; the timed call is ``torch.autograd.grad`` of it with respect to the inputs
  named in ``grad_inputs``, checked against the float64 gradient of the reference;
- ``"forward"``: they return the op's output; one call under ``torch.no_grad()`` is timed,
  checked by the op's ``check`` or else against the reference's float64 output;
- ``"state-update"``: a forward call that updates the inputs named in ``state_inputs`` in
  place (and returns them); they are restored before every call;
- ``"train-step"`` (:class:`TrainStepOp`): a whole training step of a model.

Every mode times the same rows: ``baselines()`` (by default ``eager``, the reference as
written, and ``compile``, ``torch.compile`` of it) and one row per dqkernels backend
(``kernel``). A case module exposes its op as ``OP``; the runner finds it by the module's
name in :mod:`dqkernels.bench.cases`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Case:
    """One case of an op: a short name, its dimensions, and where it runs.

    ``device``: only on that device type (``"cpu"`` / ``"cuda"``), e.g. a smaller batch on
    CPU under the same name; None: everywhere. ``quick``: a tiny case for smoke runs, run
    only (and then the only ones run) under ``--quick``."""

    name: str
    dims: dict[str, int]
    label: str = ""  # human-readable, e.g. "B=64 C=3 32x32 M=10"
    device: str | None = None
    quick: bool = False

    def __post_init__(self):
        if not self.label:
            self.label = " ".join(f"{k}={v}" for k, v in self.dims.items())


@dataclass
class Impl:
    """One implementation of a case: a row of the results.

    ``fn`` is what the op's mode runs: ``fn(**inputs)`` giving the loss (forward+backward)
    or the output (forward, state-update), or ``fn()`` giving the model to train
    (train-step). ``kind`` is ``eager`` (plain PyTorch as a user writes it; the fastest
    eager row is the reference of ``vs eager``), ``compile`` (a ``torch.compile``'d
    callable: the runner resets dynamo before its first call, reports that call as
    ``compile_s`` and leaves the row out under ``--no-compile``), ``external`` (another
    library) or ``backend`` (a dqkernels backend, added by the runner)."""

    name: str
    fn: Callable[..., Any] | None  # None when skipped
    skip: str | None = None  # why it is not run (then fn is None)
    kind: str = "eager"
    note: str | None = None  # shown in the row, e.g. "chunked (8192 rows per chunk)"


class BenchOp:
    """An op's benchmark: subclass, set ``name``, ``mode`` and ``description``, and define
    ``cases``, ``make_inputs``, ``reference`` and ``kernel`` (see the module docstring)."""

    name: str = ""
    #: the op family of dqkernels.kernels whose backends are timed (None: any family,
    #: e.g. a training step that runs several)
    family: str | None = None
    #: how a call is measured: "forward+backward", "forward", "state-update", "train-step"
    mode: str = "forward+backward"
    #: one line for the report header: what is timed and what the loss is
    description: str = ""
    #: notes copied into the JSON and markdown (how baselines run, what bytes count)
    notes: tuple[str, ...] = ()
    #: forward+backward: the inputs the gradient is taken with respect to
    grad_inputs: tuple[str, ...] = ()
    #: state-update: the inputs a call updates in place (restored before every call)
    state_inputs: tuple[str, ...] = ()

    def cases(self) -> list[Case]:
        """Every case, for every device, quick ones included (the selection picks)."""
        raise NotImplementedError

    def make_inputs(
        self, case: Case, dtype: torch.dtype, device: torch.device, seed: int
    ) -> dict[str, Any]:
        """Fresh inputs; those in ``grad_inputs`` have ``requires_grad`` set."""
        raise NotImplementedError

    def reference(self, **inputs) -> Any:
        """The plain-PyTorch definition: the ``eager`` row, ``compile``'s source and, in
        float64, the gold the rows are checked against."""
        raise NotImplementedError

    def kernel(self, backend: str, **inputs) -> Any:
        """The same through the dqkernels op on ``backend``."""
        raise NotImplementedError

    def baselines(
        self, inputs: dict[str, Any], device: torch.device, dtype: torch.dtype
    ) -> list[Impl]:
        """The case's non-dqkernels implementations, in report order: by default the
        reference as written and ``torch.compile`` of it."""
        return [
            Impl("eager", self.reference),
            Impl("compile", torch.compile(self.reference, dynamic=False), kind="compile"),
        ]

    def check(self, inputs: dict[str, Any], output: Any) -> dict[str, float]:
        """Forward modes: an op's own score of one output (fields of
        :data:`~dqkernels.bench.records.CHECK_FIELDS`). Not overridden: the output is
        compared with the float64 reference (``out_rel_err``)."""
        raise NotImplementedError

    def min_bytes(self, inputs: dict[str, Any], backward: bool) -> int | None:
        """Bytes a perfect kernel must move in the timed call (read inputs, write outputs
        and gradients): gives GB/s and the fraction of the copy bandwidth. None: no floor."""
        return None

    def flops(self, inputs: dict[str, Any], backward: bool) -> float | None:
        """Floating-point operations of one timed call (None: not a FLOP-bound op); gives
        TFLOP/s and the fraction of the matmul ceiling of the case's dtype."""
        return None

    def backends(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        """dqkernels backends worth timing here (by default all that run the op's
        ``family`` of kernels, except ``triton`` on CPU, which only runs in the
        interpreter)."""
        from dqkernels import backends as B

        names = B.available(device, dtype, self.family)
        if device.type == "cpu":
            names = [b for b in names if b != "triton"]
        return names


class TrainStepOp(BenchOp):
    """A whole training step of a model: ``optimizer.zero_grad()``, the loss, its backward
    and ``optimizer.step()``. Define ``cases``, ``build_model``, ``make_batch`` and
    ``loss``; ``optimizer`` is Adam by default.

    The ``eager`` and ``compile`` rows train the model built on the ``torch`` backend (the
    loss ``torch.compile``'d for ``compile``); each backend row trains the same model built
    on that backend, with the same parameters and buffers."""

    mode = "train-step"

    def build_model(self, case: Case, backend: str) -> torch.nn.Module:
        """The case's model with its ops on ``backend`` (same initialisation every call)."""
        raise NotImplementedError

    def make_batch(
        self,
        model: torch.nn.Module,
        case: Case,
        dtype: torch.dtype,
        device: torch.device,
        seed: int,
    ) -> dict[str, Any]:
        """The batch ``loss`` is called with. ``model`` is the torch-backend model, on the
        device and in the dtype; this is the place for data-dependent initialisation."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, **batch) -> torch.Tensor:
        """The scalar training loss of ``model`` on the batch."""
        raise NotImplementedError

    def optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=1e-4)

    def backends(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        # the eager row is the model on the torch backend
        return [b for b in super().backends(device, dtype) if b != "torch"]


def overrides(op: BenchOp, method: str) -> bool:
    """Whether ``op``'s class defines its own ``method`` (rather than :class:`BenchOp`'s)."""
    return getattr(type(op), method) is not getattr(BenchOp, method)
