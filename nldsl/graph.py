"""Stage 3: Spec -> LevelGraph, the model as a graph of levels (NL §1.3-1.6).

Nodes are components (dotted paths, ``block[i].name`` inside stacks) carrying their spec objects and
their update frequency (NL Def. 2: updates per token). Edges say how components are related:

=============  ===========================================================================
``nest``       parent -> child (a memory of a self-modifying component, a CMS level)
``flow``       a -> b: the forward data path (``flow a -> b``)
``context``    x -> c: c compresses x's gradients or output (``context = gradients(of = x)``)
``hyper``      m -> c: the memory m produces a hyperparameter of c (``lr = memory(eta)``)
transfers      source -> target for the five knowledge-transfer kinds of NL §3.3:
               ``parametric``, ``nonparametric``, ``backprop``, ``init``, ``generate``
=============  ===========================================================================

Levels (NL §1.3). The frequency of a component comes from its period: ``nonparametric`` = ∞ (recomputed
for every token), ``every N tokens`` = 1/N per token (in context), ``every N steps`` = outer loop (f = 0
once pre-training ends, 1/N per optimizer step during it), ``never`` = 0 (frozen). Components of equal
frequency form one level and **a higher level index means a lower frequency**: level 1 is the fastest
(attention, when there is any), the outer loop (``every 1 steps``, the default of every static kind)
comes after all in-context levels, slower outer periods after it, frozen components last. A Transformer
therefore has exactly two levels: attention (f = ∞) and everything else (f = 0).

A component with children is a *container* (a self-modifying Titans, a CMS): its children are the levels;
its own tensors (projections, gates) are trained by the outer loop, so it sits in the outer level
(``every 1 steps``) unless it says ``never`` or ``every N steps`` itself. A period on a container is the
default its children inherit.

>>> from nldsl.spec import load
>>> g = build_graph(load("model m { dim = 8  component a : attention  component f : mlp }"))
>>> [(lv.index, lv.frequency.label, lv.components) for lv in g.levels()]
[(1, '∞', ('a',)), (2, '0', ('embed', 'f', 'norm', 'head'))]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import networkx as nx

from nldsl import catalog
from nldsl._callable import make_callable
from nldsl.source import Span
from nldsl.spec import model as m
from nldsl.scopes import members, outer_scopes, resolve, scope_names  # noqa: F401  (re-exported)
from nldsl.spec.build import default_update

TRANSFER_KINDS = tuple(catalog.TRANSFERS)
EDGE_KINDS = ("nest", "flow", "context", "hyper") + TRANSFER_KINDS
_RANK = {"nonparametric": 4, "tokens": 3, "steps": 2, "never": 1, "unknown": 0}


@dataclass(frozen=True)
class Frequency:
    """How often a component's state changes: ``kind`` with period ``every`` (tokens or steps)."""

    kind: str
    """``nonparametric`` | ``tokens`` | ``steps`` | ``never`` | ``unknown`` (a bad or missing period)."""
    every: float = 1
    """N of ``every N tokens|steps`` (1 otherwise)."""

    @property
    def key(self) -> tuple[int, float]:
        """Sort key: larger is faster (NL's ordering ≻ by frequency)."""
        return _RANK[self.kind], 1.0 / self.every if self.every else 0.0

    @property
    def per_token(self) -> float:
        """f of NL Def. 2 at inference (after pre-training): ∞, 1/N, or 0."""
        return {"nonparametric": math.inf, "tokens": 1.0 / self.every}.get(self.kind, 0.0) \
            if self.kind != "unknown" else math.nan

    @property
    def label(self) -> str:
        """``∞``, ``1/16``, ``1``, ``0`` or ``?``: f per token, as the paper writes it."""
        if self.kind == "nonparametric":
            return "∞"
        if self.kind == "tokens":
            return "1" if self.every == 1 else f"1/{_num(self.every)}"
        return "?" if self.kind == "unknown" else "0"

    @property
    def period(self) -> str:
        """The period in words: ``every 16 tokens``, ``every step``, ``never`` ..."""
        if self.kind in ("tokens", "steps"):
            unit = self.kind[:-1] if self.every == 1 else self.kind
            return f"every {unit}" if self.every == 1 else f"every {_num(self.every)} {unit}"
        return {"nonparametric": "nonparametric", "never": "never"}.get(self.kind, "no period")

    @property
    def in_context(self) -> bool:
        """Updated inside a sequence (also at inference)."""
        return self.kind in ("tokens", "nonparametric")


