"""Every custom op called directly (``torch.ops.dqk.<op>``) validates its inputs before any
kernel touches memory, on every backend, with the public function's messages (issue 12).

Each case runs in a child process forked from this one (torch and dqkernels already
imported), so that a crash (an abort, a segfault: memory a kernel should never have
touched) fails that case instead of the test run. The child makes the direct call and,
where the public function takes the same arguments, the public call, and reports each
outcome (the exception's type and message, or "ok") through a pipe; the parent checks the
child's exit status and signal, then the messages.

Cases: ``CASES`` (name -> Case): the call through ``torch.ops.dqk``, the public call (or
None: an argument the public function does not take, e.g. a backward op's gradient), the
exception and a substring of its message. A case with ``exc=None`` must run: its ``direct``
call checks its own result (strided and stride-0 inputs give the contiguous inputs'
result). Arguments of the wrong Python type for the op's schema (a list for a tensor, a
float for an int, an int for a bool) are converted or refused by torch's dispatcher before
an op body runs, so they are not cases here (``tests/test_errors.py`` covers the public
functions' refusals of those).

Runs standalone (``python -m pytest tests/test_ops_direct.py``; CI also runs it under
AddressSanitizer).
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import select
import signal
import time
from collections.abc import Callable

import pytest
import torch

import dqkernels.ops as ops
from dqkernels import backends
from dqkernels.backends import BackendUnavailableError
from dqkernels.kernels import registry

DQK = torch.ops.dqk
CHILD_TIMEOUT_S = 120

# Backends that run on CPU tensors here (triton only under its interpreter: conftest sets
# TRITON_INTERPRET=1 when there is no GPU). Cases run on each; on a GPU machine also on CUDA
# tensors.
RUNS = [
    ("torch", "cpu"),
    ("cpp", "cpu"),
    ("triton", "cpu"),
    ("torch", "cuda"),
    ("cuda", "cuda"),
    ("triton", "cuda"),
]


@dataclasses.dataclass(frozen=True)
class Case:
    """``direct(b, dev)`` calls an op through torch.ops.dqk with backend ``b`` on tensors of
    device ``dev``; ``public(b, dev)`` the public function (None: none takes these
    arguments). Both must raise ``exc`` with ``match`` in the message (the public one
    ``public_match``, by default ``match``); ``exc=None``: both must return normally."""

    direct: Callable
    public: Callable | None = None
    exc: type | None = None
    match: str = ""
    public_match: str | None = None
    backends: tuple[str, ...] | None = None  # None: every backend of RUNS
    devices: tuple[str, ...] = ("cpu", "cuda")
    env: dict = dataclasses.field(default_factory=dict)  # set in the child before the calls


# ----------------------------------------------------------------------------- tensors


class T:
    """Tensor makers on the case's device (set in the child before the calls)."""

    device = "cpu"

    @classmethod
    def z(cls, *shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=cls.device)

    @classmethod
    def r(cls, *shape, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float64).to(cls.device, dtype)

    @classmethod
    def i(cls, *values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device=cls.device)


def meta(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the meta device: a tensor on another device than the case's."""
    return t.to("meta")


def same(got, want) -> None:
    """Outputs of strided inputs equal those of contiguous ones (same backend, same math)."""
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    # Not bitwise: a layout can change a kernel's summation order (seen: one float32 ulp,
    # 8e-8 relative). The reductions here are over at most a few dozen terms, so the
    # difference is bounded by about n * 2**-24 < 2e-6 relative; 1e-5 leaves room for that.
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, equal_nan=True)


CASES: dict[str, Case] = {}


def case(name: str, **kw) -> None:
    assert name not in CASES, name
    CASES[name] = Case(**kw)


# ----------------------------------------------------------------------------- dmol

L, MLS = 256, -7.0


def nll(x, p, b, L=L, mls=MLS):
    return (
        lambda: DQK.dmol_nll(x(), p(), L, mls, b),
        lambda: ops.dmol_nll(x(), p(), num_levels=L, min_log_scale=mls, backend=b),
    )


def dmol_case(name, x, p, exc, match, L=L, mls=MLS, backends=None, public_match=None):
    """A dmol_nll case; also run through dmol_nll_fused (on cpp) and dmol_nll_backward (its
    messages name dmol_nll_backward)."""

    def direct(b, dev):
        return DQK.dmol_nll(x(), p(), L, mls, b)

    def public(b, dev):
        return ops.dmol_nll(x(), p(), num_levels=L, min_log_scale=mls, backend=b)

    case(f"dmol_nll: {name}", direct=direct, public=public, exc=exc, match=match,
         backends=backends, public_match=public_match)  # fmt: skip
    case(
        f"dmol_nll_fused: {name}",
        direct=lambda b, dev: DQK.dmol_nll_fused(x(), p(), L, mls, b),
        exc=exc,
        match=match,
        backends=backends or ("cpp",),
    )

    def backward(b, dev):
        xv, pv = x(), p()
        B, H, W = (xv.shape[0], *xv.shape[2:]) if xv.dim() == 4 else (2, 3, 4)
        return DQK.dmol_nll_backward(xv, pv, T.z(B, H, W), L, mls, b)

    case(
        f"dmol_nll_backward: {name}",
        direct=backward,
        exc=exc,
        match=match.replace("dmol_nll:", "dmol_nll_backward:"),
        backends=backends,
    )


X = lambda: T.z(2, 3, 3, 4)  # noqa: E731
P = lambda: T.z(2, 20, 3, 4)  # noqa: E731

# fmt: off
dmol_case("params channels fit no mixture count", X, lambda: T.z(2, 21, 3, 4), ValueError,
    "dmol_nll: params has 21 channels, which fits no mixture count for C=3: expected a "
    "positive multiple of 10")
dmol_case("x of rank 3", lambda: T.z(2, 3, 4), P, ValueError,
    "dmol_nll: x must have 4 dimensions [B, C, H, W]; got shape (2, 3, 4)")
dmol_case("params of rank 3", X, lambda: T.z(20, 3, 4), ValueError,
    "dmol_nll: params must have 4 dimensions [B, P, H, W]; got shape (20, 3, 4)")
dmol_case("x of 2 channels", lambda: T.z(2, 2, 3, 4), lambda: T.z(2, 14, 3, 4), ValueError,
    "dmol_nll: x's channel count C (dimension 1) must be 1 or 3; got 2")
dmol_case("x and params differ in width", X, lambda: T.z(2, 20, 3, 5), ValueError,
    "dmol_nll: x and params must agree in batch and spatial size [B, *, H, W]; got x "
    "(2, 3, 3, 4) and params (2, 20, 3, 5)")
# issue 12: on cpp this wrote 262,144 floats into a one-element output and aborted
dmol_case("issue 12: x 1x3x1x1, params 64x10x64x64", lambda: T.z(1, 3, 1, 1),
    lambda: T.z(64, 10, 64, 64), ValueError,
    "dmol_nll: x and params must agree in batch and spatial size [B, *, H, W]; got x "
    "(1, 3, 1, 1) and params (64, 10, 64, 64)")
dmol_case("x float16, params float32", lambda: T.z(2, 3, 3, 4, dtype=torch.float16), P, TypeError,
    "dmol_nll: x and params must have the same dtype; got x float16 and params float32")
dmol_case("x float64, params float32", lambda: T.z(2, 3, 3, 4, dtype=torch.float64), P, TypeError,
    "dmol_nll: x and params must have the same dtype; got x float64 and params float32")
dmol_case("integer x", lambda: T.z(2, 3, 3, 4, dtype=torch.int64), P, TypeError,
    "dmol_nll: x must be a floating tensor (float16, bfloat16, float32 or float64); got "
    "dtype int64")
dmol_case("complex params", X, lambda: T.z(2, 20, 3, 4, dtype=torch.complex64), TypeError,
    "dmol_nll: params must be a floating tensor")
dmol_case("x on another device", lambda: meta(X()), P, ValueError,
    "dmol_nll: x and params must be on the same device; got x on meta and params on")
