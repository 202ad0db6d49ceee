"""Learning-rate schedules as step -> multiplier callables (for torch.optim.lr_scheduler.LambdaLR).

Every schedule is linear warm-up followed by a decay:

    warm-up   (step < warmup):  (step + 1) / warmup          (step 0 already has a non-zero lr)
    decay     (p = clamp((step − warmup) / max(1, total − warmup), 0, 1)):
        cosine:    min_ratio + (1 − min_ratio) · ½(1 + cos(π·p))
        linear:    min_ratio + (1 − min_ratio) · (1 − p)
        constant:  1

Steps past ``total`` stay at ``min_ratio``. The callables are small frozen dataclasses rather than
closures, so they pickle and LambdaLR's state_dict records their settings.

    >>> sched = warmup_cosine(warmup=2, total=10)
    >>> [round(sched(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from nldsl.optim.common import check_choice, check_unit

KINDS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    """Warm-up then decay; call it with a 0-based step to get the lr multiplier."""

    kind: str = "cosine"
    """"cosine", "linear" or "constant" (the shape after warm-up)."""
    warmup: int = 0
    """Number of warm-up steps (0: start at full lr)."""
    total: int = 1
    """Step at which the decay reaches ``min_ratio``; must exceed ``warmup`` unless kind is constant."""
    min_ratio: float = 0.0
    """Final multiplier, in [0, 1]."""

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        for name in ("warmup", "total"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.kind != "constant" and self.total <= self.warmup:
            raise ValueError(f"total ({self.total}) must be greater than warmup ({self.warmup})")
        check_unit("min_ratio", self.min_ratio)

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.kind, self.warmup, self.total, self.min_ratio)


def lr_multiplier(step: int, kind: str, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """The multiplier at 0-based ``step`` (see the module docstring); pure, no validation."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    p = min(max((step - warmup) / max(1, total - warmup), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if kind == "cosine" else 1.0 - p
    return min_ratio + (1.0 - min_ratio) * shape


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Schedule:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    return Schedule("cosine", warmup, total, min_ratio)


def warmup_linear(warmup: int, total: int, min_ratio: float = 0.0) -> Schedule:
    """Linear warm-up, then linear decay to ``min_ratio`` at ``total``."""
    return Schedule("linear", warmup, total, min_ratio)


def warmup_constant(warmup: int = 0) -> Schedule:
    """Linear warm-up, then a constant multiplier of 1."""
    return Schedule("constant", warmup, warmup, 1.0)
