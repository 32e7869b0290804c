"""The dmol sweep: ``dmol_nll`` forward+backward (loss = nll.sum(), gradient to params)
at PixelCNN++ shapes, against the eager and ``torch.compile``'d reference."""

from __future__ import annotations

import torch

from dqkernels.bench.spec import BenchOp, Case
from dqkernels.ops.dmol import dmol_nll
from dqkernels.reference.dmol import dmol_nll_reference

NUM_LEVELS = 256
MIN_LOG_SCALE = -7.0


def _case(name: str, B: int, C: int, H: int, W: int, M: int, **where) -> Case:
    return Case(
        name, {"B": B, "C": C, "H": H, "W": W, "M": M}, f"B={B} C={C} {H}x{W} M={M}", **where
    )


class DmolBench(BenchOp):
    name = "dmol"
    family = "dmol"
    description = (
        "dmol_nll forward+backward: loss = dmol_nll(x, params).sum(), gradient "
        "with respect to params (256 levels, min_log_scale -7); params "
        "[B, M*(1+3C) or M*(1+2C), H, W]."
    )
    notes = (
        "eager and compile run dmol_nll_reference in the case's dtype, as a user's model "
        "would (for bf16 the whole reference computes in bf16; nothing is upcast); the "
        "dqkernels backends take the same bf16 tensors and accumulate in fp32",
        "bytes_min (fwd+bwd) = x + params read + grad params written; fwd_bytes_min = x + "
        "params read + the fp32 [B,H,W] NLL written",
    )

    grad_inputs = ("params",)

    def cases(self) -> list[Case]:
        return [
            _case("tiny", 2, 3, 8, 8, 2, quick=True),
            _case("tiny-c1", 2, 1, 5, 7, 3, quick=True),
            _case("small", 16, 3, 16, 16, 5),
            _case("cifar10", 64, 3, 32, 32, 10),  # PixelCNN++ CIFAR-10
            _case("large", 128, 3, 64, 64, 10, device="cuda"),
            _case("large", 32, 3, 64, 64, 10, device="cpu"),
            _case("mnist-c1", 128, 1, 28, 28, 10, device="cuda"),
            _case("mnist-c1", 64, 1, 28, 28, 10, device="cpu"),
        ]

    def make_inputs(
        self, case: Case, dtype: torch.dtype, device: torch.device, seed: int
    ) -> dict[str, torch.Tensor]:
        B, C, H, W, M = (case.dims[k] for k in "BCHWM")
        J = 3 if C == 3 else 2
        g = torch.Generator().manual_seed(seed)
        k = torch.randint(0, NUM_LEVELS, (B, C, H, W), generator=g)
        x = k.to(torch.float32) * (2.0 / (NUM_LEVELS - 1)) - 1.0
        params = torch.randn(B, M * (1 + J * C), H, W, generator=g)
        rest = params[:, M:].view(B, C, J, M, H, W)
        rest[:, :, 0] = x.unsqueeze(2) + 0.1 * rest[:, :, 0]  # means near the data
        rest[:, :, 1] = 0.5 * rest[:, :, 1] - 3.0  # log-scales of a fit model
        x = x.to(device=device, dtype=dtype)
        params = params.to(device=device, dtype=dtype).requires_grad_(True)
        return {"x": x, "params": params}

    def reference(self, x, params):
        return dmol_nll_reference(x, params, NUM_LEVELS, MIN_LOG_SCALE).sum()

    def kernel(self, backend, x, params):
        return dmol_nll(
            x, params, num_levels=NUM_LEVELS, min_log_scale=MIN_LOG_SCALE, backend=backend
        ).sum()

    def min_bytes(self, inputs, backward: bool) -> int:
        x, p = inputs["x"], inputs["params"]
        if backward:
            return x.nbytes + 2 * p.nbytes
        B, _, H, W = x.shape
        return x.nbytes + p.nbytes + B * H * W * 4


OP = DmolBench()
