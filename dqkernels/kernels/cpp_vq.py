"""The ``cpp`` backend of the VQ ops: csrc/vq/vq_cpu.cpp through ``dqkernels._C``
(contiguous tensors cross as addresses; see python/bindings_vq.cpp)."""
from __future__ import annotations

from dqkernels._ext import _C
from dqkernels.kernels._cext import cpu_threads, dtype_code

#: instruction-set path (0: the best this CPU runs); tests set it to cover every path
ISA = 0


def nearest(z, codebook, indices, sqdist):
    (N, D), K = z.shape, codebook.shape[0]
    _C.vq_nearest_cpu(dtype_code(z.dtype), [N, K, D], z.data_ptr(), codebook.data_ptr(),
                      indices.data_ptr(), sqdist.data_ptr(), cpu_threads(), ISA)


def sample(z, codebook, u, inv_temperature, out):
    (N, D), K, S = z.shape, codebook.shape[0], u.shape[1]
    _C.vq_sample_cpu(dtype_code(z.dtype), [N, K, D, S], z.data_ptr(), codebook.data_ptr(),
                     u.data_ptr(), float(inv_temperature), out.data_ptr(), cpu_threads(), ISA)


def ema_update(cluster_size, embed_sum, z, indices, decay):
    (N, D), K, S = z.shape, embed_sum.shape[0], indices.shape[1]
    _C.vq_ema_update_cpu(dtype_code(z.dtype), dtype_code(embed_sum.dtype), [N, K, D, S],
                         cluster_size.data_ptr(), embed_sum.data_ptr(), z.data_ptr(),
                         indices.data_ptr(), float(decay), cpu_threads())