dmol_case("num_levels 1", X, P, ValueError, "dmol_nll: num_levels must be >= 2; got 1", L=1)
dmol_case("min_log_scale nan", X, P, ValueError, "dmol_nll: min_log_scale must be finite; got nan",
    mls=float("nan"))
dmol_case("min_log_scale -inf", X, P, ValueError,
    "dmol_nll: min_log_scale must be finite; got -inf", mls=-float("inf"))
dmol_case("float64 on triton", lambda: T.z(2, 3, 3, 4, dtype=torch.float64),
    lambda: T.z(2, 20, 3, 4, dtype=torch.float64), BackendUnavailableError,
    "dmol_nll: backend 'triton' cannot run on", backends=("triton",))
# fmt: on


def bad_backends(op: str, direct, public, public_takes_auto=True):
    """Backend names a custom op refuses before a kernel runs: unknown ones, 'auto' (the public
    function resolves it), 'cuda' on CPU tensors and 'triton' on CPU without the
    interpreter."""
    case(
        f"{op}: unknown backend",
        direct=lambda b, dev: direct("cudnn"),
        public=None if public is None else (lambda b, dev: public("cudnn")),
        exc=ValueError,
        match="backend must be one of torch, cpp, cuda, triton",
        backends=("torch",),
    )
    case(
        f"{op}: backend auto",
        direct=lambda b, dev: direct("auto"),
        exc=ValueError,
        match=f"{op}: backend must be one of torch, cpp, cuda, triton (a custom op takes a "
        "resolved backend; its public function resolves 'auto'); got 'auto'",
        backends=("torch",),
    )
    case(
        f"{op}: backend cuda on CPU tensors",
        direct=lambda b, dev: direct("cuda"),
        public=None if public is None else (lambda b, dev: public("cuda")),
        exc=BackendUnavailableError,
        match=f"{op}: backend 'cuda' cannot run on cpu tensors of dtype float32: ",
        backends=("torch",),
        devices=("cpu",),
    )
    case(
        f"{op}: backend triton on CPU without the interpreter",
        direct=lambda b, dev: direct("triton"),
        public=None if public is None else (lambda b, dev: public("triton")),
        exc=BackendUnavailableError,
        match=f"{op}: backend 'triton' cannot run on cpu tensors of dtype float32: ",
        backends=("torch",),
        devices=("cpu",),
        env={"TRITON_INTERPRET": "0"},
    )


bad_backends(
    "dmol_nll",
    lambda b: DQK.dmol_nll(X(), P(), L, MLS, b),
    lambda b: ops.dmol_nll(X(), P(), backend=b),
)
bad_backends(
    "dmol_nll_backward", lambda b: DQK.dmol_nll_backward(X(), P(), T.z(2, 3, 4), L, MLS, b), None
)
case(
    "dmol_nll_fused: a backend without the fused kernels",
    direct=lambda b, dev: DQK.dmol_nll_fused(X(), P(), L, MLS, b),
    exc=ValueError,
    match="dmol_nll_fused: backend must be one of cpp (the backends whose kernels fuse the "
    "gradient into the forward); got",
    backends=("torch", "triton"),
)
for _name, _g, _match in (
    ("short grad_out", lambda: T.z(2, 3, 3), "grad_out must have shape (2, 3, 4) (the NLL's); got "
     "(2, 3, 3)"),
    ("grad_out of params' dtype float16", lambda: T.z(2, 3, 4, dtype=torch.float16),
     "grad_out must have dtype float32 (the NLL's); got float16"),
    ("grad_out on another device", lambda: meta(T.z(2, 3, 4)), "grad_out must be on "),
):  # fmt: skip
    case(
        f"dmol_nll_backward: {_name}",
        direct=lambda b, dev, g=_g: DQK.dmol_nll_backward(X(), P(), g(), L, MLS, b),
        exc=TypeError if "dtype" in _match else ValueError,
        match=f"dmol_nll_backward: {_match}",
    )


def sample_direct(p, u, C, L=L, mls=MLS):
    return lambda b, dev: DQK.dmol_sample(p(), u(), C, L, mls, b)


def sample_public(p, C, L=L, mls=MLS):
    return lambda b, dev: ops.dmol_sample(p(), C, num_levels=L, min_log_scale=mls, backend=b)


U3 = lambda: T.z(2, 4, 3, 4)  # noqa: E731
for _name, _p, _u, _C, _kw, _exc, _match in (
    ("num_channels 2", P, U3, 2, {}, ValueError, "num_channels must be 1 or 3; got 2"),
    ("num_channels 0", P, U3, 0, {}, ValueError, "num_channels must be >= 1; got 0"),
    ("params fit no mixture count", P, lambda: T.z(2, 2, 3, 4), 1, {}, ValueError,
     "params has 20 channels, which fits no mixture count for C=1"),
    ("params of rank 3", lambda: T.z(20, 3, 4), U3, 3, {}, ValueError,
     "params must have 4 dimensions [B, P, H, W]; got shape (20, 3, 4)"),
    ("integer params", lambda: T.z(2, 20, 3, 4, dtype=torch.int32), U3, 3, {}, TypeError,
     "params must be a floating tensor"),
    ("num_levels 1", P, U3, 3, {"L": 1}, ValueError, "num_levels must be >= 2; got 1"),
    ("min_log_scale inf", P, U3, 3, {"mls": float("inf")}, ValueError,
     "min_log_scale must be finite; got inf"),
):  # fmt: skip
    case(
        f"dmol_sample: {_name}",
        direct=sample_direct(_p, _u, _C, **_kw),
        public=sample_public(_p, _C, **_kw),
        exc=_exc,
        match=f"dmol_sample: {_match}",
    )
for _name, _u, _exc, _match in (
    ("u of another shape", lambda: T.z(2, 3, 3, 4), ValueError,
     "u must have shape (2, 4, 3, 4) (the uniforms [B, 1 + C, H, W]); got (2, 3, 3, 4)"),
    ("short u", lambda: T.z(1, 4, 3, 4), ValueError, "u must have shape (2, 4, 3, 4)"),
    ("u float64 for float32 params", lambda: T.z(2, 4, 3, 4, dtype=torch.float64), TypeError,
     "u must have dtype float32 (the uniforms [B, 1 + C, H, W]); got float64"),
    ("u on another device", lambda: meta(T.z(2, 4, 3, 4)), ValueError, "u must be on "),
    ("u not a tensor", lambda: None, TypeError, "u must be a torch.Tensor; got NoneType"),
):  # fmt: skip
    case(
        f"dmol_sample: {_name}",
        direct=sample_direct(P, _u, 3),
        exc=_exc,
        match=f"dmol_sample: {_match}",
    )
bad_backends(
    "dmol_sample",
    lambda b: DQK.dmol_sample(P(), U3(), 3, L, MLS, b),
    lambda b: ops.dmol_sample(P(), 3, backend=b),
)


def dmol_strided(b, dev):
    """Stride-0 (expanded) and permuted inputs give the contiguous inputs' results."""
    x = (torch.randint(0, 256, (1, 3, 3, 4), device=dev).float() / 127.5 - 1).expand(2, 3, 3, 4)
    p = T.r(2, 3, 4, 20).permute(0, 3, 1, 2)  # non-contiguous
    g = T.r(1, 3, 1).expand(2, 3, 4)  # stride 0
    same(DQK.dmol_nll(x, p, L, MLS, b), DQK.dmol_nll(x.contiguous(), p.contiguous(), L, MLS, b))
    same(
        DQK.dmol_nll_backward(x, p, g, L, MLS, b),
        DQK.dmol_nll_backward(x.contiguous(), p.contiguous(), g.contiguous(), L, MLS, b),
    )
    u = T.r(2, 1, 3, 4).sigmoid().expand(2, 4, 3, 4)
    same(DQK.dmol_sample(p, u, 3, L, MLS, b), DQK.dmol_sample(p.contiguous(), u.contiguous(), 3, L,
                                                              MLS, b))  # fmt: skip
    if b == "cpp":
        same(
            DQK.dmol_nll_fused(x, p, L, MLS, b),
            DQK.dmol_nll_fused(x.contiguous(), p.contiguous(), L, MLS, b),
        )


