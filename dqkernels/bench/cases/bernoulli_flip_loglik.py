"""The flipped-bit Bernoulli log-likelihood alone (``bernoulli_flip_loglik`` forward+backward;
loss = ``sum(out * gout)`` for a fixed random upstream ``gout``, gradients to logits and
weight) at the sizes of the Tokui-Sato experiments (binarized MNIST, D = 784, H = 200,
batches of 24 and 100), against the chunked eager reference, ``torch.compile`` of it, and the
eager re-simulation of the B H flipped copies (what the paper's public code does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dqkernels.bench.spec import BenchOp, Case, Impl
from dqkernels.ops.bernoulli_flip import bernoulli_flip_loglik
from dqkernels.reference.bernoulli_flip import bernoulli_flip_loglik_reference

D, H = 784, 200


def resimulate(x, logits, weight, z, gout):
    """The B H copies of ``z`` with one bit flipped each, re-simulated through the layer:
    logits ``z' W^T + c`` (``c`` recovered as ``logits - z W^T``) as one ``[B H, D]`` batch,
    then the Bernoulli log-likelihood of ``x`` under each."""
    B, Hn = z.shape
    bias = logits - z @ weight.T  # [B, D]
    eye = torch.eye(Hn, dtype=z.dtype, device=z.device)
    flipped = (z[:, None, :] + eye * (1 - 2 * z[:, None, :])).reshape(B * Hn, Hn)
    lf = (flipped @ weight.T).view(B, Hn, -1) + bias[:, None, :]
    ll = -F.binary_cross_entropy_with_logits(lf, x[:, None, :].expand_as(lf), reduction="none")
    return (ll.sum(dim=-1) * gout).sum()


class BernoulliFlipBench(BenchOp):
    name = "bernoulli_flip_loglik"
    family = "bernoulli_flip"
    description = (
        "bernoulli_flip_loglik forward+backward (linear Bernoulli layer, every bit of z "
        "flipped): loss = sum(out * gout), gradients to logits and weight."
    )
    notes = (
        (
            "eager runs the chunked reference (dqkernels.reference.bernoulli_flip, [B, chunk, "
            "D] slices of at most 2^22 elements); resimulate builds the B*H flipped copies of "
            "z and re-simulates the layer on them as one [B*H, D] batch, as the paper's "
            "public code does"
        ),
        (
            "FLOP: 2 B H D per pass (the FMA forming each flipped logit), three passes for "
            "fwd+bwd (out, grad logits, grad weight); the B H D exp and log1p of the forward "
            "and exp of the backward are not counted"
        ),
        "bytes_min = x, logits, weight, z, gout, out, grad logits, grad weight",
    )

    grad_inputs = ("logits", "weight")

    def cases(self) -> list[Case]:
        return [
            Case("tiny", {"B": 5, "D": 37, "H": 19}, "B=5 D=37 H=19", quick=True),
            Case("mnist-b24", {"B": 24, "D": D, "H": H}, f"B=24 D={D} H={H}"),
            Case("mnist-b100", {"B": 100, "D": D, "H": H}, f"B=100 D={D} H={H}"),
        ]

    def make_inputs(self, case: Case, dtype: torch.dtype, device: torch.device, seed: int) -> dict:
        B, Dn, Hn = case.dims["B"], case.dims["D"], case.dims["H"]
        g = torch.Generator().manual_seed(seed)
        x = (torch.rand(B, Dn, generator=g) < 0.3).float()
        z = (torch.rand(B, Hn, generator=g) < 0.5).float()
        w = torch.randn(Dn, Hn, generator=g) / Hn**0.5
        bias = torch.randn(Dn, generator=g) * 0.5
        logits = z @ w.T + bias
        gout = torch.randn(B, Hn, generator=g)
        out = {k: v.to(device=device, dtype=dtype) for k, v in (("x", x), ("z", z))}
        out["logits"] = logits.to(device=device, dtype=dtype).requires_grad_(True)
        out["weight"] = w.to(device=device, dtype=dtype).requires_grad_(True)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        out["gout"] = gout.to(device=device, dtype=acc)
        return out

    def reference(self, x, logits, weight, z, gout):
        return (bernoulli_flip_loglik_reference(x, logits, weight, z) * gout).sum()

    def kernel(self, backend, x, logits, weight, z, gout):
        return (bernoulli_flip_loglik(x, logits, weight, z, backend=backend) * gout).sum()

    def baselines(self, inputs, device, dtype) -> list[Impl]:
        return [
            *super().baselines(inputs, device, dtype),
            Impl("resimulate", resimulate, note="B*H flipped copies re-simulated"),
        ]

    def flops(self, inputs: dict, backward: bool) -> float:
        B, Dn = inputs["x"].shape
        Hn = inputs["weight"].shape[1]
        return 2.0 * B * Hn * Dn * (3 if backward else 1)

    def min_bytes(self, inputs: dict, backward: bool) -> int:
        x, w = inputs["x"], inputs["weight"]
        es, acc = x.element_size(), inputs["gout"].element_size()
        B, Dn = x.shape
        Hn = w.shape[1]
        fwd = es * (2 * B * Dn + Dn * Hn + B * Hn) + acc * B * Hn
        if not backward:
            return fwd
        return fwd + acc * B * Hn + es * (B * Dn + Dn * Hn)


OP = BernoulliFlipBench()
