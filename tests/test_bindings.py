"""The one Python -> ``dqkernels._C`` convention: every entry point takes its tensors as
``kernels._cext.tensor_arg`` makes them, fills the kernel's arguments from the tensors' own
sizes and refuses tensors that disagree, before any kernel runs, with a ValueError (sizes,
devices, layout) or TypeError (dtypes) naming the entry point and the argument."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dqkernels import _ext
from dqkernels.kernels._cext import strided_arg, tensor_arg

pytestmark = pytest.mark.skipif(not _ext.has_cpu_kernels(), reason="dqkernels._C not built")

C = _ext._C
T = tensor_arg
Z = torch.zeros


def on_device(t: torch.Tensor, device: int):
    """t's argument as if t were on another device (-1 CPU, k CUDA k): what a CPU or CUDA
    entry point would be handed for such a tensor."""
    a = tensor_arg(t)
    return (a[0], a[1], device) + a[3:]


def raises(exc, match, fn, *args):
    with pytest.raises(exc, match=match):
        fn(*args)


# The coupling entry points' last three arguments: inverse, num_threads, scalar_only.
CPU_LAUNCH = dict(inverse=False, num_threads=1, scalar_only=False)


def call_args(base: dict, **changed) -> list:
    """An entry point's arguments: base's values (by argument name, in order) with those named
    in changed put in their place; tensors as tensor_arg makes them, anything else as it is."""
    assert changed.keys() <= base.keys(), changed.keys() - base.keys()
    return [T(v) if isinstance(v, torch.Tensor) else v for v in {**base, **changed}.values()]


# ----------------------------------------------------------------------------- dmol


def test_dmol():
    x, p, out = Z(2, 3, 4, 5), Z(2, 20, 4, 5), Z(2, 4, 5)
    C.dmol_nll_forward_cpu(T(x), T(p), T(out), 256, -7.0, 1)  # agrees: runs
    assert torch.isfinite(out).all()
    f = C.dmol_nll_forward_cpu
    raises(
        ValueError,
        r"^dmol_nll_forward_cpu: x must have shape \(64, 3, 64, 64\); got "
        r"\(1, 3, 1, 1\)$",
        f,
        T(Z(1, 3, 1, 1)),
        T(Z(64, 20, 64, 64)),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(
        ValueError,
        r"out must have shape \(2, 4, 5\); got \(1, 1, 1\)",
        f,
        T(x),
        T(p),
        T(Z(1, 1, 1)),
        256,
        -7.0,
        1,
    )
    raises(
        ValueError,
        r"params has 21 channels, which fits no mixture count for C=3: expected "
        r"a positive multiple of 10",
        f,
        T(x),
        T(Z(2, 21, 4, 5)),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(
        ValueError,
        r"the channel count C must be 1 or 3; got 2",
        f,
        T(Z(2, 2, 4, 5)),
        T(p),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(ValueError, r"num_levels must be >= 2; got 1", f, T(x), T(p), T(out), 1, -7.0, 1)
    raises(
        TypeError,
        r"^dmol_nll_forward_cpu: x must have dtype float32; got float16$",
        f,
        T(x.half()),
        T(p),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(
        TypeError,
        r"out must have dtype float32; got float64",
        f,
        T(x),
        T(p),
        T(out.double()),
        256,
        -7.0,
        1,
    )
    raises(
        TypeError,
        r"params must be a floating tensor .*; got int64",
        f,
        T(x),
        T(p.long()),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(
        ValueError,
        r"x is on cuda:0; this entry point takes CPU tensors",
        f,
        on_device(x, 0),
        T(p),
        T(out),
        256,
        -7.0,
        1,
    )
    raises(ValueError, r"out is required; got None", f, T(x), T(p), None, 256, -7.0, 1)
    raises(ValueError, r"x must have 4 dimensions; got 3", f, T(x[0]), T(p), T(out), 256, -7.0, 1)
    raises(
        ValueError,
        r"kernels take no empty tensors",
        f,
        T(Z(0, 3, 4, 5)),
        T(Z(0, 20, 4, 5)),
        T(Z(0, 4, 5)),
        256,
        -7.0,
        1,
    )
    g = C.dmol_nll_backward_cpu
    raises(
        ValueError,
        r"dmol_nll_backward_cpu: grad_params must have shape \(2, 20, 4, 5\); "
        r"got \(2, 10, 4, 5\)",
        g,
        T(x),
        T(p),
        T(out),
        T(Z(2, 10, 4, 5)),
        256,
        -7.0,
        1,
    )
    raises(
        ValueError,
        r"dmol_nll_forward_backward_cpu: grad_unit must have shape",
        C.dmol_nll_forward_backward_cpu,
        T(x),
        T(p),
        T(out),
        T(p[:1]),
        256,
        -7.0,
        1,
    )
    s = C.dmol_sample_cpu
    raises(
        ValueError,
        r"dmol_sample_cpu: u must have shape \(2, 4, 4, 5\); got \(2, 3, 4, 5\)",
        s,
        T(p),
        T(Z(2, 3, 4, 5)),
        T(x),
        256,
        -7.0,
        1,
    )


# ----------------------------------------------------------------------------- coupling


def test_affine_coupling():
    x, ld = Z(2, 1, 3, 4), Z(2)
    y = Z(2, 1, 3, 4)
    fwd = dict(x=x, shift=x, scale_logit=x, y=y, logdet=ld, **CPU_LAUNCH)
    C.affine_coupling_forward_cpu(*call_args(fwd))
    f = C.affine_coupling_forward_cpu
    raises(
        ValueError,
        r"^affine_coupling_forward_cpu: shift must have shape \(2, 1, 3, 4\); "
        r"got \(2, 1, 3, 5\)$",
        f,
        *call_args(fwd, shift=Z(2, 1, 3, 5)),
    )
    raises(
        ValueError, r"logdet must have shape \(2,\); got \(1,\)", f, *call_args(fwd, logdet=Z(1))
    )
    xd, yd = x.double(), y.double()
    raises(
        TypeError,
        r"logdet must have dtype float64; got float32",
        f,
        *call_args(fwd, x=xd, shift=xd, scale_logit=xd, y=yd),
    )
    raises(
        TypeError,
        r"scale_logit must have dtype float32; got bfloat16",
        f,
        *call_args(fwd, scale_logit=x.bfloat16()),
    )
    bwd = dict(
        x=x, shift=x, scale_logit=x, grad_y=y, grad_logdet=ld, grad_x=y, grad_shift=y,
        grad_scale_logit=y, **CPU_LAUNCH,
    )  # fmt: skip
    raises(
        ValueError,
        r"affine_coupling_backward_cpu: grad_shift is required",
        C.affine_coupling_backward_cpu,
        *call_args(bwd, grad_shift=None),
    )


def test_mixlog_coupling():
    x, k, ld = Z(2, 1, 3, 4), Z(2, 1, 3, 4, 5), Z(2)
    mix = dict(x=x, logits=k, means=k, log_scales=k, a=x, b=x)
    fwd = dict(**mix, out=x, logdet=ld, **CPU_LAUNCH)
    C.mixlogcdf_forward_cpu(*call_args(fwd, out=Z(2, 1, 3, 4)))
    f = C.mixlogcdf_forward_cpu
    raises(
        ValueError,
        r"^mixlogcdf_forward_cpu: means must have shape \(2, 1, 3, 4, 5\); got "
        r"\(2, 1, 3, 4, 4\)$",
        f,
        *call_args(fwd, means=Z(2, 1, 3, 4, 4)),
    )
    raises(
        ValueError,
        r"logits must have shape \(2, 1, 3, 4, \*\); got \(2, 1, 3, 3, 5\)",
        f,
        *call_args(fwd, logits=Z(2, 1, 3, 3, 5)),
    )
    raises(ValueError, r"logits must have 5 dimensions; got 4", f, *call_args(fwd, logits=x))
    bwd = dict(
        **mix, grad_out=x, grad_logdet=ld, grad_x=x, grad_logits=k, grad_means=k,
        grad_log_scales=k, grad_a=x, grad_b=x, **CPU_LAUNCH,
    )  # fmt: skip
    raises(
        ValueError,
        r"mixlogcdf_backward_cpu: grad_log_scales must have 5 dimensions; got 4",
        C.mixlogcdf_backward_cpu,
        *call_args(bwd, grad_log_scales=x),
    )


def test_coupling_views_are_checked_as_views():
    """The coupling kernels get merged [B, n1, n2, n3] views (strided_arg); a view that
    claims more elements than another is refused."""
    x, ld = Z(2, 12), Z(2)
    v = strided_arg(x, (2, 1, 1, 12), (12, 0, 0, 1))
    C.affine_coupling_forward_cpu(
        v, v, v, strided_arg(Z(2, 12), (2, 1, 1, 12), (12, 0, 0, 1)), T(ld), False, 1, False
    )
    big = strided_arg(x, (2, 1, 1, 13), (12, 0, 0, 1))
    raises(
        ValueError,
        r"y must have shape \(2, 1, 1, 12\); got \(2, 1, 1, 13\)",
        C.affine_coupling_forward_cpu,
        v,
        v,
        v,
        big,
        T(ld),
        False,
        1,
        False,
    )


# ----------------------------------------------------------------------------- masked


def test_bernoulli_flip():
    x, lg, w, z, out = Z(5, 4), Z(5, 4), Z(4, 3), Z(5, 3), Z(5, 3)
    fwd = dict(x=x, logits=lg, weight=w, z=z, out=out, num_threads=1)
    C.bernoulli_flip_forward_cpu(*call_args(fwd))  # agrees: runs
    assert torch.isfinite(out).all()
    f = C.bernoulli_flip_forward_cpu
    raises(
        ValueError,
        r"^bernoulli_flip_forward_cpu: logits must have shape \(5, 4\); got \(5, 3\)$",
        f,
        *call_args(fwd, logits=Z(5, 3)),
    )
    raises(ValueError, r"weight must have shape \(4, \*\); got \(3, 3\)", f,
           *call_args(fwd, weight=Z(3, 3)))  # fmt: skip
    raises(ValueError, r"z must have shape \(5, 3\); got \(64, 3\)", f,
           *call_args(fwd, z=Z(64, 3)))  # fmt: skip
    raises(TypeError, r"z must have dtype float32; got float64", f,
           *call_args(fwd, z=Z(5, 3, dtype=torch.float64)))  # fmt: skip
    raises(TypeError, r"out must have dtype float32; got float16", f,
           *call_args(fwd, out=Z(5, 3, dtype=torch.float16)))  # fmt: skip
    raises(ValueError, r"out must be contiguous; got strides \(1, 5\) for shape \(5, 3\)", f,
           *call_args(fwd, out=Z(3, 5).t()))  # fmt: skip
    raises(ValueError, r"the kernels take no empty tensors; got \(B, D, H\) = \(0, 4, 3\)", f,
           *call_args(fwd, x=Z(0, 4), logits=Z(0, 4), z=Z(0, 3), out=Z(0, 3)))  # fmt: skip
    g = C.bernoulli_flip_backward_cpu
    bwd = dict(x=x, logits=lg, weight=w, z=z, grad_out=out, grad_x=None, grad_logits=None,
               grad_weight=None, num_threads=1)  # fmt: skip
    C.bernoulli_flip_backward_cpu(*call_args(bwd, grad_weight=Z(4, 3)))
    raises(ValueError, r"^bernoulli_flip_backward_cpu: grad_weight must have shape \(4, 3\); "
           r"got \(3, 4\)$", g, *call_args(bwd, grad_weight=Z(3, 4)))  # fmt: skip
    raises(ValueError, r"grad_out must have shape \(5, 3\); got \(5, 4\)", g,
           *call_args(bwd, grad_out=x))  # fmt: skip
    raises(ValueError, r"grad_logits must be contiguous", g,
           *call_args(bwd, grad_logits=Z(4, 5).t()))  # fmt: skip


def test_masked_linear():
    x, w, b, y = Z(5, 4), Z(3, 4), Z(3), Z(5, 3)
    di, do = torch.arange(4), torch.arange(3)
    launch = dict(strict=True, num_threads=1, isa=0)
    fwd = dict(x=x, weight=w, bias=b, in_degrees=di, out_degrees=do, y=y, **launch)
    C.masked_linear_forward_cpu(*call_args(fwd))
    f = C.masked_linear_forward_cpu
    raises(
        ValueError,
        r"^masked_linear_forward_cpu: bias must have shape \(3,\); got \(2,\)$",
        f,
        *call_args(fwd, bias=Z(2)),
    )
    raises(
        ValueError,
        r"weight must have shape \(\*, 4\); got \(3, 5\)",
        f,
        *call_args(fwd, weight=Z(3, 5)),
    )
    raises(
        ValueError,
        r"out_degrees must have shape \(3,\); got \(2,\)",
        f,
        *call_args(fwd, out_degrees=torch.arange(2)),
    )
    raises(
        TypeError,
        r"in_degrees must have dtype int64; got int32",
        f,
        *call_args(fwd, in_degrees=torch.arange(4, dtype=torch.int32)),
    )
    raises(
        ValueError,
        r"in_degrees must be contiguous; got strides \(2,\) for shape \(4,\)",
        f,
        *call_args(fwd, in_degrees=torch.arange(8)[::2]),
    )
    raises(
        ValueError,
        r"y must be contiguous; got strides \(1, 5\) for shape \(5, 3\)",
        f,
        *call_args(fwd, y=Z(3, 5).t()),
    )
    g = C.masked_linear_backward_cpu
    bwd = dict(
        grad_y=y, x=x, weight=w, in_degrees=di, out_degrees=do, grad_x=None, grad_weight=None,
        grad_bias=None, **launch,
    )  # fmt: skip
    C.masked_linear_backward_cpu(*call_args(bwd, grad_bias=b))
    raises(
        ValueError,
        r"masked_linear_backward_cpu: grad_weight must have shape \(3, 4\); got "
        r"\(4, 3\)",
        g,
        *call_args(bwd, grad_weight=Z(4, 3)),
    )
    raises(
        ValueError, r"grad_y must have shape \(5, 3\); got \(5, 4\)", g, *call_args(bwd, grad_y=x)
    )


def test_masked_conv2d():
    x, w, b, y = Z(2, 3, 4, 5), Z(6, 3, 3, 3), Z(6), Z(2, 6, 4, 5)
    C.masked_conv2d_forward_cpu(T(x), T(w), T(b), T(y), False, 3, 1)
    f = C.masked_conv2d_forward_cpu
    raises(
        ValueError,
        r"^masked_conv2d_forward_cpu: weight must have shape \(\*, 3, \*, \*\); "
        r"got \(6, 2, 3, 3\)$",
        f,
        T(x),
        T(Z(6, 2, 3, 3)),
        T(b),
        T(y),
        False,
        1,
        1,
    )
    raises(
        ValueError,
        r"bias must have shape \(6,\); got \(5,\)",
        f,
        T(x),
        T(w),
        T(Z(5)),
        T(y),
        False,
        1,
        1,
    )
    raises(
        ValueError,
        r"y must have shape \(2, 6, 4, 5\); got \(2, 6, 4, 4\)",
        f,
        T(x),
        T(w),
        T(b),
        T(Z(2, 6, 4, 4)),
        False,
        1,
        1,
    )
    raises(
        ValueError,
        r"the kernel size k must be odd; got 2",
        f,
        T(x),
        T(Z(6, 3, 2, 2)),
        T(b),
        T(y),
        False,
        1,
        1,
    )
    raises(
        ValueError,
        r"weight must have a square kernel",
        f,
        T(x),
        T(Z(6, 3, 3, 5)),
        T(b),
        T(y),
        False,
        1,
        1,
    )
    raises(
        ValueError,
        r"groups must be in \[1, min\(Cin, Cout\)\] = \[1, 3\]; got 4",
        f,
        T(x),
        T(w),
        T(b),
        T(y),
        False,
        4,
        1,
    )
    g = C.masked_conv2d_backward_cpu
    C.masked_conv2d_backward_cpu(T(x), T(w), T(y), None, None, T(b), True, 1, 1)
    raises(
        ValueError,
        r"masked_conv2d_backward_cpu: grad_x must have shape \(2, 3, 4, 5\); got "
        r"\(2, 6, 4, 5\)",
        g,
        T(x),
        T(w),
        T(y),
        T(y),
        None,
        None,
        True,
        1,
        1,
    )


# ----------------------------------------------------------------------------- vq


def test_vq():
    z, e = Z(7, 4), Z(5, 4)
    idx, dist = torch.zeros(7, dtype=torch.int64), Z(7)
    nearest = dict(z=z, codebook=e, indices=idx, sqdist=dist, num_threads=1, isa=0)
    C.vq_nearest_cpu(*call_args(nearest))
    f = C.vq_nearest_cpu
    raises(
        ValueError,
        r"^vq_nearest_cpu: codebook must have shape \(\*, 4\); got \(5, 3\)$",
        f,
        *call_args(nearest, codebook=Z(5, 3)),
    )
    raises(
        TypeError,
        r"codebook must have dtype float64; got float16",
        f,
        *call_args(nearest, z=z.double(), codebook=e.half(), sqdist=dist.double()),
    )
    raises(
        TypeError,
        r"indices must have dtype int64; got int32",
        f,
        *call_args(nearest, indices=idx.int()),
    )
    raises(ValueError, r"z must be contiguous", f, *call_args(nearest, z=Z(4, 7).t()))
    raises(
        ValueError,
        r"sqdist must have shape \(7,\); got \(6,\)",
        f,
        *call_args(nearest, sqdist=Z(6)),
    )
    u, out = Z(7, 2), torch.zeros(7, 2, dtype=torch.int64)
    sample = dict(z=z, codebook=e, u=u, out=out, inv_temperature=1.0, num_threads=1, isa=0)
    C.vq_sample_cpu(*call_args(sample))
    raises(
        ValueError,
        r"vq_sample_cpu: out must have shape \(7, 2\); got \(7, 3\)",
        C.vq_sample_cpu,
        *call_args(sample, out=torch.zeros(7, 3, dtype=torch.int64)),
    )
    cs, es, ind = Z(5), Z(5, 4), torch.zeros(7, 1, dtype=torch.int64)
    ema = dict(cluster_size=cs, embed_sum=es, z=z, indices=ind, decay=0.9, num_threads=1)
    C.vq_ema_update_cpu(*call_args(ema))
    g = C.vq_ema_update_cpu
    raises(
        ValueError,
        r"^vq_ema_update_cpu: cluster_size must have shape \(5,\); got \(3,\)$",
        g,
        *call_args(ema, cluster_size=Z(3)),
    )
    raises(
        TypeError,
        r"embed_sum must be float32 or float64 \(the EMA state\); got bfloat16",
        g,
        *call_args(ema, cluster_size=cs.bfloat16(), embed_sum=es.bfloat16()),
    )
    raises(
        ValueError,
        r"indices must have shape \(7, \*\); got \(6, 1\)",
        g,
        *call_args(ema, indices=ind[:6]),
    )


# ----------------------------------------------------------------------------- the form


def test_malformed_arguments_are_type_errors():
    x, p, out = Z(2, 3, 4, 5), Z(2, 20, 4, 5), Z(2, 4, 5)
    f = C.dmol_nll_forward_cpu
    raises(TypeError, r"incompatible function arguments", f, x, T(p), T(out), 256, -7.0, 1)
    raises(TypeError, r"incompatible function arguments", f, T(x)[:5], T(p), T(out), 256, -7.0, 1)
    raises(
        TypeError,
        r"x must be a floating tensor .*; got a dtype the kernels do not take",
        f,
        T(x.to(torch.complex64)),
        T(p),
        T(out),
        256,
        -7.0,
        1,
    )


def test_tensor_arg_form():
    t = torch.zeros(3, 4, dtype=torch.float64)[:, 1:]
    ptr, code, device, sizes, strides, owner = tensor_arg(t)
    assert (ptr, device, tuple(sizes), tuple(strides)) == (t.data_ptr(), -1, (3, 3), (4, 1))
    assert C.dtype_codes()["float64"] == code and owner is t
    assert tensor_arg(None) is None
    assert tensor_arg(torch.zeros(2, device="meta"))[2] == -2


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="dqkernels._C built without CUDA")
def test_cuda_entry_points_refuse_cpu_tensors():
    """Checked before any CUDA call, so this runs without a GPU too."""
    x, p, out = Z(2, 3, 4, 5), Z(2, 20, 4, 5), Z(2, 4, 5)
    raises(
        ValueError,
        r"^dmol_nll_forward_cuda: x is on cpu; this entry point takes CUDA "
        r"tensors$",
        C.dmol_nll_forward_cuda,
        T(x),
        T(p),
        T(out),
        256,
        -7.0,
        0,
    )
    raises(
        ValueError,
        r"dmol_nll_forward_cuda: params is on cuda:1 but x is on cuda:0",
        C.dmol_nll_forward_cuda,
        on_device(x, 0),
        on_device(p, 1),
        on_device(out, 0),
        256,
        -7.0,
        0,
    )
    z, e = on_device(Z(7, 4), 0), on_device(Z(5, 3), 0)
    raises(
        ValueError,
        r"vq_nearest_cuda: codebook must have shape \(\*, 4\)",
        C.vq_nearest_cuda,
        z,
        e,
        on_device(torch.zeros(7, dtype=torch.int64), 0),
        on_device(Z(7), 0),
        on_device(torch.zeros(1, dtype=torch.uint8), 0),
        0,
    )
    x4 = on_device(Z(2, 1, 3, 4), 0)
    raises(
        ValueError,
        r"affine_coupling_forward_cuda: work must have shape \(2, 1\); got "
        r"\(2, 2\)",
        C.affine_coupling_forward_cuda,
        x4,
        x4,
        x4,
        x4,
        on_device(Z(2), 0),
        False,
        on_device(Z(2, 2), 0),
        4096,
        0,
    )
    raises(
        ValueError,
        r"masked_linear_forward_cuda: y must have shape \(5, 3\)",
        C.masked_linear_forward_cuda,
        on_device(Z(5, 4), 0),
        on_device(Z(3, 4), 0),
        None,
        on_device(torch.arange(4), 0),
        on_device(torch.arange(3), 0),
        on_device(Z(5, 4), 0),
        True,
        0,
    )
    xc = on_device(Z(2, 3, 4, 5), 0)
    raises(
        ValueError,
        r"masked_conv2d_backward_workspace_cuda: grad_y must have shape",
        C.masked_conv2d_backward_workspace_cuda,
        xc,
        on_device(Z(6, 3, 3, 3), 0),
        xc,
        None,
        None,
        None,
        True,
        1,
    )


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="dqkernels._C built without CUDA")
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CUDA build without a usable GPU")
def test_vq_cuda_entry_points_need_a_device_for_z():
    """The vq kernels make z's device current; when the CUDA runtime cannot place z (here:
    no usable driver) that is a clear error before any launch, not a silent guess of the
    device (the GPU test suite checks host memory posing as cuda:0)."""
    z, e, idx, d = Z(8, 4), Z(3, 4), torch.zeros(8, dtype=torch.int64), Z(8)
    ws = torch.zeros(1 << 16, dtype=torch.uint8)
    u, out = torch.rand(8, 2).sort(1).values, torch.zeros(8, 2, dtype=torch.int64)
    calls = [
        (C.vq_nearest_workspace_cuda, (z, e, idx, d)),
        (C.vq_nearest_cuda, (z, e, idx, d, ws, 0)),
        (C.vq_sample_cuda, (z, e, u, out, 1.0, 0)),
        (C.vq_ema_update_cuda, (Z(3), Z(3, 4), z, idx.view(8, 1), 0.9, 0)),
    ]
    for fn, args in calls:
        tensors = [on_device(a, 0) if isinstance(a, torch.Tensor) else a for a in args]
        raises(RuntimeError, r"^vq cuda: cannot tell which CUDA device holds z", fn, *tensors)


# ----------------------------------------------------------------------------- loading


def _load_in_child(ext_path: str) -> subprocess.CompletedProcess:
    code = "from dqkernels import _ext\nprint(_ext._C.__file__, _ext.build_info())\n"
    env = {**os.environ, "DQK_EXT_PATH": ext_path}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_ext_path_loads_the_module_from_that_file(tmp_path):
    """DQK_EXT_PATH (how .ci/asan tests a sanitizer build) loads _C from the file named,
    not the package's own, and says what it is."""
    copy = tmp_path / Path(C.__file__).name
    shutil.copy(C.__file__, copy)
    r = _load_in_child(str(copy))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{copy} {{"), r.stdout
    assert repr(C.build_info()["compiler"]) in r.stdout


def test_ext_path_that_does_not_load_is_an_error(tmp_path):
    """A module file asked for must load: never a silent fallback to "not built" (a test run
    would then skip the kernels it was meant to check)."""
    for bad in (tmp_path / "missing.so", tmp_path / "_C.so"):
        if bad.name == "_C.so":
            bad.write_bytes(b"not an ELF file")
        r = _load_in_child(str(bad))
        assert r.returncode != 0
        assert "ImportError" in r.stderr and str(bad) in r.stderr, r.stderr