case("dmol: strided and stride-0 inputs", direct=dmol_strided)


# ----------------------------------------------------------------------------- vq

Zv = lambda: T.r(6, 4)  # noqa: E731
Ev = lambda: T.r(8, 4, seed=1)  # noqa: E731
Uv = lambda: T.r(6, 2).sigmoid().sort(-1).values  # noqa: E731


def vq_pair_case(name, z, e, exc, match):
    """A mismatch of z and codebook, refused alike by vq_nearest and vq_sample."""
    case(
        f"vq_nearest: {name}",
        direct=lambda b, dev: DQK.vq_nearest(z(), e(), b),
        public=lambda b, dev: ops.vq_nearest(z(), e(), backend=b),
        exc=exc,
        match=f"vq_nearest: {match}",
    )

    def sample(b, dev):
        zv = z()
        u = T.z(*zv.shape[:-1], 2) if zv.dim() else T.z(2)
        return DQK.vq_sample(zv, e(), u, 1.0, b)

    case(
        f"vq_sample: {name}",
        direct=sample,
        public=lambda b, dev: ops.vq_sample(z(), e(), 2, backend=b),
        exc=exc,
        match=f"vq_sample: {match}",
    )


for _name, _z, _e, _exc, _match in (
    ("codebook of another D", Zv, lambda: T.z(8, 5), ValueError,
     "z's last dimension (4) must equal the codebook's dimension D (5); got z (6, 4) and "
     "codebook (8, 5)"),
    ("z float64, codebook float16", lambda: T.z(6, 4, dtype=torch.float64),
     lambda: T.z(8, 4, dtype=torch.float16), TypeError,
     "z and codebook must have the same dtype; got z float64 and codebook float16"),
    ("integer z", lambda: T.z(6, 4, dtype=torch.int64), Ev, TypeError,
     "z must be a floating tensor"),
    ("codebook of rank 3", Zv, lambda: T.z(8, 4, 1), ValueError,
     "codebook must have 2 dimensions [K, D]; got shape (8, 4, 1)"),
    ("z a scalar", lambda: T.z(), Ev, ValueError, "z must have at least 1 dimension [..., D]"),
    ("empty codebook", Zv, lambda: T.z(0, 4), ValueError,
     "codebook must have at least one code (K >= 1)"),
    ("codebook on another device", Zv, lambda: meta(Ev()), ValueError,
     "z and codebook must be on the same device"),
):  # fmt: skip
    vq_pair_case(_name, _z, _e, _exc, _match)
case(
    "vq_nearest: float64 on triton",
    direct=lambda b, dev: DQK.vq_nearest(T.z(6, 4, dtype=torch.float64),
                                         T.z(8, 4, dtype=torch.float64), b),
    public=lambda b, dev: ops.vq_nearest(T.z(6, 4, dtype=torch.float64),
                                         T.z(8, 4, dtype=torch.float64), backend=b),
    exc=BackendUnavailableError,
    match="vq_nearest: backend 'triton' cannot run on",
    backends=("triton",),
)  # fmt: skip
for _name, _u, _t, _exc, _match in (
    ("u of other rows", lambda: T.z(5, 2), 1.0, ValueError,
     "u must have shape (6, 2) (the uniforms [..., S]); got (5, 2)"),
    ("u of rank 1", lambda: T.z(12), 1.0, ValueError, "u must have shape (6, 12)"),
    ("u float64 for float32 z", lambda: T.z(6, 2, dtype=torch.float64), 1.0, TypeError,
     "u must have dtype float32 (the uniforms [..., S]); got float64"),
    ("u on another device", lambda: meta(T.z(6, 2)), 1.0, ValueError, "u must be on "),
    ("inv_temperature 0", Uv, 0.0, ValueError,
     "inv_temperature must be > 0 and finite; got 0.0"),
    ("inv_temperature inf", Uv, float("inf"), ValueError,
     "inv_temperature must be > 0 and finite; got inf"),
    ("inv_temperature nan", Uv, float("nan"), ValueError,
     "inv_temperature must be > 0 and finite; got nan"),
    ("inv_temperature negative", Uv, -1.0, ValueError,
     "inv_temperature must be > 0 and finite; got -1.0"),
):  # fmt: skip
    case(
        f"vq_sample: {_name}",
        direct=lambda b, dev, u=_u, t=_t: DQK.vq_sample(Zv(), Ev(), u(), t, b),
        exc=_exc,
        match=f"vq_sample: {_match}",
    )
bad_backends(
    "vq_nearest",
    lambda b: DQK.vq_nearest(Zv(), Ev(), b),
    lambda b: ops.vq_nearest(Zv(), Ev(), backend=b),
)
bad_backends(
    "vq_sample",
    lambda b: DQK.vq_sample(Zv(), Ev(), Uv(), 1.0, b),
    lambda b: ops.vq_sample(Zv(), Ev(), 2, backend=b),
)

# vq_ema_update: K = 8 codes of D = 4, N = 6 vectors
CS = lambda: T.z(8)  # noqa: E731
ES = lambda: T.z(8, 4)  # noqa: E731
IDX = lambda: T.i(0, 1, 2, 3, 7, 7)  # noqa: E731


def ema_case(name, cs=CS, es=ES, z=Zv, idx=IDX, decay=0.9, exc=ValueError, match=""):
    case(
        f"vq_ema_update: {name}",
        direct=lambda b, dev: DQK.vq_ema_update(cs(), es(), z(), idx(), decay, b),
        public=lambda b, dev: ops.vq_ema_update(cs(), es(), z(), idx(), decay=decay, backend=b),
        exc=exc,
        match=f"vq_ema_update: {match}",
    )


# issue 12: on cpp a short cluster_size aborted the process
# fmt: off
ema_case("issue 12: short cluster_size", cs=lambda: T.z(2),
    match="cluster_size has 2 codes but embed_sum has 8")
ema_case("cluster_size longer than the codebook", cs=lambda: T.z(9),
    match="cluster_size has 9 codes but embed_sum has 8")
ema_case("cluster_size float16", cs=lambda: T.z(8, dtype=torch.float16), exc=TypeError,
    match="cluster_size must be float32 or float64 (the EMA state is kept in full "
    "precision); got float16")
ema_case("cluster_size float64, embed_sum float32", cs=lambda: T.z(8, dtype=torch.float64),
    exc=TypeError, match="cluster_size and embed_sum must have the same dtype")
ema_case("cluster_size of rank 2", cs=lambda: T.z(8, 1),
    match="cluster_size must have 1 dimensions [K]; got shape (8, 1)")
ema_case("embed_sum of rank 1", es=lambda: T.z(32),
    match="embed_sum must have 2 dimensions [K, D]; got shape (32,)")
ema_case("stride-0 cluster_size", cs=lambda: T.z(1).expand(8),
    match="cluster_size must be contiguous (it is updated in place); got strides (0,) for "
    "shape (8,)")
ema_case("stride-0 embed_sum", es=lambda: T.z(1, 4).expand(8, 4),
    match="embed_sum must be contiguous (it is updated in place); got strides (0, 1)")
ema_case("transposed embed_sum", es=lambda: T.z(4, 8).t(),
    match="embed_sum must be contiguous (it is updated in place); got strides (1, 8)")
ema_case("embed_sum on another device", es=lambda: meta(ES()),
    match="cluster_size and embed_sum must be on the same device")
ema_case("z of another D", z=lambda: T.z(6, 5),
    match="z's last dimension must equal embed_sum's D (4); got z (6, 5)")
ema_case("integer z", z=lambda: T.z(6, 4, dtype=torch.int32), exc=TypeError,
    match="z must be a floating tensor")
ema_case(
    "z on another device", z=lambda: meta(Zv()), match="z and embed_sum must be on the same device")
ema_case("float indices", idx=lambda: T.z(6), exc=TypeError,
    match="indices must be an integer tensor (int64 or int32); got dtype float32")
