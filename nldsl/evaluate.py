"""`nldsl eval`: held-out perplexity, bits per byte and last-word cloze accuracy of a trained run.

The held-out text is the validation split of the run's own data (the same deterministic split training
used, ``nldsl.datasets``). Two measures:

* language modelling: the token-weighted mean cross-entropy over fixed validation windows, its
  perplexity ``exp(loss)`` and bits per byte ``loss * tokens / (bytes * ln 2)`` (comparable across
  tokenizers);
* last-word cloze (LAMBADA-like, ``datasets.build_cloze``): after up to 256 characters of held-out text,
  is the word that ends the line or sentence the model's greedy continuation? An item counts as right
  when every token of the word is the argmax at its position, the text read as in training (in-context
  levels writing, ``task`` levels adapting on the surprise of what they have read). Teacher forcing along
  the answer follows the greedy path exactly as long as all of its tokens are right, so one pass over a
  right-padded batch of items scores them all (the model is causal: padding never reaches back).
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from nldsl.checkpoint import Checkpoint, load_checkpoint
from nldsl.datasets import ClozeItem, EvalWindows, build_cloze
from nldsl.runs import CHECKPOINT_DIR, Run, RunError, find_run_dir, prepare_run, read_record, resolve_device
from nldsl.tokenizer import Tokenizer

EVAL_JSON = "eval.json"


# --------------------------------------------------------------------------- loading a trained run
@dataclass
class Trained:
    """A run rebuilt from its folder: the prepared run, the compiled model with the checkpoint loaded."""

    run: Run
    compiled: Any
    checkpoint: Checkpoint
    device: torch.device


def _checkpoint_path(ckpt: str | Path, run_dir: Path) -> Path:
    path = Path(ckpt)
    return path if path.name.startswith("step-") or path.name == CHECKPOINT_DIR else run_dir / CHECKPOINT_DIR


def load_trained(file: str | Path, ckpt: str | Path, *, device: str | None = None, overrides: Sequence[str] = (),
                 load_data: bool = True) -> Trained:
    """Rebuild a run from ``--ckpt`` (run folder, its checkpoints/ or one step-* folder).

    The spec is ``file`` with the run's recorded ``--set`` items (or ``overrides`` when given); its hash
    must match the checkpoint's, so a checkpoint of another spec is refused with a clear message.
    """
    from nldsl.train import build_compiled, load_state

    run_dir = find_run_dir(ckpt)
    items = list(overrides) or list(read_record(run_dir).get("overrides", []))
    run = prepare_run(file, items, out=run_dir, load_data=load_data, reuse_tokenizer=True)
    dev = resolve_device(device, run.settings)
    ck = load_checkpoint(_checkpoint_path(ckpt, run_dir), spec_hash=run.spec_hash, map_location=str(dev))
    compiled = build_compiled(run, dev, compile=False)
    load_state(compiled, ck)
    return Trained(run, compiled, ck, dev)


# --------------------------------------------------------------------------- cloze
def _encode_item(tok: Tokenizer, item: ClozeItem) -> tuple[list[int], int]:
    """Ids of context + answer and where the answer starts (robust to BPE merging across the boundary)."""
    full = tok.encode(item.context + item.answer)
    head = tok.encode(item.context)
    common = 0
    while common < min(len(full), len(head)) and full[common] == head[common]:
        common += 1
    return full, min(common, len(full) - 1)


def _autocast(compiled: Any):
    dtype = getattr(compiled, "autocast", None)
    device = torch.device(compiled.device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def greedy_predictions(compiled: Any, tokens: Tensor) -> Tensor:
    """Argmax next-token predictions (B, L-1) for tokens (B, L), read the way training reads a sequence.

    In-context levels write their memories as they go; ``task``-objective levels adapt from the surprise
    of the tokens already read (``train_segments`` without outer gradients), so position t sees exactly
    what the model learned from tokens before its chunk. Everything is causal, so right-padding a row
    never changes the predictions inside it.
    """
    from nldsl.build import token_losses
    from nldsl.nn.surprise import train_segments

    x, y = tokens[:, :-1], tokens[:, 1:]
    model = compiled.model
    was = model.training
    model.eval()
    try:
        with _autocast(compiled):
            if not getattr(compiled, "task_levels", False):
                with torch.no_grad():
                    logits, _ = model(x)
                return logits.argmax(-1)
            guesses: list[Tensor] = []

            def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
                guesses.append(logits.detach().argmax(-1))
                return token_losses(logits, targets)

            train_segments(model, x, y, loss_fn, outer_grads=False)
            return torch.cat(guesses, dim=1)
    finally:
        model.train(was)


def _cloze_batch(compiled: Any, rows: list[tuple[list[int], int]]) -> int:
    """How many items of one batch the model completes exactly (greedy, teacher-forced)."""
    longest = max(len(ids) for ids, _ in rows)
    tokens = torch.zeros(len(rows), longest, dtype=torch.int64)  # (b, L), right-padded with id 0
    for i, (ids, _) in enumerate(rows):
        tokens[i, :len(ids)] = torch.tensor(ids)
    guess = greedy_predictions(compiled, tokens.to(torch.device(compiled.device))).cpu()  # guess[:, t] -> t + 1
    return sum(bool((guess[i, start - 1:len(ids) - 1] == tokens[i, start:len(ids)]).all())
               for i, (ids, start) in enumerate(rows))


def cloze_accuracy(compiled: Any, tokenizer: Tokenizer, items: Sequence[ClozeItem], *, batch_size: int = 16) -> float:
    """Share of items whose last word the model completes exactly (every token greedy-right)."""
    if not items:
        raise ValueError("no cloze items to score")
    rows = [(ids, max(start, 1)) for ids, start in (_encode_item(tokenizer, it) for it in items)]
    right = sum(_cloze_batch(compiled, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size))
    return right / len(rows)


# --------------------------------------------------------------------------- the command
@dataclass
class EvalResult:
    """What ``nldsl eval`` prints and writes."""

    run_dir: str
    checkpoint: str
    step: int
    val_loss: float
    perplexity: float
    bits_per_byte: float | None
    val_tokens: int
    cloze_accuracy: float | None
    cloze_items: int
    json_path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title=f"eval: {self.checkpoint}")
        table.add_column("metric", style="bold")
        table.add_column("value", justify="right")
        table.add_row("step", f"{self.step:,}")
        table.add_row("validation loss (nats/token)", f"{self.val_loss:.4f}")
        table.add_row("perplexity", f"{self.perplexity:,.2f}")
        if self.bits_per_byte is not None:
            table.add_row("bits per byte", f"{self.bits_per_byte:.4f}")
        table.add_row("validation tokens", f"{self.val_tokens:,}")
        if self.cloze_accuracy is not None:
            table.add_row(f"last-word cloze accuracy ({self.cloze_items} items)", f"{100 * self.cloze_accuracy:.1f}%")
        return table


def evaluate_trained(t: Trained, *, max_batches: int | None = None, cloze_items: int = 200) -> EvalResult:
    """Validation loss / perplexity / bpb over the held-out split, then cloze accuracy."""
    from nldsl.train import validation_metrics

    s, data = t.run.settings, t.run.data
    windows = EvalWindows(data.val, s.batch, s.seq, max_windows=None if max_batches is None else max_batches * s.batch)
    val = validation_metrics(t.compiled, windows, t.run.tokenizer.token_byte_lengths(), t.device)
    items = build_cloze(t.run.split.val, max_items=cloze_items) if cloze_items > 0 else []
    acc = cloze_accuracy(t.compiled, t.run.tokenizer, items, batch_size=max(s.batch, 16)) if items else None
    bpb = val.get("bpb")
    return EvalResult(str(t.run.out), str(t.checkpoint.path), t.checkpoint.step, val["loss"], val["ppl"],
                      None if bpb is None or not math.isfinite(bpb) else bpb, int(val["tokens"]), acc, len(items))


def evaluate_run(file: str | Path, ckpt: str | Path, *, device: str | None = None, overrides: Sequence[str] = (),
                 max_batches: int | None = None, cloze_items: int = 200,
                 json_path: str | Path | None = None) -> EvalResult:
    """``nldsl eval FILE --ckpt DIR``: evaluate and write the JSON (default ``<run>/eval.json``)."""
    if max_batches is not None and max_batches < 1:
        raise RunError(f"--batches must be >= 1, got {max_batches}")
    if cloze_items < 0:
        raise RunError(f"--cloze-items must be >= 0, got {cloze_items}")
    trained = load_trained(file, ckpt, device=device, overrides=overrides)
    result = evaluate_trained(trained, max_batches=max_batches, cloze_items=cloze_items)
    out = Path(json_path) if json_path is not None else Path(result.run_dir) / EVAL_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    result.json_path = str(out)
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result
