"""Stage 5: checked LevelGraph -> Plan, the whole compiled program as plain frozen data (no torch).

The Plan is what ``lower`` turns into torch modules and optimizers, and what ``nldsl plan`` prints. It
holds every decision the compiler makes before a tensor exists:

* every component (NL Def. 3: a level's state, context, objective, inner optimizer and period) with its
  resolved config: catalog defaults applied, symbolic defaults (``4 * dim``, ``model dim``, ``dim per
  head``, ``8/3 * dim rounded to 64``) turned into numbers, and its source span;
* the update rule of each level, with the form of every inner hyperparameter (const / learned / data /
  memory, NL §5.3 of docs/language.md);
* the levels ordered by frequency (NL §1.3), the knowledge transfers (NL §3.3);
* the outer optimizers and the parameter groups each owns (component x category x period), where every
  group is owned exactly once;
* the train settings and the per-step schedule of which levels update when.

>>> from nldsl.spec import load
>>> p = plan(load("model m { vocab = 256  dim = 8  component f : mlp }\\ntrain { optimizer adamw  data = text(\\"x\\") }"))
>>> p.component("f").get("hidden"), p.component("f").period.render()
(32, 'every step')
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from nldsl.source import Span

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Value = Any
"""A resolved value: int, float, bool, str, None or a tuple of those."""
Config = tuple[tuple[str, Value], ...]
"""An ordered, hashable ``name -> value`` table (``dict(config)`` to read it)."""

@dataclass(frozen=True)
class Hyper:
    """One inner hyperparameter and its form (docs/language.md §5.3)."""

    name: str
    form: str
    """``const`` | ``learned`` | ``data`` | ``memory``."""
    value: float | None = None
    """const: the value; learned: the initial value; data: the scale; memory: None."""
    activation: str | None = None
    """data: ``softplus`` or ``sigmoid``."""
    source: str | None = None
    """memory: the sibling memory that produces it (``eta``, ``alpha``)."""
    span: Span | None = None

    def render(self) -> str:
        if self.form == "learned":
            return f"learned({_num(self.value)})"
        if self.form == "data":
            return f"data({self.activation}, scale = {_num(self.value)})"
        if self.form == "memory":
            return f"memory({self.source})"
        return _num(self.value)


@dataclass(frozen=True)
class Period:
    """How often a state changes: ``tokens`` (in context), ``steps`` (outer loop), ``never``,
    ``nonparametric`` (recomputed for every token)."""

    kind: str
    every: int = 1
    reduce: str | None = None
    """``steps``: how the N accumulated outer gradients combine (``sum`` | ``mean``)."""

    @property
    def in_context(self) -> bool:
        return self.kind in ("tokens", "nonparametric")

    def render(self) -> str:
        if self.kind in ("never", "nonparametric"):
            return self.kind
        unit = self.kind[:-1] if self.every == 1 else self.kind
        text = f"every {unit}" if self.every == 1 else f"every {self.every} {unit}"
        return text + (f" ({self.reduce})" if self.kind == "steps" and self.every > 1 else "")


OUTER_STEP = Period("steps", 1, "sum")


@dataclass(frozen=True)
class Rule:
    """A level's update rule: objective, inner optimizer (None = trained by the outer loop), init, context."""

    objective: str | None = None
    objective_args: Config = ()
    optimizer: str | None = None
    hypers: tuple[Hyper, ...] = ()
    init: str | None = None
    """``meta`` | ``zeros`` | ``normal`` | ``pretrained`` (in-context levels), None otherwise."""
    init_args: Config = ()
    grad: str | None = None
    """``unrolled`` (meta-gradient through the inner updates) or ``stopgrad``; in-context levels only."""
    context: str = "tokens"
    span: Span | None = None
    """The optimizer statement (or the objective's, when there is no optimizer)."""

    def hyper(self, name: str) -> Hyper | None:
        return next((h for h in self.hypers if h.name == name), None)

    def render(self) -> str:
        parts = []
        if self.objective:
            args = ", ".join(f"{k} = {_val(v)}" for k, v in self.objective_args)
            parts.append(f"{self.objective}({args})" if args else self.objective)
        if self.optimizer:
            parts.append(f"{self.optimizer}(" + ", ".join(f"{h.name} = {h.render()}" for h in self.hypers) + ")")
        if self.init:
            parts.append(f"init {self.init}" + (f"({self.grad})" if self.grad else ""))
        if self.context != "tokens":
            parts.append(f"context {self.context}")
        return "  ".join(parts) if parts else "outer loop"


@dataclass(frozen=True)
class ComponentPlan:
    """One component (a level) with its resolved config."""

    path: str
    """Dotted path: ``name`` (model), ``block[i].name`` (stacked), ``...name.child`` (memory / level)."""
    name: str
    kind: str
    role: str
    config: Config
    period: Period
    level: int
    rule: Rule
    groups: tuple[str, ...]
    """Parameter categories of its tensors that an outer optimizer trains."""
    parent: str | None
    children: tuple[str, ...]
    repeat: int
    """Copies in the model (its stack's repetitions)."""
    span: Span
    implicit: bool = False
    """The model's implicit embedding, final norm or head."""
    flow: tuple[str, ...] = ()
    """A container's children in data order (its own ``flow``, else as written)."""

    def get(self, name: str, default: Value = None) -> Value:
        return dict(self.config).get(name, default)


