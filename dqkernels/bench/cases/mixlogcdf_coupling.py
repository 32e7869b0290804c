"""The mixture-of-logistics CDF coupling sweep: ``mixlogcdf_coupling`` forward+backward
(loss = y.sum() + logdet.sum(), gradients to all six inputs) at Flow++-sized activations,
against the eager and ``torch.compile``'d reference."""

from __future__ import annotations

import torch

from dqkernels.bench.spec import BenchOp, Case
from dqkernels.ops.mixlogcdf_coupling import mixlogcdf_coupling
from dqkernels.reference.mixlogcdf_coupling import mixlogcdf_forward_reference

NAMES = ("x", "logits", "means", "log_scales", "a", "b")


def mix_case(name: str, B: int, C: int, H: int, W: int, K: int, **where) -> Case:
    return Case(
        name, {"B": B, "C": C, "H": H, "W": W, "K": K}, f"B={B} C={C} {H}x{W} K={K}", **where
    )


def mix_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int):
    """Parameters like a trained Flow++ coupling's: components spread around the data,
    log-scales around -1, a small; per-component tensors [B, C, H, W, K] contiguous."""
    B, C, H, W, K = (case.dims[k] for k in "BCHWK")
    g = torch.Generator().manual_seed(seed)
    t = {
        "x": torch.randn(B, C, H, W, generator=g),
        "logits": torch.randn(B, C, H, W, K, generator=g),
        "means": torch.randn(B, C, H, W, K, generator=g),
        "log_scales": torch.randn(B, C, H, W, K, generator=g) * 0.5 - 1.0,
        "a": torch.randn(B, C, H, W, generator=g) * 0.1,
        "b": torch.randn(B, C, H, W, generator=g) * 0.1,
    }
    return {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in t.items()}


def mix_bytes(inputs, backward: bool) -> int:
    """Forward: read 3 per-component and 3 per-element tensors, write y. Backward: read
    them again and grad_y, write six gradients."""
    n = inputs["x"].nbytes
    k = inputs["logits"].nbytes
    fwd = 3 * k + 4 * n
    return fwd + 6 * k + 7 * n if backward else fwd


class MixLogCDFCouplingBench(BenchOp):
    name = "mixlogcdf_coupling"
    family = "mixlog"
    description = (
        "mixlogcdf_coupling forward+backward: loss = y.sum() + logdet.sum(), "
        "gradients to x, logits, means, log_scales, a, b (per-component tensors "
        "[B, C, H, W, K])."
    )
    notes = (
        "eager and compile run mixlogcdf_forward_reference in the case's dtype",
        "bytes_min (fwd+bwd) = 9 per-component + 11 per-element tensors; fwd_bytes_min = "
        "3 per-component + 4 per-element tensors",
    )

    grad_inputs = NAMES

    def cases(self) -> list[Case]:
        return [
            mix_case("tiny", 2, 3, 4, 5, 4, quick=True),
            mix_case("flowpp-cifar10", 64, 3, 32, 32, 32),  # Flow++ CIFAR-10
            mix_case("flowpp-16x16", 64, 12, 16, 16, 32),  # after one squeeze
            mix_case("k4", 64, 3, 32, 32, 4),
        ]

    def make_inputs(self, case, dtype, device, seed):
        return mix_inputs(case, dtype, device, seed)

    def reference(self, x, logits, means, log_scales, a, b):
        y, ld = mixlogcdf_forward_reference(x, logits, means, log_scales, a, b)
        return y.sum() + ld.sum()

    def kernel(self, backend, x, logits, means, log_scales, a, b):
        y, ld = mixlogcdf_coupling(x, logits, means, log_scales, a, b, backend=backend)
        return y.sum() + ld.sum()

    def min_bytes(self, inputs, backward: bool) -> int:
        return mix_bytes(inputs, backward)


OP = MixLogCDFCouplingBench()
