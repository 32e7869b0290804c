"""The learning-rate schedule: linear warm-up, then cosine decay to 0."""

from __future__ import annotations

import math

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """LR factor of optimizer step ``s`` (0-based): ``(s+1)/warmup`` during the warm-up,
    then ``(1 + cos(pi * (s - warmup) / (total - warmup))) / 2``. A callable object (not a
    closure) so ``LambdaLR`` keeps its settings in ``state_dict``."""

    def __init__(self, warmup: int, total: int):
        self.warmup = int(warmup)
        self.total = int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup) / span)))
