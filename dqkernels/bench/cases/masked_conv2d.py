"""The masked conv2d sweep: ``masked_conv2d`` forward+backward (loss = y.sum(), gradients
to x, weight and bias) at PixelCNN shapes, against the dense masked convolution
``F.conv2d(x, weight * mask, bias, padding=k // 2)`` run eagerly and through
``torch.compile`` (which the runner adds)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dqkernels.bench.spec import BenchOp, Case
from dqkernels.ops.masked_conv2d import masked_conv2d
from dqkernels.reference.masked_conv2d import centre_counts, conv2d_mask

_TYPES = {"A": 0, "B": 1}


def kept_macs(
    B: int, Cin: int, Cout: int, H: int, W: int, k: int, mask_type: str, groups: int
) -> int:
    """Multiply-adds of the forward over the kept taps, counted as if every tap were
    inside the image: ``B H W (Cout Cin (k*k - 1)/2 + sum_o centre_inputs(o))``."""
    per_pixel = Cout * Cin * (k * k - 1) // 2 + sum(centre_counts(Cin, Cout, mask_type, groups))
    return B * H * W * per_pixel


def _case(
    name: str, B: int, Cin: int, Cout: int, S: int, k: int, mask_type: str, groups: int, **where
) -> Case:
    macs = kept_macs(B, Cin, Cout, S, S, k, mask_type, groups)
    dims = {
        "B": B,
        "Cin": Cin,
        "Cout": Cout,
        "H": S,
        "W": S,
        "k": k,
        "type_b": _TYPES[mask_type],
        "groups": groups,
        "fwd_kept_flop": 2 * macs,
    }
    cin = f"C={Cin}" if Cin == Cout else f"Cin={Cin} Cout={Cout}"
    label = f"B={B} {cin} {S}x{S} k={k} {mask_type} g={groups} ({2 * macs / 1e9:.3g} GFLOP fwd)"
    return Case(name, dims, label, **where)


class MaskedConv2dBench(BenchOp):
    name = "masked_conv2d"
    family = "masked_conv2d"
    description = (
        "masked_conv2d forward+backward: loss = y.sum(), gradients to x, weight "
        "and bias; PixelCNN masks (type A/B, centre channel blocks = groups)."
    )
    notes = (
        "eager and compile run the dense masked reference F.conv2d(x, weight * mask, bias, "
        "padding=k // 2) in the case's dtype (oneDNN on CPU, cuDNN on GPU): all k*k taps",
        "GFLOP in the shape label: 2 x multiply-adds of the forward over the kept taps only "
        "((k*k-1)/2 taps plus the centre's kept channel pairs); the backward does twice "
        "that (grad_x and grad_weight), so fwd+bwd TFLOP/s = 3 * GFLOP / ms / 1e3 "
        "(dims.fwd_kept_flop in the JSON)",
        "bytes_min (fwd+bwd) = forward (read x, weight, bias; write y) + backward (read x, "
        "weight, grad_y; write grad_x, grad_weight, grad_bias); fwd_bytes_min = forward",
        "on CUDA, cuDNN's TF32 is switched off (torch.backends.cudnn.allow_tf32 = False) so "
        "that float32 means IEEE float32 for every implementation",
    )

    grad_inputs = ("x", "weight", "bias")

    def cases(self) -> list[Case]:
        gpu, cpu = {"device": "cuda"}, {"device": "cpu"}
        return [
            _case("tiny", 2, 5, 7, 9, 3, "B", 3, quick=True),
            _case("in-7x7-A", 64, 3, 128, 32, 7, "A", 3, **gpu),  # PixelCNN input layer
            _case("c128-3x3-B", 64, 128, 128, 32, 3, "B", 3, **gpu),  # hidden, RGB blocks
            _case("c256-3x3-B", 32, 256, 256, 32, 3, "B", 1, **gpu),
            _case("c64-5x5-B", 64, 64, 64, 32, 5, "B", 1, **gpu),
            _case("c256-5x5-A", 64, 256, 256, 16, 5, "A", 3, **gpu),
            _case("c128-7x7-A", 32, 128, 128, 16, 7, "A", 1, **gpu),
            _case("in-7x7-A", 16, 3, 64, 32, 7, "A", 3, **cpu),
            _case("c64-3x3-B", 32, 64, 64, 32, 3, "B", 3, **cpu),
            _case("c128-3x3-B", 16, 128, 128, 32, 3, "B", 1, **cpu),
            _case("c128-5x5-A", 32, 128, 128, 16, 5, "A", 3, **cpu),
            _case("c256-7x7-B", 16, 256, 256, 16, 7, "B", 1, **cpu),
        ]

    def make_inputs(self, case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
        if device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = False
        d = case.dims
        mask_type = "B" if d["type_b"] else "A"
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(d["B"], d["Cin"], d["H"], d["W"], generator=g)
        w = torch.randn(d["Cout"], d["Cin"], d["k"], d["k"], generator=g)
        w = w / (d["Cin"] * d["k"] * d["k"] / 2) ** 0.5
        b = torch.randn(d["Cout"], generator=g) * 0.1
        mask = conv2d_mask(
            d["Cout"], d["Cin"], d["k"], mask_type, d["groups"], dtype=dtype, device=device
        )
        out = {
            name: t.to(device=device, dtype=dtype).requires_grad_(True)
            for name, t in (("x", x), ("weight", w), ("bias", b))
        }
        out.update(mask=mask, mask_type=mask_type, groups=d["groups"])
        return out

    def reference(self, x, weight, bias, mask, mask_type, groups):
        y = F.conv2d(x, weight * mask.to(weight.dtype), bias, padding=weight.shape[-1] // 2)
        return y.sum()

    def kernel(self, backend, x, weight, bias, mask, mask_type, groups):
        return masked_conv2d(
            x, weight, bias, mask_type=mask_type, groups=groups, backend=backend
        ).sum()

    def min_bytes(self, inputs, backward: bool) -> int:
        x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
        y = x.nbytes // x.shape[1] * w.shape[0]
        fwd = x.nbytes + w.nbytes + b.nbytes + y
        if not backward:
            return fwd
        return fwd + (x.nbytes + w.nbytes + y) + (x.nbytes + w.nbytes + b.nbytes)


OP = MaskedConv2dBench()
