"""The fixed part of every script ``nldsl codegen`` writes: data, training step, evaluation and main loop.

This text holds no spec content: ``nldsl.codegen`` parses it with ``ast``, puts the generated settings,
``build_model`` and ``build_optimizers`` in front of it, and prints the whole module with ``ast.unparse``.
Each ``__comment__("...")`` line becomes a ``# ...`` comment in the script. The functions mirror what
``nldsl train`` does step for step (``nldsl.train``, ``nldsl.build.Compiled.train_step``), so the script
and the command log the same losses from the same seed.
"""
from __future__ import annotations

TEMPLATE = '''
def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators from one seed, as `nldsl train` seeds them before building."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(device: torch.device):
    """The deterministic train/validation split of DATA, tokenized (nldsl.datasets, nldsl.tokenizer)."""
    split = load_text(DATA, field=DATA_FIELD, val_fraction=VAL_FRACTION)
    if TOKENIZER == "bpe":
        __comment__("a byte-level BPE learned from the training split only (deterministic)")
        tokenizer = build_tokenizer("bpe", train_text=split.train, vocab_size=BPE_VOCAB)
    else:
        tokenizer = build_tokenizer("byte")
    data = tokenize_split(split, tokenizer)
    sampler = BatchSampler(data.train, BATCH, SEQ, seed=SEED)
    windows = EvalWindows(data.val, BATCH, SEQ, max_windows=BATCH * EVAL_BATCHES) if EVAL_EVERY else None
    return tokenizer, sampler, windows


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy (B, n): what task-objective levels take their surprise from."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of one forward pass from the initial in-context state."""
    logits, _ = model(x)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def autocast(device: torch.device):
    """bf16 autocast on CUDA when the spec asks for it; plain float32 otherwise."""
    if device.type != "cuda" or PRECISION == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train_step(model, forward, loss_fn, outer: OuterLoop, batch: torch.Tensor, step: int) -> float:
    """One outer step: forward (in-context levels update inside the sequence), loss, backward, optimizers."""
    model.train()
    x, y = batch[:, :-1], batch[:, 1:]
    parts = list(zip(x.chunk(ACCUMULATE), y.chunk(ACCUMULATE)))
    losses = []
    for xs, ys in parts:
        with autocast(batch.device):
            if TASK_LEVELS:
                __comment__("task-objective levels learn from the surprise of the loss, segment by segment")
                loss, _ = train_segments(forward, xs, ys, token_losses)
            else:
                loss = loss_fn(model, xs, ys)
                loss.backward()
        losses.append(loss.detach())
    if len(parts) > 1:
        for p in outer.trainable:
            if p.grad is not None:
                p.grad.div_(len(parts))
    __comment__("clip, fold `every N steps` levels into their accumulators, step optimizers and schedules;")
    __comment__("the loss and the gradient norm are read in one device sync, and a non-finite loss updates nothing")
    return outer.step(step, torch.stack(losses).mean())["loss"]


def eval_loss(model, forward, loss_fn, batch: torch.Tensor) -> float:
    """Validation loss of one batch; in-context levels adapt as in training, no outer update."""
    model.eval()
    try:
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast(batch.device):
            if TASK_LEVELS:
                loss, _ = train_segments(forward, x, y, token_losses, outer_grads=False)
            else:
                with torch.no_grad():
                    loss = loss_fn(model, x, y)
        return float(loss)
    finally:
        model.train()


def validation_loss(model, forward, loss_fn, windows, device: torch.device) -> float:
    """Token-weighted mean loss over the fixed validation windows."""
    total, count = 0.0, 0
    for batch in windows:
        n = batch.shape[0] * (batch.shape[1] - 1)
        total += eval_loss(model, forward, loss_fn, batch.to(device)) * n
        count += n
    return total / max(count, 1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="outer steps (the schedule follows)")
    parser.add_argument("--out", default=OUT, help="where metrics.jsonl and model.safetensors go")
    parser.add_argument("--device", default=DEVICE, help="cpu, cuda or auto")
    args = parser.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, sampler, windows = load_data(device)
    seed_everything(SEED)
    model = build_model().to(device)
    optimizers, schedulers, outer = build_optimizers(model, args.steps, device)
    forward, loss_fn, chunk_options = model, forward_loss, None
    if COMPILE is not None:
        __comment__("scope model: whole forward and loss; scope chunk: static sublayers + each memory's chunk update")
        forward, loss_fn, chunk_options, _ = compile_model(model, forward_loss, COMPILE, COMPILE_SCOPE)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{MODEL}: {n_params:,} parameters on {device}, {args.steps} steps of {BATCH} x {SEQ} tokens")
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as log, chunk_context(chunk_options):
        for step in range(1, args.steps + 1):
            batch = next(sampler).to(device)
            try:
                loss = train_step(model, forward, loss_fn, outer, batch, step - 1)
            except FloatingPointError as err:  # NaN gradients: nothing was updated
                raise SystemExit(str(err)) from None
            if not math.isfinite(loss):
                raise SystemExit(f"non-finite loss ({loss}) at step {step}")
            log.write(json.dumps({"step": step, "split": "train", "loss": loss}) + "\\n")
            lr = outer.optimizers[0].param_groups[0]["lr"] if outer.optimizers else 0.0
            print(f"step {step}/{args.steps}  loss {loss:.4f}  lr {lr:.3g}")
            if windows is not None and (step % EVAL_EVERY == 0 or step == args.steps):
                val = validation_loss(model, forward, loss_fn, windows, device)
                finite = val if math.isfinite(val) else None  # JSON has no NaN (as in nldsl.metrics)
                log.write(json.dumps({"step": step, "split": "val", "loss": finite}) + "\\n")
                print(f"step {step}: val loss {val:.4f}  ppl {math.exp(min(val, 700.0)):.2f}")
    weights = out / "model.safetensors"
    save_model(model, str(weights))
    print(f"saved {weights} and {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
'''

IMPORTS = '''
import argparse
import contextlib
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from torch import nn

from nldsl.compiling import chunk_context, compile_model
from nldsl.datasets import BatchSampler, EvalWindows, load_text, tokenize_split
from nldsl.model import FlowBlock, NLModel, Sublayer
from nldsl.nn.surprise import train_segments
from nldsl.outer import LRSchedule, OuterLoop
from nldsl.tokenizer import build_tokenizer
'''
"""Imports every script needs; ``nldsl.codegen`` adds those of the runtime classes a spec uses."""