ema_case("indices of another length", idx=lambda: T.i(0, 1, 2),
    match="indices must have shape (6,) or (6,) + (S,) for z of shape (6, 4); got (3,)")
ema_case("indices on another device", idx=lambda: meta(IDX()),
    match="z and indices must be on the same device")
ema_case("decay 1.5", decay=1.5, match="decay must be in [0, 1]; got 1.5")
ema_case("decay nan", decay=float("nan"), match="decay must be finite; got nan")
ema_case("index out of range", idx=lambda: T.i(0, 1, 2, 3, 8, 7), exc=IndexError,
    match="indices must be in [0, 8) (the codebook size); got 8")
ema_case("negative index", idx=lambda: T.i(0, -1, 2, 3, 7, 7), exc=IndexError,
    match="indices must be in [0, 8) (the codebook size); got -1")
# fmt: on


def _overlapping_state():
    buf = T.z(8 * 4 + 8)
    return buf[28:36], buf[:32].view(8, 4)  # cluster_size overlaps embed_sum's last row


def _overlap(call):
    def run(b, dev):
        cs, es = _overlapping_state()
        return call(cs, es, b)

    return run


case(
    "vq_ema_update: cluster_size and embed_sum share memory",
    direct=_overlap(lambda cs, es, b: DQK.vq_ema_update(cs, es, Zv(), IDX(), 0.9, b)),
    public=_overlap(lambda cs, es, b: ops.vq_ema_update(cs, es, Zv(), IDX(), decay=0.9,
                                                        backend=b)),
    exc=ValueError,
    match="vq_ema_update: cluster_size and embed_sum must not share memory (both are updated "
    "in place)",
)  # fmt: skip
bad_backends(
    "vq_ema_update",
    lambda b: DQK.vq_ema_update(CS(), ES(), Zv(), IDX(), 0.9, b),
    lambda b: ops.vq_ema_update(CS(), ES(), Zv(), IDX(), decay=0.9, backend=b),
)


def vq_strided(b, dev):
    z = T.r(3, 1, 4).expand(3, 2, 4)  # stride 0 rows
    e = T.r(4, 8, seed=1).t()  # transposed codebook [8, 4]
    got, want = DQK.vq_nearest(z, e, b), DQK.vq_nearest(z.contiguous(), e.contiguous(), b)
    same(got, want)
    u = T.r(3, 1, 1).sigmoid().expand(3, 2, 2)
    same(DQK.vq_sample(z, e, u, 1.0, b), DQK.vq_sample(z.contiguous(), e.contiguous(),
                                                       u.contiguous(), 1.0, b))  # fmt: skip
    idx = T.i(0, 1, 7, 3, 2, 2, 5, 6, 1, 1, 4, 0).view(3, 2, 2).transpose(1, 2)  # [3, 2, 2]
    state = [(T.z(8, dtype=torch.float32), T.z(8, 4)) for _ in range(2)]
    DQK.vq_ema_update(*state[0], z, idx, 0.5, b)
    DQK.vq_ema_update(*state[1], z.contiguous(), idx.contiguous(), 0.5, b)
    same(state[0], state[1])


case("vq: strided and stride-0 inputs", direct=vq_strided)


# ----------------------------------------------------------------------------- affine

Xa = lambda: T.r(2, 3, 4)  # noqa: E731


def affine_case(name, x=Xa, s=Xa, sl=Xa, exc=ValueError, match="", inverse=False):
    case(
        f"affine_coupling: {name}",
        direct=lambda b, dev: DQK.affine_coupling(x(), s(), sl(), inverse, b),
        public=lambda b, dev: ops.affine_coupling(x(), s(), sl(), inverse=inverse, backend=b),
        exc=exc,
        match=f"affine_coupling: {match}",
    )

    def backward(b, dev):
        xv = x()
        B = xv.shape[0] if xv.dim() else 2
        g = T.z(*xv.shape, dtype=xv.dtype) if xv.dtype.is_floating_point else T.z(*xv.shape)
        return DQK.affine_coupling_backward(xv, s(), sl(), g, T.z(B), inverse, b)

    case(
        f"affine_coupling_backward: {name}",
        direct=backward,
        exc=exc,
        match=f"affine_coupling_backward: {match}",
    )


# fmt: off
affine_case("short shift", s=lambda: T.z(2, 3, 3),
    match="shift must have x's shape (2, 3, 4); got (2, 3, 3)")
affine_case("scale_logit of another batch", sl=lambda: T.z(1, 3, 4), inverse=True,
    match="scale_logit must have x's shape (2, 3, 4); got (1, 3, 4)")
affine_case("scale_logit float64", sl=lambda: T.z(2, 3, 4, dtype=torch.float64), exc=TypeError,
    match="x and scale_logit must have the same dtype; got x float32 and scale_logit float64")
affine_case("integer x", x=lambda: T.z(2, 3, 4, dtype=torch.int64), exc=TypeError,
    match="x must be a floating tensor")
affine_case(
    "x 0-d", x=lambda: T.z(), match="x must have a batch dimension [B, ...]; got a 0-d tensor")
affine_case(
    "shift on another device", s=lambda: meta(Xa()), match="x and shift must be on the same device")
# fmt: on
for _name, _gy, _gl, _exc, _match in (
    ("short grad_y", lambda: T.z(2, 3, 3), lambda: T.z(2), ValueError,
     "grad_y must have shape (2, 3, 4) (y's); got (2, 3, 3)"),
    ("grad_y float64", lambda: T.z(2, 3, 4, dtype=torch.float64), lambda: T.z(2), TypeError,
     "grad_y must have dtype float32 (y's); got float64"),
    ("long grad_logdet", Xa, lambda: T.z(3), ValueError,
     "grad_logdet must have shape (2,) (logdet's); got (3,)"),
    ("grad_logdet float64", Xa, lambda: T.z(2, dtype=torch.float64), TypeError,
     "grad_logdet must have dtype float32 (logdet's); got float64"),
    ("grad_logdet on another device", Xa, lambda: meta(T.z(2)), ValueError,
     "grad_logdet must be on "),
):  # fmt: skip
    case(
        f"affine_coupling_backward: {_name}",
        direct=lambda b, dev, gy=_gy, gl=_gl: DQK.affine_coupling_backward(
            Xa(), Xa(), Xa(), gy(), gl(), False, b
        ),
        exc=_exc,
        match=f"affine_coupling_backward: {_match}",
    )
bad_backends(
    "affine_coupling",
    lambda b: DQK.affine_coupling(Xa(), Xa(), Xa(), False, b),
    lambda b: ops.affine_coupling(Xa(), Xa(), Xa(), backend=b),
)
bad_backends(
    "affine_coupling_backward",
    lambda b: DQK.affine_coupling_backward(Xa(), Xa(), Xa(), Xa(), T.z(2), False, b),
    None,
)


def affine_strided(b, dev):
    x = T.r(2, 4, 3).transpose(1, 2)
    s = T.r(1, 3, 4, seed=1).expand(2, 3, 4)
    sl = T.r(3, 1, seed=2).expand(2, 3, 4)
    c = [t.contiguous() for t in (x, s, sl)]
    for inverse in (False, True):
        same(DQK.affine_coupling(x, s, sl, inverse, b), DQK.affine_coupling(*c, inverse, b))
    gy, gl = T.r(1, 1, 1, seed=3).expand(2, 3, 4), T.r(1, seed=4).expand(2)
    same(
        DQK.affine_coupling_backward(x, s, sl, gy, gl, False, b),
        DQK.affine_coupling_backward(*c, gy.contiguous(), gl.contiguous(), False, b),
    )


case("affine_coupling: strided and stride-0 inputs", direct=affine_strided)


# ----------------------------------------------------------------------------- mixlog

Xm = lambda: T.r(2, 3)  # noqa: E731
Km = lambda: T.r(2, 3, 4, seed=1)  # noqa: E731
Am = lambda: T.r(2, 3, seed=2)  # noqa: E731