OUTER = Frequency("steps", 1)


@dataclass(frozen=True)
class Level:
    """One level: components of equal frequency (index 1 = fastest)."""

    index: int
    frequency: Frequency
    components: tuple[str, ...]


@dataclass(frozen=True)
class Ref:
    """A name written in the spec that must denote a component (for the unknown-name checks)."""

    what: str
    """``flow``, ``transfer``, ``memory``, ``context``, ``like`` or ``selector``."""
    name: str
    span: Span
    scope: str
    """Dotted path of the body the name was written in ('' = model, ``b[0]`` = a stacked block)."""
    candidates: tuple[str, ...]
    """Names visible there (for "did you mean")."""
    resolved: tuple[str, ...] = ()
    """Component paths it denotes (empty: unknown; several: a block stacked more than once)."""


@dataclass
class LevelGraph:
    """The components of a spec, their relations and their levels; ``.nx`` is the networkx graph."""

    spec: m.Spec
    nx: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)
    refs: list[Ref] = field(default_factory=list)
    """Every component name written in flows, transfers, hyperparameters, contexts and selectors."""
    stacks: dict[str, m.Stack] = field(default_factory=dict)
    """``b[0]`` -> the stack statement (its block is the cluster in drawings)."""
    implicit: dict[str, str] = field(default_factory=dict)
    """``embed``/``norm``/``head`` -> the path of the model's implicit input layer, final norm, head."""

    # ------------------------------------------------------------------ queries

    def components(self) -> Iterator[tuple[str, m.Component]]:
        """Every component node with its path, in spec order."""
        for path, data in self.nx.nodes(data=True):
            yield path, data["component"]

    def node(self, path: str) -> dict:
        return self.nx.nodes[path]

    def component(self, path: str) -> m.Component:
        return self.nx.nodes[path]["component"]

    def frequency(self, path: str) -> Frequency:
        return self.nx.nodes[path]["frequency"]

    def edges(self, *kinds: str) -> Iterator[tuple[str, str, dict]]:
        """``(source, target, data)`` of the given kinds (all kinds when none given)."""
        for u, v, data in self.nx.edges(data=True):
            if not kinds or data["kind"] in kinds:
                yield u, v, data

    def children(self, path: str) -> list[str]:
        return [v for _, v, d in self.nx.out_edges(path, data=True) if d["kind"] == "nest"]

    def parent(self, path: str) -> str | None:
        return self.nx.nodes[path]["parent"]

    def levels(self) -> list[Level]:
        """Levels ordered fastest first (index 1); equal frequency = same level."""
        groups: dict[Frequency, list[str]] = {}
        for path in self.order():
            groups.setdefault(self.frequency(path), []).append(path)
        ranked = sorted(groups, key=lambda f: f.key, reverse=True)
        return [Level(i + 1, f, tuple(groups[f])) for i, f in enumerate(ranked)]

    def level_of(self, path: str) -> int:
        """The level index of a component (1 = fastest)."""
        if path not in self.nx:
            raise KeyError(path)
        freq = self.frequency(path)
        return 1 + len({self.frequency(p) for p in self.nx if self.frequency(p).key > freq.key})

    def order(self) -> list[str]:
        """Components in a stable order: data flow first where it is acyclic, then spec order."""
        spec_order = list(self.nx.nodes)
        index = {path: i for i, path in enumerate(spec_order)}
        flow = nx.DiGraph([(u, v) for u, v, _ in self.edges("flow")])
        flow.add_nodes_from(spec_order)
        try:
            return list(nx.lexicographical_topological_sort(flow, key=index.__getitem__))
        except nx.NetworkXUnfeasible:
            return spec_order

    def repeat(self, path: str) -> int:
        """How many copies of the component the model has (its stack's repetitions)."""
        return self.nx.nodes[path]["repeat"]

    def model_int(self, name: str, default: int | None = None) -> int | None:
        """An integer model setting (``dim``, ``vocab`` ...), ``default`` when absent or not an int."""
        return _int(self.spec.model.get(name) if self.spec.model else None, default)

    def train_int(self, name: str) -> int | None:
        """An integer train setting, or the catalog default."""
        value = self.spec.train.get(name) if self.spec.train else None
        return _int(value, catalog.TRAIN_SETTINGS[name].default)


