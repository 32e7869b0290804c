"""MADE's masked linear layer and its degree assignment.

``MaskedLinear`` computes ``y = x @ (weight * M).T + bias`` with the connectivity mask
``M[j, i] = out_degrees[j] > in_degrees[i]`` (``strict``, MADE's output layer) or ``>=``
(its input and hidden layers) through :func:`dqkernels.ops.masked_linear`, whose kernels
skip the entirely masked tiles (with ascending degrees, the staircase above the diagonal).
The degrees are buffers: they move with ``.to(device)`` and are saved in the state dict.

:func:`made_degrees` gives the degrees of a MADE (Germain et al. 2015) with ascending
hidden degrees, so every hidden layer's mask is a staircase::

    degs = made_degrees(784, [1024, 1024])          # [input, hidden 1, hidden 2]
    layers = [MaskedLinear(784, 1024, degs[0], degs[1], strict=False),
              MaskedLinear(1024, 1024, degs[1], degs[2], strict=False),
              MaskedLinear(1024, 784, degs[2], degs[0], strict=True)]

Output ``d`` of the last layer then depends on inputs of degree below ``d`` only (inputs
are numbered by degree ``1..D``): the autoregressive property.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from dqkernels.ops import masked_linear
from dqkernels.reference.masked_linear import linear_mask

__all__ = ["MaskedLinear", "made_degrees"]


def _degrees(name: str, d, length: int) -> torch.Tensor:
    t = torch.as_tensor(d)
    if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise TypeError(
            f"MaskedLinear: {name} must be a 1-D integer sequence or tensor; got "
            f"dtype {str(t.dtype).replace('torch.', '')} and shape {tuple(t.shape)}"
        )
    if t.shape[0] != length:
        raise ValueError(f"MaskedLinear: {name} must have length {length}; got {t.shape[0]}")
    return t.detach().to(torch.int64).clone()


def _check_size(layer: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{layer}: {name} must be an int; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{layer}: {name} must be >= 1; got {value}")
    return value


class MaskedLinear(nn.Module):
    """A linear layer masked by degrees (MADE).

    Args:
        in_features, out_features: sizes.
        in_degrees, out_degrees: integer sequences or tensors of lengths ``in_features``
            and ``out_features`` (any order; ascending ones skip best).
        strict: ``M[j, i] = out_degrees[j] > in_degrees[i]`` if True, ``>=`` if False.
        bias: learn an additive bias.
        backend: the backend of the op (None: the one in force).
        device, dtype: of the parameters.

    Initialised like :class:`torch.nn.Linear` (uniform in ``+-1/sqrt(in_features)``).
    """

    # buffers (registered in __init__; declared here for the type checker)
    in_degrees: torch.Tensor
    out_degrees: torch.Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        in_degrees,
        out_degrees,
        strict: bool,
        bias: bool = True,
        backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_size("MaskedLinear", "in_features", in_features)
        _check_size("MaskedLinear", "out_features", out_features)
        if not isinstance(strict, bool):
            raise TypeError(f"MaskedLinear: strict must be a bool; got {type(strict).__name__}")
        self.in_features = in_features
        self.out_features = out_features
        self.strict = strict
        self.backend = backend
        self.register_buffer(
            "in_degrees", _degrees("in_degrees", in_degrees, in_features).to(device)
        )
        self.register_buffer(
            "out_degrees", _degrees("out_degrees", out_degrees, out_features).to(device)
        )
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def mask(self) -> torch.Tensor:
        """The bool mask ``M`` ``[out_features, in_features]``."""
        return linear_mask(self.in_degrees, self.out_degrees, self.strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_linear(
            x,
            self.weight,
            self.bias,
            self.in_degrees,
            self.out_degrees,
            strict=self.strict,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"strict={self.strict}, bias={self.bias is not None}"
        )


def made_degrees(
    num_inputs: int,
    hidden_sizes: Sequence[int],
    *,
    order: Sequence[int] | torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Degrees of a MADE: ``[input, hidden_1, ..., hidden_L]`` (int64 tensors).

    Input ``i`` has degree ``order[i] + 1`` (``order`` a permutation of ``range(D)``;
    default the identity, degrees ``1..D``). Each hidden layer of ``H`` units spreads its
    degrees evenly and in ascending order over ``1..D-1`` (``1 + floor(k (D-1) / H)``), so
    every degree is used when ``H >= D - 1``. Connect layer ``l`` to ``l + 1`` with
    ``strict=False`` and the last hidden layer to the outputs (degrees = the input
    degrees) with ``strict=True``.
    """
    _check_size("made_degrees", "num_inputs", num_inputs)
    sizes = [
        _check_size("made_degrees", f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes)
    ]
    if order is None:
        inputs = torch.arange(1, num_inputs + 1, dtype=torch.int64)
    else:
        o = torch.as_tensor(order).to(torch.int64).flatten()
        if o.shape[0] != num_inputs or not torch.equal(
            torch.sort(o).values, torch.arange(num_inputs)
        ):
            raise ValueError(f"made_degrees: order must be a permutation of range({num_inputs})")
        inputs = o + 1
    span = max(num_inputs - 1, 1)
    hidden = [1 + torch.arange(h, dtype=torch.int64) * span // h for h in sizes]
    return [inputs] + hidden
