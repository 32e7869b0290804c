"""Element layouts shared by the compiled and Triton kernels of the coupling ops.

The coupling ops take ``x`` of any shape ``[B, *S]`` and parameter tensors of shape
``[B, *S]`` or ``[B, *S, K]``, each with its own strides. Kernels see every tensor as
``[B, n1, n2, n3(, K)]``: the dims of ``S`` are merged where *every* tensor allows it
(size-1 dims dropped), padded in front with size 1 to three. If more than three dims
remain (a rare mix of permutations), the tensors are made contiguous first.
"""

from __future__ import annotations

import torch

INNER_DIMS = 3


def _merge(shape: list[int], stride_sets: list[list[int]]):
    dims = [i for i, n in enumerate(shape) if n != 1]
    sizes = [shape[i] for i in dims]
    strides = [[s[i] for i in dims] for s in stride_sets]
    j = len(sizes) - 1
    while j > 0:
        if all(st[j - 1] == st[j] * sizes[j] for st in strides):
            sizes[j - 1] *= sizes[j]
            del sizes[j]
            for st in strides:
                st[j - 1] = st[j]
                del st[j]
        j -= 1
    return sizes, strides


def element_layout(elem: list[torch.Tensor], per_k: list[torch.Tensor] = ()):
    """``(tensors, sizes, strides)`` for kernels.

    ``sizes`` is ``[B, n1, n2, n3]`` (plus ``K`` when ``per_k`` is given), ``strides`` one
    list per tensor (``elem`` then ``per_k``): ``[sB, s1, s2, s3]`` (plus ``sK``).
    ``tensors`` are the inputs, made contiguous only when their dims cannot be merged
    into three.
    """
    x = elem[0]
    B, S = x.shape[0], list(x.shape[1:])
    sets = [list(t.stride()[1 : 1 + len(S)]) for t in list(elem) + list(per_k)]
    sizes, strides = _merge(S, sets)
    tensors = list(elem) + list(per_k)
    if len(sizes) > INNER_DIMS:
        tensors = [t.contiguous() for t in tensors]
        sets = [list(t.stride()[1 : 1 + len(S)]) for t in tensors]
        sizes, strides = _merge(S, sets)
    pad = INNER_DIMS - len(sizes)
    sizes = [1] * pad + sizes
    out_strides = []
    for i, t in enumerate(tensors):
        st = [t.stride(0)] + [0] * pad + strides[i]
        if i >= len(elem):
            st.append(t.stride(-1))
        out_strides.append(st)
    sizes = [B] + sizes
    if per_k:
        sizes.append(per_k[0].shape[-1])
    return tensors, sizes, out_strides