# ---------------------------------------------------------------------------------------------- build


def build_graph(spec: m.Spec) -> LevelGraph:
    """Build the level graph of a spec (never raises for a spec ``load`` returned).

    >>> from nldsl.spec import load
    >>> g = build_graph(load("model m { dim = 8  component f : mlp  component g : mlp  flow f -> g }"))
    >>> sorted((u, v, d["kind"]) for u, v, d in g.edges())
    [('f', 'g', 'flow')]
    """
    graph = LevelGraph(spec=spec)
    model = spec.model
    if model is None:
        return graph
    layers = _int(model.get("layers"), 1)
    implicit = implicit_components(model)
    if "embed" in implicit:
        _add(graph, implicit["embed"], "", None, None, 1, implicit=True)
    for comp in model.components:
        _add(graph, comp, "", None, None, 1)
    for i, stack in enumerate(model.stacks):
        prefix = f"{stack.block.name}[{i}]"
        graph.stacks[prefix] = stack
        for comp in stack.block.components:
            _add(graph, comp, prefix, None, prefix, _int(stack.times, layers) or 1)
    for role in ("norm", "head"):
        if role in implicit:
            _add(graph, implicit[role], "", None, None, 1, implicit=True)
    graph.implicit = {role: comp.name for role, comp in implicit.items()}
    _link_body(graph, "", model.flows, model.transfers)
    if not model.flows:
        _implicit_flow(graph, model)
    for prefix, stack in graph.stacks.items():
        _link_body(graph, prefix, stack.block.flows, stack.block.transfers)
    for path, comp in list(graph.components()):
        _link_body(graph, path, comp.flows, comp.transfers)
        _link_component(graph, path, comp)
    _link_selectors(graph)
    return graph


def _add(graph: LevelGraph, comp: m.Component, prefix: str, parent: str | None, block: str | None,
         repeat: int, implicit: bool = False) -> None:
    path = f"{prefix}.{comp.name}" if prefix else comp.name
    if path in graph.nx:  # a duplicate name (reported by the checks); keep the first
        return
    graph.nx.add_node(path, component=comp, parent=parent, block=block, repeat=repeat,
                      kind=comp.kind, span=comp.name_span, container=bool(comp.children),
                      frequency=_frequency(comp, bool(comp.children)), implicit=implicit)
    if parent is not None:
        graph.nx.add_edge(parent, path, key="nest", kind="nest", span=comp.span)
    for child in comp.children:
        _add(graph, child, path, path, block, repeat)


def _frequency(comp: m.Component, container: bool) -> Frequency:
    freq = period_frequency(comp.update.period) if comp.update is not None else Frequency("unknown")
    if container and freq.kind not in ("never", "steps"):
        return OUTER
    return freq


def implicit_components(model: m.Model) -> dict[str, m.Component]:
    """The layers every model has without writing them: input layer, final norm, output head.

    They are added when the model has no component of that kind of its own (no final norm either when
    the model has its own head: then the user wires the output). Their spans point at the
    model name. The input layer and the head are in the ``embeddings`` parameter group (Muon/M3 recipes
    train them with AdamW), the norm in ``vectors``.
    """
    kinds = {c.kind for c in model.components}
    taken = {c.name for c in model.components} | {s.block.name for s in model.stacks}
    out: dict[str, m.Component] = {}
    for role, kind in (("embed", "embedding"), ("norm", "norm"), ("head", "head")):
        if kind in kinds or (role == "norm" and "head" in kinds):  # an own head: the user wires the output
            continue
        name = role
        while name in taken:
            name += "_"
        comp = m.Component(span=model.name_span, name=name, name_span=model.name_span, kind=kind,
                           kind_span=model.name_span)
        out[role] = comp.model_copy(update={"update": default_update(comp)})
    return out


