"""Metrics logging (JSONL/CSV/TensorBoard), run summary, loss plot, and the progress display."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

import nldsl.metrics as metmod
from nldsl.metrics import MetricsLogger, RunSummary, ema, plot_losses, read_metrics, summarize
from nldsl.progress import TrainProgress, human_rate, human_time


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_run(out: Path, steps: int = 60) -> Path:
    clock = FakeClock()
    with MetricsLogger(out, tensorboard=False, clock=clock) as log:
        for step in range(1, steps + 1):
            clock.now += 0.5
            loss = 5.0 * math.exp(-step / 20) + 1.0 + 0.3 * math.sin(step * 1.7)
            log.log(step, loss=loss, lr=3e-4, tokens=step * 4096, tokens_per_s=8192.0 + 50 * (step % 7))
            if step % 15 == 0:
                val = 5.0 * math.exp(-step / 20) + 1.1
                log.log(step, "val", loss=val, ppl=math.exp(val), bpb=val / math.log(2))
    return out / "metrics.jsonl"


def test_logger_writes_jsonl_and_csv(tmp_path: Path) -> None:
    clock = FakeClock()
    with MetricsLogger(tmp_path, tensorboard=False, clock=clock) as log:
        row = log.log(1, loss=torch.tensor(2.5), lr=1e-3)
        log.log(1, "val", loss=2.75, ppl=15.6)  # a new column: the CSV is rewritten with it
        log.log(2, loss=float("nan"), note="spike")
    assert row == {"step": 1, "split": "train", "time": 1000.0, "loss": 2.5, "lr": 1e-3}
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["split"] for r in rows] == ["train", "val", "train"]
    assert rows[2]["loss"] is None and rows[2]["note"] == "spike"  # NaN -> null, strict JSON
    with open(tmp_path / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["step", "split", "time", "loss", "lr", "ppl", "note"]
    assert table[1]["ppl"] == "15.6" and table[0]["ppl"] == "" and table[2]["note"] == "spike"


def test_logger_rejects_bad_rows(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            log.log(-1, loss=1.0)
        with pytest.raises(ValueError, match=r"metric names \['time'\] are reserved"):
            log.log(1, time=3.0)
        with pytest.raises(ValueError, match="is not a number or string"):
            log.log(1, loss=[1, 2])


def test_logger_resume_drops_rows_after_the_checkpoint(tmp_path: Path) -> None:
    _fake_run(tmp_path, steps=30)
    with MetricsLogger(tmp_path, resume_from_step=15, tensorboard=False) as log:
        assert max(r["step"] for r in log.rows) == 15
        log.log(16, loss=1.0)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 17))
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    MetricsLogger(tmp_path, tensorboard=False).close()  # a fresh run starts empty files
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_tensorboard_is_optional(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(metmod, "_tensorboard_writer", lambda log_dir: None)
    with MetricsLogger(tmp_path) as log:
        assert log.tb is None
        log.log(1, loss=1.0)


def test_tensorboard_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path) as log:
        assert log.tb is not None
        log.log(1, loss=1.0)
    assert any((tmp_path / "tb").iterdir())


def test_summary(tmp_path: Path) -> None:
    path = _fake_run(tmp_path)
    summary = summarize(path, extra={"cloze_accuracy": 0.25, "device": "cpu"})
    rows = read_metrics(path)
    train = [r["loss"] for r in rows if r["split"] == "train"]
    val = [(r["step"], r["loss"]) for r in rows if r["split"] == "val"]
    assert summary.steps == 60 and summary.train_tokens == 60 * 4096
    assert summary.elapsed_s == pytest.approx(29.5)
    assert summary.final_train_loss == pytest.approx(sum(train[-10:]) / 10)
    assert (summary.best_val_step, summary.best_val_loss) == min(val, key=lambda v: v[1])
    assert summary.final_val_loss == val[-1][1] and summary.final_val_bpb == pytest.approx(val[-1][1] / math.log(2))
    assert 8192 <= summary.tokens_per_s <= 8192 + 300
    saved = json.loads(summary.write_json(tmp_path / "summary.json").read_text())
    assert saved["extra"] == {"cloze_accuracy": 0.25, "device": "cpu"}
    console = Console(file=io.StringIO(), width=100)
    console.print(summary.table())
    text = console.file.getvalue()
    assert "best val loss" in text and "245,760" in text and "cloze accuracy" in text and "0.2500" in text
    assert summarize([]) == RunSummary(steps=0)


def test_ema_is_bias_corrected() -> None:
    assert ema([4.0, 4.0, 4.0], 0.9) == pytest.approx([4.0, 4.0, 4.0])
    assert ema([1.0, 3.0], 0.0) == [1.0, 3.0]
    with pytest.raises(ValueError, match="smoothing must be in"):
        ema([1.0], 1.0)


def test_plot_losses(tmp_path: Path) -> None:
    path = _fake_run(tmp_path / "run-a")
    png = plot_losses(path, tmp_path / "loss.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    empty = tmp_path / "empty" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.write_text('{"step": 1, "split": "train", "time": 0, "lr": 0.1}\n')
    with pytest.raises(ValueError, match="has no train or val loss to plot"):
        plot_losses(empty, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no metrics file at"):
        plot_losses(tmp_path / "missing.jsonl", tmp_path / "x.png")


# --------------------------------------------------------------------------- progress
def _console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), force_terminal=terminal, width=120)


def test_progress_plain_lines_for_ci_logs() -> None:
    console, clock = _console(False), FakeClock()
    with TrainProgress(100, console=console, plain_every=25, clock=clock) as progress:
        assert progress.mode == "plain"
        for step in range(1, 101):
            clock.now += 0.1
            progress.update(step, loss=3.0 - step / 100, tokens_per_s=12345.0)
        progress.print("saved checkpoint step-00000100")
    lines = console.file.getvalue().splitlines()
    assert len(lines) == 5 and "\r" not in console.file.getvalue() and "\x1b" not in console.file.getvalue()
    assert lines[0] == ("train step 25/100 (25%) | loss 2.7500 | 12.3K tok/s | elapsed 0:00:02 | eta 0:00:07")
    assert lines[3].startswith("train step 100/100 (100%)") and lines[3].endswith("eta 0:00:00")
    assert lines[4] == "saved checkpoint step-00000100"


def test_progress_resumed_run_counts_from_start_step() -> None:
    console, clock = _console(False), FakeClock()
    with TrainProgress(100, start_step=50, console=console, plain_every=10, clock=clock) as progress:
        clock.now += 10.0
        progress.update(60, loss=1.0)
    assert console.file.getvalue().strip().endswith("| loss 1.0000 | - tok/s | elapsed 0:00:10 | eta 0:00:40")


def test_progress_rich_bar_on_a_terminal() -> None:
    console = _console(True)
    with TrainProgress(10, console=console) as progress:
        assert progress.mode == "rich"
        for step in range(1, 11):
            progress.update(step, loss=0.5, tokens_per_s=2.5e6)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())  # drop colours and cursor moves
    assert "10/10" in out and "loss 0.5000" in out and "2.5M tok/s" in out and "eta" in out


def test_progress_disabled_prints_nothing() -> None:
    console = _console(True)
    with TrainProgress(10, console=console, enabled=False) as progress:
        progress.update(5, loss=1.0)
        progress.print("hello")
    assert progress.mode == "off" and console.file.getvalue() == ""


@pytest.mark.parametrize("kwargs, message", [
    ({"total_steps": 0}, "total_steps must be a positive integer"),
    ({"total_steps": 10, "start_step": 11}, r"start_step must be in 0\.\.10"),
    ({"total_steps": 10, "plain_every": 0}, "plain_every must be >= 1"),
], ids=["zero-total", "start-past-end", "zero-every"])
def test_progress_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainProgress(**kwargs)


def test_human_formats() -> None:
    assert [human_rate(v) for v in (None, 950.0, 12_345.0, 2.5e6, 3e9)] == ["-", "950", "12.3K", "2.5M", "3.0G"]
    assert human_time(3725.9) == "1:02:05" and human_time(None) == "-"
