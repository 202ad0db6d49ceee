"""Training-setup checks (NL401-NL409): does the outer loop (NL §1.3, level of pre-training) fit the model?

Decisions: mismatches that make training impossible (no model, a tokenizer producing ids the embedding
does not have, classification data for a language model) are **errors**; settings that only waste work
or never take effect (evaluation after the last step, a warm-up longer than training, a step period
that never comes, fp16 on a CPU, a data file not found here) are **warnings**.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from nldsl import catalog
from nldsl.checks.common import diag, keyword_span, whole
from nldsl.graph import LevelGraph
from nldsl.source import Diagnostic
from nldsl.spec import model as m

CLASSIFY_DATA = ("digits", "fashion_mnist")
TOKENIZER_VOCAB = {"bytes": 256}


def _name(value: m.Value | None) -> str | None:
    return value.name if isinstance(value, (m.Symbol, m.Call)) else None


def check_train_setup(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL401 (train without model), NL402/NL403 (eval and checkpoint periods), NL405 (warm-up)."""
    spec, train = graph.spec, graph.spec.train
    if train is None:
        return
    if spec.model is None:
        yield diag("NL401", keyword_span(train.span, 5), "train without a model",
                   "add `model NAME { dim = ... }` to this file (an imported file's model is not used)")
    steps = graph.train_int("steps")
    for stmt, word in ((train.eval, "eval"), (train.checkpoint, "checkpoint")):
        if stmt is None:
            continue
        period = stmt.period
        if period.kind != "every" or period.unit == "tokens":
            yield diag("NL402", period.unit_span if period.unit == "tokens" else period.span,
                       f"{word} runs between outer steps", f"write `{word} every N steps`")
        n = whole(period.count) if period.kind == "every" and period.unit == "steps" else None
        if n is not None and steps is not None and n > steps:
            yield diag("NL403", period.count.span, f"{word} every {n} steps never runs in {steps} steps",
                       f"use a period of at most {steps} steps (training ends first)")
    sched = train.schedule
    warmup = whole(sched.get("warmup")) if sched is not None else None
    if warmup is not None and steps is not None and 0 < steps <= warmup:
        yield diag("NL405", sched.get("warmup").span, f"warm-up of {warmup} steps is not shorter than training "
                   f"({steps} steps)", "the learning rate would never reach its peak: shorten the warm-up")


def check_task_data(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL404 (tokenizer vocab vs model vocab) and NL406 (task vs data and tokenizer)."""
    spec, train, model = graph.spec, graph.spec.train, graph.spec.model
    if train is None or model is None:
        return
    task = _name(model.get("task")) or "lm"
    tok, data = train.get("tokenizer"), train.get("data")
    if task == "classify":
        for need in ("inputs", "classes"):
            if model.get(need) is None:
                yield diag("NL406", model.name_span, f"a classifier needs '{need}'",
                           f"add `{need} = N` to the model (task = classify)")
        if tok is not None and _name(tok) in ("bytes", "bpe"):
            yield diag("NL406", tok.span, "a classifier reads feature vectors, not text",
                       "use `tokenizer = none` with task = classify")
        if _name(data) in ("text", "jsonl", "generated"):
            yield diag("NL406", data.span, f"{_name(data)} data for a classifier",
                       f"classification data: {', '.join(CLASSIFY_DATA)}")
        return
    if _name(tok) == "none":
        yield diag("NL406", tok.span, "a language model needs a tokenizer",
                   "use `tokenizer = bytes` or `tokenizer = bpe(vocab = N)`")
    if _name(data) in CLASSIFY_DATA:
        yield diag("NL406", data.span, f"{_name(data)} is classification data",
                   "set `task = classify` (with inputs and classes) in the model, or use text data")
    yield from _vocab(graph, tok)


def _vocab(graph: LevelGraph, tok: m.Value | None) -> Iterator[Diagnostic]:
    vocab_value = graph.spec.model.get("vocab")
    vocab = whole(vocab_value)
    name = _name(tok) or "bytes"
    size = TOKENIZER_VOCAB.get(name)
    if name == "bpe":
        given = tok.get("vocab") if isinstance(tok, m.Call) else None
        size = whole(given) if given is not None else catalog.TOKENIZERS["bpe"].param("vocab").default
    if vocab is None or size is None or vocab <= 0 or size <= 0 or vocab == size:
        return
    span = tok.span if tok is not None else vocab_value.span
    if size > vocab:
        yield diag("NL404", span, f"the {name} tokenizer makes {size} token ids but the model vocab is {vocab}",
                   f"ids >= {vocab} would index past the embedding table: set `vocab = {size}` in the model")
    else:
        yield diag("NL404", vocab_value.span, f"model vocab {vocab} is larger than the {name} tokenizer's {size} ids",
                   f"{vocab - size} embedding rows are never used: set `vocab = {size}`", severity="warning")


def check_step_periods(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL407: a step period that never comes round in training (components and M3's slow momentum)."""
    train = graph.spec.train
    if train is None:
        return
    steps = graph.train_int("steps")
    if steps is None or steps <= 0:
        return
    for _, comp in graph.components():
        period = comp.update.period if comp.update is not None else None
        if period is None or period.kind != "every" or period.unit != "steps" or comp.update.implicit:
            continue
        n = whole(period.count)
        if n is not None and n > steps:
            yield diag("NL407", period.count.span, f"'{comp.name}' updates every {n} steps but training has {steps}",
                       "it would never take a step: use a shorter period or more steps")
    for opt in train.optimizers:
        slow = opt.get("slow_every") if opt.kind == "m3" else None
        n = whole(slow)
        if n is not None and n > steps:
            yield diag("NL407", slow.span, f"slow momentum every {n} steps never updates in {steps} steps",
                       "use slow_every < steps")


def check_device(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL408 (precision/parallelism that a CPU run cannot use) and NL409 (data file not found)."""
    train = graph.spec.train
    if train is None:
        return
    device = _name(train.get("device"))
    precision, parallel = train.get("precision"), train.get("parallel")
    if device == "cpu" and _name(precision) == "fp16":
        yield diag("NL408", precision.span, "fp16 on a CPU", "CPUs have no fast fp16 kernels: use fp32 or bf16")
    if device == "cpu" and _name(parallel) in ("ddp", "fsdp"):
        yield diag("NL408", parallel.span, f"{_name(parallel)} on a CPU",
                   "data parallelism needs one GPU per process: use parallel = none, or device = cuda")
    data = train.get("data")
    path = data.get("path") if isinstance(data, m.Call) and data.name in ("text", "jsonl") else None
    if path is None and isinstance(data, m.Call) and data.name in ("text", "jsonl") and data.positional:
        path = data.positional[0]
    if isinstance(path, m.String) and not path.value.startswith("builtin:") and path.value:
        base = Path(graph.spec.path).parent if not graph.spec.path.startswith("<") else Path.cwd()
        try:
            found = (base / path.value).exists()
        except (OSError, ValueError):
            found = False
        if not found:
            yield diag("NL409", path.span, f"data file '{path.value}' not found",
                       "paths are relative to the .nl file; built-in data: \"builtin:shakespeare\"")