@dataclass(frozen=True)
class BlockPlan:
    """One ``stack``: a block body repeated ``repeat`` times; ``flow`` = its components in data order."""

    prefix: str
    name: str
    repeat: int
    flow: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class ModelPlan:
    """The assembled network: embed -> trunk -> final norm -> head."""

    name: str
    task: str
    dim: int
    vocab: int | None
    inputs: int | None
    classes: int | None
    layers: int
    tie_embeddings: bool
    norm: str
    embed: str | None
    final_norm: str | None
    head: str | None
    trunk: tuple[str, ...]
    """Block prefixes and model-level component paths, in data order."""
    blocks: tuple[BlockPlan, ...]
    span: Span

    def block(self, prefix: str) -> BlockPlan | None:
        return next((b for b in self.blocks if b.prefix == prefix), None)


@dataclass(frozen=True)
class LevelPlan:
    """Components of one frequency; index 1 is the fastest (NL §1.3)."""

    index: int
    frequency: str
    period: Period
    components: tuple[str, ...]


@dataclass(frozen=True)
class TransferPlan:
    kind: str
    source: str
    target: str
    args: Config
    span: Span


@dataclass(frozen=True)
class ParamGroup:
    """The tensors of one category of one component, stepped with a period (``every N steps``)."""

    component: str
    category: str
    period: Period
    via: str
    """The selector that claimed it (``all``, ``matrices``, ``component x``, a glob, ``fallback``)."""


@dataclass(frozen=True)
class OptimizerPlan:
    """One ``optimizer`` line of ``train`` (``index`` = its position), or a level's own optimizer."""

    index: int
    kind: str
    config: Config
    selectors: tuple[str, ...]
    groups: tuple[ParamGroup, ...]
    span: Span
    level: str | None = None
    """Set for the own optimizer of an ``every N steps`` level (its component path)."""

    def render(self) -> str:
        if self.level is not None:
            return f"levels {', '.join(dict(self.config)['buffers'])} generate the updates of {self.level}"
        args = ", ".join(f"{k} = {_val(v)}" for k, v in self.config)
        sel = f" for {', '.join(self.selectors)}" if self.selectors else ""
        return f"{self.kind}({args}){sel}"


@dataclass(frozen=True)
class CompilePlan:
    enabled: bool = False
    mode: str = "default"
    fullgraph: bool = False
    dynamic: bool = False
    scope: str = "auto"
    """``model``, ``chunk`` or ``auto`` (see the catalog's ``compile`` options)."""


@dataclass(frozen=True)
class TrainPlan:
    """The outer loop's settings, defaults applied."""

    steps: int
    batch: int
    seq: int
    accumulate: int
    precision: str
    compile: CompilePlan
    data: str | None
    data_args: Config
    tokenizer: str
    tokenizer_args: Config
    parallel: str
    seed: int
    grad_clip: float
    device: str
    schedule: str
    schedule_args: Config
    eval_every: int | None
    eval_batches: int
    checkpoint_every: int | None
    checkpoint_keep: int
    checkpoint_dir: str
    span: Span | None = None


@dataclass(frozen=True)
class ScheduleEntry:
    """When one level's state changes, in one sequence (tokens) or over training (steps)."""

    level: int
    period: Period
    when: str
    count: int
    """Updates per sequence (tokens) or over training (steps); -1 = every token."""


@dataclass(frozen=True)
class Plan:
    """The compiled program as data. ``render()`` prints the tables, ``to_json()`` the same as JSON."""

    path: str
    model: ModelPlan
    components: tuple[ComponentPlan, ...]
    levels: tuple[LevelPlan, ...]
    transfers: tuple[TransferPlan, ...]
    optimizers: tuple[OptimizerPlan, ...]
    train: TrainPlan
    schedule: tuple[ScheduleEntry, ...]
    task_segment: int | None = None
    """gcd of the periods of in-context ``task``-objective levels (surprise segments), None if none."""
    _index: dict = field(default_factory=dict, compare=False, repr=False)

    def component(self, path: str) -> ComponentPlan:
        if not self._index:
            self._index.update({c.path: c for c in self.components})
        return self._index[path]

    def children(self, path: str) -> tuple[ComponentPlan, ...]:
        return tuple(self.component(c) for c in self.component(path).children)

    def transfers_to(self, path: str, kind: str | None = None) -> tuple[TransferPlan, ...]:
        return tuple(t for t in self.transfers if t.target == path and (kind is None or t.kind == kind))

    def render(self) -> str:
        """The plan as stable, readable text tables (golden-tested)."""
        from nldsl.plan_render import render_plan

        return render_plan(self)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("_index", None)
        return _jsonable(out)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def plan(graph_or_spec) -> "Plan":
    """Plan a checked spec (or its LevelGraph, or a path / text to load).

    Raises ``NLError`` with every error diagnostic when the spec does not pass the checks.
    """
    from nldsl.plan_build import build_plan

    return build_plan(graph_or_spec)


# ---------------------------------------------------------------------------------------------- text


def _num(x: Value) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, float):
        if math.isfinite(x) and x.is_integer() and abs(x) < 1e15:
            return f"{x:.1f}"
        return repr(x)
    return str(x)


def _val(v: Value) -> str:
    """A resolved value the way the .nl language writes it."""
    if isinstance(v, tuple):
        return "[" + ", ".join(_val(x) for x in v) + "]"
    if isinstance(v, str):
        return v if _WORD.fullmatch(v) else json.dumps(v, ensure_ascii=False)
    if v is None:
        return "unset"
    return _num(v)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"path", "line", "col", "end_line", "end_col"}:
            return f"{x['path']}:{x['line']}:{x['col']}"
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, Span):
        return str(x)
    if isinstance(x, (list, tuple)):
        if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in x) and x:
            return {k: _jsonable(v) for k, v in x}
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


from nldsl._callable import make_callable  # noqa: E402  (``nldsl.plan(spec)`` calls ``plan``)

make_callable(__name__, plan)
