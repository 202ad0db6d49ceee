# contract: ready
"""The typed Spec: what a `.nl` file says, as frozen pydantic v2 data with a source span on every node.

The Spec is the contract between the language core (grammar, builder, formatter) and everything after
it (level graph, checks, plan, lowering). It is deliberately *permissive about vocabulary*: component
kinds, optimizer and objective names, parameter names and units are kept as the strings the user typed
(with their spans), so the checks can report unknown names with "did you mean" and a caret. It is
*strict about structure*: which statement may appear where, constants, block instantiation and
imports are resolved by the builder, so no expression or block reference is left in a Spec.

Hierarchy (NL paper §1.3-1.6 vocabulary in brackets)::

    Spec
     ├─ imports: Import*                       (resolved file paths)
     ├─ consts: Const*                         (evaluated named constants)
     ├─ blocks: BlockDef*                      (parameterised block signatures)
     ├─ model: Model?
     │    ├─ settings: Setting*                (vocab, dim, layers, tie_embeddings, ...)
     │    ├─ components: Component*            (model-level components, e.g. a classifier body)
     │    ├─ stacks: Stack*  ── block: Block   (an instantiated block, repeated `layers` times)
     │    │                        └─ components / flows / transfers / shares
     │    └─ flows / transfers / shares
     └─ train: Train?                          (outer loop: optimizers, schedule, eval, checkpoint)

    Component                                  [a level: state + context + objective + optimizer + period]
     ├─ role: component | memory | level
     ├─ kind + args + settings                 (e.g. mlp(hidden = 256) { depth = 2 })
     ├─ update: Update ── period: Period       (every N tokens | every N steps | never | nonparametric)
     ├─ objective: Objective, optimizer: Optimizer, init: Init
     └─ children: Component*, transfers: Transfer*, flows: Flow*, shares: Share*

Values are a small closed union (``Value``): Number, String, Bool, Symbol, Call, ValueList. Numbers keep
their source text and may be non-finite or huge (the checks reject those with located diagnostics).
"""
from __future__ import annotations

import math
from typing import Annotated, Iterator, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from nldsl.source import Span

# --------------------------------------------------------------------------------------------------
# Base


