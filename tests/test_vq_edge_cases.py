"""Numerical edge cases of the VQ ops answered alike on every backend (issue 12, item 6): the
temperature range of vq_sample and its limits, and the NaN rule of vq_nearest / vq_sample."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKEND_DEVICES, require

from dqkernels.ops import vq_nearest, vq_sample
from dqkernels.ops.vq import min_temperature
from dqkernels.reference.vq import vq_nearest_reference, vq_sample_reference

DTYPES = [torch.float32, torch.float64]


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _uniforms(shape, acc, device, seed):
    """The uniforms vq_sample draws from a generator seeded with ``seed``."""
    g = torch.Generator(device).manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=acc, device=device).cpu()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=str)
def test_temperature_rule(dtype):
    """One rule: finite, and 1/temperature finite in the dtype the kernels compute in."""
    e = torch.randn(4, 3, dtype=dtype)
    z = torch.randn(2, 3, dtype=dtype)
    low = min_temperature(_acc(dtype))
    assert math.isfinite(1.0 / low) and 1.0 / low <= torch.finfo(_acc(dtype)).max
    name = str(_acc(dtype)).replace("torch.", "")
    for bad in (low / 2, 1e-310, 5e-324, 0.0, -0.0, -1.0, math.inf, math.nan, -math.inf):
        with pytest.raises(
            ValueError,
            match=rf"^vq_sample: temperature must be finite and >= {low:.6g} \(> 0, with "
            rf"1/temperature finite in {name}, the dtype the kernels compute in\); got ",
        ):
            vq_sample(z, e, 2, temperature=bad, backend="torch")
    assert vq_sample(z, e, 2, temperature=low, backend="torch").shape == (2, 2)
    with pytest.raises(TypeError, match="^vq_sample: temperature must be a float; got str"):
        vq_sample(z, e, 2, temperature="1", backend="torch")


def _points(dtype, device, seed=11):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(7, 4, generator=g, dtype=torch.float64)
    z = torch.randn(30, 4, generator=g, dtype=torch.float64)
    return z.to(device, dtype), e.to(device, dtype)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_temperature_limits_agree(backend, device, dtype):
    """The smallest allowed temperature draws the nearest code; a temperature whose
    reciprocal rounds to 0 draws uniformly: the inverse CDF of equal weights at the
    generator's uniforms, floor(u K), on every backend."""
    require(backend, device, dtype)
    z, e = _points(dtype, device)
    K, S = e.shape[0], 64
    nearest, _ = vq_nearest(z, e, backend=backend)
    cold = vq_sample(z, e, S, temperature=min_temperature(_acc(dtype)), backend=backend)
    assert torch.equal(cold, nearest[:, None].expand(-1, S))
    for hot in (1e300, 1.7e308):
        got = vq_sample(
            z,
            e,
            S,
            temperature=hot,
            generator=torch.Generator(device).manual_seed(5),
            backend=backend,
        ).cpu()
        u = _uniforms((z.shape[0], S), _acc(dtype), device, 5)
        assert torch.equal(got, (u.double() * K).floor().long())


def _nan_case(dtype, device):
    """Codes 0 and 3 hold a NaN, code 5 an inf; z rows: ordinary ones, one exactly on code
    0's finite twin, one holding a NaN (every distance NaN) and one holding an inf (every
    distance NaN or +inf)."""
    g = torch.Generator().manual_seed(12)
    e = torch.randn(6, 3, generator=g, dtype=torch.float64)
    e[0, 1] = math.nan
    e[3] = math.nan
    e[5, 2] = math.inf
    z = torch.randn(9, 3, generator=g, dtype=torch.float64)
    z[0] = e[0].nan_to_num(0.0)  # the NaN code is never chosen, even at "distance 0"
    z[1] = e[2]
    z[7, 0] = math.nan
    z[8, 2] = math.inf
    return z.to(device, dtype), e.to(device, dtype)


def _expected_nearest(z, e):
    """The NaN rule by hand: the first minimum over the codes of finite distance, else 0."""
    d = ((z.double().cpu()[:, None] - e.double().cpu()[None]) ** 2).sum(-1)
    out = []
    for row in d.tolist():
        finite = [(v, k) for k, v in enumerate(row) if math.isfinite(v)]
        out.append(min(finite)[1] if finite else 0)
    return torch.tensor(out)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_rule_nearest(backend, device, dtype):
    """A code at NaN distance is never chosen; a row with no finite distance gets code 0."""
    require(backend, device, dtype)
    z, e = _nan_case(dtype, device)
    idx, dist = vq_nearest(z, e, backend=backend)
    want = _expected_nearest(z, e)
    assert want[7] == 0 and want[8] == 0 and want[0] not in (0, 3, 5)
    assert torch.equal(idx.cpu(), want)
    assert torch.equal(vq_nearest_reference(z.cpu(), e.cpu())[0], want)
    assert bool(torch.isfinite(dist[:7]).all()) and bool(torch.isnan(dist[7]))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_rule_sample(backend, device, dtype):
    """Codes at NaN (or infinite) distance have weight 0 and are never drawn; a row with no
    finite distance draws code 0; otherwise the draws are the reference's inverse CDF."""
    require(backend, device, dtype)
    z, e = _nan_case(dtype, device)
    S = 200
    got = vq_sample(
        z, e, S, temperature=4.0, generator=torch.Generator(device).manual_seed(3), backend=backend
    ).cpu()
    assert not bool(((got == 0) | (got == 3) | (got == 5))[:7].any())
    assert bool((got[7:] == 0).all())
    assert len(set(got[:7].reshape(-1).tolist())) == 3  # the three finite codes are drawn
    u = _uniforms((z.shape[0], S), _acc(dtype), device, 3)
    ref = vq_sample_reference(z.cpu(), e.cpu(), u, 4.0)
    assert (got == ref).double().mean().item() >= 0.99
    # a huge temperature: uniform over the finite codes 1, 2, 4
    hot = vq_sample(
        z,
        e,
        S,
        temperature=1e300,
        generator=torch.Generator(device).manual_seed(3),
        backend=backend,
    ).cpu()
    finite = torch.tensor([1, 2, 4])
    assert torch.equal(hot[:7], finite[(u[:7].double() * 3).floor().long()])
    assert bool((hot[7:] == 0).all())
