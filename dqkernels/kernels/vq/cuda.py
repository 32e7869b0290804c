"""The ``cuda`` backend of the VQ ops: csrc/vq/vq_cuda.cu through ``dqkernels._C`` (the ops
hand it contiguous tensors), launched on the current stream of the tensors' device (as
current device). ``nearest``'s O(N + K) scratch is allocated here, through PyTorch's
caching allocator on that stream."""

from __future__ import annotations

import torch

from dqkernels._ext import _C
from dqkernels.kernels._cext import c_args, call_cuda


def nearest(z, codebook, indices, sqdist):
    with torch.cuda.device(z.device):
        nbytes = _C.vq_nearest_workspace_cuda(*c_args((z, codebook, indices, sqdist)))
        workspace = torch.empty((max(nbytes, 1),), dtype=torch.uint8, device=z.device)
    call_cuda("vq_nearest", z, codebook, indices, sqdist, workspace)


def sample(z, codebook, u, inv_temperature, out):
    call_cuda("vq_sample", z, codebook, u, out, float(inv_temperature))


def ema_update(cluster_size, embed_sum, z, indices, decay):
    call_cuda("vq_ema_update", cluster_size, embed_sum, z, indices, float(decay))
