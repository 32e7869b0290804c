"""The mixture coupling's inverse: ``mixlogcdf_coupling(..., inverse=True)``. "fwd" is
the inverse alone (the root search); "fwd+bwd" adds its implicit-function backward
(loss = x.sum() + logdet.sum()). The eager baseline is 100 bisections of the bracket, as
public Flow++ code does, followed by the forward at the root (for the logdet and the
implicit-function gradient); ``compile`` is ``torch.compile`` of that same function."""

from __future__ import annotations

import torch

from dqkernels.bench.cases.mixlogcdf_coupling import NAMES, mix_bytes, mix_case, mix_inputs
from dqkernels.bench.spec import BenchOp
from dqkernels.ops.mixlogcdf_coupling import mixlogcdf_coupling
from dqkernels.reference.mixlogcdf_coupling import (
    mixlogcdf_forward_reference,
    mixlogcdf_inverse_reference,
)


class MixLogCDFInverseBench(BenchOp):
    name = "mixlogcdf_inverse"
    family = "mixlog"
    description = (
        "mixlogcdf_coupling inverse: fwd = the root search for every element; "
        "fwd+bwd adds the implicit-function backward (loss = x.sum() + "
        "logdet.sum())."
    )
    notes = (
        "eager and compile run mixlogcdf_inverse_reference: 100 bisections of the bracket "
        "(no graph), the forward at the root, and one implicit-function correction that "
        "carries the gradient",
        "y is the forward of the drawn x, so the roots are known to exist where the data is",
        "bytes_min as mixlogcdf_coupling (the iterations re-read parameters from cache)",
    )

    grad_inputs = NAMES

    def cases(self):
        # 100 eager bisections take seconds per call on a CPU: a smaller batch there
        return [
            mix_case("tiny", 2, 3, 4, 5, 4, quick=True),
            mix_case("flowpp-cifar10", 64, 3, 32, 32, 32, device="cuda"),
            mix_case("flowpp-16x16", 64, 12, 16, 16, 32, device="cuda"),
            mix_case("flowpp-cifar10-b8", 8, 3, 32, 32, 32, device="cpu"),
            mix_case("k4-b8", 8, 3, 32, 32, 4, device="cpu"),
        ]

    def make_inputs(self, case, dtype, device, seed):
        t = mix_inputs(case, dtype, device, seed)
        with torch.no_grad():
            y, _ = mixlogcdf_forward_reference(*[t[n].double() for n in NAMES])
        t["x"] = y.to(dtype).requires_grad_(True)  # the inverse's input
        return t

    def reference(self, x, logits, means, log_scales, a, b):
        root, ld = mixlogcdf_inverse_reference(x, logits, means, log_scales, a, b)
        return root.sum() + ld.sum()

    def kernel(self, backend, x, logits, means, log_scales, a, b):
        root, ld = mixlogcdf_coupling(
            x, logits, means, log_scales, a, b, inverse=True, backend=backend
        )
        return root.sum() + ld.sum()

    def min_bytes(self, inputs, backward: bool) -> int:
        return mix_bytes(inputs, backward)


OP = MixLogCDFInverseBench()