def mix_case(name, x=Xm, lg=Km, mn=Km, ls=Km, a=Am, bb=Am, exc=ValueError, match=""):
    args = lambda: (x(), lg(), mn(), ls(), a(), bb())  # noqa: E731
    for inverse, op in ((False, DQK.mixlogcdf_coupling), (True, DQK.mixlogcdf_coupling_inverse)):
        case(
            f"mixlogcdf_coupling{'_inverse' if inverse else ''}: {name}",
            direct=lambda b, dev, op=op: op(*args(), b),
            public=lambda b, dev, inv=inverse: ops.mixlogcdf_coupling(*args(), inverse=inv,
                                                                      backend=b),
            exc=exc,
            match=f"mixlogcdf_coupling: {match}",
        )  # fmt: skip

    def backward(b, dev):
        xv = x()
        B = xv.shape[0] if xv.dim() else 2
        g = T.z(*xv.shape, dtype=xv.dtype) if xv.dtype.is_floating_point else T.z(*xv.shape)
        return DQK.mixlogcdf_coupling_backward(*args(), g, T.z(B), False, b)

    case(
        f"mixlogcdf_coupling_backward: {name}",
        direct=backward,
        exc=exc,
        match=f"mixlogcdf_coupling_backward: {match}",
    )


# fmt: off
mix_case("K mismatch", mn=lambda: T.z(2, 3, 3),
    match="means must have shape [*x.shape, K]; K mismatch: logits has K=4 components and "
    "means has 3; got (2, 3, 3)")
mix_case("log_scales of another shape", ls=lambda: T.z(2, 4, 4),
    match="log_scales must have shape [*x.shape, K]; expected logits' shape (2, 3, 4); got "
    "(2, 4, 4)")
mix_case("logits without K", lg=lambda: T.z(2, 3),
    match="logits must have shape [*x.shape, K] = [2, 3, 'K']; got (2, 3)")
mix_case("no components", lg=lambda: T.z(2, 3, 0), mn=lambda: T.z(2, 3, 0), ls=lambda: T.z(2, 3, 0),
    match="the mixture needs K >= 1 components")
mix_case("short a", a=lambda: T.z(2, 2), match="a must have x's shape (2, 3); got (2, 2)")
mix_case(
    "b of another batch", bb=lambda: T.z(3, 3), match="b must have x's shape (2, 3); got (3, 3)")
mix_case("b float16", bb=lambda: T.z(2, 3, dtype=torch.float16), exc=TypeError,
    match="x and b must have the same dtype; got x float32 and b float16")
mix_case("integer logits", lg=lambda: T.z(2, 3, 4, dtype=torch.int64), exc=TypeError,
    match="logits must be a floating tensor")
mix_case("x 0-d", x=lambda: T.z(), match="x must have a batch dimension [B, ...]; got a 0-d tensor")
mix_case(
    "means on another device", mn=lambda: meta(Km()), match="x and means must be on the same device"
)
# fmt: on
for _name, _go, _gl, _exc, _match in (
    ("short grad_out", lambda: T.z(2, 2), lambda: T.z(2), ValueError,
     "grad_out must have shape (2, 3) (the output's); got (2, 2)"),
    ("grad_out bfloat16", lambda: T.z(2, 3, dtype=torch.bfloat16), lambda: T.z(2), TypeError,
     "grad_out must have dtype float32 (the output's); got bfloat16"),
    ("short grad_logdet", Xm, lambda: T.z(1), ValueError,
     "grad_logdet must have shape (2,) (logdet's); got (1,)"),
    ("grad_logdet float64", Xm, lambda: T.z(2, dtype=torch.float64), TypeError,
     "grad_logdet must have dtype float32 (logdet's); got float64"),
):  # fmt: skip
    case(
        f"mixlogcdf_coupling_backward: {_name}",
        direct=lambda b, dev, go=_go, gl=_gl: DQK.mixlogcdf_coupling_backward(
            Xm(), Km(), Km(), Km(), Am(), Am(), go(), gl(), False, b
        ),
        exc=_exc,
        match=f"mixlogcdf_coupling_backward: {_match}",
    )
MIX = lambda: (Xm(), Km(), Km(), Km(), Am(), Am())  # noqa: E731
bad_backends(
    "mixlogcdf_coupling",
    lambda b: DQK.mixlogcdf_coupling(*MIX(), b),
    lambda b: ops.mixlogcdf_coupling(*MIX(), backend=b),
)
bad_backends(
    "mixlogcdf_coupling_backward",
    lambda b: DQK.mixlogcdf_coupling_backward(*MIX(), Xm(), T.z(2), True, b),
    None,
)


def mix_strided(b, dev):
    x = T.r(3, 2).t()
    lg = T.r(2, 3, 1, seed=1).expand(2, 3, 4)  # stride 0 in K
    mn = T.r(4, 3, 2, seed=2).permute(2, 1, 0)
    ls = T.r(1, 3, 4, seed=3).expand(2, 3, 4) * 0.1
    a, bb = T.r(1, 1, seed=4).expand(2, 3), T.r(2, 3, seed=5)
    args = (x, lg, mn, ls, a, bb)
    c = [t.contiguous() for t in args]
    same(DQK.mixlogcdf_coupling(*args, b), DQK.mixlogcdf_coupling(*c, b))
    same(DQK.mixlogcdf_coupling_inverse(*args, b), DQK.mixlogcdf_coupling_inverse(*c, b))
    go, gl = T.r(1, 1, seed=6).expand(2, 3), T.r(1, seed=7).expand(2)
    same(
        DQK.mixlogcdf_coupling_backward(*args, go, gl, False, b),
        DQK.mixlogcdf_coupling_backward(*c, go.contiguous(), gl.contiguous(), False, b),
    )


case("mixlogcdf_coupling: strided and stride-0 inputs", direct=mix_strided)


# ----------------------------------------------------------------------------- masked_linear

Xl = lambda: T.r(6, 4)  # noqa: E731
Wl = lambda: T.r(5, 4, seed=1)  # noqa: E731
Bl = lambda: T.r(5, seed=2)  # noqa: E731
DI = lambda: T.i(0, 1, 2, 3)  # noqa: E731
DO = lambda: T.i(0, 1, 1, 2, 3)  # noqa: E731


def linear_case(name, x=Xl, w=Wl, bias=Bl, di=DI, do=DO, exc=ValueError, match=""):
    args = lambda: (x(), w(), bias(), di(), do())  # noqa: E731
    case(
        f"masked_linear: {name}",
        direct=lambda b, dev: DQK.masked_linear(*args(), True, b),
        public=lambda b, dev: ops.masked_linear(*args(), strict=True, backend=b),
        exc=exc,
        match=f"masked_linear: {match}",
    )
    if bias is not Bl:
        return  # the backward op takes no bias

    def backward(b, dev):
        xv, wv, _, dv, ov = args()
        rows = xv.shape[:-1] if xv.dim() else ()
        n_out = wv.shape[0] if wv.dim() == 2 else 5
        g = T.z(*rows, n_out, dtype=xv.dtype) if xv.dtype.is_floating_point else T.z(*rows, n_out)
        return DQK.masked_linear_backward(g, xv, wv, dv, ov, True, True, True, True, b)

    case(
        f"masked_linear_backward: {name}",
        direct=backward,
        exc=exc,
        match=f"masked_linear_backward: {match}",
    )


# fmt: off
linear_case("short bias", bias=lambda: T.z(4),
    match="bias must have shape (5,) (weight's out_features); got (4,)")
linear_case("bias float64", bias=lambda: T.z(5, dtype=torch.float64), exc=TypeError,
    match="x and bias must have the same dtype")
linear_case(
    "bias on another device", bias=lambda: meta(Bl()), match="x and bias must be on the same device"
)
linear_case("short in_degrees", di=lambda: T.i(0, 1, 2),
    match="in_degrees must have length 4 (weight's in_features); got 3")
linear_case("short out_degrees", do=lambda: T.i(0, 1),
    match="out_degrees must have length 5 (weight's out_features); got 2")
