"""Coupling layers: Glow's affine coupling and Flow++'s mixture-of-logistics CDF coupling.

A coupling layer splits ``x`` (``[B, C, H, W]``) by a mask into a conditioning part,
passed through unchanged, and a transformed part, mapped elementwise by an invertible op
whose parameters a conditioning network computes from the conditioning part alone::

    y_cond = x_cond,   y_trans = op(x_trans; net(x_cond))

Masks (``parity`` swaps the roles of the two parts):

- ``"channel"``: with ``h = C // 2``, parity 0 conditions on channels ``[:h]`` and
  transforms ``[h:]``; parity 1 transforms ``[:C - h]`` and conditions on ``[C - h:]``.
  Needs ``C >= 2``. The net sees the ``h`` conditioning channels; the op gets the
  transformed channels as a strided view of ``x`` (no copy).
- ``"checkerboard"``: pixel ``(i, j)`` is transformed (in every channel) where
  ``(i + j) % 2 == parity``. The net sees ``x * cond_mask`` plus ``cond_mask`` as an extra
  channel (so it can tell masked zeros from data). The transformed pixels are gathered
  with a flat index (``index_select`` on the flattened ``H*W`` dimension) into
  ``[B, C, n]``, and so are the net's outputs, so the op only ever sees the ``n``
  transformed pixels; the result is written back with ``index_copy``. No boolean
  indexing (which would sync the GPU); any ``H`` and ``W``, odd ones included (``n`` is
  then ``ceil(H*W/2)`` for parity 0 and ``floor(H*W/2)`` for parity 1). The index and
  mask are cached per ``(H, W, device, dtype)``.

Net outputs are laid out parameter-major: channel ``p * T + c`` is parameter ``p`` of
transformed channel ``c`` (``T`` transformed channels), so each parameter is a view. Affine
(``p``): shift, scale_logit. Mixture (``3K + 2`` parameters): ``a``, ``b``, then ``K``
logits, ``K`` means, ``K`` log-scales; the per-component ones are permuted views with
``K`` as the last dimension, as the op wants (the ops take any strides).

The last convolution of the net is zero-initialised, so a fresh affine coupling is
``y = x * sigmoid(2)`` (Glow's choice) and a fresh mixture coupling is exactly the
identity (one-component-equivalent standard logistic: ``logit(sigmoid(x)) = x``).
Flow++'s stabilisers: ``a = scale * tanh(a_raw)`` with a learned per-channel ``scale``
(init 1), and ``log_scales = bound * tanh(raw / bound)`` (soft bound, default 7).

Both layers return ``(y, logdet)`` with ``logdet`` ``[B]`` in float32 (float64 for
float64 inputs), take ``inverse(y) -> (x, -logdet)``, and run the op on the backend in
force unless ``backend=`` names one.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from dqkernels.nn._util import check_input
from dqkernels.nn.residual import ResidualBlock, make_activation
from dqkernels.ops import affine_coupling, mixlogcdf_coupling

__all__ = ["AffineCoupling", "ConditioningNet", "MixLogCDFCoupling", "checkerboard_index"]

MASKS = ("channel", "checkerboard")


def checkerboard_index(
    height: int, width: int, parity: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, cond_mask)``: ``index`` (int64, ascending) lists the flat positions
    ``i * width + j`` with ``(i + j) % 2 == parity`` (the transformed pixels);
    ``cond_mask`` (``[1, 1, H, W]`` float32) is 1 at the other (conditioning) pixels."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    trans = ((i + j) % 2 == parity).reshape(-1)
    index = torch.arange(height * width, device=device)[trans]
    return index, (~trans).float().view(1, 1, height, width)


class ConditioningNet(nn.Module):
    """``conv3x3 -> act -> conv1x1 -> act -> [residual blocks] -> zero-init conv3x3``.

    Args:
        in_channels, out_channels: of the input and the (parameter) output.
        hidden: width of the hidden layers.
        num_blocks: residual blocks ``h + conv1x1(act(conv3x3(h)))``
            (:class:`~dqkernels.nn.ResidualBlock`) before the output.
        activation: ``"relu"``, ``"gelu"`` or ``"elu"``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        num_blocks: int = 0,
        activation: str = "relu",
    ):
        super().__init__()
        if hidden < 1 or num_blocks < 0:
            raise ValueError(
                f"ConditioningNet: need hidden >= 1 and num_blocks >= 0; got "
                f"hidden={hidden}, num_blocks={num_blocks}"
            )
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.act1 = make_activation(activation, "ConditioningNet")
        self.mid = nn.Conv2d(hidden, hidden, 1)
        self.act2 = make_activation(activation, "ConditioningNet")
        self.blocks = nn.ModuleList(ResidualBlock(hidden, activation) for _ in range(num_blocks))
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # built with a bias
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.mid(self.act1(self.inp(x))))
        for block in self.blocks:
            h = block(h)
        return self.out(h)


