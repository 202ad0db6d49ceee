"""Training progress display: a rich live bar on a terminal, plain periodic lines in CI logs.

A live bar in a log file is a mess of carriage returns, so the mode follows the console: a terminal gets
the bar (step/total, loss, tokens/s, elapsed, ETA), anything else gets one line every ``plain_every``
steps and at the last step, and ``enabled=False`` prints nothing (tests, library use).
"""
from __future__ import annotations

import time
from typing import Any, Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


def human_rate(value: float | None) -> str:
    """12345.6 -> '12.3K' (tokens/s at a glance)."""
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.0f}"


def human_time(seconds: float | None) -> str:
    """Whole seconds as H:MM:SS (or '-' when unknown)."""
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class TrainProgress:
    """Context manager: ``with TrainProgress(1000) as p: ... p.update(step, loss=..., tokens_per_s=...)``.

    Args:
        total_steps: the step count the run ends at.
        start_step: where a resumed run starts (the bar and the ETA count from there).
        enabled: False shows nothing.
        console: where to draw; its ``is_terminal`` picks the live bar or plain lines.
        plain_every: in plain mode, print every this many steps (default: about 20 lines per run).
        clock: time source for the plain-mode ETA (injectable for tests).
    """

    def __init__(self, total_steps: int, *, start_step: int = 0, enabled: bool = True,
                 console: Console | None = None, plain_every: int | None = None, description: str = "train",
                 clock: Callable[[], float] = time.monotonic):
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if not 0 <= start_step <= total_steps:
            raise ValueError(f"start_step must be in 0..{total_steps}, got {start_step}")
        if plain_every is not None and plain_every < 1:
            raise ValueError(f"plain_every must be >= 1, got {plain_every}")
        self.total, self.start, self.description, self.clock = total_steps, start_step, description, clock
        self.console = console or Console()
        self.mode = "off" if not enabled else ("rich" if self.console.is_terminal else "plain")
        self.every = plain_every or max(1, (total_steps - start_step) // 20)
        self._progress: Progress | None = None
        self._task: Any = None
        self._t0 = 0.0

    def __enter__(self) -> "TrainProgress":
        self._t0 = self.clock()
        if self.mode == "rich":
            self._progress = Progress(
                TextColumn("[bold blue]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss [bold]{task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console, refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.start,
                                                 loss="-", tps="-")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, step: int, *, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        """Report that ``step`` steps are done (absolute, not an increment)."""
        loss_text = "-" if loss is None else f"{float(loss):.4f}"
        if self.mode == "rich" and self._progress is not None:
            self._progress.update(self._task, completed=step, loss=loss_text, tps=human_rate(tokens_per_s))
        elif self.mode == "plain" and ((step - self.start) % self.every == 0 or step >= self.total):
            self.console.print(self.line(step, loss_text, tokens_per_s), markup=False, highlight=False, soft_wrap=True)

    def line(self, step: int, loss_text: str, tokens_per_s: float | None) -> str:
        """The plain-mode line: step/total, percent, loss, tokens/s, elapsed and ETA."""
        elapsed = self.clock() - self._t0
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done > 0 else None
        return (f"{self.description} step {step}/{self.total} ({100 * step / self.total:.0f}%) | loss {loss_text} | "
                f"{human_rate(tokens_per_s)} tok/s | elapsed {human_time(elapsed)} | eta {human_time(eta)}")

    def print(self, message: str) -> None:
        """A message (eval result, checkpoint saved) above the bar, or as its own line."""
        if self.mode != "off":
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)