linear_case("float degrees", di=lambda: T.z(4), exc=TypeError,
    match="in_degrees must be an integer tensor (int32 or int64); got dtype float32")
linear_case("int16 degrees", do=lambda: T.i(0, 1, 1, 2, 3, dtype=torch.int16), exc=TypeError,
    match="out_degrees must be an integer tensor (int32 or int64); got dtype int16")
linear_case("degrees of rank 2", di=lambda: T.i(0, 1, 2, 3).view(2, 2),
    match="in_degrees must be 1-D; got shape (2, 2)")
linear_case("degrees on another device", do=lambda: meta(DO()),
    match="x and out_degrees must be on the same device")
linear_case("x of other in_features", x=lambda: T.z(6, 3),
    match="x's last dimension must equal weight's in_features 4; got x (6, 3) and weight (5, 4)")
linear_case("weight of rank 1", w=lambda: T.z(20),
    match="weight must have 2 dimensions [out_features, in_features]; got shape (20,)")
linear_case("weight float16", w=lambda: T.z(5, 4, dtype=torch.float16), exc=TypeError,
    match="x and weight must have the same dtype; got x float32 and weight float16")
linear_case("x 0-d", x=lambda: T.z(),
    match="x must have at least one dimension [..., in_features]; got a 0-d tensor")
# fmt: on
for _name, _g, _exc, _match in (
    ("short grad_y", lambda: T.z(6, 4), ValueError,
     "grad_y must have shape (6, 5) (y's); got (6, 4)"),
    ("grad_y of other rows", lambda: T.z(5, 6), ValueError,
     "grad_y must have shape (6, 5) (y's); got (5, 6)"),
    ("grad_y float64", lambda: T.z(6, 5, dtype=torch.float64), TypeError,
     "grad_y must have dtype float32 (y's); got float64"),
):  # fmt: skip
    case(
        f"masked_linear_backward: {_name}",
        direct=lambda b, dev, g=_g: DQK.masked_linear_backward(
            g(), Xl(), Wl(), DI(), DO(), False, True, True, True, b
        ),
        exc=_exc,
        match=f"masked_linear_backward: {_match}",
    )
bad_backends(
    "masked_linear",
    lambda b: DQK.masked_linear(Xl(), Wl(), Bl(), DI(), DO(), True, b),
    lambda b: ops.masked_linear(Xl(), Wl(), Bl(), DI(), DO(), strict=True, backend=b),
)
bad_backends(
    "masked_linear_backward",
    lambda b: DQK.masked_linear_backward(T.z(6, 5), Xl(), Wl(), DI(), DO(), True, True, True,
                                         True, b),
    None,
)  # fmt: skip


def linear_strided(b, dev):
    x = T.r(4, 2, 3).permute(1, 2, 0)  # [2, 3, 4], non-contiguous
    w = T.r(4, 5, seed=1).t()
    bias = T.r(1, seed=2).expand(5)
    di, do = T.i(3, 0, 2, 1, 0, 0, 1, 2)[::2], T.i(1).expand(5)  # strided, stride 0
    c = [t.contiguous() for t in (x, w, bias, di, do)]
    same(DQK.masked_linear(x, w, bias, di, do, False, b), DQK.masked_linear(*c, False, b))
    g = T.r(1, 1, 5, seed=3).expand(2, 3, 5)
    same(
        DQK.masked_linear_backward(g, x, w, di, do, True, True, True, True, b),
        DQK.masked_linear_backward(g.contiguous(), *c[:2], *c[3:], True, True, True, True, b),
    )


case("masked_linear: strided and stride-0 inputs", direct=linear_strided)


# ----------------------------------------------------------------------------- masked_conv2d

Xc = lambda: T.r(2, 3, 4, 5)  # noqa: E731
Wc = lambda: T.r(4, 3, 3, 3, seed=1)  # noqa: E731
Bc = lambda: T.r(4, seed=2)  # noqa: E731


def conv_case(name, x=Xc, w=Wc, bias=Bc, mask="B", groups=1, exc=ValueError, match=""):
    case(
        f"masked_conv2d: {name}",
        direct=lambda b, dev: DQK.masked_conv2d(x(), w(), bias(), mask, groups, b),
        public=lambda b, dev: ops.masked_conv2d(x(), w(), bias(), mask_type=mask, groups=groups,
                                                backend=b),
        exc=exc,
        match=f"masked_conv2d: {match}",
    )  # fmt: skip
    if bias is not Bc:
        return  # the backward op takes no bias

    def backward(b, dev):
        xv, wv = x(), w()
        B, H, W = (xv.shape[0], *xv.shape[2:]) if xv.dim() == 4 else (2, 4, 5)
        cout = wv.shape[0] if wv.dim() == 4 else 4
        g = T.z(B, cout, H, W, dtype=xv.dtype if xv.dtype.is_floating_point else torch.float32)
        return DQK.masked_conv2d_backward(xv, wv, g, mask, groups, True, True, True, b)

    case(
        f"masked_conv2d_backward: {name}",
        direct=backward,
        exc=exc,
        match=f"masked_conv2d_backward: {match}",
    )


# fmt: off
conv_case("channel mismatch", w=lambda: T.z(4, 2, 3, 3),
    match="weight must have x's 3 input channels (weight.shape[1] == x.shape[1]); got "
    "weight shape (4, 2, 3, 3)")
conv_case("non-square kernel", w=lambda: T.z(4, 3, 3, 5),
    match="weight must have a square kernel [Cout, Cin, k, k]; got shape (4, 3, 3, 5)")
conv_case("even kernel", w=lambda: T.z(4, 3, 2, 2),
    match="the kernel size must be odd (centre tap at k // 2); got 2")
conv_case("no output channels", w=lambda: T.z(0, 3, 3, 3), bias=lambda: None,
    match="weight must have at least one output channel")
conv_case("short bias", bias=lambda: T.z(3),
    match="bias must have shape (4,) (Cout, weight's output channels); got (3,)")
conv_case("bias float64", bias=lambda: T.z(4, dtype=torch.float64), exc=TypeError,
    match="x and bias must have the same dtype")
conv_case("mask type C", mask="C", match="mask_type must be 'A' or 'B'; got 'C'")
conv_case("groups 0", groups=0, match="groups must be >= 1; got 0")
conv_case("groups above the channels", groups=4,
    match="groups must be <= min(in_channels, out_channels) = min(3, 4) = 3")
conv_case("x of rank 3", x=lambda: T.z(3, 4, 5),
    match="x must have 4 dimensions [B, Cin, H, W]; got shape (3, 4, 5)")
conv_case("weight of rank 2", w=lambda: T.z(4, 27),
    match="weight must have 4 dimensions [Cout, Cin, k, k]; got shape (4, 27)")
conv_case("weight bfloat16", w=lambda: T.z(4, 3, 3, 3, dtype=torch.bfloat16), exc=TypeError,
    match="x and weight must have the same dtype; got x float32 and weight bfloat16")
conv_case("integer x", x=lambda: T.z(2, 3, 4, 5, dtype=torch.int64), exc=TypeError,
    match="x must be a floating tensor")
conv_case("weight on another device", w=lambda: meta(Wc()),
    match="x and weight must be on the same device")
# fmt: on
for _name, _g, _exc, _match in (
    ("grad_y of other channels", lambda: T.z(2, 3, 4, 5), ValueError,
     "grad_y must have shape (2, 4, 4, 5) (y's); got (2, 3, 4, 5)"),
    ("short grad_y", lambda: T.z(1, 4, 4, 5), ValueError, "grad_y must have shape (2, 4, 4, 5)"),
    ("grad_y float16", lambda: T.z(2, 4, 4, 5, dtype=torch.float16), TypeError,
     "grad_y must have dtype float32 (y's); got float16"),
    ("grad_y on another device", lambda: meta(T.z(2, 4, 4, 5)), ValueError, "grad_y must be on "),
):  # fmt: skip
    case(
        f"masked_conv2d_backward: {_name}",
        direct=lambda b, dev, g=_g: DQK.masked_conv2d_backward(
            Xc(), Wc(), g(), "A", 1, True, True, True, b
        ),
        exc=_exc,
        match=f"masked_conv2d_backward: {_match}",
    )
