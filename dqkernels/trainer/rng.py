"""The random number generators of a run: seeding, capture and restore (what makes resume
exact), and forked scopes for evaluation and outputs."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["capture_rng", "derive_seed", "forked_rng", "restore_rng", "seed_all"]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``)."""
    a, b = np.random.SeedSequence(list(keys)).generate_state(2)
    return (int(a) << 31 ^ int(b)) & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _np_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_np_state(s: dict) -> None:
    np.random.set_state(
        (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"])
    )


def capture_rng(device: torch.device) -> dict:
    """This process's global RNG states (torch, numpy, Python; CUDA's of ``device``) as
    plain values and tensors (``torch.load(weights_only=True)`` reads them back)."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _np_state(),
        "python": [version, list(internal), gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Undo :func:`capture_rng`: set the global RNGs to ``state``."""
    torch.set_rng_state(state["torch"])
    _set_np_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def forked_rng(device: torch.device, seed: int):
    """Run the block with torch's RNGs (CPU and ``device``'s CUDA one) seeded with ``seed``
    and restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
