"""Vector quantisation: ``vq_nearest``, ``vq_sample`` and ``vq_ema_update``.

Custom ops ``torch.ops.dqk.vq_nearest``, ``dqk::vq_sample`` and ``dqk::vq_ema_update`` with
fake implementations; ``vq_nearest``'s distance output is differentiable. The math is
defined in :mod:`dqkernels.reference.vq`. No backend builds the ``N x K`` distance matrix
or a one-hot matrix: extra memory is O(N + K) (plus fixed-size tiles).

Kernel modules ``dqkernels.kernels.vq.<backend>`` provide, on contiguous 2-D tensors with
``N, K, D >= 1``:

* ``nearest(z [N, D], codebook [K, D], indices int64 [N], sqdist [N])``: the first argmin of
  the squared distance, exact for fp32 inputs (the chosen code's float64 distance within
  1e-5 relative of the true minimum: no plain TF32) and ``sqdist = sum((z - e_k)^2)``
  accumulated in ``sqdist``'s dtype (float32, float64 for float64 inputs).
* ``sample(z, codebook, u [N, S], inv_temperature, out int64 [N, S])``: ``u`` in
  ``[0, 1)``, sorted ascending along each row, in the accumulate dtype; ``out[n, s]`` is the
  first ``k`` whose cumulative weight ``sum_{j<=k} exp(-(d_j - min d) / T)`` exceeds
  ``u[n, s] * Z`` (``Z`` the total), or the last code of positive weight if none does.
* ``ema_update(cluster_size [K], embed_sum [K, D], z [N, D], indices int64 [N, S], decay)``:
  in place, state float32 or float64; each of a row's ``S`` indices has weight ``1/S``.

The NaN rule, the same on every backend (``nearest`` and ``sample``): a NaN distance (a NaN
in a code or in ``z``) counts as ``+inf``. So a code at NaN distance is never chosen nor
drawn while some code of the row has a finite distance (its weight is 0), and a row in which
no code has a finite distance (every distance NaN or ``+inf``) gets code 0 (``nearest``
then returns that code's distance, NaN or ``+inf``).
"""

from __future__ import annotations

import math

import torch

from dqkernels.ops._checks import (
    _dt,
    check_finite_float,
    check_int,
    check_int_tensor,
    check_like,
    check_same,
    check_same_device,
    check_tensor,
)
from dqkernels.ops._common import (
    accumulate_dtype,
    check_backend,
    kernels,
    leading_size,
    new_output,
    resolve_backend,
)

__all__ = ["vq_nearest", "vq_sample", "vq_ema_update"]

_FAMILY = "vq"  # the op family: dqkernels/kernels/vq/

STATE_DTYPES = (torch.float32, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)  # in the order error messages name them


# ----------------------------------------------------------------------------- nearest


