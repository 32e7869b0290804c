"""The ``cuda`` backend of the VQ ops: csrc/vq/vq_cuda.cu through ``dqkernels._C`` (the ops
hand it contiguous tensors), launched on the current stream of the tensors' device."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream, tensor_arg


def nearest(z, codebook, indices, sqdist):
    with torch.cuda.device(z.device):
        _C.vq_nearest_cuda(
            tensor_arg(z),
            tensor_arg(codebook),
            tensor_arg(indices),
            tensor_arg(sqdist),
            cuda_stream(z.device),
        )


def sample(z, codebook, u, inv_temperature, out):
    with torch.cuda.device(z.device):
        _C.vq_sample_cuda(
            tensor_arg(z),
            tensor_arg(codebook),
            tensor_arg(u),
            tensor_arg(out),
            float(inv_temperature),
            cuda_stream(z.device),
        )


def ema_update(cluster_size, embed_sum, z, indices, decay):
    with torch.cuda.device(z.device):
        _C.vq_ema_update_cuda(
            tensor_arg(cluster_size),
            tensor_arg(embed_sum),
            tensor_arg(z),
            tensor_arg(indices),
            float(decay),
            cuda_stream(z.device),
        )
