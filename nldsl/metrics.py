"""Run metrics: a logger (JSONL + CSV, TensorBoard when installed), a run summary and the loss-curve PNG.

Every logged row is ``{"step", "split", "time", <metric>: value ...}``. The training loop uses the
names ``loss``, ``lr``, ``tokens`` (cumulative) and ``tokens_per_s`` on ``split="train"`` rows and
``loss``, ``ppl``, ``bpb`` on ``split="val"`` rows; the summary and the plot read those names, any
other metric is simply carried along. JSONL is the source of truth (one self-describing object per
line, append-only); the CSV is the same data for spreadsheets, with a column per metric name.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from torch import Tensor

JSONL_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"
_BASE_COLUMNS = ["step", "split", "time"]


def _plain(value: Any) -> Any:
    """Tensors and NumPy scalars become Python numbers; NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, Tensor):
        value = value.detach().item()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not isinstance(value, (bool, int, float, str)) and value is not None:
        raise ValueError(f"metric value {value!r} is not a number or string")
    return value


def _tensorboard_writer(log_dir: Path) -> Any:
    """A SummaryWriter when `tensorboard` is installed, else None (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # ImportError, or a broken tensorboard install
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(jsonl_path: str | Path) -> list[dict[str, Any]]:
    """All rows of a metrics JSONL file, in order."""
    path = Path(jsonl_path)
    if not path.is_file():
        raise ValueError(f"no metrics file at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class MetricsLogger:
    """Append metric rows to ``<out_dir>/metrics.jsonl`` and ``metrics.csv`` (and TensorBoard).

    Args:
        out_dir: run folder (created).
        resume_from_step: keep the rows of an earlier run up to this step (the checkpoint's step) and
            drop later ones, which the resumed run will log again; None starts empty files.
        tensorboard: also write TensorBoard events to ``<out_dir>/tb`` when tensorboard is installed.
    """

    def __init__(self, out_dir: str | Path, *, resume_from_step: int | None = None, tensorboard: bool = True,
                 clock: Callable[[], float] = time.time):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path, self.csv_path = self.out_dir / JSONL_FILE, self.out_dir / CSV_FILE
        self.clock = clock
        self.rows: list[dict[str, Any]] = []
        if resume_from_step is not None and self.jsonl_path.is_file():
            self.rows = [r for r in read_metrics(self.jsonl_path) if r["step"] <= resume_from_step]
        self.columns = list(_BASE_COLUMNS)
        for row in self.rows:
            self.columns += [k for k in row if k not in self.columns]
        self.jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")
        self._rewrite_csv()
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self.tb = _tensorboard_writer(self.out_dir / "tb") if tensorboard else None

    def _rewrite_csv(self) -> None:
        with open(self.csv_path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, step: int, split: str = "train", **values: Any) -> dict[str, Any]:
        """Record one row; returns it as written (numbers as Python floats/ints)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        reserved = set(_BASE_COLUMNS) & set(values)
        if reserved:
            raise ValueError(f"metric names {sorted(reserved)} are reserved")
        row = {"step": step, "split": split, "time": self.clock(), **{k: _plain(v) for k, v in values.items()}}
        self.rows.append(row)
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite_csv()
        else:
            with open(self.csv_path, "a", encoding="utf-8", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)
        if self.tb is not None:
            for key, value in row.items():
                if key not in _BASE_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{split}/{key}", value, step)
        return row

    def close(self) -> None:
        self._jsonl.close()
        if self.tb is not None:
            self.tb.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- summary
def _values(rows: Iterable[Mapping[str, Any]], split: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))]


@dataclass(frozen=True)
class RunSummary:
    """The numbers a user looks at after a run (None where the run did not log that metric)."""

    steps: int
    train_tokens: int | None = None
    elapsed_s: float | None = None
    tokens_per_s: float | None = None
    """Median of the logged train throughput (robust to the slow first, compiling steps)."""
    final_train_loss: float | None = None
    """Mean of the last 10 logged train losses."""
    best_val_loss: float | None = None
    best_val_step: int | None = None
    final_val_loss: float | None = None
    final_val_bpb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return Path(path)

    def table(self, title: str = "run summary") -> Any:
        """A rich Table (metric, value) for the console."""
        from rich.table import Table

        table = Table(title=title)
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        for key, value in {**{k: v for k, v in self.to_dict().items() if k != "extra"}, **self.extra}.items():
            if value is not None:
                table.add_row(key.replace("_", " "), _fmt(value))
        return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def summarize(rows: Iterable[Mapping[str, Any]] | str | Path, *, extra: Mapping[str, Any] | None = None) -> RunSummary:
    """Summarise logged rows (or a metrics.jsonl path)."""
    rows = read_metrics(rows) if isinstance(rows, (str, Path)) else list(rows)
    train_loss, val_loss = _values(rows, "train", "loss"), _values(rows, "val", "loss")
    tokens, tps, bpb = _values(rows, "train", "tokens"), _values(rows, "train", "tokens_per_s"), _values(rows, "val", "bpb")
    times = [r["time"] for r in rows if isinstance(r.get("time"), (int, float))]
    best = min(val_loss, key=lambda sv: sv[1]) if val_loss else None
    last10 = [v for _, v in train_loss[-10:]]
    return RunSummary(
        steps=max((r["step"] for r in rows), default=0),
        train_tokens=int(tokens[-1][1]) if tokens else None,
        elapsed_s=(max(times) - min(times)) if len(times) > 1 else None,
        tokens_per_s=statistics.median(v for _, v in tps) if tps else None,
        final_train_loss=sum(last10) / len(last10) if last10 else None,
        best_val_loss=best[1] if best else None,
        best_val_step=best[0] if best else None,
        final_val_loss=val_loss[-1][1] if val_loss else None,
        final_val_bpb=bpb[-1][1] if bpb else None,
        extra=dict(extra or {}),
    )


# --------------------------------------------------------------------------- plot
def ema(values: list[float], smoothing: float) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing), so early points are not pulled to 0."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = smoothing * avg + (1 - smoothing) * v
        out.append(avg / (1 - smoothing**i))
    return out


def plot_losses(jsonl_path: str | Path, png_path: str | Path, *, title: str | None = None,
                smoothing: float = 0.9) -> Path:
    """Draw train loss (raw + smoothed), val loss and train tokens/s against the step into a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no display, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(jsonl_path)
    train, val, tps = _values(rows, "train", "loss"), _values(rows, "val", "loss"), _values(rows, "train", "tokens_per_s")
    if not train and not val:
        raise ValueError(f"{jsonl_path} has no train or val loss to plot")
    fig = Figure(figsize=(9, 6.5 if tps else 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if tps else [fig.subplots()]
    ax = axes[0]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="train (raw)")
        ax.plot(steps, ema(list(losses), smoothing), color="tab:blue", linewidth=1.8, label=f"train (EMA {smoothing})")
    if val:
        ax.plot(*zip(*val), color="tab:orange", marker="o", markersize=4, linewidth=1.5, label="validation")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title or f"Loss curve: {Path(jsonl_path).parent.name}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if tps:
        from matplotlib.ticker import FuncFormatter

        from nldsl.progress import human_rate

        axes[1].plot(*zip(*tps), color="tab:green", linewidth=1.2)
        axes[1].set_ylabel("train tokens / s")
        axes[1].set_ylim(bottom=0)
        axes[1].yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_rate(v)))
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("training step")
    fig.savefig(png_path)
    return Path(png_path)
