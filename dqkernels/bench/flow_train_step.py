"""End to end: one training step of the dequantization flow (``dqk train flow``).

Times the loss (minus the training bound, averaged over the batch) and its gradient with
respect to EVERY parameter of the model, i.e. a training step without the optimizer
update, for the whole model built on one backend (all its coupling, masked and affine
ops) against the identical model on the ``torch`` backend, eager and ``torch.compile``'d.
The parameters, buffers and the dequantization noise are inputs of the case
(``torch.func.functional_call``), so every implementation computes the same function of
the same numbers and the float64 gradient check applies.
"""
from __future__ import annotations

import torch

from dqkernels.bench.harness import BenchOp, Shape

_CONFIGS = {
    # name: (B, C, H, W, L, scales, steps, width, components, dequant, objective, K)
    "digits-ard": (64, 1, 8, 8, 17, 2, 4, 64, 8, "ard", "elbo", 1),
    "digits-var-iw": (64, 1, 8, 8, 17, 2, 4, 64, 8, "variational", "iw", 4),
    "cifar-ard": (32, 3, 32, 32, 256, 3, 4, 96, 16, "ard", "elbo", 1),
    "tiny": (2, 1, 4, 4, 5, 1, 1, 8, 3, "ard", "iw", 2),
}


def _shape(name: str) -> Shape:
    B, C, H, W, L, S, T, Wd, K, dq, obj, n = _CONFIGS[name]
    return Shape(name, {"B": B, "C": C, "H": H, "W": W, "L": L, "scales": S, "steps": T,
                        "width": Wd, "K": K, "samples": n},
                 f"B={B} {C}x{H}x{W} L={L} {S}x{T} w={Wd} K={K} {dq}/{obj}x{n}")


def build_model(name: str, backend: str | None):
    """The case's :class:`~dqkernels.models.dequantization.DequantizationFlow` with every
    op on ``backend``."""
    from dqkernels.models.dequantization import (AutoregressiveDequantizer,
                                                 DequantizationFlow, VariationalDequantizer)
    from dqkernels.models.flow import MultiScaleFlow

    B, C, H, W, L, S, T, Wd, K, dq, obj, n = _CONFIGS[name]
    torch.manual_seed(0)
    flow = MultiScaleFlow(C, H, W, num_scales=S, steps_per_scale=T, hidden=Wd,
                          num_components=K, backend=backend)
    if dq == "ard":
        deq = AutoregressiveDequantizer(C, H, W, L, num_steps=4, hidden=Wd, backend=backend)
    else:
        deq = VariationalDequantizer(C, L, num_steps=4, hidden=Wd, num_components=K,
                                     backend=backend)
    return DequantizationFlow(flow, deq, L, objective=obj, num_samples=n)


class FlowTrainStepBench(BenchOp):
    name = "flow_train_step"
    description = ("one training step of the dequantization flow: loss = mean over the "
                   "batch of minus the bound; gradients to every parameter (no optimizer).")
    notes = (
        "the backend rows build the whole model on that backend (coupling, masked conv "
        "and affine ops); eager and compile run the same model on the torch backend",
        "parameters, buffers and dequantization noise are the case's inputs "
        "(torch.func.functional_call), so all rows compute the same function",
        "no bytes_min: a whole model has no single memory-traffic floor",
        "the torch backend's ops are custom ops, opaque to torch.compile: compile fuses "
        "the rest of the model (conditioning nets, preprocessing, bounds) around them, "
        "not the coupling and masked math itself; a fully traceable reference model is "
        "not built yet",
    )

    def __init__(self):
        self._models: dict = {}
        self._names: tuple[str, ...] = ()
        self._case = ""

    def shapes(self, device_type: str, quick: bool) -> list[Shape]:
        if quick:
            return [_shape("tiny")]
        if device_type == "cpu":
            return [_shape("digits-ard"), _shape("digits-var-iw")]
        return [_shape("digits-ard"), _shape("digits-var-iw"), _shape("cifar-ard")]

    def _model(self, backend: str, device, dtype):
        key = (self._case, backend, device, dtype)
        if key not in self._models:
            m = build_model(self._case, backend).to(device=device, dtype=dtype).train()
            self._models[key] = m
        return self._models[key]

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device: torch.device,
                    seed: int) -> dict[str, torch.Tensor]:
        self._case = shape.name
        self._models.clear()
        model = self._model("torch", device, dtype)
        for b in self.backends(device, dtype):    # built here, outside timing and memory
            self._model(b, device, dtype)
        B, C, H, W, L = (shape.dims[k] for k in ("B", "C", "H", "W", "L"))
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, L, (B, C, H, W), generator=g).to(device)
        with torch.no_grad():                      # ActNorm's data-dependent init
            model(x)
        noise = model.draw_noise(x.cpu(), model.num_samples, g).to(device)
        inputs = {"x": x, "noise": noise}
        names = []
        for k, p in model.named_parameters():
            inputs["p:" + k] = p.detach().clone().requires_grad_(True)
            names.append("p:" + k)
        for k, b in model.named_buffers():
            inputs["b:" + k] = b.detach().clone()
        self._names = tuple(names)
        return inputs

    def grad_inputs(self) -> tuple[str, ...]:
        return self._names

    def _loss(self, model, inputs):
        state = {k[2:]: v for k, v in inputs.items() if k[:2] in ("p:", "b:")}
        out = torch.func.functional_call(model, state, (inputs["x"],),
                                         {"noise": inputs["noise"]})
        return out["loss"].mean()

    def reference_loss(self, **inputs):
        p = next(v for k, v in inputs.items() if k.startswith("p:"))
        return self._loss(self._model("torch", p.device, p.dtype), inputs)

    def backend_loss(self, backend, **inputs):
        p = next(v for k, v in inputs.items() if k.startswith("p:"))
        return self._loss(self._model(backend, p.device, p.dtype), inputs)

    def min_bytes(self, inputs, backward: bool) -> int:
        return 0

    def backends(self, device: torch.device, dtype: torch.dtype) -> list[str]:
        return [b for b in super().backends(device, dtype) if b != "torch"]


OP = FlowTrainStepBench()
