"""The ``cuda`` backend of the VQ ops: csrc/vq/vq_cuda.cu through ``dqkernels._C``
(contiguous tensors cross as addresses, on the current stream; see python/bindings_vq.cpp)."""
from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cuda_stream, dtype_code


def nearest(z, codebook, indices, sqdist):
    (N, D), K = z.shape, codebook.shape[0]
    _C.vq_nearest_cuda(dtype_code(z.dtype), [N, K, D], z.data_ptr(), codebook.data_ptr(),
                       indices.data_ptr(), sqdist.data_ptr(), cuda_stream(z.device))


def sample(z, codebook, u, inv_temperature, out):
    (N, D), K, S = z.shape, codebook.shape[0], u.shape[1]
    _C.vq_sample_cuda(dtype_code(z.dtype), [N, K, D, S], z.data_ptr(), codebook.data_ptr(),
                      u.data_ptr(), float(inv_temperature), out.data_ptr(),
                      cuda_stream(z.device))


def ema_update(cluster_size, embed_sum, z, indices, decay):
    (N, D), K, S = z.shape, embed_sum.shape[0], indices.shape[1]
    _C.vq_ema_update_cuda(dtype_code(z.dtype), dtype_code(embed_sum.dtype), [N, K, D, S],
                          cluster_size.data_ptr(), embed_sum.data_ptr(), z.data_ptr(),
                          indices.data_ptr(), float(decay), cuda_stream(z.device))