bad_backends(
    "masked_conv2d",
    lambda b: DQK.masked_conv2d(Xc(), Wc(), Bc(), "B", 1, b),
    lambda b: ops.masked_conv2d(Xc(), Wc(), Bc(), mask_type="B", backend=b),
)
bad_backends(
    "masked_conv2d_backward",
    lambda b: DQK.masked_conv2d_backward(Xc(), Wc(), T.z(2, 4, 4, 5), "B", 1, True, True, True,
                                         b),
    None,
)  # fmt: skip


def conv_strided(b, dev):
    x = T.r(2, 4, 5, 3).permute(0, 3, 1, 2)  # channels last
    w = T.r(1, 3, 3, 3, seed=1).expand(4, 3, 3, 3)  # stride 0 over Cout
    bias = T.r(1, seed=2).expand(4)
    c = [t.contiguous() for t in (x, w, bias)]
    same(DQK.masked_conv2d(x, w, bias, "A", 1, b), DQK.masked_conv2d(*c, "A", 1, b))
    g = T.r(2, 4, 1, 1, seed=3).expand(2, 4, 4, 5)
    same(
        DQK.masked_conv2d_backward(x, w, g, "B", 1, True, True, True, b),
        DQK.masked_conv2d_backward(c[0], c[1], g.contiguous(), "B", 1, True, True, True, b),
    )


case("masked_conv2d: strided and stride-0 inputs", direct=conv_strided)


# ----------------------------------------------------------------------------- bernoulli_flip

FLIP_BACKENDS = tuple(registry.declared("bernoulli_flip"))  # the backends the family ships
Xf = lambda: T.r(3, 4)  # noqa: E731
Lf = lambda: T.r(3, 4, seed=1)  # noqa: E731
Wf = lambda: T.r(4, 5, seed=2)  # noqa: E731
Zf = lambda: T.z(3, 5)  # noqa: E731


def flip_case(name, x=Xf, lg=Lf, w=Wf, z=Zf, exc=ValueError, match=""):
    args = lambda: (x(), lg(), w(), z())  # noqa: E731
    case(
        f"bernoulli_flip_loglik: {name}",
        direct=lambda b, dev: DQK.bernoulli_flip_loglik(*args(), b),
        public=lambda b, dev: ops.bernoulli_flip_loglik(*args(), backend=b),
        exc=exc,
        match=f"bernoulli_flip_loglik: {match}",
        backends=FLIP_BACKENDS,
    )

    def backward(b, dev):
        xv, lv, wv, zv = args()
        B = xv.shape[0] if xv.dim() else 3
        H = wv.shape[-1] if wv.dim() else 5
        return DQK.bernoulli_flip_loglik_backward(T.z(B, H), xv, lv, wv, zv, True, True, True, b)

    case(
        f"bernoulli_flip_loglik_backward: {name}",
        direct=backward,
        exc=exc,
        match=f"bernoulli_flip_loglik_backward: {match}",
        backends=FLIP_BACKENDS,
    )


# fmt: off
flip_case("x of rank 3", x=lambda: T.z(3, 4, 1),
    match="x must have 2 dimensions [B, D]; got shape (3, 4, 1)")
flip_case("logits of other D", lg=lambda: T.z(3, 5),
    match="logits must have x's shape [B, D] = (3, 4); got (3, 5)")
flip_case("logits of other B", lg=lambda: T.z(2, 4),
    match="logits must have x's shape [B, D] = (3, 4); got (2, 4)")
flip_case("weight of other D", w=lambda: T.z(5, 5),
    match="weight must have x's D = 4 rows [D, H]; got shape (5, 5)")
flip_case("weight of rank 1", w=lambda: T.z(20),
    match="weight must have 2 dimensions [D, H]; got shape (20,)")
flip_case("z of other H", z=lambda: T.z(3, 4),
    match="z must have shape [B, H] = (3, 5) (x's batch, weight's columns); got (3, 4)")
flip_case("z of other B", z=lambda: T.z(64, 5),
    match="z must have shape [B, H] = (3, 5) (x's batch, weight's columns); got (64, 5)")
flip_case("integer z", z=lambda: T.z(3, 5, dtype=torch.int64), exc=TypeError,
    match="z must be a floating tensor (float16, bfloat16, float32 or float64); got dtype int64")
flip_case("weight float64", w=lambda: T.z(4, 5, dtype=torch.float64), exc=TypeError,
    match="x and weight must have the same dtype; got x float32 and weight float64")
flip_case("logits bfloat16", lg=lambda: T.z(3, 4, dtype=torch.bfloat16), exc=TypeError,
    match="x and logits must have the same dtype; got x float32 and logits bfloat16")
flip_case("z on another device", z=lambda: meta(Zf()),
    match="x and z must be on the same device")
# fmt: on
for _name, _g, _exc, _match in (
    ("short grad_out", lambda: T.z(3, 4), ValueError,
     "grad_out must have shape (3, 5) (out's); got (3, 4)"),
    ("grad_out float16", lambda: T.z(3, 5, dtype=torch.float16), TypeError,
     "grad_out must have dtype float32 (out's); got float16"),
    ("grad_out on another device", lambda: meta(T.z(3, 5)), ValueError, "grad_out must be on "),
):  # fmt: skip
    case(
        f"bernoulli_flip_loglik_backward: {_name}",
        direct=lambda b, dev, g=_g: DQK.bernoulli_flip_loglik_backward(
            g(), Xf(), Lf(), Wf(), Zf(), True, True, True, b
        ),
        exc=_exc,
        match=f"bernoulli_flip_loglik_backward: {_match}",
        backends=FLIP_BACKENDS,
    )
bad_backends(
    "bernoulli_flip_loglik",
    lambda b: DQK.bernoulli_flip_loglik(Xf(), Lf(), Wf(), Zf(), b),
    lambda b: ops.bernoulli_flip_loglik(Xf(), Lf(), Wf(), Zf(), backend=b),
)
bad_backends(
    "bernoulli_flip_loglik_backward",
    lambda b: DQK.bernoulli_flip_loglik_backward(T.z(3, 5), Xf(), Lf(), Wf(), Zf(), True, True,
                                                 True, b),
    None,
)  # fmt: skip


def flip_strided(b, dev):
    x = T.r(4, 3).t()  # [3, 4], transposed
    lg = T.r(3, 8, seed=1)[:, ::2]
    w = T.r(1, 5, seed=2).expand(4, 5)  # stride 0 over D
    z = (T.r(3, 1, seed=3) > 0).float().expand(3, 5)
    c = [t.contiguous() for t in (x, lg, w, z)]
    same(DQK.bernoulli_flip_loglik(x, lg, w, z, b), DQK.bernoulli_flip_loglik(*c, b))
    g = T.r(1, 5, seed=4).expand(3, 5)
    same(
        DQK.bernoulli_flip_loglik_backward(g, x, lg, w, z, True, True, True, b),
        DQK.bernoulli_flip_loglik_backward(g.contiguous(), *c, True, True, True, b),
    )


case("bernoulli_flip_loglik: strided and stride-0 inputs", direct=flip_strided,
     backends=FLIP_BACKENDS)  # fmt: skip


# ----------------------------------------------------------------------------- the runner
#
# A fork per case costs 30 ms of system time here (copying the page tables of a process that
# holds torch and triton) and far more on a loaded machine, so a child serves the cases of
# one (backend, device) one after another until one of them ends it: that case fails with
# the signal or status, and the next case gets a fresh child. DQK_TEST_FORK_EACH=1 forks a
# child per case instead.

FORK_EACH = os.environ.get("DQK_TEST_FORK_EACH", "0") == "1"


def _outcome(call) -> list:
    try:
        call()
    except BaseException as e:  # noqa: BLE001 (reported to the parent)
        return [type(e).__name__, str(e)]
    return ["ok", ""]


