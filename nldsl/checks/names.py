"""Name checks (NL200-NL208, NL210): every vocabulary word and component name a user typed must exist.

Vocabulary words (component kinds, objectives, optimizers, schedules, inits, transfer kinds, units) come
from ``nldsl.catalog``; component names (flow and transfer endpoints, ``memory(x)``, ``gradients(of = x)``,
``like = x``, ``optimizer ... for component x``) are resolved by the level graph in the body where they
were written. Each miss gets a "did you mean" hint computed with difflib over what is visible there.
"""
from __future__ import annotations

from typing import Iterator

from nldsl import catalog
from nldsl.checks.common import did_you_mean, diag, transfer_statements
from nldsl.graph import LevelGraph, Ref
from nldsl.source import Diagnostic
from nldsl.spec import model as m


def check_vocabulary(graph: LevelGraph) -> Iterator[Diagnostic]:
    """Component kinds, objectives, inner optimizers, inits, units and transfer kinds."""
    for path, comp in graph.components():
        if graph.node(path)["implicit"]:
            continue
        if comp.kind not in catalog.COMPONENTS:
            yield diag("NL200", comp.kind_span, f"unknown component kind '{comp.kind}'",
                       did_you_mean(comp.kind, catalog.COMPONENTS))
        if comp.objective is not None and not comp.objective.implicit:
            yield from _objective(comp.objective)
        if comp.optimizer is not None and not comp.optimizer.implicit:
            yield from _inner_optimizer(comp.optimizer)
        if comp.init is not None and not comp.init.implicit and comp.init.kind not in catalog.INITS:
            yield diag("NL208", comp.init.kind_span, f"unknown init '{comp.init.kind}'",
                       did_you_mean(comp.init.kind, catalog.INITS))
        if comp.update is not None and not comp.update.implicit:
            yield from unit(comp.update.period)
    for transfer in transfer_statements(graph):
        if transfer.kind not in catalog.TRANSFERS:
            yield diag("NL205", transfer.kind_span, f"unknown transfer kind '{transfer.kind}'",
                       did_you_mean(transfer.kind, catalog.TRANSFERS))
    if graph.spec.train is not None:
        yield from _train_vocabulary(graph.spec.train)


def _objective(obj: m.Objective) -> Iterator[Diagnostic]:
    if obj.kind not in catalog.OBJECTIVES:
        yield diag("NL202", obj.kind_span, f"unknown objective '{obj.kind}'",
                   did_you_mean(obj.kind, catalog.OBJECTIVES))


def _inner_optimizer(opt: m.Optimizer) -> Iterator[Diagnostic]:
    if opt.kind in catalog.INNER_OPTIMIZERS:
        return
    hint = did_you_mean(opt.kind, catalog.INNER_OPTIMIZERS)
    if opt.kind in catalog.OUTER_OPTIMIZERS:
        hint = (f"'{opt.kind}' is an outer optimizer: write it in `train` with `for ...`; inner optimizers "
                f"of a level: {catalog.known(catalog.INNER_OPTIMIZERS)}")
    yield diag("NL203", opt.kind_span, f"unknown inner optimizer '{opt.kind}'", hint)


def _train_vocabulary(train: m.Train) -> Iterator[Diagnostic]:
    for opt in train.optimizers:
        if opt.kind not in catalog.OUTER_OPTIMIZERS:
            hint = did_you_mean(opt.kind, catalog.OUTER_OPTIMIZERS)
            if opt.kind in catalog.INNER_OPTIMIZERS:
                hint = (f"'{opt.kind}' is an inner optimizer (of a level); outer optimizers: "
                        f"{catalog.known(catalog.OUTER_OPTIMIZERS)}")
            yield diag("NL203", opt.kind_span, f"unknown optimizer '{opt.kind}'", hint)
        for sel in opt.selectors:
            if sel.kind not in catalog.SELECTORS + ("component", "glob"):
                yield diag("NL209", sel.span, f"unknown parameter group '{sel.kind}'",
                           did_you_mean(sel.kind, catalog.SELECTORS) + "; or `component NAME`, or a quoted glob")
    if train.schedule is not None and train.schedule.kind not in catalog.SCHEDULES:
        yield diag("NL204", train.schedule.kind_span, f"unknown schedule '{train.schedule.kind}'",
                   did_you_mean(train.schedule.kind, catalog.SCHEDULES))
    for stmt in (train.eval, train.checkpoint):
        if stmt is not None:
            yield from unit(stmt.period)


