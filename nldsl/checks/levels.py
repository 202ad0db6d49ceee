"""Level checks (NL211-NL213, NL218-NL222, NL225, NL229): is each component a well-formed level?

A level (NL Def. 3) is a state, a context, an objective, an optimizer and a period. These checks make sure
the parts fit together: the role matches the parent (``memory`` inside a self-modifying component,
``level`` inside a CMS), the period suits the kind (attention is non-parametric, embeddings and norms are
static, in-context memories count tokens), in-context levels have an objective and an optimizer, the
objective is one the memory can optimize (``catalog.ComponentKind.objectives`` plus the table below), and
fast state stays per sequence unless ``share state across batch`` says otherwise (a warning: DESIGN §3.7).
"""
from __future__ import annotations

from typing import Iterator

from nldsl import catalog
from nldsl.checks.common import did_you_mean, diag
from nldsl.graph import LevelGraph
from nldsl.source import Diagnostic, Span
from nldsl.spec import model as m

OPTIMIZER_OBJECTIVES: dict[str, tuple[str, ...]] = {"dgd": ("l2",)}
"""Inner optimizers derived for one objective: DGD is the exact proximal step of the l2 loss (NL §4.5)."""
IN_CONTEXT_ONLY = ("neural_memory", "self_modifying_titans")
"""Kinds whose state is written inside a sequence: their period counts tokens."""
_EXAMPLE = {"memory": "memory k : mlp(depth = 2)", "level": "level fast : mlp { update every 16 tokens }"}


