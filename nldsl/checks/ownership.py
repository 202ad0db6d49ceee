"""Parameter ownership (NL216, NL217, NL227, NL228, NL400): each outer-trained tensor has one optimizer.

The outer loop trains the parameter *groups* (``catalog.CATEGORIES``: matrices, vectors, embeddings) each
component owns (``catalog.ComponentKind.owns``; for in-context memories that includes their meta-learned
initial state). ``optimizer KIND for SELECTORS`` in ``train`` claims groups: ``all``, a group name,
``component NAME`` (the component and everything inside it) or a quoted glob matched against the
component path and ``path.group`` (``"*.ffn.*"``, ``"hope[0].titans.matrices"``). A component that
receives its updates or weights from an optimizer level (``transfer generate m -> w``, what = updates or
weights) is owned by that level; broad selectors (``all``, a group) then leave it out and only
``component NAME`` or a glob naming it claims it a second time. Not owned at all: frozen components (``update never``), optimizer
buffers, and in-context memories whose initial state is not learned (``init zeros|normal|pretrained``).

Decisions: a group owned by nothing is an **error** (it would silently never train); owned twice is an
**error** (two optimizers would both step it); Muon and M3 given vectors or embeddings is an **error**
(Newton-Schulz is defined for matrices); a selector that matches nothing is a **warning**.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterator

from nldsl import catalog
from nldsl.checks.common import component_label, diag, keyword_span
from nldsl.graph import LevelGraph, resolve
from nldsl.source import Diagnostic
from nldsl.spec import model as m

_IMPLICIT_OWNS = {"embed": ("embeddings",), "norm": ("vectors",), "head": ("embeddings",)}
_NOT_LEARNED = ("zeros", "normal", "pretrained")


def owned_groups(graph: LevelGraph, path: str) -> tuple[str, ...]:
    """The parameter groups of ``path`` that the outer loop trains."""
    comp, data = graph.component(path), graph.node(path)
    kind = catalog.COMPONENTS.get(comp.kind)
    if kind is None or graph.frequency(path).kind == "never":
        return ()
    if _tied(graph, comp):
        return ()
    if data["implicit"]:
        role = next(r for r, p in graph.implicit.items() if p == path)
        return _IMPLICIT_OWNS[role]
    if graph.frequency(path).kind == "tokens" and comp.kind in ("mlp", "linear", "swiglu") \
            and comp.init is not None and comp.init.kind in _NOT_LEARNED:
        return ()
    return kind.owns


def _tied(graph: LevelGraph, comp: m.Component) -> bool:
    if comp.kind != "head":
        return False
    tied = comp.get("tied")
    if tied is None and graph.spec.model is not None:
        tied = graph.spec.model.get("tie_embeddings")
    task = graph.spec.model.get("task") if graph.spec.model is not None else None
    lm = not (isinstance(task, m.Symbol) and task.name == "classify")
    return isinstance(tied, m.Bool) and tied.value and lm


def generated(graph: LevelGraph) -> dict[str, list[str]]:
    """Components that get their weights or updates from another level: target -> sources."""
    out: dict[str, list[str]] = {}
    for u, v, data in graph.edges("generate"):
        what = data["transfer"].get("what")
        if what is None or (isinstance(what, m.Symbol) and what.name in ("weights", "updates")):
            out.setdefault(v, []).append(u)
    return out


def selects(graph: LevelGraph, sel: m.Selector, path: str, group: str) -> bool:
    """Does one selector of an outer optimizer claim ``group`` of component ``path``?"""
    if sel.kind == "all":
        return True
    if sel.kind in catalog.CATEGORIES:
        return sel.kind == group
    if sel.kind == "component" and sel.target:
        roots = resolve(graph, sel.target, "")[0]
        return any(path == r or path.startswith(r + ".") for r in roots)
    if sel.kind == "glob" and sel.target is not None:
        plain = _plain(path)
        return any(fnmatchcase(name, sel.target) for name in (path, f"{path}.{group}", plain, f"{plain}.{group}"))
    return False


def _plain(path: str) -> str:
    """``hope[0].titans`` -> ``hope.titans`` (globs may leave out the stack index)."""
    head, sep, rest = path.partition(".")
    return (head.split("[", 1)[0] + sep + rest) if "[" in head else path


def selectors_of(opt: m.Optimizer) -> tuple[m.Selector, ...]:
    """The optimizer's selectors; none written means ``all``."""
    return opt.selectors or (m.Selector(span=opt.kind_span, kind="all"),)


_selectors = selectors_of  # the name nldsl.plan_build imports


