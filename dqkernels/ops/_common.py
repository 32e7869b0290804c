"""Shared helpers of the op layer: output allocation and backend modules (the argument checks
are in :mod:`dqkernels.ops._checks`)."""

from __future__ import annotations

import math
import os

import torch

from dqkernels import backends
from dqkernels.kernels import registry

# Tests set this (or DQK_POISON_OUTPUTS=1) so that outputs start as NaN and an element a
# kernel forgets to write cannot pass for a correct one.
poison_outputs = os.environ.get("DQK_POISON_OUTPUTS", "0") == "1"


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if poison_outputs:
        return torch.full(shape, math.nan, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in (and return losses in) for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.compiler.assume_constant_result
def resolve_backend(op: str, device: torch.device, dtype: torch.dtype, backend, family: str) -> str:
    """The backend op ``op`` of op family ``family`` runs on (constant under
    ``torch.compile``); see :func:`dqkernels.backends.resolve`."""
    return backends.resolve(op, device, dtype, backend, family)


def check_backend(
    op: str, backend: str, device: torch.device, dtype: torch.dtype, family: str
) -> None:
    """In a custom op's body: ``backend`` is one backend (not ``auto``: the public function
    resolves that) that can run op ``family``'s kernels on tensors of ``device`` and
    ``dtype``, or the :class:`dqkernels.backends.BackendUnavailableError` the public function
    raises, so that a direct ``torch.ops.dqk`` call never reaches a kernel that cannot run."""
    if backend not in registry.BACKENDS:
        raise ValueError(
            f"{op}: backend must be one of {', '.join(registry.BACKENDS)} (a custom op "
            f"takes a resolved backend; its public function resolves 'auto'); got {backend!r}"
        )
    backends.resolve(op, device, dtype, backend, family)


def leading_size(t: torch.Tensor) -> int:
    """Rows of ``t [..., D]`` viewed as ``[rows, D]`` (``reshape(-1, D)`` cannot infer them
    when D = 0)."""
    return math.prod(t.shape[:-1])


def kernels(backend: str, family: str):
    """The module of ``backend``'s kernels of op ``family``
    (``dqkernels.kernels.<family>.<backend>``)."""
    return registry.module(family, backend)