def _run_case(c: Case, backend: str, device: str) -> dict:
    saved = {k: os.environ.get(k) for k in c.env}
    os.environ.update(c.env)
    try:
        out = {"direct": _outcome(lambda: c.direct(backend, device))}
        if c.public is not None:
            out["public"] = _outcome(lambda: c.public(backend, device))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def _serve(backend: str, device: str, r: int, w: int) -> None:
    """The child's loop: a case name per line in, its outcomes as a JSON line out."""
    status = 0
    try:
        torch.set_num_threads(1)
        T.device = device
        with os.fdopen(r, "r") as names:
            for line in names:
                out = _run_case(CASES[line.rstrip("\n")], backend, device)
                os.write(w, (json.dumps(out) + "\n").encode())
    except BaseException:  # noqa: BLE001
        status = 3
    finally:
        os._exit(status)


class Child:
    """A forked child that runs cases on one (backend, device)."""

    def __init__(self, backend: str, device: str):
        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(from_parent)
            os.close(from_child)
            _serve(backend, device, to_child, to_parent)
        os.close(to_child)
        os.close(to_parent)
        self.send, self.recv = from_parent, from_child

    def close(self) -> None:
        os.close(self.send)
        os.close(self.recv)
        os.waitpid(self.pid, 0)

    def run(self, name: str) -> dict:
        """The outcomes of case ``name``; fails the test if the child crashed or hung."""
        os.write(self.send, (name + "\n").encode())
        buf, deadline = b"", time.monotonic() + CHILD_TIMEOUT_S
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([self.recv], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(self.pid, signal.SIGKILL)
                self.close()
                pytest.fail(f"the case did not finish within {CHILD_TIMEOUT_S} s")
            chunk = os.read(self.recv, 1 << 16)
            if not chunk:  # the child ended
                os.close(self.send)
                os.close(self.recv)
                _, status = os.waitpid(self.pid, 0)
                if os.WIFSIGNALED(status):
                    sig = signal.Signals(os.WTERMSIG(status)).name
                    pytest.fail(f"the child process was killed by {sig} (a crash in the op)")
                pytest.fail(f"the child process exited with status {os.WEXITSTATUS(status)}")
            buf += chunk
        return json.loads(buf)


_children: dict[tuple[str, str], Child] = {}


def run_forked(name: str, backend: str, device: str) -> dict:
    """Case ``name``'s outcomes, run in a child process."""
    child = _children.pop((backend, device), None) or Child(backend, device)
    out = child.run(name)  # fails the test (and drops the child) if the child died
    if FORK_EACH:
        child.close()
    else:
        _children[(backend, device)] = child
    return out


@pytest.fixture(scope="module", autouse=True)
def _children_of_this_module():
    """Imports every kernel module that can run here before forking (so that children do not
    each import triton); ends the children after the last case."""
    for family in registry.families():
        for b in ("torch", "cpp", "triton"):
            if backends.why_unavailable(b, "cpu", torch.float32, family) is None:
                registry.module(family, b)
    yield
    while _children:
        _children.popitem()[1].close()


def _expect(outcome: list, exc: type | None, match: str, what: str) -> None:
    kind, msg = outcome
    if exc is None:
        assert kind == "ok", f"{what} raised {kind}: {msg}"
        return
    assert kind == exc.__name__, f"{what}: expected {exc.__name__} ({match!r}); got {kind}: {msg}"
    assert match in msg, f"{what}: {match!r} not in the message:\n{msg}"


# cases of the harness's own test (not run as cases: they end their child)
HARNESS = ("harness: abort", "harness: exit")
# (faulthandler off first: its dump of the deliberate abort would read like a crash in CI logs)
case(HARNESS[0], direct=lambda b, dev: (faulthandler.disable(), os.abort()))
case(HARNESS[1], direct=lambda b, dev: os._exit(7))


def _params():
    """(case, backend, device) for every run a case asks for (CUDA ones marked gpu)."""
    for name, c in CASES.items():
        if name in HARNESS:
            continue
        for backend, device in RUNS:
            if (c.backends is None or backend in c.backends) and device in c.devices:
                marks = [pytest.mark.gpu] if device == "cuda" else []
                yield pytest.param(
                    name, backend, device, marks=marks, id=f"{name}-{backend}-{device}"
                )


@pytest.mark.parametrize("name, backend, device", list(_params()))
def test_direct_call(name, backend, device):
    c = CASES[name]
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    why = backends.why_unavailable(backend, device, torch.float32)
    if why is not None:
        pytest.skip(f"{backend} on {device}: {why}")
    out = run_forked(name, backend, device)
    _expect(out["direct"], c.exc, c.match, f"torch.ops.dqk ({name})")
    if c.public is not None:
        pm = c.match if c.public_match is None else c.public_match
        _expect(out["public"], c.exc, pm, f"the public function ({name})")


def test_every_custom_op_has_cases():
    """Each op registered under torch.ops.dqk has refusal cases and a strided-input case."""
    import dqkernels.ops  # noqa: F401 (registers the ops)

    names = {n for n in dir(DQK) if not n.startswith("_") and isinstance(getattr(DQK, n),
             torch._ops.OpOverloadPacket)}  # fmt: skip
    assert len(names) == 18, sorted(names)
    covered = {n.split(":")[0] for n in CASES}
    assert names <= covered, sorted(names - covered)


def test_a_crash_fails_its_case_only():
    """The harness: a case that kills its child (an abort, as the issue's out-of-bounds write
    did) fails with the signal, and the next case runs in a fresh child."""
    with pytest.raises(pytest.fail.Exception, match="killed by SIGABRT"):
        run_forked("harness: abort", "torch", "cpu")
    with pytest.raises(pytest.fail.Exception, match="exited with status 7"):
        run_forked("harness: exit", "torch", "cpu")
    name = "dmol_nll: issue 12: x 1x3x1x1, params 64x10x64x64"
    assert run_forked(name, "torch", "cpu")["direct"][0] == "ValueError"


COMPILED = {  # op: (a call, its tensor arguments, the case whose message it raises)
    "dmol_nll": (
        lambda x, p: DQK.dmol_nll(x, p, L, MLS, "torch"),
        lambda: (T.z(1, 3, 1, 1), T.z(64, 10, 64, 64)),
        "dmol_nll: issue 12: x 1x3x1x1, params 64x10x64x64",
    ),
    "vq_ema_update": (
        lambda cs, es, z, i: DQK.vq_ema_update(cs, es, z, i, 0.9, "torch"),
        lambda: (T.z(2), ES(), T.z(6, 4), IDX()),
        "vq_ema_update: issue 12: short cluster_size",
    ),
    "masked_conv2d_backward": (
        lambda x, w, g: DQK.masked_conv2d_backward(x, w, g, "A", 1, True, True, True, "torch"),
        lambda: (T.z(2, 3, 4, 5), T.z(4, 3, 3, 3), T.z(2, 3, 4, 5)),
        "masked_conv2d_backward: grad_y of other channels",
    ),
    "bernoulli_flip_loglik": (
        lambda x, lg, w, z: DQK.bernoulli_flip_loglik(x, lg, w, z, "torch"),
        lambda: (Xf(), Lf(), Wf(), T.z(64, 5)),
        "bernoulli_flip_loglik: z of other B",
    ),
    "mixlogcdf_coupling_inverse": (
        lambda *t: DQK.mixlogcdf_coupling_inverse(*t, "torch"),
        lambda: (T.z(2, 3), T.z(2, 3, 4), T.z(2, 3, 3), T.z(2, 3, 4), T.z(2, 3), T.z(2, 3)),
        "mixlogcdf_coupling_inverse: K mismatch",
    ),
}


@pytest.mark.parametrize("op", COMPILED)
def test_compile_reports_the_same_error(op):
    """The fake implementations run the same checks: torch.compile refuses the call while
    tracing, with the op's message."""
    call, args, name = COMPILED[op]
    T.device = "cpu"
    traced = torch.compile(call, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="when making fake tensor call") as info:
        traced(*args())
    assert CASES[name].match in str(info.value)
