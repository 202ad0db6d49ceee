"""--resume continues to the very losses of an uninterrupted run; Ctrl-C saves a checkpoint and exits cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nldsl.checkpoint import CheckpointError, latest
from nldsl.metrics import read_metrics
from nldsl.train import train

from .nl_runs import ROOT, SUBPROCESS_ENV, mem_spec, train_losses

STEPS = 4
RESUME_SET = ["schedule=constant(warmup = 3)", "eval.every=2", "checkpoint.every=100"]
"""M3 (fast and slow momentum) + AdamW, a CMS level stepped every 2 outer steps, task-objective levels, an
in-context memory, evaluation at steps 2 and 4, and a warm-up that does not depend on ``steps`` (so an
interrupted long run can also be resumed as a short one)."""


def _run(spec, out, overrides=RESUME_SET, **kw):
    return train(spec, out=out, overrides=overrides, progress=False, tensorboard=False, **kw)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return mem_spec(tmp_path_factory.mktemp("spec"))


@pytest.fixture(scope="module")
def uninterrupted(spec, tmp_path_factory):
    return _run(spec, tmp_path_factory.mktemp("whole") / "run", steps=STEPS)


def test_stop_then_resume_logs_the_same_losses(spec, uninterrupted, tmp_path):
    first = _run(spec, tmp_path / "run", steps=STEPS, stop_after=STEPS // 2)  # N steps, then N more
    assert first.status == "stopped" and first.checkpoint.name == "step-00000002"
    second = _run(spec, tmp_path / "run", steps=STEPS, resume=True)
    assert second.status == "finished"
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert train_losses(rows) == train_losses(uninterrupted.rows)  # exact, every step
    assert train_losses(rows, "val") == train_losses(uninterrupted.rows, "val")
    assert [r["lr"] for r in rows if r["split"] == "train"] == [r["lr"] for r in uninterrupted.rows
                                                                 if r["split"] == "train"]


def test_resume_reuses_recorded_overrides(spec, tmp_path):
    _run(spec, tmp_path / "run", steps=STEPS, stop_after=1)
    again = train(spec, out=tmp_path / "run", steps=2, resume=True, progress=False, tensorboard=False)
    assert again.status == "finished" and again.step == 2


def test_checkpoint_of_another_spec_is_refused(spec, tmp_path):
    _run(spec, tmp_path / "run", steps=STEPS, stop_after=1)
    with pytest.raises(CheckpointError, match="different spec"):
        _run(spec, tmp_path / "run", [*RESUME_SET, "optimizer.adamw.lr=0.01"], steps=STEPS, resume=True)


def _wait_for_rows(path, proc, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and sum(1 for line in path.read_text().splitlines() if '"train"' in line) >= count:
            return True
        time.sleep(0.02)
    return False


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(spec, uninterrupted, tmp_path):
    out = tmp_path / "interrupted"
    args = [sys.executable, "-m", "nldsl.run_cli", "train", str(spec), "--out", str(out), "--steps", "1000",
            "--no-tensorboard", *[f"--set={s}" for s in RESUME_SET]]
    env = {**os.environ, **SUBPROCESS_ENV, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert _wait_for_rows(out / "metrics.jsonl", proc, 1), "the run did not start"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    assert "interrupted at step" in stdout and "--resume" in stdout
    stopped_at = int(latest(out / "checkpoints").name.split("-")[1])
    assert 1 <= stopped_at < 1000
    if stopped_at < STEPS:  # resume the interrupted 1000-step run as a 4-step one: the same losses
        resumed = _run(spec, out, steps=STEPS, resume=True)
        assert train_losses(resumed.rows) == train_losses(uninterrupted.rows)


def test_resume_keeps_the_steps_the_run_was_started_with(spec, tmp_path):
    _run(spec, tmp_path / "run", steps=3, stop_after=1)
    again = train(spec, out=tmp_path / "run", resume=True, progress=False, tensorboard=False)  # no --steps
    assert again.step == 3  # not the file's `steps = 4`
