"""Guards that let a run stop cleanly: non-finite losses and Ctrl-C.

A NaN or inf loss must stop training *before* the next checkpoint is written, so the newest checkpoint
on disk is the last good one; :func:`check_finite` raises :class:`NonFiniteLossError` naming the step,
the level/component the caller says the loss came from, and the first parameter, gradient or
in-context state tensor that went non-finite (so the user knows where to look).

:class:`GracefulInterrupt` turns the first Ctrl-C into a flag the training loop polls between steps
(save a checkpoint, exit 0-ish); a second Ctrl-C aborts at once with ``KeyboardInterrupt``.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NonFiniteTensor:
    """Where a NaN/inf was found."""

    name: str
    kind: str
    """"parameter", "gradient" or "state"."""
    n_nan: int
    n_inf: int
    numel: int

    def describe(self) -> str:
        return f"{self.kind} {self.name!r} ({self.n_nan} NaN, {self.n_inf} inf of {self.numel} values)"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; carries the step, where it came from and the first bad tensor."""

    def __init__(self, step: int, where: str, value: float, culprit: NonFiniteTensor | None = None,
                 what: str = "loss"):
        self.step, self.where, self.value, self.culprit, self.what = step, where, value, culprit, what
        found = f"; first non-finite tensor: {culprit.describe()}" if culprit else ""
        super().__init__(
            f"non-finite {what} ({value}) at step {step} in {where}{found}. "
            "Try a lower learning rate, gradient clipping or float32 precision."
        )


def _named_state(state: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """Tensors of a nested in-context state as ``("level.memory.W", tensor)`` pairs."""
    if isinstance(state, Tensor):
        yield prefix or "state", state
    elif isinstance(state, Mapping):
        for key, value in state.items():
            yield from _named_state(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            yield from _named_state(value, f"{prefix}.{i}" if prefix else str(i))


def first_non_finite(named: Iterable[tuple[str, Tensor | None]], kind: str) -> NonFiniteTensor | None:
    """The first tensor (in iteration order) holding a NaN or inf, else None."""
    for name, tensor in named:
        if tensor is None or not tensor.is_floating_point() and not tensor.is_complex():
            continue
        t = tensor.detach()
        if not bool(torch.isfinite(t).all()):
            n_nan = int(torch.isnan(t).sum())
            return NonFiniteTensor(name, kind, n_nan, int(t.numel() - torch.isfinite(t).sum()) - n_nan, t.numel())
    return None


def find_non_finite(model: nn.Module | None = None, state: Any = None) -> NonFiniteTensor | None:
    """Search parameters, then their gradients, then the in-context state, by name."""
    if model is not None:
        params = list(model.named_parameters())
        found = first_non_finite(params, "parameter") or first_non_finite(
            ((n, p.grad) for n, p in params), "gradient")
        if found:
            return found
    return first_non_finite(_named_state(state), "state") if state is not None else None


def check_finite(loss: Tensor | float, step: int, where: str = "the training loss", *,
                 model: nn.Module | None = None, state: Any = None) -> float:
    """Return the loss as a float, or raise NonFiniteLossError if it is NaN/inf.

    Reading the value synchronises with the GPU, so call it where the loss is read for logging anyway.
    ``where`` is the caller's name for the loss's origin, e.g. ``"level 'cms.fast' (component 'mlp')"``.
    """
    value = float(loss.detach().float().item()) if isinstance(loss, Tensor) else float(loss)
    if math.isfinite(value):
        return value
    raise NonFiniteLossError(step, where, value, find_non_finite(model, state))


def check_all_finite(losses: Mapping[str, Tensor | float], step: int, **search: Any) -> dict[str, float]:
    """``check_finite`` on several named losses (one per level); the key becomes ``where``."""
    return {where: check_finite(loss, step, where, **search) for where, loss in losses.items()}


class GracefulInterrupt:
    """``with GracefulInterrupt() as stop: ... if stop.requested: save and break``.

    The first signal (SIGINT by default) only sets ``requested``; the second restores the previous
    handler and raises KeyboardInterrupt. Outside the main thread (where Python cannot install signal
    handlers) it is a no-op flag that is never set.
    """

    def __init__(self, *, signals: tuple[int, ...] = (signal.SIGINT,), enabled: bool = True,
                 message: str = "interrupt: finishing the step and saving a checkpoint (press Ctrl-C again to abort)"):
        self.signals, self.enabled, self.message = signals, enabled, message
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            self._restore()
            raise KeyboardInterrupt
        self.requested = True
        print(self.message, file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> "GracefulInterrupt":
        if self.enabled and threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()