class _Coupling(nn.Module):
    """Masking, the conditioning network and the gather/scatter; subclasses say how many
    parameters per transformed element (``_per_element``) and apply the op (``_couple``)."""

    _name = "Coupling"

    def __init__(
        self,
        num_channels: int,
        per_element: int,
        hidden: int,
        num_blocks: int,
        mask: str,
        parity: int,
        activation: str,
        backend: str | None,
        context_channels: int = 0,
    ):
        super().__init__()
        name = self._name
        if mask not in MASKS:
            raise ValueError(f"{name}: mask must be 'channel' or 'checkerboard'; got {mask!r}")
        if parity not in (0, 1):
            raise ValueError(f"{name}: parity must be 0 or 1; got {parity!r}")
        if num_channels < 1 or (mask == "channel" and num_channels < 2):
            raise ValueError(
                f"{name}: num_channels must be >= {2 if mask == 'channel' else 1}"
                f" for the {mask} mask; got {num_channels}"
            )
        if context_channels < 0:
            raise ValueError(f"{name}: context_channels must be >= 0; got {context_channels}")
        self.num_channels = num_channels
        self.context_channels = context_channels
        self.mask = mask
        self.parity = parity
        self.backend = backend
        if mask == "channel":
            self.cond_channels = num_channels // 2
            self.trans_channels = num_channels - self.cond_channels
            net_in = self.cond_channels
        else:
            self.trans_channels = num_channels
            net_in = num_channels + 1
        self.per_element = per_element
        self.net = ConditioningNet(
            net_in + context_channels,
            per_element * self.trans_channels,
            hidden,
            num_blocks,
            activation,
        )
        self._index_cache: dict = {}

    def _checkerboard(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = x.shape[2], x.shape[3]
        key = (H, W, x.device, x.dtype)
        hit = self._index_cache.get(key)
        if hit is None:
            index, mask = checkerboard_index(H, W, self.parity, x.device)
            hit = self._index_cache[key] = (index, mask.to(x.dtype))
        return hit

    def _net(self, inp: torch.Tensor, context: torch.Tensor | None, where: str) -> torch.Tensor:
        if self.context_channels:
            if context is None:
                raise ValueError(
                    f"{where}: this layer was built with context_channels="
                    f"{self.context_channels}; pass context="
                )
            want = (inp.shape[0], self.context_channels) + tuple(inp.shape[2:])
            if tuple(context.shape) != want:
                raise ValueError(
                    f"{where}: context must have shape {want}; got {tuple(context.shape)}"
                )
            inp = torch.cat([inp, context.to(inp.dtype)], dim=1)
        elif context is not None:
            raise ValueError(
                f"{where}: context given, but this layer was built with context_channels=0"
            )
        return self.net(inp)

    def _run(
        self, x: torch.Tensor, inverse: bool, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        where = self._name + (".inverse" if inverse else "")
        check_input(where, x, self.num_channels)
        C = self.num_channels
        if self.mask == "channel":
            h = self.cond_channels
            if self.parity == 0:
                cond, xt = x[:, :h], x[:, h:]
            else:
                xt, cond = x[:, : C - h], x[:, C - h :]
            params = self._net(cond, context, where).to(x.dtype)
            yt, logdet = self._couple(xt, params, inverse)
            return torch.cat([cond, yt] if self.parity == 0 else [yt, cond], dim=1), logdet
        index, mask = self._checkerboard(x)
        B, _, H, W = x.shape
        params = self._net(
            torch.cat([x * mask, mask.expand(B, 1, H, W)], dim=1), context, where
        ).to(x.dtype)
        flat = x.reshape(B, C, H * W)
        xt = flat.index_select(2, index)  # [B, C, n]
        pt = params.reshape(B, params.shape[1], H * W).index_select(2, index)
        yt, logdet = self._couple(xt, pt, inverse)
        return flat.index_copy(2, index, yt.to(x.dtype)).view(B, C, H, W), logdet

    def _couple(self, xt, params, inverse):
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, False, context)

    def inverse(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(y, True, context)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, mask={self.mask!r}, parity={self.parity}, "
            f"backend={self.backend!r}"
        )


class AffineCoupling(_Coupling):
    """Glow's affine coupling: ``y = (x + shift) * sigmoid(scale_logit + 2)`` on the
    transformed part, ``(shift, scale_logit) = net(conditioning part)``.

    Args:
        num_channels: C.
        hidden: width of the conditioning network.
        mask: ``"channel"`` or ``"checkerboard"``; ``parity``: 0 or 1 (which part is
            transformed, see the module docstring).
        num_blocks: residual blocks in the conditioning network.
        activation: ``"relu"``, ``"gelu"`` or ``"elu"``.
        backend: for :func:`dqkernels.ops.affine_coupling` (None: the one in force).
        context_channels: channels of an extra ``context`` (``[B, context_channels, H, W]``)
            that ``forward``/``inverse`` then require and feed to the conditioning net
            alongside the conditioning part (conditional flows, e.g. a dequantizer's
            ``q(u | x)``); 0 (default): no context.
    """

    _name = "AffineCoupling"

    def __init__(
        self,
        num_channels: int,
        hidden: int = 64,
        mask: str = "channel",
        parity: int = 0,
        num_blocks: int = 0,
        activation: str = "relu",
        backend: str | None = None,
        context_channels: int = 0,
    ):
        super().__init__(
            num_channels, 2, hidden, num_blocks, mask, parity, activation, backend, context_channels
        )

    def _couple(self, xt, params, inverse):
        p = params.unflatten(1, (2, self.trans_channels))
        return affine_coupling(xt, p[:, 0], p[:, 1], inverse=inverse, backend=self.backend)


class MixLogCDFCoupling(_Coupling):
    """Flow++'s coupling: ``y = logit(F(x)) * exp(a) + b`` on the transformed part, with
    ``F`` a ``num_components``-component logistic mixture CDF; all its parameters come
    from the conditioning network (see the module docstring for the bounds on ``a`` and
    the log-scales).

    Args:
        num_channels: C.
        num_components: K.
        hidden, mask, parity, num_blocks, activation: as :class:`AffineCoupling`.
        max_log_scale: soft bound on the log-scales, ``bound * tanh(raw / bound)``.
        backend: for :func:`dqkernels.ops.mixlogcdf_coupling` (None: the one in force).
        context_channels: as :class:`AffineCoupling`.
    """

    _name = "MixLogCDFCoupling"

    def __init__(
        self,
        num_channels: int,
        num_components: int = 4,
        hidden: int = 64,
        mask: str = "channel",
        parity: int = 0,
        num_blocks: int = 0,
        activation: str = "relu",
        max_log_scale: float = 7.0,
        backend: str | None = None,
        context_channels: int = 0,
    ):
        if num_components < 1:
            raise ValueError(
                f"MixLogCDFCoupling: num_components must be >= 1; got {num_components}"
            )
        if not max_log_scale > 0:
            raise ValueError(f"MixLogCDFCoupling: max_log_scale must be > 0; got {max_log_scale}")
        super().__init__(
            num_channels,
            3 * num_components + 2,
            hidden,
            num_blocks,
            mask,
            parity,
            activation,
            backend,
            context_channels,
        )
        self.num_components = num_components
        self.max_log_scale = float(max_log_scale)
        self.a_scale = nn.Parameter(torch.ones(self.trans_channels))

    def _couple(self, xt, params, inverse):
        K = self.num_components
        p = params.unflatten(1, (3 * K + 2, self.trans_channels))  # [B, 3K+2, T, *S]
        per_k = p[:, 2:].unflatten(1, (3, K)).movedim(2, -1)  # [B, 3, T, *S, K]
        logits, means, raw_log_scales = per_k.unbind(1)
        log_scales = self.max_log_scale * torch.tanh(raw_log_scales / self.max_log_scale)
        a_scale = self.a_scale.to(xt.dtype).view((1, -1) + (1,) * (xt.dim() - 2))
        a = a_scale * torch.tanh(p[:, 0])
        return mixlogcdf_coupling(
            xt, logits, means, log_scales, a, p[:, 1], inverse=inverse, backend=self.backend
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, num_components={self.num_components}, "
            f"mask={self.mask!r}, parity={self.parity}, backend={self.backend!r}"
        )