@torch.library.custom_op("dqk::vq_nearest", mutates_args=())
def _nearest_op(
    z: torch.Tensor, codebook: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_pair("vq_nearest", z, codebook)
    check_backend("vq_nearest", backend, z.device, z.dtype, _FAMILY)
    D = z.shape[-1]
    z2 = z.reshape(leading_size(z), D)
    N = z2.shape[0]
    idx = _new_indices((N,), z.device)
    dist = new_output((N,), accumulate_dtype(z.dtype), z.device)
    if N > 0:
        if D == 0:  # every code is at distance 0: the first one
            idx.zero_()
            dist.zero_()
        else:
            kernels(backend, _FAMILY).nearest(z2.contiguous(), codebook.contiguous(), idx, dist)
    return idx.view(z.shape[:-1]), dist.view(z.shape[:-1])


@_nearest_op.register_fake
def _(z, codebook, backend):
    _check_pair("vq_nearest", z, codebook)
    shape = z.shape[:-1]
    return (
        z.new_empty(shape, dtype=torch.int64),
        z.new_empty(shape, dtype=accumulate_dtype(z.dtype)),
    )


def _new_indices(shape, device) -> torch.Tensor:
    """An int64 output; poisoned outputs start at -1 (never a valid index)."""
    from dqkernels.ops import _common

    if _common.poison_outputs:
        return torch.full(shape, -1, dtype=torch.int64, device=device)
    return torch.empty(shape, dtype=torch.int64, device=device)


def _nearest_setup(ctx, inputs, output):
    z, codebook, _ = inputs
    idx, _ = output
    ctx.save_for_backward(z, codebook, idx)


def _nearest_backward(ctx, grad_idx, grad_dist):
    """d sqdist_n / d z_n = 2 (z_n - e_k), d / d e_k = -2 (z_n - e_k) (summed over n)."""
    z, codebook, idx = ctx.saved_tensors
    need_z, need_e = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_dist is None or not (need_z or need_e):
        return None, None, None
    D = z.shape[-1]
    acc = accumulate_dtype(z.dtype)
    flat = idx.reshape(-1)
    diff = z.reshape(-1, D).to(acc) - codebook.index_select(0, flat).to(acc)
    g = 2.0 * grad_dist.reshape(-1, 1).to(acc) * diff
    gz = g.to(z.dtype).view(z.shape) if need_z else None
    ge = None
    if need_e:
        ge = torch.zeros(codebook.shape, dtype=acc, device=z.device).index_add_(0, flat, -g)
        ge = ge.to(codebook.dtype)
    return gz, ge, None


_nearest_op.register_autograd(_nearest_backward, setup_context=_nearest_setup)


# ----------------------------------------------------------------------------- sample


@torch.library.custom_op("dqk::vq_sample", mutates_args=())
def _sample_op(
    z: torch.Tensor, codebook: torch.Tensor, u: torch.Tensor, inv_temperature: float, backend: str
) -> torch.Tensor:
    op = "vq_sample"
    _check_sample(op, z, codebook, u)
    if not 0 < inv_temperature < float("inf"):
        raise ValueError(f"{op}: inv_temperature must be > 0 and finite; got {inv_temperature}")
    check_backend(op, backend, z.device, z.dtype, _FAMILY)
    D = z.shape[-1]
    z2 = z.reshape(leading_size(z), D)
    N, S, K = z2.shape[0], u.shape[-1], codebook.shape[0]
    out = _new_indices((N, S), z.device)
    if N > 0 and S > 0:
        u2 = u.reshape(N, S)
        if D == 0:  # all distances 0: uniform over the codes
            out.copy_((u2 * K).floor().clamp_(max=K - 1).to(torch.int64))
        else:
            kernels(backend, _FAMILY).sample(
                z2.contiguous(), codebook.contiguous(), u2.contiguous(), inv_temperature, out
            )
    return out.view(*z.shape[:-1], S)


@_sample_op.register_fake
def _(z, codebook, u, inv_temperature, backend):
    _check_sample("vq_sample", z, codebook, u)
    return z.new_empty((*z.shape[:-1], u.shape[-1]), dtype=torch.int64)


# ----------------------------------------------------------------------------- EMA


@torch.library.custom_op("dqk::vq_ema_update", mutates_args=("cluster_size", "embed_sum"))
def _ema_op(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    z: torch.Tensor,
    indices: torch.Tensor,
    decay: float,
    backend: str,
) -> None:
    op = "vq_ema_update"
    _check_ema(op, cluster_size, embed_sum, z, indices)
    _check_decay(op, decay)
    _check_disjoint(op, "cluster_size", cluster_size, "embed_sum", embed_sum)
    check_backend(op, backend, z.device, z.dtype, _FAMILY)
    K, D = embed_sum.shape
    z2 = z.reshape(leading_size(z), D)
    N = z2.shape[0]
    idx = indices.reshape(N, -1) if N > 0 else indices.reshape(0, 1)
    if N > 0 and idx.numel() > 0:
        lo_hi = torch.aminmax(idx)
        lo, hi = int(lo_hi.min), int(lo_hi.max)
        if lo < 0 or hi >= K:
            bad = lo if lo < 0 else hi
            raise IndexError(
                f"vq_ema_update: indices must be in [0, {K}) (the codebook size); got {bad}"
            )
    if N == 0 or D == 0 or idx.shape[1] == 0:
        cluster_size.mul_(decay)
        embed_sum.mul_(decay)
        return
    kernels(backend, _FAMILY).ema_update(
        cluster_size, embed_sum, z2.contiguous(), idx.to(torch.int64).contiguous(), decay
    )


@_ema_op.register_fake
def _(cluster_size, embed_sum, z, indices, decay, backend):
    _check_ema("vq_ema_update", cluster_size, embed_sum, z, indices)
    return None


# ----------------------------------------------------------------------------- public


# The checks of the public functions, run again at the top of each custom op's body (a direct
# ``torch.ops.dqk`` call gets the same messages) and, the tensor checks, in the fake
# implementations (so does ``torch.compile``).


def _check_pair(op: str, z, codebook) -> None:
    check_tensor(op, "z", z)
    check_tensor(op, "codebook", codebook, ndim=2, layout="[K, D]")
    if z.dim() < 1:
        raise ValueError(f"{op}: z must have at least 1 dimension [..., D]; got a scalar")
    check_same(op, "z", z, "codebook", codebook)
    if z.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"{op}: z's last dimension ({z.shape[-1]}) must equal the codebook's "
            f"dimension D ({codebook.shape[1]}); got z {tuple(z.shape)} and "
            f"codebook {tuple(codebook.shape)}"
        )
    if codebook.shape[0] == 0:
        raise ValueError(
            f"{op}: codebook must have at least one code (K >= 1); got shape "
            f"{tuple(codebook.shape)}"
        )