def check_roles(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL211: ``memory`` only in a self-modifying component, ``level`` only in a CMS, kinds in their roles."""
    for path, comp in graph.components():
        kind = catalog.COMPONENTS.get(comp.kind)
        parent = graph.parent(path)
        pkind = catalog.COMPONENTS.get(graph.component(parent).kind) if parent else None
        if parent is not None and pkind is not None and pkind.child_role is None:
            yield diag("NL211", comp.name_span, f"'{graph.component(parent).kind}' takes no inner components",
                       "only self_modifying_titans (memories) and cms (levels) have inner components; "
                       "declare it next to its parent instead")
        elif pkind is not None and comp.role != pkind.child_role:
            yield diag("NL211", _role_span(comp), f"a {comp.role} inside '{graph.component(parent).kind}'",
                       f"write it as `{_EXAMPLE[pkind.child_role]}`")
        elif parent is None and comp.role != "component":
            owner = "self_modifying_titans" if comp.role == "memory" else "cms"
            yield diag("NL211", _role_span(comp), f"a {comp.role} outside a {owner}",
                       f"a `{comp.role}` belongs in the body of a {owner}; here write `component {comp.name} : ...`")
        elif kind is not None and comp.role not in kind.roles:
            yield diag("NL211", comp.kind_span, f"'{comp.kind}' cannot be a {comp.role}",
                       f"kinds that can: {catalog.known(k.name for k in catalog.COMPONENTS.values() if comp.role in k.roles)}")
        elif pkind is not None and pkind.name == "self_modifying_titans" \
                and comp.name not in catalog.SELF_MOD_MEMORIES:
            yield diag("NL211", comp.name_span, f"a self-modifying Titans has no memory '{comp.name}'",
                       did_you_mean(comp.name, catalog.SELF_MOD_MEMORIES) + " (NL §8.1, Eq. 76-82)")


def _role_span(comp: m.Component) -> Span:
    """The ``memory``/``level``/``component`` keyword that starts the statement."""
    s = comp.span
    return Span(path=s.path, line=s.line, col=s.col, end_line=s.line, end_col=s.col + len(comp.role))


def check_periods(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL212 (no period where one is needed) and NL213 (a period the kind cannot have)."""
    for path, comp in graph.components():
        kind = catalog.COMPONENTS.get(comp.kind)
        if kind is None or graph.node(path)["implicit"]:
            continue
        if comp.update is None:
            if not comp.children:
                yield diag("NL212", comp.name_span, f"'{comp.name}' has no update period",
                           f"a {comp.kind} is written in context: add `update every 16 tokens` (or give its "
                           "parent one to inherit)")
            continue
        yield from _period_fits(comp, kind, comp.update)


def _period_fits(comp: m.Component, kind: catalog.ComponentKind, update: m.Update) -> Iterator[Diagnostic]:
    period = update.period
    span = period.span
    if period.kind == "nonparametric" and kind.default_update != "nonparametric":
        yield diag("NL213", span, f"'{comp.kind}' cannot be nonparametric",
                   "only attention is recomputed from its context for every token; use every N tokens|steps or never")
    elif kind.default_update == "nonparametric" and period.kind != "nonparametric":
        yield diag("NL213", span, f"attention cannot have a period (`{_words(period)}`)",
                   "attention is non-parametric (f = ∞, NL §1.3): write `update nonparametric` or leave it out")
    elif period.kind == "every" and period.unit == "tokens" and not kind.stateful:
        yield diag("NL213", period.unit_span or span, f"'{comp.kind}' cannot be updated in context",
                   f"a {comp.kind} is static (outer loop): use `update every N steps` or `update never`")
    elif period.kind == "every" and period.unit == "steps" and comp.kind in IN_CONTEXT_ONLY:
        yield diag("NL213", period.unit_span or span, f"a {comp.kind} is written in context, not per step",
                   "use `update every N tokens` (its chunk size); the outer loop already trains its "
                   "projections and initial state")
    elif period.kind == "every" and period.unit == "tokens" and comp.kind == "buffer":
        yield diag("NL213", period.unit_span or span, "an optimizer buffer is updated per outer step",
                   "its context is the gradients of a component: use `update every N steps`")
    elif update.args and not (period.kind == "every" and period.unit == "steps"):
        yield diag("NL213", update.args[0].span, "options of `update` apply only to `every N steps`",
                   "reduce = sum|mean combines the N accumulated outer gradients; remove it here")


def _words(period: m.Period) -> str:
    if period.kind != "every":
        return period.kind
    count = period.count.render() if period.count is not None else "N"
    return f"every {count} {period.unit}"


def needs_inner(graph: LevelGraph, path: str) -> bool:
    """An in-context level, or an optimizer buffer that is not frozen: it runs its own optimization."""
    comp, freq = graph.component(path), graph.frequency(path)
    kind = catalog.COMPONENTS.get(comp.kind)
    if comp.children or graph.node(path)["implicit"] or kind is None or not kind.stateful:
        return False
    return freq.kind == "tokens" or (comp.kind == "buffer" and freq.kind not in ("never",))


def check_inner_problem(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL218: an in-context level without objective or optimizer; NL229: statements never used."""
    for path, comp in graph.components():
        if catalog.COMPONENTS.get(comp.kind) is None:
            continue
        missing = [w for w, s in (("objective", comp.objective), ("optimizer", comp.optimizer)) if s is None]
        if needs_inner(graph, path) and missing:
            yield diag("NL218", comp.name_span, f"level '{comp.name}' has no {' and no '.join(missing)}",
                       f"a level updated {graph.frequency(path).period} solves its own problem: add "
                       + " and ".join(_SUGGEST[w] for w in missing) + " (or write it in the parent)")
        freq = graph.frequency(path)
        if freq.kind == "never":
            for stmt in (comp.objective, comp.optimizer):
                if stmt is not None and not stmt.implicit:
                    yield diag("NL229", stmt.span, f"'{comp.name}' is frozen (`update never`): this is never used",
                               "remove it, or give the component a period")
        elif (freq.kind == "steps" and comp.optimizer is not None and not comp.optimizer.implicit
              and comp.kind != "buffer" and not comp.children):
            yield diag("NL229", comp.optimizer.span, f"'{comp.name}' is trained by the outer loop "
                       f"({freq.period}): this inner optimizer is never used",
                       "remove it (the outer optimizers in `train` update it), or update it in context "
                       "with `every N tokens`")


_SUGGEST = {"objective": "`objective l2`", "optimizer": "`optimizer gd(lr = 0.1)`"}


def check_objectives(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL219/NL220/NL225: objectives that the component cannot optimize."""
    for path, comp in graph.components():
        kind = catalog.COMPONENTS.get(comp.kind)
        obj, opt = comp.objective, comp.optimizer
        if kind is None or comp.children:
            continue
        if graph.frequency(path).kind == "nonparametric":
            for stmt in (obj, opt, comp.init):
                if stmt is not None:
                    yield _nonparametric(comp, stmt)
            continue
        if obj is None or obj.kind not in catalog.OBJECTIVES:
            continue
        yield from _objective_fits(graph, path, comp, kind, obj)
        if opt is not None and opt.kind in OPTIMIZER_OBJECTIVES and obj.kind not in OPTIMIZER_OBJECTIVES[opt.kind]:
            span = opt.kind_span if not opt.implicit or obj.implicit else obj.kind_span
            yield diag("NL225", span, f"{opt.kind} cannot optimize the {obj.kind} objective",
                       f"{opt.kind} is the exact proximal step of {' or '.join(OPTIMIZER_OBJECTIVES[opt.kind])} "
                       f"(NL §4.5): use objective {OPTIMIZER_OBJECTIVES[opt.kind][0]}, or optimizer gd")


def _nonparametric(comp: m.Component, stmt: m.Node) -> Diagnostic:
    word = type(stmt).__name__.lower()
    span = getattr(stmt, "kind_span", stmt.span) if not getattr(stmt, "implicit", False) else comp.kind_span
    if isinstance(stmt, m.Objective) and stmt.kind == "task":
        message = f"a task objective on non-parametric '{comp.name}'"
    else:
        message = f"an {word} on non-parametric '{comp.name}'" if word[0] in "aeiou" \
            else f"a {word} on non-parametric '{comp.name}'"
    return diag("NL220", span, message, f"{comp.kind} is recomputed for every token (f = ∞) and has no state "
                "to optimize; its projections are trained by the outer loop: remove it")


def _objective_fits(graph: LevelGraph, path: str, comp: m.Component, kind: catalog.ComponentKind,
                    obj: m.Objective) -> Iterator[Diagnostic]:
    span = obj.kind_span if not obj.implicit else comp.kind_span
    inherited = " (inherited from its parent)" if obj.implicit else ""
    if kind.objectives and obj.kind not in kind.objectives:
        yield diag("NL219", span, f"a {comp.kind} cannot optimize the {obj.kind} objective{inherited}",
                   f"objectives of {comp.kind}: {', '.join(kind.objectives)}")
        return
    target = obj.get("target")
    target = target.name if isinstance(target, m.Symbol) else None
    parent = graph.parent(path)
    self_mod = comp.kind == "self_modifying_titans" or (
        parent is not None and graph.component(parent).kind == "self_modifying_titans")
    context = comp.get("context")
    on_gradients = isinstance(context, (m.Call, m.Symbol)) and context.name == "gradients"
    if obj.kind == "orthogonality" and comp.kind != "buffer":
        yield diag("NL219", span, f"the orthogonality objective on a {comp.kind}{inherited}",
                   "orthogonality is the inner problem of Newton-Schulz (NL Eq. 43): it belongs to an "
                   "optimizer buffer, e.g. buffer(like = w, output = newton_schulz)")
    elif target == "self" and not self_mod:
        yield diag("NL219", obj.get("target").span, f"self-generated targets need a self-modifying memory",
                   "target = self regresses v̂ = M(v) (NL Eq. 83-85), which only self_modifying_titans "
                   "produces; use target = value")
    elif target in ("gradient", "gradient_scale") and not on_gradients:
        yield diag("NL219", obj.get("target").span, f"target = {target} needs gradients as the context",
                   "add `context = gradients(of = NAME)` to the component")


def check_shares(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL221 (warning): ``share state across batch``; NL209 for words it does not know."""
    model = graph.spec.model
    if model is None:
        return
    shares = list(model.shares) + [s for st in model.stacks for s in st.block.shares]
    shares += [s for _, comp in graph.components() for s in comp.shares]
    for share in shares:
        if share.what not in catalog.SHARE_WHAT or share.across not in catalog.SHARE_ACROSS:
            bad, known = ((share.what, catalog.SHARE_WHAT) if share.what not in catalog.SHARE_WHAT
                          else (share.across, catalog.SHARE_ACROSS))
            yield diag("NL209", share.span, f"unknown word '{bad}' in share", did_you_mean(bad, known)
                       + " (the only form is `share state across batch`)")
            continue
        yield diag("NL221", share.span, "fast state shared across the batch",
                   "every sequence of a batch will read and write one memory, so sequences leak into each "
                   "other and results depend on the batch size (DESIGN §3.7); remove it unless that is the "
                   "experiment")
