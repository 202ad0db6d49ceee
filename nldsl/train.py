"""`nldsl train`: the outer loop (the pre-training level of the NL hierarchy, NL §1.3) around a compiled spec.

``train(path, ...)`` prepares the run (``nldsl.runs``: spec + ``--set`` overrides + checks, data, tokenizer),
builds the model, optimizers and training step (``nldsl.build.build``), then steps through seeded batches:

    for step in start+1 .. steps:
        metrics = compiled.train_step(next(sampler))          # forward, in-context levels, backward, optimizers
        check the loss is finite (else stop: the newest checkpoint on disk is still the last good one)
        log train row; every `eval` period: validation loss / perplexity / bits per byte
        every `checkpoint` period, at the end and on Ctrl-C: atomic checkpoint (nldsl.checkpoint), newest K kept

Resuming (``resume=True``) restores the model, optimizers, schedulers, the step counter, the data-sampler
position and every RNG from the newest checkpoint, so the resumed run logs exactly the losses the
uninterrupted run would have. The first Ctrl-C finishes the current step, saves and returns
(``status == "interrupted"``); a second one aborts at once.
"""
from __future__ import annotations

import math
import random
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console

from nldsl.checkpoint import Checkpoint, CheckpointError, latest, load_checkpoint, save_checkpoint
from nldsl.datasets import BatchSampler, EvalWindows
from nldsl.metrics import MetricsLogger, RunSummary, plot_losses, summarize
from nldsl.overrides import parse_overrides
from nldsl.progress import TrainProgress
from nldsl.runs import (CHECKPOINT_DIR, Run, RunError, default_out, load_spec, prepare_run, read_record,
                        resolve_device, train_settings)
from nldsl.runtime_guard import GracefulInterrupt, NonFiniteLossError, check_finite, find_non_finite

LOSS_PNG = "loss.png"
SUMMARY_JSON = "summary.json"
_RUN_FILES = ("run.json", "spec.nl", "tokenizer", CHECKPOINT_DIR, "metrics.jsonl", "metrics.csv", "tb",
              LOSS_PNG, SUMMARY_JSON, "eval.json")
"""What ``overwrite=True`` removes from an existing run folder (nothing else in it is touched)."""


@dataclass
class TrainResult:
    """How a run ended."""

    out: Path
    step: int
    """The last completed step."""
    status: str
    """``finished``, ``interrupted`` (Ctrl-C), ``stopped`` (``stop_after`` / ``time_limit`` reached) or
    ``diverged`` (non-finite loss)."""
    summary: RunSummary
    checkpoint: Path | None
    """The newest checkpoint on disk."""
    loss_png: Path | None = None
    error: NonFiniteLossError | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def losses(self, split: str = "train") -> list[tuple[int, float]]:
        """``(step, loss)`` pairs logged for a split."""
        return [(r["step"], r["loss"]) for r in self.rows if r.get("split") == split and "loss" in r]


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) generators from one seed: the same model init every time."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_compiled(run: Run, device: torch.device, compile: bool | None, console: Console | None = None) -> Any:
    """Seed, then build the model, optimizers and step from the run's (overridden) spec.

    The compiler's notes (NL502: what the runtime runs approximately) are printed once on ``console``
    instead of as Python warnings.
    """
    from nldsl.build import build

    seed_everything(run.settings.seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = build(run.spec, device=str(device), compile=compile)
    if console is not None:
        for note in dict.fromkeys(str(w.message) for w in caught):
            console.print(note, markup=False, highlight=False, soft_wrap=True)
    return compiled


def save_state(compiled: Any) -> dict[str, Any]:
    """``Compiled.state_dict()`` split for ``save_checkpoint``: model tensors, optimizer-side state, step."""
    state = dict(compiled.state_dict())
    model = state.pop("model")
    return {"model": model, "optimizers": {"outer": state}}


def load_state(compiled: Any, ck: Checkpoint) -> None:
    """Put a checkpoint written by :func:`save_state` back into a freshly built ``Compiled``."""
    try:
        compiled.load_state_dict({"model": ck.model, **ck.optimizers["outer"]})
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise CheckpointError(f"{ck.path}: the saved training state does not fit this model ({_mismatch(exc)}); "
                              "was it written by another version of nldsl's runtime? (it records "
                              f"{ck.versions.get('nldsl', '?')})") from exc


def _mismatch(exc: BaseException) -> str:
    """torch's long load_state_dict report, cut to counts and a first example."""
    text = str(exc)
    counts = {}
    for what, label in (("Missing", "missing"), ("Unexpected", "unexpected")):
        keys = re.search(rf"{what} key\(s\) in state_dict: (.*?)\. ", text)
        counts[label] = keys.group(1).count('"') // 2 if keys else 0
    counts["shape mismatches"] = len(re.findall(r"size mismatch for", text))
    parts = [f"{n} {what}" for what, n in counts.items() if n]
    first = re.search(r'"([^"]+)"', text) or re.search(r"size mismatch for ([^:]+)", text)
    if not parts:
        return text.splitlines()[0] if text else type(exc).__name__
    return ", ".join(parts) + (f", e.g. {first.group(1)}" if first else "")


# --------------------------------------------------------------------------- evaluation
def validation_metrics(compiled: Any, windows: EvalWindows, byte_lengths: torch.Tensor | None,
                       device: torch.device) -> dict[str, float]:
    """Mean validation loss over fixed windows (token-weighted), perplexity and bits per byte."""
    total, count = 0.0, 0
    for batch in windows:
        n = batch.shape[0] * (batch.shape[1] - 1)
        total += float(compiled.eval_loss(batch.to(device))) * n
        count += n
    loss = total / max(count, 1)
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "tokens": count}
    if byte_lengths is not None:
        n_bytes = windows.n_target_bytes(byte_lengths)
        out["bpb"] = loss * count / (n_bytes * math.log(2)) if n_bytes else float("nan")
    return out