class Node(BaseModel):
    """Every spec node: frozen, no unknown fields, and a span into the `.nl` file it came from."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    span: Span
    """Where the node was written (for a value inside an instantiated block: inside the block body)."""


# --------------------------------------------------------------------------------------------------
# Values


class Number(Node):
    """A number. ``value`` is an ``int`` for integer literals (any size) and a ``float`` otherwise;
    it may be ``inf``/``nan`` (``1e999``, ``nan``) — the value checks reject those."""

    type: Literal["number"] = "number"
    value: Annotated[Union[int, float], WithJsonSchema({
        "anyOf": [{"type": "integer"}, {"type": "number"}, {"enum": ["Infinity", "-Infinity", "NaN"]}],
        "title": "Value", "description": "JSON has no inf/nan: they are written as these three strings"})]
    text: str = ""
    """The source text of the literal or constant expression (``"4 * dim"``), for messages."""

    def render(self) -> str:
        return _render_number(self.value)


class String(Node):
    """A double-quoted string literal, unescaped (may contain quotes and newlines)."""

    type: Literal["string"] = "string"
    value: str

    def render(self) -> str:
        return _quote(self.value)


class Bool(Node):
    """``true`` or ``false``."""

    type: Literal["bool"] = "bool"
    value: bool

    def render(self) -> str:
        return "true" if self.value else "false"


class Symbol(Node):
    """A bare word that is not a constant: ``self``, ``sequential``, ``fp32``, ``off``, ``q`` ..."""

    type: Literal["symbol"] = "symbol"
    name: str

    def render(self) -> str:
        return self.name


class Call(Node):
    """``name(args)``: ``learned(1e-4)``, ``data(softplus, scale = 1e-3)``, ``memory(eta)``,
    ``text("builtin:shakespeare")``, ``bpe(vocab = 4096)``, ``compile(mode = "default")``."""

    type: Literal["call"] = "call"
    name: str
    args: tuple["Arg", ...] = ()

    def render(self) -> str:
        return f"{self.name}({', '.join(a.render() for a in self.args)})"

    def get(self, name: str) -> "Value | None":
        """The keyword argument ``name`` (``None`` when absent)."""
        return _find_arg(self.args, name)

    @property
    def positional(self) -> tuple["Value", ...]:
        return tuple(a.value for a in self.args if a.name is None)


class ValueList(Node):
    """``[a, b, ...]``."""

    type: Literal["list"] = "list"
    items: tuple["Value", ...] = ()

    def render(self) -> str:
        return "[" + ", ".join(v.render() for v in self.items) + "]"


Value = Annotated[Union[Number, String, Bool, Symbol, Call, ValueList], Field(discriminator="type")]
"""Any value a setting or argument can hold (after constants and block parameters are substituted)."""


class Arg(Node):
    """One argument ``name = value`` (keyword) or ``value`` (positional, ``name`` is ``None``)."""

    name: str | None = None
    name_span: Span | None = None
    value: Value

    def render(self) -> str:
        return self.value.render() if self.name is None else f"{self.name} = {self.value.render()}"


class Setting(Node):
    """A property line ``name = value`` in a model, train or component body."""

    name: str
    name_span: Span
    value: Value


# --------------------------------------------------------------------------------------------------
# Level statements


class Period(Node):
    """How often a state changes (NL Def. 2, update frequency).

    ``every N tokens``: in context, inside a sequence (also at inference); ``every N steps``: outer
    loop, N optimizer steps of accumulated gradients; ``never``: frozen (f = 0 after pre-training);
    ``nonparametric``: recomputed for every token (f = ∞, e.g. attention).
    """

    kind: Literal["every", "never", "nonparametric"]
    count: Value | None = None
    """N for ``every``; a Number after resolution unless the user wrote something else."""
    unit: str | None = None
    """``tokens`` or ``steps`` as typed (see ``catalog.UNITS``); ``None`` unless kind is ``every``."""
    unit_span: Span | None = None


class Update(Node):
    """``update <period> [(args)]``, e.g. ``update every 4 steps (reduce = mean)``."""

    period: Period
    args: tuple[Arg, ...] = ()
    implicit: bool = False
    """True when the builder filled in the kind's default (``catalog``) or inherited the parent's."""


class Objective(Node):
    """``objective kind[(args)]``: the inner loss of a level (dot, l2, huber, lp, task ...)."""

    kind: str
    kind_span: Span
    args: tuple[Arg, ...] = ()
    implicit: bool = False
    """True when inherited from the parent component."""

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Selector(Node):
    """A parameter group of an outer optimizer: ``all``, ``matrices``, ``vectors``, ``embeddings``
    (``kind`` as typed), ``component NAME`` (``kind="component"``, ``target=NAME``) or a quoted glob
    over component paths and ``path.group`` (``kind="glob"``, ``target=pattern``)."""

    kind: str
    target: str | None = None


class Optimizer(Node):
    """``optimizer kind[(args)] [for selectors]``: inner optimizer of a level (no selectors), or an
    outer optimizer in ``train`` (selectors default to ``all`` when omitted: ``selectors == ()``)."""

    kind: str
    kind_span: Span
    args: tuple[Arg, ...] = ()
    selectors: tuple[Selector, ...] = ()
    implicit: bool = False
    """True when inherited from the parent component."""

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Init(Node):
    """``init kind[(args)]``: initial state of a level; ``meta`` = meta-learned by the outer loop
    through the unrolled inner updates (``meta(grad = stopgrad)`` cuts that gradient), ``zeros``..."""

    kind: str
    kind_span: Span
    args: tuple[Arg, ...] = ()
    implicit: bool = False

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Transfer(Node):
    """``transfer kind source -> target [(args)]``: one of the five knowledge-transfer mechanisms
    (NL §3.3): parametric, nonparametric, backprop, init, generate. Endpoints are component paths
    relative to the enclosing body (``slow``, ``titans.k``), resolved by the level graph."""

    kind: str
    kind_span: Span
    source: str
    source_span: Span
    target: str
    target_span: Span
    args: tuple[Arg, ...] = ()

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Flow(Node):
    """``flow a -> b -> c``: the forward data path inside a body (``input``/``output`` are the body's
    own input and output)."""

    steps: tuple[str, ...]
    step_spans: tuple[Span, ...]


class Share(Node):
    """``share state across batch``: fast state shared by all sequences of a batch instead of the
    default one state per sequence (DESIGN.md §3.7; the checks warn about it)."""

    what: str
    across: str


class Component(Node):
    """A component (``component``), a memory of a self-modifying component (``memory``) or a CMS
    level (``level``): ``role name : kind[(args)] [{ body }]``. Each is a level in the NL sense."""

    role: Literal["component", "memory", "level"] = "component"
    name: str
    name_span: Span
    kind: str
    kind_span: Span
    args: tuple[Arg, ...] = ()
    """Parameters written in parentheses after the kind."""
    settings: tuple[Setting, ...] = ()
    """Parameters written as ``name = value`` lines in the body."""
    update: Update | None = None
    objective: Objective | None = None
    optimizer: Optimizer | None = None
    init: Init | None = None
    children: tuple["Component", ...] = ()
    transfers: tuple[Transfer, ...] = ()
    flows: tuple[Flow, ...] = ()
    shares: tuple[Share, ...] = ()

    def get(self, name: str) -> Value | None:
        """A parameter from the args or the body settings (``None`` when not given)."""
        found = _find_arg(self.args, name)
        return found if found is not None else _find_setting(self.settings, name)

    def params(self) -> dict[str, Value]:
        """All named parameters, args and settings together (the builder rejects duplicates)."""
        out = {a.name: a.value for a in self.args if a.name is not None}
        out.update({s.name: s.value for s in self.settings})
        return out

    def walk(self, prefix: str = "") -> Iterator[tuple[str, "Component"]]:
        """Yield ``(dotted path, component)`` for this component and every descendant."""
        path = f"{prefix}.{self.name}" if prefix else self.name
        yield path, self
        for child in self.children:
            yield from child.walk(path)


# --------------------------------------------------------------------------------------------------
# Blocks, model, train, file


class Param(Node):
    """A block parameter ``name [= default]``."""

    name: str
    default: Value | None = None


class BlockDef(Node):
    """The signature of ``block name(params) { ... }`` (its body lives in each ``Stack.block``)."""

    name: str
    name_span: Span
    params: tuple[Param, ...] = ()


class Block(Node):
    """One instantiation of a block: arguments substituted into its body. ``span`` is the block
    definition; the statement that instantiated it is the enclosing ``Stack``."""

    name: str
    args: tuple[Arg, ...] = ()
    """Every parameter by name, in definition order, with its value (given or default)."""
    components: tuple[Component, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    flows: tuple[Flow, ...] = ()
    shares: tuple[Share, ...] = ()


class Stack(Node):
    """``stack block(args) [* N]``: the block repeated N times (default: the model's ``layers``)."""

    block: Block
    block_span: Span
    times: Value | None = None


class Model(Node):
    """``model name { ... }``."""

    name: str
    name_span: Span
    settings: tuple[Setting, ...] = ()
    components: tuple[Component, ...] = ()
    stacks: tuple[Stack, ...] = ()
    transfers: tuple[Transfer, ...] = ()
    flows: tuple[Flow, ...] = ()
    shares: tuple[Share, ...] = ()

    def get(self, name: str) -> Value | None:
        return _find_setting(self.settings, name)

    def walk(self) -> Iterator[tuple[str, Component]]:
        """Every component with its dotted path: model components by name, stacked ones as
        ``<block>[<stack index>].<name>`` (one entry per stack, not per repetition)."""
        for comp in self.components:
            yield from comp.walk()
        for i, stack in enumerate(self.stacks):
            for comp in stack.block.components:
                yield from comp.walk(f"{stack.block.name}[{i}]")


class Schedule(Node):
    """``schedule kind[(args)]``: learning-rate schedule of the outer loop."""

    kind: str
    kind_span: Span
    args: tuple[Arg, ...] = ()

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Eval(Node):
    """``eval every N steps [(batches = 4)]``."""

    period: Period
    args: tuple[Arg, ...] = ()

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Checkpoint(Node):
    """``checkpoint every N steps [(keep = 2)]``."""

    period: Period
    args: tuple[Arg, ...] = ()

    def get(self, name: str) -> Value | None:
        return _find_arg(self.args, name)


class Train(Node):
    """``train { ... }``: the outer loop (pre-training level of the NL hierarchy)."""

    settings: tuple[Setting, ...] = ()
    optimizers: tuple[Optimizer, ...] = ()
    schedule: Schedule | None = None
    eval: Eval | None = None
    checkpoint: Checkpoint | None = None

    def get(self, name: str) -> Value | None:
        return _find_setting(self.settings, name)


class Import(Node):
    """``import "path"``: ``path`` as written, ``resolved`` relative to the importing file."""

    path: str
    resolved: str


class Const(Node):
    """``const NAME = expr``, evaluated. ``span`` is the definition (in the imported file for
    imported constants)."""

    name: str
    value: Value


class Spec(Node):
    """One `.nl` file with its imports resolved, constants evaluated and blocks instantiated."""

    path: str
    imports: tuple[Import, ...] = ()
    consts: tuple[Const, ...] = ()
    """Constants visible in the file: imported ones first, then the file's own."""
    blocks: tuple[BlockDef, ...] = ()
    """Blocks visible in the file: imported ones first, then the file's own."""
    model: Model | None = None
    train: Train | None = None

    def components(self) -> Iterator[tuple[str, Component]]:
        """Every component of the model with its dotted path (empty without a model)."""
        if self.model is not None:
            yield from self.model.walk()


# --------------------------------------------------------------------------------------------------
# Helpers


def _find_arg(args: tuple[Arg, ...], name: str) -> Value | None:
    for arg in args:
        if arg.name == name:
            return arg.value
    return None


def _find_setting(settings: tuple[Setting, ...], name: str) -> Value | None:
    for setting in settings:
        if setting.name == name:
            return setting.value
    return None


def _render_number(value: int | float) -> str:
    """Shortest text that reads back as the same number (``nan``/``inf`` spelled as the grammar)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _quote(text: str) -> str:
    """A double-quoted literal the grammar reads back as ``text``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


Call.model_rebuild()
ValueList.model_rebuild()
Component.model_rebuild()
