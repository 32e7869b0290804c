"""Invertible 1x1 convolution (Glow).

``y[:, i] = sum_j W[i, j] x[:, j]`` at every pixel of ``[B, C, H, W]`` (or ``[B, C]``),
``logdet = H * W * log|det W|``. ``W`` starts as a random orthogonal matrix.

With ``lu=True`` the weight is parametrised as ``W = P L (U + diag(sign * exp(log_s)))``:
``P`` a fixed permutation, ``L`` unit lower-triangular, ``U`` strictly upper-triangular
(learned), ``sign`` fixed, ``log_s`` learned; then ``log|det W| = sum(log_s)`` costs
nothing and the inverse is two triangular solves. Without LU, ``log|det W|`` comes from
``torch.linalg.slogdet`` and the inverse from ``torch.linalg.inv``. Both are formed in
float64 and cast back, so ``inverse(forward(x))`` is exact to the rounding of the two
matrix products (~1e-6 in float32 for a well-conditioned ``W``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from dqkernels.nn._util import batch_logdet, check_input

__all__ = ["InvConv1x1"]


def _apply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    # the result keeps x's dtype under autocast too: the logdet comes from the fp32
    # weight, so the map must not silently drop to bf16 (the density would disagree)
    w = w.to(x.dtype)
    with torch.autocast(x.device.type, enabled=False):
        if x.dim() == 2:
            return F.linear(x, w)
        return F.conv2d(x, w[:, :, None, None])


class InvConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution.

    Args:
        num_channels: C.
        lu: use the ``P L U`` parametrisation (cheap log-determinant and inverse).

    ``forward(x) -> (y, logdet)`` and ``inverse(y) -> (x, -logdet)``; ``logdet`` is ``[B]``
    in float32 (float64 for float64 inputs).
    """

    # buffers (registered in __init__; declared here for the type checker)
    perm: torch.Tensor
    sign_s: torch.Tensor
    lower_mask: torch.Tensor
    eye: torch.Tensor

    def __init__(self, num_channels: int, lu: bool = False):
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"InvConv1x1: num_channels must be >= 1; got {num_channels}")
        self.num_channels = num_channels
        self.lu = lu
        C = num_channels
        w = torch.linalg.qr(torch.randn(C, C, dtype=torch.float64))[0]
        if not lu:
            self.weight = nn.Parameter(w.float())
            return
        P, L, U = torch.linalg.lu(w)
        s = torch.diagonal(U)
        self.register_buffer("perm", P.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(C, C), -1), persistent=False)
        self.register_buffer("eye", torch.eye(C), persistent=False)
        self.lower = nn.Parameter(torch.tril(L, -1).float())
        self.upper = nn.Parameter(torch.triu(U, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def _factors(self, dtype: torch.dtype):
        """``(P, L, U)`` with ``W = P @ L @ U``, in ``dtype``."""
        eye = self.eye.to(dtype)
        lower = self.lower.to(dtype) * self.lower_mask.to(dtype) + eye
        upper = self.upper.to(dtype) * self.lower_mask.T.to(dtype) + torch.diag(
            self.sign_s.to(dtype) * torch.exp(self.log_s.to(dtype))
        )
        return self.perm.to(dtype), lower, upper

    def weight_matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``W`` (``[C, C]``), differentiable in the parameters."""
        if not self.lu:
            return self.weight if dtype is None else self.weight.to(dtype)
        P, L, U = self._factors(dtype or self.log_s.dtype)
        return P @ L @ U

    def inverse_matrix(self) -> torch.Tensor:
        """``W^{-1}`` formed in float64 (differentiable), in the parameters' dtype."""
        if not self.lu:
            return torch.linalg.inv(self.weight.double()).to(self.weight.dtype)
        P, L, U = self._factors(torch.float64)
        l_inv_pt = torch.linalg.solve_triangular(L, P.T, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(U, l_inv_pt, upper=True).to(self.log_s.dtype)

    def log_abs_det(self) -> torch.Tensor:
        """``log|det W|`` (a scalar, float64 without LU)."""
        if self.lu:
            return self.log_s.sum()
        return torch.linalg.slogdet(self.weight.double())[1]

    def _pixels(self, x: torch.Tensor) -> int:
        return x.shape[2] * x.shape[3] if x.dim() == 4 else 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("InvConv1x1", x, self.num_channels, dims=(2, 4))
        y = _apply(x, self.weight_matrix())
        return y, batch_logdet(self._pixels(x) * self.log_abs_det(), x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input("InvConv1x1", y, self.num_channels, dims=(2, 4))
        x = _apply(y, self.inverse_matrix())
        return x, batch_logdet(-self._pixels(y) * self.log_abs_det(), y)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, lu={self.lu}"