def unit(period: m.Period) -> Iterator[Diagnostic]:
    """NL206 for ``every N tokenz``."""
    if period.kind == "every" and period.unit not in catalog.UNITS:
        yield diag("NL206", period.unit_span or period.span, f"unknown unit '{period.unit}'",
                   did_you_mean(period.unit or "", catalog.UNITS) + " (tokens: in context; steps: outer loop)")


# ---------------------------------------------------------------------------------------------- names

_WHAT = {"flow": "in flow", "transfer": "in transfer", "memory": "in memory(...)",
         "context": "in context", "like": "in like", "selector": "in optimizer ... for component"}


def check_references(graph: LevelGraph) -> Iterator[Diagnostic]:
    """Flow/transfer endpoints and other component names that denote nothing (NL207)."""
    for ref in graph.refs:
        if ref.resolved or (ref.what == "memory" and not _self_modifying(graph, ref.scope)):
            continue  # memory(...) outside a self-modifying component is NL222
        yield diag("NL207", ref.span, f"unknown component '{ref.name}' {_WHAT[ref.what]}", _ref_hint(graph, ref))


def _self_modifying(graph: LevelGraph, path: str) -> bool:
    parent = graph.parent(path) if path in graph.nx else None
    return any(p is not None and p in graph.nx and graph.component(p).kind == "self_modifying_titans"
               for p in (path, parent))


def _ref_hint(graph: LevelGraph, ref: Ref) -> str:
    head, _, rest = ref.name.partition(".")
    if rest and head in ref.candidates:
        return f"'{head}' has no member '{rest}'"
    if ref.what == "flow":
        return did_you_mean(ref.name, ref.candidates + catalog.FLOW_ENDS)
    if ref.what == "memory":
        memories = [c.rsplit(".", 1)[-1] for c in graph.children(ref.scope)] if ref.scope in graph.nx else []
        return did_you_mean(ref.name, memories) + " (memories are declared with `memory NAME : kind`)"
    return did_you_mean(ref.name, ref.candidates)


def check_duplicates(graph: LevelGraph) -> Iterator[Diagnostic]:
    """Names that collide where the builder cannot see it (NL210): reserved ``input``/``output``, a
    model component named like a stacked block."""
    model = graph.spec.model
    if model is None:
        return
    for path, comp in graph.components():
        if comp.name in catalog.FLOW_ENDS and not graph.node(path)["implicit"]:
            yield diag("NL210", comp.name_span, f"'{comp.name}' is a reserved name",
                       "`input` and `output` name the body's own input and output in `flow`; rename it")
    blocks = {s.block.name: s for s in model.stacks}
    for comp in model.components:
        if comp.name in blocks:
            yield diag("NL210", comp.name_span, f"component '{comp.name}' has the name of a stacked block",
                       f"`flow` and `transfer` could not tell them apart; rename one "
                       f"(the block is stacked at line {blocks[comp.name].span.line})")
    bodies = [model.transfers] + [s.block.transfers for s in model.stacks]
    bodies += [comp.transfers for _, comp in graph.components()]
    for transfers in bodies:
        seen: dict[tuple, m.Transfer] = {}
        for t in transfers:
            key = (t.kind, t.source, t.target)
            if key in seen:
                yield diag("NL210", t.span, f"transfer {t.kind} {t.source} -> {t.target} is written twice",
                           f"the first is at line {seen[key].span.line}; keep one", severity="warning")
            seen.setdefault(key, t)
