"""Measurement modes: how the runner builds the call it times from an implementation and
the case's inputs, what it checks that call's output against, and which derived fields
apply. The runner (:mod:`dqkernels.bench.runner`) has one loop for all of them.

========================  ==========================================  =====================
mode                      timed call (``ms``)                         checked
========================  ==========================================  =====================
``forward+backward``      ``autograd.grad(loss, grad_inputs)``;       ``grad_rel_err`` vs
                          ``fwd_ms``: the loss alone                  the float64 reference
``forward``               one call under ``torch.no_grad()``          ``op.check`` or
                                                                      ``out_rel_err``
``state-update``          ``forward`` on state restored before every  as ``forward``
                          call
``train-step``            ``zero_grad``, loss, ``backward``,          ``grad_rel_err`` of
                          ``optimizer.step()``; ``fwd_ms``: the loss  the parameters
========================  ==========================================  =====================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from dqkernels.bench.records import CHECK_FIELDS
from dqkernels.bench.spec import BenchOp, Case, Impl, TrainStepOp, overrides


@dataclass
class Prepared:
    """A case made ready for its rows: the inputs every implementation is called with,
    and what the mode keeps to restore or check them."""

    case: Case
    dtype: torch.dtype
    device: torch.device
    inputs: dict[str, Any]
    saved: dict[str, Any] = field(default_factory=dict)


@dataclass
class Calls:
    """What the runner times for one row."""

    step: Callable[[], Any]  # the timed call; its first output is checked
    fwd: Callable[[], Any] | None = None  # the forward alone (fwd_ms), if timed too
    restore: Callable[[], None] | None = None  # puts back the state ``step`` changes


class Mode:
    """The base: the ``forward`` protocol, which the other modes adapt."""

    name = ""
    #: the timed call includes a backward (min_bytes and flops are asked with backward=)
    backward = False
    #: the forward alone is timed too (fwd_ms, fwd_bytes_min, fwd_speedup_vs_eager)
    times_forward = False
    #: each row gets ``vs``: every baseline's time over its own
    per_baseline = False
    #: the state is restored (untimed) before every timed call, not only the checked one
    restore_each_call = False
    #: on CPU a checked call of seconds counts as the first timed repeat, with fewer
    #: repeats (:func:`~dqkernels.bench.timing.time_call`); off, every call is warmed up
    #: (the checked call is slowed by the memory profiler: only forward ops, whose calls
    #: can take a minute, trade that for a short sweep)
    long_calls = True
    # how the writers label the timed call
    ms_label = "ms"
    first_call = "first call"
    plot_label = "speedup over the fastest eager baseline (x)"
    # what the checked call's peak memory is of, and what it counts
    memory_call = "the row's first call"
    memory_includes = "the outputs"

    def prepare(
        self, op: BenchOp, case: Case, dtype: torch.dtype, device: torch.device, seed: int
    ) -> Prepared:
        return Prepared(case, dtype, device, op.make_inputs(case, dtype, device, seed))

    def baselines(self, op: BenchOp, prep: Prepared) -> list[Impl]:
        return op.baselines(prep.inputs, prep.device, prep.dtype)

    def backend(self, op: BenchOp, backend: str, prep: Prepared) -> Impl:
        def fn(**inputs):
            return op.kernel(backend, **inputs)

        return Impl(backend, fn, kind="backend")

    def calls(self, op: BenchOp, impl: Impl, prep: Prepared) -> Calls:
        fn, inputs = impl.fn, prep.inputs
        assert fn is not None

        def step():
            with torch.no_grad():
                return fn(**inputs)

        return Calls(step)

    def gold(self, op: BenchOp, prep: Prepared) -> Any:
        """The float64 result the rows are checked against (None: nothing to compare)."""
        if overrides(op, "check"):
            return None
        with torch.no_grad():
            return op.reference(**to_float64(prep.inputs))

    def check(self, op: BenchOp, prep: Prepared, output: Any, gold: Any) -> dict[str, float]:
        if overrides(op, "check"):
            fields = op.check(prep.inputs, output)
            bad = set(fields) - set(CHECK_FIELDS)
            if bad:
                raise KeyError(
                    f"{op.name}.check returned {sorted(bad)}; allowed: {', '.join(CHECK_FIELDS)}"
                )
            return {k: float(v) for k, v in fields.items()}
        if gold is None:
            return {}
        return {"out_rel_err": rel_err(tensors(output), tensors(gold))}

    def notes(self, op: BenchOp) -> list[str]:
        """The mode's lines of the result's notes: what ``ms`` is and what is checked."""
        lines = [
            "forward-only op: ms is the median time of one call under torch.no_grad(); "
            "no backward, no fwd_ms; each row's first call gives its peak memory and "
            "its check"
        ]
        if not overrides(op, "check"):
            lines.append(
                "out_rel_err: relative norm error of the output against the "
                "reference in float64 on the same (already rounded) inputs"
            )
        return lines

    def compiles(self, op: BenchOp) -> str:
        """What the ``compile`` row is ``torch.compile`` of, for the notes."""
        if overrides(op, "baselines"):
            return "the eager formulation named in the op's notes"
        return "the reference"


class Forward(Mode):
    name = "forward"
    per_baseline = True


class StateUpdate(Forward):
    name = "state-update"
    restore_each_call = True

    def prepare(self, op, case, dtype, device, seed):
        if not op.state_inputs:
            raise ValueError(f"{op.name}: a state-update op names its state_inputs")
        prep = super().prepare(op, case, dtype, device, seed)
        prep.saved = {n: prep.inputs[n].detach().clone() for n in op.state_inputs}
        return prep

    def calls(self, op, impl, prep):
        calls = super().calls(op, impl, prep)

        def restore():
            with torch.no_grad():
                for name, value in prep.saved.items():
                    prep.inputs[name].copy_(value)

        calls.restore = restore
        return calls

    def notes(self, op):
        lines = super().notes(op)
        lines[0] = (
            "in-place state update: ms is the median time of one call under "
            f"torch.no_grad(); the state it updates ({', '.join(op.state_inputs)}) "
            "is restored, untimed, before every call, so that each call sees the "
            "same state; no backward, no fwd_ms; each row's first call gives its "
            "peak memory and its check"
        )
        return lines


class ForwardBackward(Mode):
    name = "forward+backward"
    backward = True
    times_forward = True
    per_baseline = False
    long_calls = False
    ms_label = "fwd+bwd ms"
    first_call = "first fwd+bwd"
    plot_label = "speedup of fwd+bwd over eager (x)"
    memory_call = "the row's first fwd+bwd (the checked one)"
    memory_includes = "the returned gradients"

    def calls(self, op, impl, prep):
        fn, inputs = impl.fn, prep.inputs
        leaves = [inputs[n] for n in op.grad_inputs]

        def fwd():
            return fn(**inputs)

        def step():
            return torch.autograd.grad(fn(**inputs), leaves)

        return Calls(step, fwd)

    def gold(self, op, prep):
        inputs = to_float64(prep.inputs, requires_grad=op.grad_inputs)
        loss = op.reference(**inputs)
        leaves = [inputs[n] for n in op.grad_inputs]
        return [g.detach() for g in torch.autograd.grad(loss, leaves)]

    def check(self, op, prep, output, gold):
        return {} if gold is None else {"grad_rel_err": rel_err(output, gold)}

    def notes(self, op):
        return [
            "ms: median of fwd+bwd (loss, then torch.autograd.grad to the differentiable "
            "inputs); fwd_ms: median of the forward alone with grad enabled, as in "
            "training",
            "grad_rel_err: relative norm error of the gradient against autograd of the "
            "reference in float64 on the same (already rounded) inputs",
        ]

    def compiles(self, op):
        return "reference loss"


class TrainStep(ForwardBackward):
    """``Impl.fn()`` gives the model to train; its loss is ``op.loss(model, **batch)``."""

    name = "train-step"
    ms_label = "step ms"
    first_call = "first step"
    plot_label = "speedup of the training step over eager (x)"
    memory_call = "the row's checked step"
    memory_includes = "the gradients and the optimizer state the step creates"

    def prepare(self, op, case, dtype, device, seed):
        assert isinstance(op, TrainStepOp), f"{op.name}: a train-step op is a TrainStepOp"
        model = op.build_model(case, "torch").to(device=device, dtype=dtype).train()
        batch = op.make_batch(model, case, dtype, device, seed)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Prepared(case, dtype, device, batch, saved={"model": model, "state": state})

    def baselines(self, op, prep):
        model = prep.saved["model"]
        return [Impl("eager", lambda: model), Impl("compile", lambda: model, kind="compile")]

    def backend(self, op, backend, prep):
        def build():  # in the runner's try block, before the row's calls are timed
            model = op.build_model(prep.case, backend)
            model = model.to(device=prep.device, dtype=prep.dtype).train()
            model.load_state_dict(prep.saved["state"])
            return model

        return Impl(backend, build, kind="backend")

    def calls(self, op, impl, prep):
        assert impl.fn is not None
        model, batch, state = impl.fn(), prep.inputs, prep.saved["state"]
        params = [p for p in model.parameters() if p.requires_grad]

        def loss():
            return op.loss(model, **batch)

        fwd = torch.compile(loss, dynamic=False) if impl.kind == "compile" else loss
        opt = [op.optimizer(params)]

        def step():
            opt[0].zero_grad(set_to_none=True)
            fwd().backward()
            opt[0].step()
            return [p.grad for p in params]

        def restore():  # in place: a load_state_dict would reset modules' cached flags
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(state[k])
            opt[0] = op.optimizer(params)

        return Calls(step, fwd, restore)

    def gold(self, op, prep):
        model = op.build_model(prep.case, "torch").to(device=prep.device, dtype=torch.float64)
        model.train().load_state_dict(prep.saved["state"])
        params = [p for p in model.parameters() if p.requires_grad]
        loss = op.loss(model, **to_float64(prep.inputs))
        return [g.detach() for g in torch.autograd.grad(loss, params)]

    def notes(self, op):
        opt = op.optimizer([torch.nn.Parameter(torch.zeros(1))])
        lr = opt.defaults.get("lr")
        return [
            f"ms: median of one training step (optimizer.zero_grad(set_to_none=True), "
            f"the loss, loss.backward(), optimizer.step() with {type(opt).__name__}"
            f"{'' if lr is None else f' at lr {lr:g}'}) over every parameter; fwd_ms: "
            "median of the loss alone with grad enabled; each row's parameters, buffers "
            "and optimizer are restored before its checked step, later steps keep "
            "training (the timing does not depend on the values)",
            "grad_rel_err: relative norm error of the parameters' gradients at the "
            "checked step against autograd of the same model in float64 (same "
            "parameters, buffers and batch)",
        ]

    def compiles(self, op):
        return "the loss of the torch-backend model (backward and the optimizer step stay eager)"


MODES: dict[str, Mode] = {
    m.name: m for m in (ForwardBackward(), Forward(), StateUpdate(), TrainStep())
}


def get_mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"unknown measurement mode {name!r}; known: {', '.join(MODES)}")
    return MODES[name]


def result_mode(result: dict) -> Mode:
    """The mode of a result document (older ones: from ``forward_only``), for its labels."""
    name = result.get("mode") or ("forward" if result.get("forward_only") else "forward+backward")
    return MODES.get(name, MODES["forward"])


# ----------------------------------------------------------------------------- helpers


def to_float64(inputs: dict[str, Any], requires_grad: Iterable[str] = ()) -> dict[str, Any]:
    """``inputs`` with every floating tensor as a float64 copy (a new leaf, with
    ``requires_grad`` for the names given); other values as they are."""
    names = set(requires_grad)
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().to(torch.float64, copy=True).requires_grad_(k in names)
        out[k] = v
    return out


def tensors(value: Any) -> list[torch.Tensor]:
    """The tensors of an output: a tensor, or a (nested) tuple/list of them."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []


def rel_err(got: Iterable[torch.Tensor | None], gold: Iterable[torch.Tensor]) -> float:
    """``||got - gold|| / ||gold||`` over all the tensors together (inf for a missing one)."""
    got, gold = list(got), list(gold)
    if len(got) != len(gold):
        return math.inf
    num = den = 0.0
    for g, r in zip(got, gold):
        if g is None:
            return math.inf
        d = g.detach().to(torch.float64) - r.detach().to(torch.float64)
        num += float(torch.sum(d * d))
        den += float(torch.sum(r.detach().to(torch.float64) ** 2))
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)
