"""The affine coupling sweep: ``affine_coupling`` forward+backward (loss = y.sum() +
logdet.sum(), gradients to x, shift and scale_logit) at Glow-sized activations, against
the eager and ``torch.compile``'d reference."""

from __future__ import annotations

import torch

from dqkernels.bench.spec import BenchOp, Case
from dqkernels.ops.affine_coupling import affine_coupling
from dqkernels.reference.affine_coupling import affine_coupling_reference


def _case(name: str, B: int, C: int, H: int, W: int, quick: bool = False) -> Case:
    return Case(name, {"B": B, "C": C, "H": H, "W": W}, f"B={B} C={C} {H}x{W}", quick=quick)


class AffineCouplingBench(BenchOp):
    name = "affine_coupling"
    family = "affine"
    description = (
        "affine_coupling forward+backward: loss = y.sum() + logdet.sum(), "
        "gradients to x, shift and scale_logit (each [B, C, H, W])."
    )
    notes = (
        "eager and compile run affine_coupling_reference in the case's dtype",
        "bytes_min (fwd+bwd) = forward (read x, shift, scale_logit; write y) + backward "
        "(read x, shift, scale_logit, grad_y; write three gradients): 11 tensors; "
        "fwd_bytes_min = 4 tensors",
    )

    grad_inputs = ("x", "shift", "scale_logit")

    def cases(self) -> list[Case]:
        return [
            _case("tiny", 2, 3, 5, 7, quick=True),
            _case("glow-16x16", 64, 48, 16, 16),  # Glow, CIFAR-10 scale 2
            _case("glow-32x32", 64, 12, 32, 32),  # Glow, CIFAR-10 scale 1
            _case("large", 64, 96, 32, 32),
        ]

    def make_inputs(
        self, case: Case, dtype: torch.dtype, device: torch.device, seed: int
    ) -> dict[str, torch.Tensor]:
        B, C, H, W = (case.dims[k] for k in "BCHW")
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, scale in (("x", 1.0), ("shift", 0.5), ("scale_logit", 1.0)):
            t = torch.randn(B, C, H, W, generator=g) * scale
            out[name] = t.to(device=device, dtype=dtype).requires_grad_(True)
        return out

    def reference(self, x, shift, scale_logit):
        y, ld = affine_coupling_reference(x, shift, scale_logit)
        return y.sum() + ld.sum()

    def kernel(self, backend, x, shift, scale_logit):
        y, ld = affine_coupling(x, shift, scale_logit, backend=backend)
        return y.sum() + ld.sum()

    def min_bytes(self, inputs, backward: bool) -> int:
        n = inputs["x"].nbytes
        return 11 * n if backward else 4 * n


OP = AffineCouplingBench()
