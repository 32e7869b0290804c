"""Argument checks of the op layer: each raises a TypeError or ValueError whose message starts
with the op's name."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_is_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(t).__name__}")


def check_tensor(op: str, name: str, t, ndim: int | None = None, layout: str = "") -> None:
    _check_is_tensor(op, name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be a floating tensor (float16, bfloat16, float32 "
            f"or float64); got dtype {_dt(t.dtype)}"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(
            f"{op}: {name} must have {ndim} dimensions {layout}; got shape {tuple(t.shape)}"
        )


def check_int_tensor(op: str, name: str, t, dtypes: tuple[torch.dtype, ...]) -> None:
    """``t`` is a tensor of one of the integer ``dtypes``."""
    _check_is_tensor(op, name, t)
    if t.dtype not in dtypes:
        allowed = " or ".join(_dt(d) for d in dtypes)
        raise TypeError(
            f"{op}: {name} must be an integer tensor ({allowed}); got dtype {_dt(t.dtype)}"
        )


def check_same(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{op}: {name_a} and {name_b} must have the same dtype; got "
            f"{name_a} {_dt(a.dtype)} and {name_b} {_dt(b.dtype)}"
        )
    check_same_device(op, name_a, a, name_b, b)


def check_same_device(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(
            f"{op}: {name_a} and {name_b} must be on the same device; got "
            f"{name_a} on {a.device} and {name_b} on {b.device}"
        )


def check_like(
    op: str, name: str, t, shape, dtype: torch.dtype, device: torch.device, what: str
) -> None:
    """``t`` is a tensor of exactly ``shape``, ``dtype`` and ``device`` (``what``: whose, in
    words): a gradient a backward op receives, or a buffer an op is given."""
    _check_is_tensor(op, name, t)
    shape = tuple(shape)
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape} ({what}); got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {_dt(dtype)} ({what}); got {_dt(t.dtype)}")
    if t.device != device:
        raise ValueError(f"{op}: {name} must be on {device} ({what}); got {name} on {t.device}")


def check_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be a bool; got {type(value).__name__}")
    return value


def check_bias(op: str, bias, x: torch.Tensor, size: int, what: str) -> None:
    """An optional ``bias`` of shape ``(size,)`` (``what``: where that size comes from), of
    ``x``'s dtype and device."""
    if bias is None:
        return
    check_tensor(op, "bias", bias)
    check_same(op, "x", x, "bias", bias)
    if tuple(bias.shape) != (size,):
        raise ValueError(f"{op}: bias must have shape ({size},) ({what}); got {tuple(bias.shape)}")


def check_int(op: str, name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: {name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}; got {value}")
    return value


def check_finite_float(op: str, name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: {name} must be a float; got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite; got {value}")
    return float(value)