def period_frequency(period: m.Period) -> Frequency:
    """The frequency a written period denotes (``unknown`` for a bad count or unit)."""
    if period.kind != "every":
        return Frequency(period.kind)
    count = period.count
    ok = isinstance(count, m.Number) and not isinstance(count.value, bool)
    if not ok or not (0 < count.value < math.inf) or period.unit not in catalog.UNITS:
        return Frequency("unknown")
    return Frequency(period.unit, count.value)


# ---------------------------------------------------------------------------------------------- names


def _ref(graph: LevelGraph, what: str, name: str, span: Span, scope: str) -> tuple[str, ...]:
    paths, candidates = resolve(graph, name, scope)
    if what not in ("flow", "selector"):  # a stacked block is not a component (flows and selectors expand it)
        paths = tuple(p for p in paths if p in graph.nx)
    graph.refs.append(Ref(what, name, span, scope, candidates, paths))
    return paths


def _ends(graph: LevelGraph, paths: tuple[str, ...], side: str, seen: frozenset = frozenset()) -> list[str]:
    """A stack, or a component with a ``flow`` of its own, stands for the components its flow starts
    with (``side="in"``) or ends with (``side="out"``)."""
    out: list[str] = []
    for path in paths:
        flows = graph.stacks[path].block.flows if path in graph.stacks else graph.component(path).flows
        want, step = ("input", 1) if side == "in" else ("output", -1)
        names = [f.steps[i + step] for f in flows for i, s in enumerate(f.steps)
                 if s == want and 0 <= i + step < len(f.steps) and f.steps[i + step] not in catalog.FLOW_ENDS]
        inner = seen | {path}
        ends = tuple(e for n in names for e in resolve(graph, n, path)[0] if e in graph.nx and e not in inner)
        if ends:
            out += _ends(graph, ends, side, inner)
        else:
            out += members(graph, path) if path in graph.stacks else [path]
    return out


# ---------------------------------------------------------------------------------------------- edges


def _link_body(graph: LevelGraph, scope: str, flows: tuple[m.Flow, ...], transfers: tuple[m.Transfer, ...]):
    for flow in flows:
        ends = []
        for name, span in zip(flow.steps, flow.step_spans):
            if name in catalog.FLOW_ENDS:
                ends.append(_model_end(graph, name) if scope == "" else None)
            else:
                ends.append(_ref(graph, "flow", name, span, scope))
        for a, b, span in zip(ends, ends[1:], flow.step_spans[1:]):
            for u in _ends(graph, a or (), "out"):
                for v in _ends(graph, b or (), "in"):
                    graph.nx.add_edge(u, v, key="flow", kind="flow", span=span)
    for t in transfers:
        sources = _ref(graph, "transfer", t.source, t.source_span, scope)
        targets = _ref(graph, "transfer", t.target, t.target_span, scope)
        if t.kind not in catalog.TRANSFERS:
            continue
        for u in sources:
            for v in targets:
                graph.nx.add_edge(u, v, key=t.kind, kind=t.kind, span=t.span, transfer=t)


def _model_end(graph: LevelGraph, name: str) -> tuple[str, ...] | None:
    """The model's ``input`` is its implicit input layer, its ``output`` the final norm (or head)."""
    role = "embed" if name == "input" else "norm" if "norm" in graph.implicit else "head"
    return (graph.implicit[role],) if role in graph.implicit else None


