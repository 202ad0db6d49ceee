"""`nldsl generate`: sample a continuation while the in-context memories keep learning from it.

The model's ``forward(tokens, state) -> (logits, state)`` carries every in-context level's fast state
(DESIGN.md 3.2): the prompt is read in one call, then each sampled token is fed back with the returned
state. A level with ``update every N tokens`` therefore keeps writing into its memory from the text the
model itself produces (NL §1.3: in-context learning happens at inference too); nothing is reset between
tokens (``task``-objective CMS levels first adapt on the prompt from its surprise, ``Compiled.generate``).
Sampling is softmax with a temperature (0 = greedy) and an optional top-k cut, drawn from a private
``torch.Generator`` seeded by ``seed``, so the same seed gives the same text.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from nldsl.runs import RunError


@dataclass
class Generation:
    """A sampled continuation."""

    prompt: str
    text: str
    """The continuation only."""
    ids: list[int]
    """Token ids of the continuation."""
    state: Any = None
    """The in-context state after the prompt and every sampled token but the last were read."""
    prompt_state: Any = None
    """With ``trace=True``: the state after the prompt alone, before any sampled token."""
    note: str | None = None
    """Why sampling stopped before ``tokens`` (non-finite logits), else None."""


def _check(max_new: int, temperature: float, top_k: int | None) -> None:
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        raise RunError(f"--tokens must be a non-negative integer, got {max_new!r}")
    if not (temperature >= 0.0) or temperature == float("inf"):
        raise RunError(f"--temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RunError(f"--top-k must be a positive integer, got {top_k!r}")


def state_norm(state: Any) -> float:
    """Sum of the norms of every floating tensor in a (nested) state: a cheap fingerprint of it."""
    if isinstance(state, Tensor):
        return float(state.detach().float().norm()) if state.is_floating_point() else 0.0
    if isinstance(state, dict):
        return sum(state_norm(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_norm(v) for v in state)
    return 0.0


def _autocast(compiled: Any):
    dtype = getattr(compiled, "autocast", None)
    return torch.autocast(torch.device(compiled.device).type, dtype=dtype) if dtype else contextlib.nullcontext()


def sample(compiled: Any, prompt_ids: Sequence[int] | Tensor, max_new: int, *, temperature: float = 0.8,
           top_k: int | None = None, seed: int = 0, state: Any = None) -> tuple[list[int], Any, str | None]:
    """Sample ``max_new`` ids after ``prompt_ids``, carrying the in-context state (as ``Compiled.generate``).

    Returns the new ids, the state (the last sampled id is not read yet: feed it first to continue) and
    None, or a note when sampling stopped early because the logits went non-finite (an in-context memory
    that diverges past the sequence lengths it was trained on): the ids so far are kept.
    """
    from nldsl.build import prompt_state, sample_next

    _check(max_new, temperature, top_k)
    device = torch.device(compiled.device)
    ids = torch.as_tensor(prompt_ids, dtype=torch.int64).reshape(1, -1).to(device)  # (1, P)
    if ids.numel() == 0:
        raise RunError("the prompt is empty: give at least one character to continue")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    model, out, note = compiled.model, [], None
    was = model.training
    model.eval()
    try:
        with _autocast(compiled):
            logits, state = prompt_state(model, ids, state, bool(getattr(compiled, "task_levels", False)))
            for i in range(max_new):
                last = logits[:, -1]  # (1, V)
                if not bool(torch.isfinite(last).all()):
                    note = (f"sampling stopped after {i} of {max_new} tokens: the logits became non-finite (an "
                            "in-context memory diverged past the sequence lengths it was trained on)")
                    break
                nxt = sample_next(last, temperature, top_k, gen)  # (1, 1)
                out.append(int(nxt))
                if i + 1 < max_new:
                    with torch.no_grad():
                        logits, state = model(nxt, state)
    finally:
        model.train(was)
    return out, state, note


def generate_text(trained: Any, prompt: str, *, tokens: int = 200, temperature: float = 0.8,
                  top_k: int | None = None, seed: int = 0, trace: bool = False) -> Generation:
    """Sample from an already loaded run (``nldsl.evaluate.load_trained``) and decode.

    ``trace=True`` also keeps the in-context state after the prompt alone (``Generation.prompt_state``),
    to see what the memories wrote while the model was writing.
    """
    _check(tokens, temperature, top_k)
    tok = trained.run.tokenizer
    prompt_ids = tok.encode(prompt)
    ids, state, note = sample(trained.compiled, prompt_ids, tokens, temperature=temperature, top_k=top_k, seed=seed)
    before = sample(trained.compiled, prompt_ids, 0)[1] if trace else None
    return Generation(prompt, tok.decode(ids), ids, state, before, note)


def generate_run(file: str | Path, ckpt: str | Path, prompt: str, *, tokens: int = 200, temperature: float = 0.8,
                 top_k: int | None = None, seed: int = 0, device: str | None = None, overrides: Sequence[str] = (),
                 trace: bool = False) -> Generation:
    """``nldsl generate FILE --ckpt DIR --prompt TEXT``: rebuild the run from its folder, sample, decode."""
    from nldsl.evaluate import load_trained

    _check(tokens, temperature, top_k)
    trained = load_trained(file, ckpt, device=device, overrides=overrides, load_data=False)
    return generate_text(trained, prompt, tokens=tokens, temperature=temperature, top_k=top_k, seed=seed,
                         trace=trace)
