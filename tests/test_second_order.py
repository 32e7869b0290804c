"""Second-order gradients: refused with one message on every backend, or correct on every
backend (never silently zero). Issue 12, item 6."""

from __future__ import annotations

import pytest
import torch
from conftest import BACKEND_DEVICES, require

from dqkernels import ops
from dqkernels.nn import VectorQuantizer
from dqkernels.reference.vq import vq_nearest_reference


def _affine(backend, device, inverse):
    def make():
        g = torch.Generator().manual_seed(0)
        return [torch.randn(2, 3, 2, generator=g) for _ in range(3)]

    def run(x, shift, scale_logit):
        y, ld = ops.affine_coupling(x, shift, scale_logit, inverse=inverse, backend=backend)
        return (y * y).sum() + ld.sum()

    return make, run


def _mixlog(backend, device, inverse):
    def make():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2, 3, generator=g)
        logits, means = (torch.randn(2, 3, 4, generator=g) for _ in range(2))
        log_scales = 0.3 * torch.randn(2, 3, 4, generator=g)
        a, b = (0.5 * torch.randn(2, 3, generator=g) for _ in range(2))
        return [x, logits, means, log_scales, a, b]

    def run(x, logits, means, log_scales, a, b):
        y, ld = ops.mixlogcdf_coupling(
            x, logits, means, log_scales, a, b, inverse=inverse, backend=backend
        )
        return (y * y).sum() + ld.sum()

    return make, run


def _masked_linear(backend, device, _):
    def make():
        g = torch.Generator().manual_seed(2)
        return [
            torch.randn(2, 4, generator=g),
            torch.randn(3, 4, generator=g),
            torch.randn(3, generator=g),
        ]

    def run(x, weight, bias):
        d_in = torch.arange(4, device=x.device)
        d_out = torch.arange(1, 4, device=x.device)
        y = ops.masked_linear(x, weight, bias, d_in, d_out, strict=False, backend=backend)
        return (y * y).sum()

    return make, run


def _masked_conv2d(backend, device, _):
    def make():
        g = torch.Generator().manual_seed(3)
        return [
            torch.randn(1, 2, 4, 4, generator=g),
            torch.randn(3, 2, 3, 3, generator=g),
            torch.randn(3, generator=g),
        ]

    def run(x, weight, bias):
        y = ops.masked_conv2d(x, weight, bias, mask_type="B", backend=backend)
        return (y * y).sum()

    return make, run


def _dmol(backend, device, _):
    # on cpp the gradient comes from the fused forward sweep (dqk::dmol_nll_fused)
    x = torch.tensor([-1.0, -0.5, 0.25, 1.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2) * 1.0

    def make():
        g = torch.Generator().manual_seed(4)
        return [torch.randn(1, 20, 2, 2, generator=g)]

    def run(params):
        return ops.dmol_nll(x.to(params.device), params, num_levels=5, backend=backend).sum()

    return make, run


def _bernoulli_flip(backend, device, _):
    z = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])

    def make():
        g = torch.Generator().manual_seed(5)
        return [torch.rand(2, 4, generator=g), torch.randn(2, 4, generator=g),
                torch.randn(4, 3, generator=g)]  # fmt: skip

    def run(x, logits, weight):
        out = ops.bernoulli_flip_loglik(x, logits, weight, z.to(x.device), backend=backend)
        return (out * out).sum()

    return make, run


REFUSED = {
    "affine_coupling": (_affine, False),
    "affine_coupling-inverse": (_affine, True),
    "mixlogcdf_coupling": (_mixlog, False),
    "mixlogcdf_coupling-inverse": (_mixlog, True),
    "masked_linear": (_masked_linear, None),
    "masked_conv2d": (_masked_conv2d, None),
    "dmol_nll": (_dmol, None),
    "bernoulli_flip_loglik": (_bernoulli_flip, None),
}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("case", list(REFUSED))
def test_second_order_refused_with_one_message(case, backend, device):
    """First gradients with create_graph=True work (and equal the plain ones); the second
    backward raises the op's one message, on every backend, whichever input it goes to."""
    require(backend, device)
    builder, flag = REFUSED[case]
    make, run = builder(backend, device, flag)
    op = case.split("-")[0]
    plain = [t.to(device).requires_grad_() for t in make()]
    expected = torch.autograd.grad(run(*plain), plain)
    for i in range(len(plain)):
        inputs = [t.to(device).requires_grad_() for t in make()]
        grads = torch.autograd.grad(run(*inputs), inputs, create_graph=True)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g.detach(), e)
        assert grads[i].requires_grad  # a graph was built: never a silent constant
        penalty = (grads[i] * grads[i]).sum()
        with pytest.raises(RuntimeError, match=f"^{op}: second-order gradients are not supported"):
            torch.autograd.grad(penalty, inputs, allow_unused=True)