def _implicit_flow(graph: LevelGraph, model: m.Model) -> None:
    """Without a model-level ``flow``: embed -> components and stacks in written order -> norm -> head."""
    first = {c.name: c for c in reversed(model.components)}  # a repeated name (NL113) is its first component
    items = [(c.span.line, c.span.col, (c.name,)) for c in model.components if first[c.name] is c]
    items += [(s.span.line, s.span.col, (p,)) for p, s in graph.stacks.items()]
    chain = [(graph.implicit["embed"],)] if "embed" in graph.implicit else []
    chain += [paths for *_, paths in sorted(items)]
    chain += [(graph.implicit[r],) for r in ("norm", "head") if r in graph.implicit]
    for a, b in zip(chain, chain[1:]):
        for u in _ends(graph, a, "out"):
            for v in _ends(graph, b, "in"):
                graph.nx.add_edge(u, v, key="flow", kind="flow", span=model.name_span, implicit=True)


def _link_component(graph: LevelGraph, path: str, comp: m.Component) -> None:
    """Hyperparameter (``memory(x)``), context (``gradients(of = x)``) and ``like = x`` references."""
    for stmt in (comp.optimizer, comp.objective, comp.init):
        if stmt is None or stmt.implicit:
            continue
        for arg in stmt.args:
            for call in _calls(arg.value, "memory"):
                name = _first_name(call)
                if name is not None:
                    for src in _ref(graph, "memory", name[0], name[1], path):
                        graph.nx.add_edge(src, path, key=f"hyper:{arg.name}", kind="hyper", span=call.span,
                                          param=arg.name)
    context = comp.get("context")
    if isinstance(context, m.Call) and context.name in ("gradients", "output"):
        name = _first_name(context, "of")
        if name is not None:
            for src in _ref(graph, "context", name[0], name[1], graph.parent(path) or graph.node(path)["block"] or ""):
                graph.nx.add_edge(src, path, key="context", kind="context", span=context.span, what=context.name)
    like = comp.get("like")
    if isinstance(like, m.Symbol):
        graph.node(path)["like"] = _ref(graph, "like", like.name, like.span,
                                        graph.parent(path) or graph.node(path)["block"] or "")


def _link_selectors(graph: LevelGraph) -> None:
    if graph.spec.train is None:
        return
    for opt in graph.spec.train.optimizers:
        for sel in opt.selectors:
            if sel.kind == "component" and sel.target:
                _ref(graph, "selector", sel.target, sel.span, "")


def _calls(value: m.Value, name: str) -> Iterator[m.Call]:
    """Every ``name(...)`` call inside a value (lists and nested calls included)."""
    if isinstance(value, m.Call):
        if value.name == name:
            yield value
        for arg in value.args:
            yield from _calls(arg.value, name)
    elif isinstance(value, m.ValueList):
        for item in value.items:
            yield from _calls(item, name)


def _first_name(call: m.Call, keyword: str = "name") -> tuple[str, Span] | None:
    """The component name a call refers to: its first positional symbol or ``keyword = symbol``."""
    value = call.get(keyword)
    if value is None and call.positional:
        value = call.positional[0]
    return (value.name, value.span) if isinstance(value, m.Symbol) else None


def _int(value: m.Value | None, default: int | None = None) -> int | None:
    """A whole number (``64``, ``64.0`` or ``1e3``: the checks accept all three for integer settings)."""
    if isinstance(value, m.Number) and not isinstance(value.value, bool):
        x = value.value
        if isinstance(x, int):
            return x
        if isinstance(x, float) and math.isfinite(x) and x.is_integer():
            return int(x)
    return default


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _call(spec_or_graph: "m.Spec | LevelGraph | str") -> LevelGraph:
    """``nldsl.graph(spec)``: the level graph of a spec (a path or text is loaded first)."""
    if isinstance(spec_or_graph, LevelGraph):
        return spec_or_graph
    if not isinstance(spec_or_graph, m.Spec):
        from pathlib import Path

        from nldsl.spec import load

        spec_or_graph = load(spec_or_graph if isinstance(spec_or_graph, Path) else str(spec_or_graph))
    return build_graph(spec_or_graph)


make_callable(__name__, _call)