def check_ownership(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL216, NL217, NL228 and NL400 for the optimizers of ``train``."""
    train = graph.spec.train
    if train is None or graph.spec.model is None:
        return
    owned = [(p, g) for p, _ in graph.components() for g in owned_groups(graph, p)]
    gens = generated(graph)
    if not train.optimizers:
        if any(p not in gens for p, _ in owned):
            yield diag("NL400", keyword_span(train.span, 5), "train has no optimizer",
                       "add one for the outer loop, e.g. `optimizer adamw(lr = 1e-3) for all`")
        return
    hits: dict[int, int] = {}
    missing: dict[str, list[str]] = {}
    doubles: dict[tuple, list[str]] = {}
    for path, group in owned:
        owners = owners_of_group(graph, train, path, group)
        if path in gens:  # broad selectors (all, a group) mean "every tensor no optimizer level updates"
            owners = [(i, sel) for i, sel in owners if sel.kind in ("component", "glob")]
        for _, sel in owners:
            hits[id(sel)] = hits.get(id(sel), 0) + 1
        if path in gens and owners:
            doubles.setdefault(("gen", owners[0][0], id(owners[0][1])), []).append(path)
        elif len(owners) > 1:
            doubles.setdefault((owners[0][0], owners[1][0], id(owners[1][1])), []).append(path)
        elif not owners and path not in gens:
            missing.setdefault(path, []).append(group)
    yield from _doubles(graph, train, doubles, gens)
    yield from _missing(graph, missing)
    yield from _unused(graph, train, hits)


def owners_of_group(graph: LevelGraph, train: m.Train, path: str, group: str) -> list[tuple[int, m.Selector]]:
    """``(optimizer index, its first selector that claims the group)`` for each claiming optimizer."""
    out = []
    for i, opt in enumerate(train.optimizers):
        sel = next((s for s in _selectors(opt) if selects(graph, s, path, group)), None)
        if sel is not None:
            out.append((i, sel))
    return out


def _doubles(graph: LevelGraph, train: m.Train, doubles: dict, gens: dict) -> Iterator[Diagnostic]:
    for key, paths in doubles.items():
        labels = sorted({component_label(p) for p in paths})
        names = ", ".join(f"'{x}'" for x in labels[:4]) + (", ..." if len(labels) > 4 else "")
        verb = "is" if len(labels) == 1 else "are"
        if key[0] == "gen":
            opt = train.optimizers[key[1]]
            sel = _find_selector(opt, key[2])
            src = component_label(gens[paths[0]][0])
            yield diag("NL216", sel.span, f"{opt.kind} also trains {names}, which "
                       f"{'gets its' if len(labels) == 1 else 'get their'} updates from '{src}'",
                       f"a parameter takes its steps from one optimizer: leave it out of this `for` list, or "
                       f"remove `transfer generate {src} -> ...`")
            continue
        first, second = train.optimizers[key[0]], train.optimizers[key[1]]
        sel = _find_selector(second, key[2])
        yield diag("NL216", sel.span, f"{names} {verb} selected by both {first.kind} (line {first.span.line}) and "
                   f"{second.kind}", "give each parameter group to exactly one optimizer (e.g. "
                   "`muon for matrices` and `adamw for vectors, embeddings`)")


def _find_selector(opt: m.Optimizer, sel_id: int) -> m.Selector:
    return next((s for s in opt.selectors if id(s) == sel_id), None) or \
        m.Selector(span=opt.kind_span, kind="all")


def _missing(graph: LevelGraph, missing: dict[str, list[str]]) -> Iterator[Diagnostic]:
    implicit = {p: g for p, g in missing.items() if graph.node(p)["implicit"]}
    for path, groups in missing.items():
        if path in implicit:
            continue
        comp = graph.component(path)
        yield diag("NL217", comp.name_span, f"the {' and '.join(groups)} of '{component_label(path)}' are "
                   "trained by no optimizer", f"add `{groups[0]}` (or `all`) to the `for` list of an optimizer "
                   "in train, or freeze it with `update never`")
    if implicit:
        span = graph.component(next(iter(implicit))).name_span
        parts = ", ".join(f"{graph.component(p).name} ({' and '.join(g)})" for p, g in implicit.items())
        groups = sorted({g for gs in implicit.values() for g in gs})
        yield diag("NL217", span, f"the model's implicit layers are trained by no optimizer: {parts}",
                   f"add `{', '.join(groups)}` to the `for` list of an optimizer in train (e.g. "
                   f"`optimizer adamw for {', '.join(groups)}`)")


def _unused(graph: LevelGraph, train: m.Train, hits: dict[int, int]) -> Iterator[Diagnostic]:
    for opt in train.optimizers:
        for sel in opt.selectors:
            unknown = sel.kind not in catalog.SELECTORS + ("component", "glob")
            unresolved = sel.kind == "component" and not resolve(graph, sel.target or "", "")[0]
            if hits.get(id(sel)) or unknown or unresolved:
                continue
            shown = {"component": f"component {sel.target}", "glob": f'"{sel.target}"'}.get(sel.kind, sel.kind)
            yield diag("NL228", sel.span, f"`{shown}` selects no trainable parameters",
                       "nothing trained by the outer loop matches it (frozen, optimizer buffers and "
                       "non-learned initial states own none); remove it or fix the selector")


def check_matrix_only(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL227: Muon and M3 orthogonalise matrices; vectors and embeddings need another optimizer."""
    train = graph.spec.train
    if train is None:
        return
    for opt in train.optimizers:
        if opt.kind not in catalog.MATRIX_ONLY_OPTIMIZERS:
            continue
        for sel in _selectors(opt):
            if sel.kind in ("all", "vectors", "embeddings"):
                yield diag("NL227", sel.span, f"{opt.kind} only optimizes matrices, not {sel.kind}",
                           f"write `optimizer {opt.kind}(...) for matrices` and give vectors and embeddings "
                           "to adamw")