# --------------------------------------------------------------------------- run folder
def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    ckpts = out / CHECKPOINT_DIR
    if resume:
        if latest(ckpts) is None:
            raise RunError(f"--resume: no checkpoint to resume from in {ckpts}")
        return
    if latest(ckpts) is not None or (out / "metrics.jsonl").exists():
        if not overwrite:
            raise RunError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start over "
                           "there, or --out DIR for a new folder")
        for name in _RUN_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()


def _resume_overrides(out: Path, overrides: Sequence[str], console: Console | None) -> list[str]:
    """A resumed run without ``--set`` items reuses the ones it was started with (``--steps`` included; a new
    ``--steps`` comes after them and wins)."""
    if overrides:
        return list(overrides)
    recorded = list(read_record(out).get("overrides", []))
    if recorded and console is not None:
        console.print(f"resume: reusing the overrides of the run: {' '.join(recorded)}", highlight=False)
    return recorded


# --------------------------------------------------------------------------- the loop
class Trainer:
    """One run of the outer loop; ``run()`` returns a TrainResult. Built by :func:`train`."""

    def __init__(self, run: Run, compiled: Any, device: torch.device, *, resume: bool, progress: bool,
                 console: Console, stop_after: int | None, time_limit: float | None, tensorboard: bool):
        self.r, self.c, self.device, self.console = run, compiled, device, console
        s = run.settings
        self.sampler = BatchSampler(run.data.train, s.batch, s.seq, seed=s.seed)
        self.windows = (EvalWindows(run.data.val, s.batch, s.seq, max_windows=s.batch * s.eval_batches)
                        if s.eval_every else None)
        self.byte_lengths = run.tokenizer.token_byte_lengths()
        self.start = self._resume() if resume else 0
        self.step, self.stop_after, self.time_limit, self.progress = self.start, stop_after, time_limit, progress
        self.log = MetricsLogger(run.out, resume_from_step=self.start if resume else None, tensorboard=tensorboard)
        self.tokens = self._logged_tokens()
        self.last_ckpt: Path | None = latest(run.checkpoint_dir)

    def _resume(self) -> int:
        ck = load_checkpoint(self.r.checkpoint_dir, spec_hash=self.r.spec_hash, map_location=str(self.device))
        load_state(self.c, ck)
        ck.restore(sampler=self.sampler, rng=True)
        if ck.step > self.r.settings.steps:
            raise RunError(f"the checkpoint is at step {ck.step}, past steps = {self.r.settings.steps}; "
                           "pass a larger --steps to train further")
        return ck.step

    def _logged_tokens(self) -> int:
        rows = [r for r in self.log.rows if r.get("split") == "train" and "tokens" in r]
        return int(rows[-1]["tokens"]) if rows else 0

    def save(self) -> Path:
        s = self.r.settings
        self.last_ckpt = save_checkpoint(
            self.r.checkpoint_dir, step=self.step, spec_hash=self.r.spec_hash, sampler=self.sampler,
            metrics={"tokens": self.tokens}, keep_last=s.checkpoint_keep, **save_state(self.c))
        return self.last_ckpt

    def _origin(self, step: int) -> str | None:
        """Replay the failed step's forward pass from the checkpoint of the step before it (if there is one)."""
        if self.last_ckpt is None or not self.last_ckpt.name.endswith(f"{step - 1:08d}"):
            return None
        try:
            load_state(self.c, load_checkpoint(self.last_ckpt, map_location=str(self.device)))
        except CheckpointError:
            return None
        return first_non_finite_output(self.c.model, self.batch)

    def _evaluate(self, bar: TrainProgress) -> None:
        val = validation_metrics(self.c, self.windows, self.byte_lengths, self.device)
        self.log.log(self.step, "val", **val)
        bpb = f"  bpb {val['bpb']:.4f}" if "bpb" in val else ""
        bar.print(f"step {self.step}: val loss {val['loss']:.4f}  ppl {val['ppl']:.2f}{bpb}")

    def _train_step(self) -> float:
        batch = self.batch = next(self.sampler).to(self.device, non_blocking=True)
        t0 = time.perf_counter()
        metrics = self.c.train_step(batch)
        step = self.step + 1
        loss = check_finite(metrics["loss"], step, f"the training loss of model '{self.r.spec.model.name}'",
                            model=self.c.model)
        elapsed = time.perf_counter() - t0
        n_tokens = int(metrics.get("tokens", batch.shape[0] * (batch.shape[1] - 1)))
        self.tokens += n_tokens
        extra = {k: v for k, v in metrics.items() if k not in ("loss", "tokens", "step") and _is_number(v)}
        self.step = step
        self.log.log(step, "train", loss=loss, tokens=self.tokens, tokens_per_s=n_tokens / max(elapsed, 1e-9),
                     **extra)
        return loss

    def run(self) -> TrainResult:
        s, status, error = self.r.settings, "finished", None
        bar = TrainProgress(s.steps, start_step=self.start, enabled=self.progress, console=self.console)
        t0 = time.monotonic()
        try:
            with GracefulInterrupt() as stop, bar:
                while self.step < s.steps:
                    loss = self._train_step()
                    bar.update(self.step, loss=loss, tokens_per_s=self.log.rows[-1]["tokens_per_s"])
                    if self.windows is not None and (self.step % s.eval_every == 0 or self.step == s.steps):
                        self._evaluate(bar)
                    if stop.requested:
                        status = "interrupted"
                        break
                    if (self.stop_after is not None and self.step >= self.stop_after) or (
                            self.time_limit is not None and time.monotonic() - t0 >= self.time_limit):
                        status = "stopped" if self.step < s.steps else status
                        break
                    if s.checkpoint_every and self.step % s.checkpoint_every == 0 and self.step < s.steps:
                        bar.print(f"step {self.step}: checkpoint {self.save()}")
            if status in ("interrupted", "stopped") or self.step == s.steps:
                self.save()
        except NonFiniteLossError as err:
            status, error = "diverged", _name_component(err, self.c, self._origin(err.step))
        finally:
            self.log.close()
        return self._finish(status, error)

    def _finish(self, status: str, error: NonFiniteLossError | None) -> TrainResult:
        out = self.r.out
        rows = self.log.rows
        ckpt = str(self.last_ckpt) if self.last_ckpt else "none"
        summary = summarize(rows, extra={"status": status, "checkpoint": ckpt})
        summary.write_json(out / "summary.json")
        png = None
        if any(r.get("split") == "train" for r in rows):
            png = plot_losses(out / "metrics.jsonl", out / LOSS_PNG, title=f"{self.r.spec.model.name}: loss")
        return TrainResult(out, self.step, status, summary, self.last_ckpt, png, error, list(rows))


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _name_component(err: NonFiniteLossError, compiled: Any, origin: str | None = None) -> NonFiniteLossError:
    """Add the spec component owning the first non-finite tensor (via the plan's module names) and, when
    it could be found, the sub-layer where the forward pass first went non-finite."""
    culprit = err.culprit or find_non_finite(getattr(compiled, "model", None))
    owner = component_of(culprit.name, compiled) if culprit is not None else None
    where = err.where
    if origin:
        where += f": the forward pass first goes non-finite at {origin} (the step replayed from the last good " \
                 "checkpoint)"
        if owner:
            reached = "its gradients went non-finite in" if culprit.kind == "gradient" else "its update then reached"
            where += f"; {reached} level/component {owner}"
    elif owner:
        where += f", level/component {owner}"
    return NonFiniteLossError(err.step, where, err.value, culprit, what=err.what)


