"""The masked linear sweep: MADE layers (``masked_linear`` forward+backward; loss =
``sum(y * gy)`` for a fixed random upstream ``gy``, gradients to x, weight and bias) at
binarized-MNIST sizes (D = 784) with sorted MADE degrees, against the eager dense masked
product ``F.linear(x, weight * mask, bias)`` with a precomputed mask (how MADE code is
usually written) and ``torch.compile`` of it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dqkernels.bench.spec import BenchOp, Case
from dqkernels.nn.masked_linear import made_degrees
from dqkernels.ops.masked_linear import masked_linear
from dqkernels.reference.masked_linear import linear_mask

D = 784


def _layer_degrees(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrees of a MADE layer: a side of D units is the input/output layer (degrees
    1..D), any other size a hidden layer (ascending over 1..D-1)."""

    def side(n: int) -> torch.Tensor:
        return made_degrees(D, [n])[0 if n == D else 1]

    return side(n_in), side(n_out)


def _case(name: str, B: int, n_in: int, n_out: int, strict: bool, quick: bool = False) -> Case:
    di, do = _layer_degrees(n_in, n_out)
    density = linear_mask(di, do, strict).double().mean().item()
    useful = 2 * B * density * n_in * n_out * 3 / 1e9
    rel = ">" if strict else ">="
    return Case(
        name,
        {"B": B, "IN": n_in, "OUT": n_out, "strict": int(strict)},
        f"B={B} {n_in}->{n_out} ({rel}, density {density:.2f}, {useful:.2g} useful GFLOP fwd+bwd)",
        quick=quick,
    )


class MaskedLinearBench(BenchOp):
    name = "masked_linear"
    family = "masked_linear"
    description = (
        "masked_linear forward+backward (MADE layer, sorted degrees): loss = "
        "sum(y * gy), gradients to x, weight and bias."
    )
    notes = (
        (
            "eager and compile run F.linear(x, weight * mask, bias) with the mask precomputed "
            "(as a buffer, the usual MADE code) in the case's dtype; the backends build their "
            "tile ranges from the degrees on every call"
        ),
        (
            "useful FLOP (in the shape label): 2 * B * nnz(mask) per product, three products "
            "for fwd+bwd (y, grad x, grad weight); divide by ms for the useful FLOP rate"
        ),
        (
            "bytes_min (fwd) = x + unmasked weights + bias + y; fwd+bwd adds grad_y, x, the "
            "unmasked weights, grad_x, the dense grad_weight (its zeros are written too) and "
            "grad_bias"
        ),
    )

    grad_inputs = ("x", "weight", "bias")

    def cases(self) -> list[Case]:
        return [
            _case("tiny", 5, 37, 53, True, quick=True),
            _case("made-in-h1024-b256", 256, D, 1024, False),
            _case("made-hid-h1024-b256", 256, 1024, 1024, False),
            _case("made-out-h1024-b256", 256, 1024, D, True),
            _case("made-in-h2048-b1024", 1024, D, 2048, False),
            _case("made-hid-h2048-b1024", 1024, 2048, 2048, False),
            _case("made-out-h2048-b1024", 1024, 2048, D, True),
        ]

    def make_inputs(self, case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
        B, n_in, n_out = case.dims["B"], case.dims["IN"], case.dims["OUT"]
        strict = bool(case.dims["strict"])
        if case.name == "tiny":
            g = torch.Generator().manual_seed(seed + 7)
            di = torch.randint(0, 9, (n_in,), generator=g)
            do = torch.randint(0, 9, (n_out,), generator=g)
        else:
            di, do = _layer_degrees(n_in, n_out)
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(B, n_in, generator=g)
        w = torch.randn(n_out, n_in, generator=g) / n_in**0.5
        b = torch.randn(n_out, generator=g) * 0.1
        gy = torch.randn(B, n_out, generator=g)
        out = {
            k: v.to(device=device, dtype=dtype).requires_grad_(True)
            for k, v in (("x", x), ("weight", w), ("bias", b))
        }
        out["gy"] = gy.to(device=device, dtype=dtype)
        out["mask"] = linear_mask(di, do, strict).to(device=device, dtype=dtype)
        out["in_degrees"] = di.to(device)
        out["out_degrees"] = do.to(device)
        out["strict"] = strict
        return out

    def reference(self, x, weight, bias, gy, mask, in_degrees, out_degrees, strict):
        return (F.linear(x, weight * mask, bias) * gy).sum()

    def kernel(self, backend, x, weight, bias, gy, mask, in_degrees, out_degrees, strict):
        y = masked_linear(x, weight, bias, in_degrees, out_degrees, strict=strict, backend=backend)
        return (y * gy).sum()

    def flops(self, inputs: dict, backward: bool) -> float:
        """2 * B * nnz(mask) per product; three products with the backward."""
        nnz = float(inputs["mask"].count_nonzero())
        return 2.0 * inputs["x"].shape[0] * nnz * (3 if backward else 1)

    def min_bytes(self, inputs: dict, backward: bool) -> int:
        x, w = inputs["x"], inputs["weight"]
        es = x.element_size()
        nnz = int(inputs["mask"].count_nonzero())
        B, n_in = x.shape
        n_out = w.shape[0]
        fwd = es * (B * n_in + nnz + n_out + B * n_out)
        if not backward:
            return fwd
        return fwd + es * (B * n_out + B * n_in + nnz + B * n_in + n_out * n_in + n_out)


OP = MaskedLinearBench()
