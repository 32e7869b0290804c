"""Calling the compiled coupling kernels (csrc/coupling) from the ``cpp`` and ``cuda``
backends: tensors become the 16 (address, strides) slots of csrc/coupling/coupling.h."""
from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, cuda_stream, dtype_code
from dqkernels.kernels._layout import element_layout
from dqkernels.ops._common import accumulate_dtype

AFFINE_FORWARD, AFFINE_BACKWARD, MIX_FORWARD, MIX_INVERSE, MIX_BACKWARD = range(5)
OUT, LOGDET, GRAD_OUT, GRAD_LOGDET, GRAD0 = 6, 7, 8, 9, 10
SLOTS = 16

# Elements of one batch row that one CUDA block sums into a logdet partial.
CUDA_CHUNK = {AFFINE_FORWARD: 4096, MIX_FORWARD: 256, MIX_INVERSE: 256}

# Tests set this to run the CPU kernels' scalar path (the math the CUDA kernels share)
# on float32 too.
cpu_scalar_only = False


def run(kind: int, elem: dict[int, torch.Tensor], per_k: dict[int, torch.Tensor] | None = None,
        *, logdet: torch.Tensor | None = None, grad_logdet: torch.Tensor | None = None,
        inverse: bool = False) -> None:
    """``elem`` / ``per_k``: slot -> tensor of shape ``[B, *S]`` / ``[B, *S, K]``; the
    first ``elem`` entry gives the shape. Outputs among them must be contiguous (they are
    never copied)."""
    per_k = per_k or {}
    e_slots, k_slots = list(elem), list(per_k)
    tensors, sizes, strides = element_layout(list(elem.values()), list(per_k.values()))
    if not per_k:
        sizes = sizes + [1]
    ptrs, st = [0] * SLOTS, [[] for _ in range(SLOTS)]
    for slot, t, s in zip(e_slots + k_slots, tensors, strides):
        ptrs[slot], st[slot] = t.data_ptr(), s
    for slot, t in ((LOGDET, logdet), (GRAD_LOGDET, grad_logdet)):
        if t is not None:
            ptrs[slot], st[slot] = t.data_ptr(), [t.stride(0)]
    x = tensors[0]
    code = dtype_code(x.dtype)
    if x.device.type == "cpu":
        _C.coupling_cpu(kind, code, sizes, inverse, ptrs, st, cpu_threads(), cpu_scalar_only)
        return
    chunk = CUDA_CHUNK.get(kind, 0)
    work = None
    if chunk:
        per_row = sizes[1] * sizes[2] * sizes[3]
        work = torch.empty((sizes[0], -(-per_row // chunk)), dtype=accumulate_dtype(x.dtype),
                           device=x.device)
    with torch.cuda.device(x.device):
        _C.coupling_cuda(kind, code, sizes, inverse, ptrs, st,
                         0 if work is None else work.data_ptr(), chunk,
                         cuda_stream(x.device))


def affine_forward(x, shift, scale_logit, y, logdet, inverse):
    run(AFFINE_FORWARD, {0: x, 1: shift, 2: scale_logit, OUT: y}, logdet=logdet,
        inverse=inverse)


def affine_backward(x, shift, scale_logit, grad_y, grad_logdet, grad_x, grad_shift,
                    grad_scale_logit, inverse):
    run(AFFINE_BACKWARD, {0: x, 1: shift, 2: scale_logit, GRAD_OUT: grad_y, GRAD0: grad_x,
                          GRAD0 + 1: grad_shift, GRAD0 + 2: grad_scale_logit},
        grad_logdet=grad_logdet, inverse=inverse)


def mix_forward(x, logits, means, log_scales, a, b, y, logdet, inverse=False):
    run(MIX_INVERSE if inverse else MIX_FORWARD, {0: x, 4: a, 5: b, OUT: y},
        {1: logits, 2: means, 3: log_scales}, logdet=logdet)


def mix_backward(x, logits, means, log_scales, a, b, grad_out, grad_logdet, grad_in,
                 grad_logits, grad_means, grad_log_scales, grad_a, grad_b, inverse):
    run(MIX_BACKWARD,
        {0: x, 4: a, 5: b, GRAD_OUT: grad_out, GRAD0: grad_in, GRAD0 + 4: grad_a,
         GRAD0 + 5: grad_b},
        {1: logits, 2: means, 3: log_scales, GRAD0 + 1: grad_logits, GRAD0 + 2: grad_means,
         GRAD0 + 3: grad_log_scales},
        grad_logdet=grad_logdet, inverse=inverse)