def first_non_finite_output(model: torch.nn.Module, batch: torch.Tensor) -> str | None:
    """Re-run a forward pass and name the first sub-layer (its ``.nl`` line and component) whose output holds
    a NaN or inf; None when the whole pass stays finite."""
    found: list[str] = []

    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
        y = output[0] if isinstance(output, tuple) else output
        finite = not isinstance(y, torch.Tensor) or not y.is_floating_point() or bool(torch.isfinite(y).all())
        if not found and not finite:
            found.append(module.where)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(getattr(m, "where", None), str)]
    try:
        with torch.no_grad():
            model(batch[:, :-1])
    except (RuntimeError, ValueError):  # a component that refuses non-finite input: the hook already fired
        pass
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def component_of(param_name: str, compiled: Any) -> str | None:
    """The spec component a parameter belongs to (``blocks.0.titans.k.w1`` -> ``tiny_hope[0].titans.k``)."""
    finder = getattr(compiled, "component_of", None)
    if callable(finder):
        return finder(param_name)
    return None


# --------------------------------------------------------------------------- entry point
def train(path: str | Path, *, steps: int | None = None, device: str | None = None, out: str | Path | None = None,
          resume: bool = False, overwrite: bool = False, overrides: Sequence[str] = (), compile: bool | None = None,
          progress: bool = True, console: Console | None = None, stop_after: int | None = None,
          time_limit: float | None = None, tensorboard: bool = True) -> TrainResult:
    """Train the model of a `.nl` file; the Python face of ``nldsl train``.

    Args:
        steps: overrides ``train.steps`` (the schedule's length too).
        device: ``cpu``/``cuda``/``auto``; default: the spec's ``device``.
        out: run folder (default ``runs/<file stem>``).
        resume: continue from the newest checkpoint in ``out`` (same spec required).
        overwrite: start over in an ``out`` that already holds a run.
        overrides: ``--set key=value`` items (``nldsl.overrides``).
        compile: False switches torch.compile off whatever the spec says.
        stop_after: stop (and checkpoint) after this step, as Ctrl-C would (``status == "stopped"``).
        time_limit: stop the same way once this many seconds of training have passed.
    Raises:
        RunError, SpecInvalid, DataError, CheckpointError, TokenizerError, OverrideError: user mistakes
        with a message (the CLI prints them). A non-finite loss does not raise: ``status == "diverged"``.
    """
    console = console or Console()
    extra = [f"steps={steps}"] if steps is not None else []
    if out is None:
        spec, _, _ = load_spec(path, parse_overrides([*overrides, *extra]))
        out = default_out(path, train_settings(spec))
    run_out = Path(out)
    _prepare_out(run_out, resume, overwrite)
    if resume:
        overrides = _resume_overrides(run_out, overrides, console if progress else None)
    run = prepare_run(path, overrides, out=run_out, extra=extra, reuse_tokenizer=resume)
    if progress:
        from nldsl.source import render

        for diag in run.warnings:  # the checks' warnings (errors stopped prepare_run already)
            console.print(render(diag, {run.source.path: run.source}), markup=False, highlight=False,
                          soft_wrap=True)
    dev = resolve_device(device, run.settings)
    compiled = build_compiled(run, dev, compile, console if progress else None)
    run.write_record()
    trainer = Trainer(run, compiled, dev, resume=resume, progress=progress, console=console,
                      stop_after=stop_after, time_limit=time_limit, tensorboard=tensorboard)
    return trainer.run()
