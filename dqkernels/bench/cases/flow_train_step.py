"""End to end: one training step of the dequantization flow (``dqk train flow``).

Times a whole training step (zero_grad; the loss, minus the training bound averaged over
the batch; its backward to EVERY parameter; an Adam step) of the model built on one
backend (all its coupling, masked and affine ops) against the identical model on the
``torch`` backend, eager and with its loss ``torch.compile``'d. Every row starts from the
same parameters and buffers and sees the same batch and dequantization noise, so the
float64 gradient check applies.
"""

from __future__ import annotations

import torch

from dqkernels.bench.spec import Case, TrainStepOp

_CONFIGS = {
    # name: (B, C, H, W, L, scales, steps, width, components, dequant, objective, K)
    "digits-ard": (64, 1, 8, 8, 17, 2, 4, 64, 8, "ard", "elbo", 1),
    "digits-var-iw": (64, 1, 8, 8, 17, 2, 4, 64, 8, "variational", "iw", 4),
    "cifar-ard": (32, 3, 32, 32, 256, 3, 4, 96, 16, "ard", "elbo", 1),
    "tiny": (2, 1, 4, 4, 5, 1, 1, 8, 3, "ard", "iw", 2),
}


def _case(name: str, **where) -> Case:
    B, C, H, W, L, S, T, Wd, K, dq, obj, n = _CONFIGS[name]
    return Case(
        name,
        {
            "B": B,
            "C": C,
            "H": H,
            "W": W,
            "L": L,
            "scales": S,
            "steps": T,
            "width": Wd,
            "K": K,
            "samples": n,
        },
        f"B={B} {C}x{H}x{W} L={L} {S}x{T} w={Wd} K={K} {dq}/{obj}x{n}",
        **where,
    )


def build_model(name: str, backend: str | None):
    """The case's :class:`~dqkernels.models.dequantization.DequantizationFlow` with every
    op on ``backend``."""
    from dqkernels.models.dequantization import (
        AutoregressiveDequantizer,
        DequantizationFlow,
        VariationalDequantizer,
    )
    from dqkernels.models.flow import MultiScaleFlow

    B, C, H, W, L, S, T, Wd, K, dq, obj, n = _CONFIGS[name]
    torch.manual_seed(0)
    flow = MultiScaleFlow(
        C, H, W, num_scales=S, steps_per_scale=T, hidden=Wd, num_components=K, backend=backend
    )
    if dq == "ard":
        deq = AutoregressiveDequantizer(C, H, W, L, num_steps=4, hidden=Wd, backend=backend)
    else:
        deq = VariationalDequantizer(
            C, L, num_steps=4, hidden=Wd, num_components=K, backend=backend
        )
    return DequantizationFlow(flow, deq, L, objective=obj, num_samples=n)


class FlowTrainStepBench(TrainStepOp):
    name = "flow_train_step"
    description = (
        "one training step of the dequantization flow: loss = mean over the "
        "batch of minus the bound; zero_grad, backward to every parameter and an "
        "Adam step."
    )
    notes = (
        "the backend rows build the whole model on that backend (coupling, masked conv "
        "and affine ops); eager and compile run the same model on the torch backend",
        "every row loads the same parameters and buffers (after ActNorm's data-dependent "
        "initialisation on the batch) and uses the same batch and dequantization noise, so "
        "all rows compute the same function",
        "no bytes_min: a whole model has no single memory-traffic floor",
        "the torch backend's ops are custom ops, opaque to torch.compile: compile fuses "
        "the rest of the model (conditioning nets, preprocessing, bounds) around them, "
        "not the coupling and masked math itself; a fully traceable reference model is "
        "not built yet",
    )

    def cases(self) -> list[Case]:
        return [
            _case("tiny", quick=True),
            _case("digits-ard"),
            _case("digits-var-iw"),
            _case("cifar-ard", device="cuda"),
        ]

    def build_model(self, case: Case, backend: str):
        return build_model(case.name, backend)

    def make_batch(
        self, model, case: Case, dtype: torch.dtype, device: torch.device, seed: int
    ) -> dict[str, torch.Tensor]:
        B, C, H, W, L = (case.dims[k] for k in ("B", "C", "H", "W", "L"))
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, L, (B, C, H, W), generator=g).to(device)
        with torch.no_grad():  # ActNorm's data-dependent init
            model(x)
        noise = model.draw_noise(x.cpu(), model.num_samples, g).to(device)
        return {"x": x, "noise": noise}

    def loss(self, model, x, noise):
        return model(x, noise=noise)["loss"].mean()


OP = FlowTrainStepBench()