def test_backward_ops_refuse_when_called_directly():
    """``torch.ops.dqk.*_backward`` itself refuses to be differentiated, with the message."""
    x, shift, logit, gy = (torch.randn(2, 3, requires_grad=True) for _ in range(4))
    gld = torch.ones(2)
    grads = torch.ops.dqk.affine_coupling_backward(x, shift, logit, gy, gld, False, "torch")
    with pytest.raises(RuntimeError, match="^affine_coupling: second-order gradients"):
        grads[0].sum().backward()
    x = torch.zeros(1, 1, 2, 2)
    params = torch.randn(1, 6, 2, 2, requires_grad=True)
    grad = torch.ops.dqk.dmol_nll_backward(x, params, torch.ones(1, 2, 2), 256, -7.0, "torch")
    with pytest.raises(RuntimeError, match="^dmol_nll: second-order gradients"):
        grad.sum().backward()


def _vq_inputs(dtype, device, seed=5):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    e = torch.randn(4, 3, generator=g, dtype=torch.float64)
    return z.to(device, dtype), e.to(device, dtype)


def _vq_second_order(nearest, z, e):
    """Hessian-vector products of ``sum(w * sqdist)`` (a gradient penalty's shape)."""
    z, e = z.clone().requires_grad_(), e.clone().requires_grad_()
    d = nearest(z, e)
    w = torch.linspace(0.5, 1.5, d.numel(), dtype=d.dtype, device=d.device)
    gz, ge = torch.autograd.grad((w * d.reshape(-1)).sum(), (z, e), create_graph=True)
    penalty = (gz * gz).sum() + (ge * ge * ge).sum()
    return torch.autograd.grad(penalty, (z, e))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_vq_nearest_second_order_matches_reference(backend, device):
    """vq_nearest's backward is differentiable: its second derivatives equal those of the
    float64 reference on every backend (gradgradcheck where the backend runs float64)."""
    dtype = torch.float32 if backend == "triton" else torch.float64
    require(backend, device, dtype)
    z, e = _vq_inputs(dtype, device)

    def ours(z, e):
        return ops.vq_nearest(z, e, backend=backend)[1]

    def ref(z, e):
        return vq_nearest_reference(z, e)[1]

    got = _vq_second_order(ours, z, e)
    want = _vq_second_order(ref, z.double(), e.double())
    # float64: a few roundings of O(1) values (u = 1.1e-16); float32 (triton): the same
    # handful of operations at u = 6e-8 on inputs and results of order 1-10, so 1e-5
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol)
    if dtype == torch.float64:
        torch.autograd.gradgradcheck(ours, (z.clone().requires_grad_(), e.clone().requires_grad_()))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_vector_quantizer_straight_through_second_order(backend, device):
    """The quantizer's straight-through output and commitment loss have the second
    derivatives of their definition (identity; 2 * beta) on every backend."""
    require(backend, device)
    vq = VectorQuantizer(4, 3, backend=backend).to(device).eval()
    z, _ = _vq_inputs(torch.float32, device, seed=6)
    z.requires_grad_()
    out = vq(z)
    (gz,) = torch.autograd.grad(
        (out.quantized * out.quantized).sum() + out.commitment.sum(), z, create_graph=True
    )
    (hz,) = torch.autograd.grad(gz.sum(), z)
    torch.testing.assert_close(hz, torch.full_like(z, 2.0 + 2.0 * vq.beta))
