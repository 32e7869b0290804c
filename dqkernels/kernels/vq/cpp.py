"""The ``cpp`` backend of the VQ ops: csrc/vq/vq_cpu.cpp through ``dqkernels._C`` (the ops
hand it contiguous tensors; see python/bindings_vq.cpp)."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cpu

#: instruction-set path (0: the best this CPU runs); tests set it to cover every path
ISA = 0


def nearest(z, codebook, indices, sqdist):
    call_cpu("vq_nearest", z, codebook, indices, sqdist, isa=ISA)


def sample(z, codebook, u, inv_temperature, out):
    call_cpu("vq_sample", z, codebook, u, out, float(inv_temperature), isa=ISA)


def ema_update(cluster_size, embed_sum, z, indices, decay):
    call_cpu("vq_ema_update", cluster_size, embed_sum, z, indices, float(decay))