def _check_sample(op: str, z, codebook, u) -> None:
    """z, codebook and the sorted uniforms u [..., S] of the vq_sample op."""
    _check_pair(op, z, codebook)
    S = u.shape[-1] if isinstance(u, torch.Tensor) and u.dim() else 1
    shape = (*z.shape[:-1], S)
    check_like(op, "u", u, shape, accumulate_dtype(z.dtype), z.device, "the uniforms [..., S]")


def _check_ema(op: str, cluster_size, embed_sum, z, indices) -> None:
    """The EMA state (contiguous: it is updated in place), z and indices."""
    for name, t, ndim, layout in (
        ("cluster_size", cluster_size, 1, "[K]"),
        ("embed_sum", embed_sum, 2, "[K, D]"),
    ):
        check_tensor(op, name, t, ndim=ndim, layout=layout)
        if t.dtype not in STATE_DTYPES:
            raise TypeError(
                f"{op}: {name} must be float32 or float64 (the EMA state is kept "
                f"in full precision); got {_dt(t.dtype)}"
            )
    check_same(op, "cluster_size", cluster_size, "embed_sum", embed_sum)
    for name, t in (("cluster_size", cluster_size), ("embed_sum", embed_sum)):
        if not t.is_contiguous():
            raise ValueError(
                f"{op}: {name} must be contiguous (it is updated in place); got "
                f"strides {tuple(t.stride())} for shape {tuple(t.shape)}"
            )
    if cluster_size.shape[0] != embed_sum.shape[0]:
        raise ValueError(
            f"{op}: cluster_size has {cluster_size.shape[0]} codes but embed_sum "
            f"has {embed_sum.shape[0]}"
        )
    check_tensor(op, "z", z)
    if z.dim() < 1 or z.shape[-1] != embed_sum.shape[1]:
        raise ValueError(
            f"{op}: z's last dimension must equal embed_sum's D "
            f"({embed_sum.shape[1]}); got z {tuple(z.shape)}"
        )
    check_same_device(op, "z", z, "embed_sum", embed_sum)
    check_int_tensor(op, "indices", indices, INDEX_DTYPES)
    lead = tuple(z.shape[:-1])
    if tuple(indices.shape) != lead and tuple(indices.shape[:-1]) != lead:
        raise ValueError(
            f"{op}: indices must have shape {lead} or {lead} + (S,) for z of "
            f"shape {tuple(z.shape)}; got {tuple(indices.shape)}"
        )
    check_same_device(op, "z", z, "indices", indices)


