"""The ``cpp`` backend of the VQ ops: csrc/vq/vq_cpu.cpp through ``dqkernels._C`` (the ops
hand it contiguous tensors; see python/bindings_vq.cpp)."""

from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, tensor_arg

#: instruction-set path (0: the best this CPU runs); tests set it to cover every path
ISA = 0


def nearest(z, codebook, indices, sqdist):
    _C.vq_nearest_cpu(
        tensor_arg(z),
        tensor_arg(codebook),
        tensor_arg(indices),
        tensor_arg(sqdist),
        cpu_threads(),
        ISA,
    )


def sample(z, codebook, u, inv_temperature, out):
    _C.vq_sample_cpu(
        tensor_arg(z),
        tensor_arg(codebook),
        tensor_arg(u),
        tensor_arg(out),
        float(inv_temperature),
        cpu_threads(),
        ISA,
    )


def ema_update(cluster_size, embed_sum, z, indices, decay):
    _C.vq_ema_update_cpu(
        tensor_arg(cluster_size),
        tensor_arg(embed_sum),
        tensor_arg(z),
        tensor_arg(indices),
        float(decay),
        cpu_threads(),
    )
