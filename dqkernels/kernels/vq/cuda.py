"""The ``cuda`` backend of the VQ ops: csrc/vq/vq_cuda.cu through ``dqkernels._C`` (the ops
hand it contiguous tensors), launched on the current stream of the tensors' device."""

from __future__ import annotations

from dqkernels.kernels._cext import call_cuda


def nearest(z, codebook, indices, sqdist):
    call_cuda("vq_nearest", z, codebook, indices, sqdist)


def sample(z, codebook, u, inv_temperature, out):
    call_cuda("vq_sample", z, codebook, u, out, float(inv_temperature))


def ema_update(cluster_size, embed_sum, z, indices, decay):
    call_cuda("vq_ema_update", cluster_size, embed_sum, z, indices, float(decay))