def _check_decay(op: str, decay) -> float:
    decay = check_finite_float(op, "decay", decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"{op}: decay must be in [0, 1]; got {decay}")
    return decay


def _check_disjoint(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Contiguous ``a`` and ``b`` (both updated in place) share no memory."""
    if a.numel() == 0 or b.numel() == 0:
        return
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return
    a0, b0 = a.data_ptr(), b.data_ptr()
    if a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size():
        raise ValueError(
            f"{op}: {name_a} and {name_b} must not share memory (both are updated in place)"
        )


def vq_nearest(
    z: torch.Tensor, codebook: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of every vector: ``argmin_k |z_n - e_k|^2``.

    Args:
        z: ``[..., D]`` float16, bfloat16, float32 or float64 (float64 not on ``triton``).
        codebook: ``[K, D]`` with z's dtype and device, ``K >= 1``.
        backend: ``torch``, ``cpp``, ``cuda``, ``triton`` or ``auto``; None uses the one in
            force (see :mod:`dqkernels.backends`).

    Returns:
        ``(indices, sqdist)`` of shape ``[...]``: int64 indices of the nearest code (exact:
        for fp32 inputs the chosen code's float64 distance is within 1e-5 relative of the
        true minimum; ties go to the lowest index; a code at NaN distance is never
        chosen, and a row with no finite distance gets code 0: the NaN rule of
        :mod:`dqkernels.ops.vq`) and its squared distance
        ``sum((z - e_k)^2)`` in float32 (float64 for float64 inputs). ``sqdist`` is
        differentiable in z and codebook. No ``N x K`` matrix is built on any backend.
    """
    op = "vq_nearest"
    _check_pair(op, z, codebook)
    backend = resolve_backend(op, z.device, z.dtype, backend, _FAMILY)
    return _nearest_op(z, codebook, backend)


def _sorted_uniforms(shape, dtype, device, generator):
    # no generator= keyword when there is none: torch.compile with dynamic shapes cannot
    # trace torch.rand(..., generator=None)
    if generator is None:
        u = torch.rand(shape, dtype=dtype, device=device)
    else:
        u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    return torch.sort(u, dim=-1)


def _smallest_with_finite_reciprocal(dtype: torch.dtype) -> float:
    top = torch.finfo(dtype).max
    low = 1.0 / top  # subnormal for float64: its reciprocal rounds to inf
    while not 1.0 / low <= top:
        low = math.nextafter(low, math.inf)
    return low


_MIN_TEMPERATURE = {acc: _smallest_with_finite_reciprocal(acc) for acc in STATE_DTYPES}


def min_temperature(acc: torch.dtype) -> float:
    """The smallest temperature :func:`vq_sample` takes when its kernels compute in ``acc``
    (float32 or float64): the smallest float whose reciprocal is finite in ``acc`` (a
    smaller one would turn ``-(d - min d) / T`` into ``0 * inf = NaN`` at the nearest
    code)."""
    return _MIN_TEMPERATURE[acc]


def check_temperature(op: str, temperature, acc: torch.dtype) -> float:
    """The rule for ``temperature``: a number with ``0 < temperature < inf`` whose reciprocal
    is finite in ``acc``, the dtype the kernels compute in; returns ``1 / temperature``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{op}: temperature must be a float; got {type(temperature).__name__}")
    low = min_temperature(acc)
    # plain comparisons (not math.isfinite), so that torch.compile can trace it
    if not low <= temperature < float("inf"):
        raise ValueError(
            f"{op}: temperature must be finite and >= {low:.6g} (> 0, with 1/temperature "
            f"finite in {_dt(acc)}, the dtype the kernels compute in); got {temperature}"
        )
    return 1.0 / temperature


def vq_sample(
    z: torch.Tensor,
    codebook: torch.Tensor,
    num_samples: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Codes drawn from ``softmax_k(-|z_n - e_k|^2 / temperature)`` (soft EM).

    Draws ``num_samples`` independent codes per vector by inverse CDF on uniforms from
    ``generator`` (the same generator state gives the same draws on every backend, up to
    rounding of the cumulative weights), without building an ``N x K`` matrix. A code at
    NaN distance has weight 0 (never drawn) and a row with no finite distance draws code
    0 (the NaN rule of :mod:`dqkernels.ops.vq`, as in :func:`vq_nearest`).

    Args:
        z: ``[..., D]`` float tensor; codebook ``[K, D]`` with its dtype and device.
        num_samples: draws per vector, >= 1.
        temperature: finite and at least :func:`min_temperature` of the accumulate dtype
            (about 2.9e-39 for float32, 5.6e-309 for float64): ``1/temperature`` must be
            finite where the kernels compute it. The limits that remain are answered alike
            on every backend: a tiny temperature draws the nearest code (the
            :func:`vq_nearest` code) every time, a huge one (``1/temperature`` rounding to
            0) draws uniformly over the codes at finite distance.
        generator: a ``torch.Generator`` on z's device, or None for the default one.

    Returns:
        int64 ``[..., num_samples]``.
    """
    op = "vq_sample"
    _check_pair(op, z, codebook)
    check_int(op, "num_samples", num_samples, 1)
    acc = accumulate_dtype(z.dtype)
    inv_temperature = check_temperature(op, temperature, acc)
    backend = resolve_backend(op, z.device, z.dtype, backend, _FAMILY)
    u, order = _sorted_uniforms((*z.shape[:-1], num_samples), acc, z.device, generator)
    drawn = _sample_op(z, codebook, u, inv_temperature, backend)
    # the kernels fill draws in sorted-uniform order; put each back where its uniform was
    return torch.empty_like(drawn).scatter_(-1, order, drawn)


def vq_ema_update(
    cluster_size: torch.Tensor,
    embed_sum: torch.Tensor,
    z: torch.Tensor,
    indices: torch.Tensor,
    *,
    decay: float,
    backend: str | None = None,
) -> None:
    """In-place EMA of the codebook statistics (VQ-VAE's EMA codebook update)::

        cluster_size = decay * cluster_size + (1 - decay) * counts
        embed_sum    = decay * embed_sum    + (1 - decay) * sums

    where ``counts[k]`` and ``sums[k]`` add, over the vectors, the weight and the weighted
    vector of each of its assigned codes: ``indices`` of shape ``[...]`` (hard EM, weight
    1) or ``[..., S]`` (S sampled codes per vector, weight 1/S each). No one-hot matrix.

    Args:
        cluster_size: ``[K]`` float32 or float64 state, updated in place.
        embed_sum: ``[K, D]`` with cluster_size's dtype and device, updated in place.
        z: ``[..., D]`` float tensor of any float dtype (accumulated in the state's dtype).
        indices: int64/int32 of shape ``z.shape[:-1]`` or ``(*z.shape[:-1], S)``, each in
            ``[0, K)``.
        decay: in ``[0, 1]``; ``decay=0`` turns the state into this batch's statistics (what
            a DDP rank all-reduces before mixing them in).
    """
    op = "vq_ema_update"
    _check_ema(op, cluster_size, embed_sum, z, indices)
    decay = _check_decay(op, decay)
    if tuple(indices.shape) == tuple(z.shape[:-1]):
        indices = indices.unsqueeze(-1)
    backend = resolve_backend(op, z.device, z.dtype, backend, _FAMILY)
    _ema_op(cluster_size, embed_sum, z, indices, decay, backend)
