"""Stage 5 (construction): a checked LevelGraph -> ``Plan`` (see ``nldsl.plan`` for the data).

Resolves every component's parameters against the catalog (defaults, symbolic defaults), derives each
level's update rule, the model's assembly order, the outer optimizers' parameter groups (ownership as
``nldsl.checks.ownership`` decides it, plus the runtime's own norm gains) and the update schedule.
"""
from __future__ import annotations

import math
from pathlib import Path

from nldsl import catalog
from nldsl.checks.ownership import _selectors, generated, owned_groups, selects
from nldsl.errors import NLError
from nldsl.graph import LevelGraph, build_graph, resolve
from nldsl.plan import (OUTER_STEP, BlockPlan, ComponentPlan, Hyper, LevelPlan, ModelPlan, OptimizerPlan,
                        ParamGroup, Period, Plan, Rule, TransferPlan)
from nldsl.plan_train import schedule_entries, task_segment, train_plan
from nldsl.source import Diagnostic, Severity
from nldsl.spec import model as m

PRE_NORMED = ("attention", "swiglu", "mlp", "linear", "conv")
"""Static kinds that run as pre-norm residual sub-layers: their norm gain is an extra ``vectors`` tensor."""


def build_plan(graph_or_spec) -> Plan:
    """Check, then plan (NLError with every error diagnostic when the checks fail)."""
    from nldsl.checks import check

    graph = _graph(graph_or_spec)
    errors = [d for d in check(graph) if d.is_error]
    if errors:
        raise NLError(errors)
    if graph.spec.model is None:
        span = graph.spec.span
        raise NLError([Diagnostic(code="NL500", severity=Severity.error, span=span,
                                  message="nothing to plan: the file has no model",
                                  hint="add `model NAME { dim = ... }` (a library file only defines blocks)")])
    levels = {p: lv.index for lv in graph.levels() for p in lv.components}
    comps = tuple(_component(graph, path, levels[path]) for path, _ in graph.components())
    model = _model(graph)
    train = train_plan(graph.spec)
    return Plan(path=graph.spec.path, model=model, components=comps, levels=_levels(graph),
                transfers=_transfers(graph), optimizers=_optimizers(graph, comps, model),
                train=train, schedule=schedule_entries(graph, train), task_segment=task_segment(graph))


def _graph(x) -> LevelGraph:
    if isinstance(x, LevelGraph):
        return x
    if isinstance(x, (str, Path)):
        from nldsl.spec import load

        x = load(x)
    return build_graph(x)


# ---------------------------------------------------------------------------------------------- values


def py(value: m.Value | None):
    """A spec value as plain Python (calls rendered as written, lists as tuples)."""
    if value is None:
        return None
    if isinstance(value, (m.Number, m.Bool, m.String)):
        return value.value
    if isinstance(value, m.Symbol):
        return value.name
    if isinstance(value, m.ValueList):
        return tuple(py(v) for v in value.items)
    return value.render()


def call_args(kind: catalog.Kind, args: tuple[m.Arg, ...]) -> dict:
    """Arguments of a call/statement by parameter name (positionals in order), defaults filled in."""
    out = {p.name: p.default for p in kind.params}
    names = iter(kind.param_names)
    for arg in args:
        name = arg.name if arg.name is not None else next(names, None)
        if name is not None:
            out[name] = py(arg.value)
    return out


def _rule_value(rule: str, width: int, model: dict, out: dict):
    """A catalog default written in words -> a number (None: not a rule, keep the default)."""
    if rule == "model dim":
        return model["dim"]
    if rule == "model vocab":
        return model["vocab"]
    if rule == "model tie_embeddings":
        return model["tie_embeddings"]
    if rule == "4 * dim":
        return 4 * width
    if rule == "8/3 * dim rounded to 64":
        return 64 * math.ceil(8 * width / 3 / 64)
    if rule == "heads":
        return out.get("heads")
    if rule == "dim per head":
        return width // max(1, int(out.get("heads") or 1))
    return None


def component_config(comp: m.Component, width: int, model: dict) -> tuple:
    """Every parameter of the kind: written value or (resolved) default, in catalog order."""
    kind = catalog.COMPONENTS[comp.kind]
    written = comp.params()
    out: dict = {}
    for p in kind.params + catalog.COMMON_PARAMS:
        if p.name in written:
            out[p.name] = py(written[p.name])
        else:
            rule = _rule_value(p.default, width, model, out) if isinstance(p.default, str) else None
            out[p.name] = rule if rule is not None else p.default
    return tuple(out.items())


def model_settings(spec: m.Spec) -> dict:
    model = spec.model
    out = {name: p.default for name, p in catalog.MODEL_SETTINGS.items()}
    out.update({s.name: py(s.value) for s in model.settings})
    return out


# ---------------------------------------------------------------------------------------------- parts


def _width(graph: LevelGraph, path: str, dim: int) -> int:
    """The input width of a component: model dim, or the per-head width of a self-modifying memory (every
    memory of a self-modifying Titans works per head, so ``hidden = 4 * dim`` means 4x the head width)."""
    parent = graph.parent(path)
    if parent is None or graph.component(parent).kind != "self_modifying_titans":
        return dim
    heads = py(graph.component(parent).get("heads")) or 1
    return dim // heads


def _period(graph: LevelGraph, path: str) -> Period:
    freq, comp = graph.frequency(path), graph.component(path)
    if freq.kind == "steps":
        reduce = next((py(a.value) for a in comp.update.args if a.name == "reduce"), "sum") if comp.update else "sum"
        return Period("steps", int(freq.every), reduce)
    if freq.kind == "tokens":
        return Period("tokens", int(freq.every))
    return Period(freq.kind if freq.kind != "unknown" else "never")


def _hyper(name: str, value: m.Value | None, default) -> Hyper:
    if isinstance(value, m.Call) and value.name in catalog.HYPER_CALLS:
        args = call_args(catalog.HYPER_CALLS[value.name], value.args)
        if value.name == "learned":
            return Hyper(name, "learned", float(args["init"]), span=value.span)
        if value.name == "data":
            return Hyper(name, "data", float(args["scale"]), activation=args["activation"], span=value.span)
        return Hyper(name, "memory", source=args["name"], span=value.span)
    number = py(value) if value is not None else default
    return Hyper(name, "const", float(number), span=value.span if value is not None else None)


def _rule(graph: LevelGraph, path: str, period: Period) -> Rule:
    comp = graph.component(path)
    inner = period.kind == "tokens" or comp.kind in ("buffer", "self_modifying_titans", "neural_memory")
    out: dict = {"context": py(comp.get("context")) or "tokens"}
    if comp.objective is not None and comp.objective.kind in catalog.OBJECTIVES:
        args = call_args(catalog.OBJECTIVES[comp.objective.kind], comp.objective.args)
        out.update(objective=comp.objective.kind, objective_args=tuple(args.items()), span=comp.objective.span)
    opt = comp.optimizer
    if inner and opt is not None and opt.kind in catalog.INNER_OPTIMIZERS:
        kind = catalog.INNER_OPTIMIZERS[opt.kind]
        out.update(optimizer=opt.kind, span=opt.span,
                   hypers=tuple(_hyper(p.name, opt.get(p.name), p.default) for p in kind.params))
    if inner and not comp.children or comp.kind in ("self_modifying_titans",):
        init = comp.init
        kind = init.kind if init is not None else catalog.DEFAULT_INIT
        args = call_args(catalog.INITS[kind], init.args if init is not None else ())
        out.update(init=kind, grad=args.pop("grad", None), init_args=tuple(args.items()))
    return Rule(**out)


def _groups(graph: LevelGraph, path: str) -> tuple[str, ...]:
    """Outer-trained categories: the checks' ownership, plus the runtime's norm gains (``vectors``)."""
    groups = owned_groups(graph, path)
    comp, data = graph.component(path), graph.node(path)
    if not groups or "vectors" in groups or data["implicit"]:
        return groups
    parent = graph.parent(path)
    in_cms = parent is not None and graph.component(parent).kind == "cms"
    pre_normed = comp.kind in PRE_NORMED and parent is None
    independent = comp.kind == "cms" and py(comp.get("variant")) == "independent"
    return groups + ("vectors",) if in_cms or pre_normed or independent else groups


def _component(graph: LevelGraph, path: str, level: int) -> ComponentPlan:
    comp, data = graph.component(path), graph.node(path)
    settings = model_settings(graph.spec)
    if data["implicit"]:
        config = _implicit_config(comp.kind, settings)
    else:
        config = component_config(comp, _width(graph, path, settings["dim"]), settings)
    period = _period(graph, path)
    return ComponentPlan(path=path, name=comp.name, kind=comp.kind, role=comp.role, config=config,
                         period=period, level=level, rule=_rule(graph, path, period),
                         groups=_groups(graph, path), parent=graph.parent(path),
                         children=tuple(graph.children(path)), repeat=graph.repeat(path),
                         span=comp.name_span, implicit=data["implicit"],
                         flow=tuple(_chain(graph, comp.flows, path)) if comp.flows else tuple(graph.children(path)))


def _implicit_config(kind: str, s: dict) -> tuple:
    """The implicit input layer, final norm and head of a model (docs/language.md §7)."""
    classify = s["task"] == "classify"
    if kind == "embedding":
        return (("inputs", s["inputs"]), ("dim", s["dim"])) if classify else \
            (("vocab", s["vocab"]), ("dim", s["dim"]))
    if kind == "norm":
        return (("type", "rmsnorm"), ("eps", 1e-6))
    out = s["classes"] if classify else s["vocab"]
    return (("out", out), ("tied", bool(s["tie_embeddings"]) and not classify))


def _levels(graph: LevelGraph) -> tuple[LevelPlan, ...]:
    out = []
    for lv in graph.levels():
        p = _period(graph, lv.components[0])
        out.append(LevelPlan(lv.index, lv.frequency.label, p, lv.components))
    return tuple(out)


def _transfers(graph: LevelGraph) -> tuple[TransferPlan, ...]:
    out = []
    for u, v, data in graph.edges(*catalog.TRANSFERS):
        t = data["transfer"]
        out.append(TransferPlan(t.kind, u, v, tuple(call_args(catalog.TRANSFERS[t.kind], t.args).items()), t.span))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- model


def _model(graph: LevelGraph) -> ModelPlan:
    model, s = graph.spec.model, model_settings(graph.spec)
    explicit = {c.kind: c.name for c in model.components if c.kind in ("embedding", "norm", "head")}
    role = {"embedding": "embed", "norm": "norm", "head": "head"}
    ends = {k: explicit.get(k, graph.implicit.get(r)) for k, r in role.items()}
    blocks = tuple(BlockPlan(prefix=p, name=st.block.name, repeat=_repeat(st, s["layers"]),
                             flow=_block_flow(graph, p, st), span=st.span) for p, st in graph.stacks.items())
    return ModelPlan(name=model.name, task=s["task"], dim=s["dim"], vocab=s["vocab"], inputs=s["inputs"],
                     classes=s["classes"], layers=s["layers"], tie_embeddings=bool(s["tie_embeddings"]),
                     norm=s["norm"], embed=ends["embedding"], final_norm=ends["norm"], head=ends["head"],
                     trunk=_trunk(graph, set(ends.values())), blocks=blocks, span=model.name_span)


def _repeat(stack: m.Stack, layers: int) -> int:
    times = py(stack.times)
    return times if isinstance(times, int) and not isinstance(times, bool) else layers


def _chain(graph: LevelGraph, flows: tuple[m.Flow, ...], scope: str) -> list[str]:
    """Component paths along the written flows, in order (``input``/``output`` dropped)."""
    out: list[str] = []
    for flow in flows:
        for name in flow.steps:
            if name in catalog.FLOW_ENDS:
                continue
            out += [p for p in resolve(graph, name, scope)[0] if p not in out]
    return out


def _block_flow(graph: LevelGraph, prefix: str, stack: m.Stack) -> tuple[str, ...]:
    if stack.block.flows:
        return tuple(_chain(graph, stack.block.flows, prefix))
    return tuple(f"{prefix}.{c.name}" for c in stack.block.components if c.kind != "buffer")


def _trunk(graph: LevelGraph, ends: set) -> tuple[str, ...]:
    model = graph.spec.model
    if model.flows:
        return tuple(p for p in _chain(graph, model.flows, "") if p not in ends)
    items = [(c.span.line, c.span.col, c.name) for c in model.components if c.name not in ends]
    items += [(st.span.line, st.span.col, p) for p, st in graph.stacks.items()]
    return tuple(name for *_, name in sorted(items))


# ---------------------------------------------------------------------------------------------- outer


def _optimizers(graph: LevelGraph, comps: tuple[ComponentPlan, ...], model: ModelPlan) -> tuple[OptimizerPlan, ...]:
    train = graph.spec.train
    opts = train.optimizers if train is not None else ()
    gens = generated(graph)
    claims: list[list[ParamGroup]] = [[] for _ in opts]
    for c in comps:
        owned = owned_groups(graph, c.path)
        period = c.period if c.period.kind == "steps" else OUTER_STEP
        for group in c.groups:
            hit = _claim(graph, opts, c.path, group, c.path in gens and group in owned)
            if hit is None and group not in owned:
                hit = _fallback(graph, opts, model)
            if hit is not None:
                claims[hit[0]].append(ParamGroup(c.path, group, period, hit[1]))
    outer = tuple(OptimizerPlan(index=i, kind=o.kind, config=tuple(call_args(catalog.OUTER_OPTIMIZERS[o.kind],
                                                                             o.args).items()),
                                selectors=tuple(_sel_text(s) for s in o.selectors), groups=tuple(claims[i]),
                                span=o.span) for i, o in enumerate(opts))
    return outer + _level_optimizers(graph, comps, gens, len(outer))


def _level_optimizers(graph: LevelGraph, comps, gens: dict, start: int) -> tuple[OptimizerPlan, ...]:
    """Components updated by optimizer levels (``transfer generate m -> w``): one entry per target."""
    out = []
    for c in comps:
        if c.path not in gens:
            continue
        groups = tuple(ParamGroup(c.path, g, OUTER_STEP, "generate") for g in owned_groups(graph, c.path))
        sources = tuple(gens[c.path])
        out.append(OptimizerPlan(index=start + len(out), kind="levels", config=(("buffers", sources),),
                                 selectors=(f"component {c.path}",), groups=groups,
                                 span=graph.component(sources[0]).name_span, level=c.path))
    return tuple(out)


def _claim(graph: LevelGraph, opts, path: str, group: str, is_generated: bool) -> tuple[int, str] | None:
    """The (single, as the checks ensure) optimizer whose selectors claim ``group`` of ``path``."""
    for i, opt in enumerate(opts):
        for sel in _selectors(opt):
            if is_generated and sel.kind not in ("component", "glob"):
                continue
            if selects(graph, sel, path, group):
                return i, _sel_text(sel)
    return None


def _fallback(graph: LevelGraph, opts, model: ModelPlan) -> tuple[int, str] | None:
    """Runtime norm gains nobody selects: the optimizer of the final norm, else the first that takes vectors."""
    if model.final_norm is not None:
        hit = _claim(graph, opts, model.final_norm, "vectors", False)
        if hit is not None:
            return hit[0], "fallback"
    for i, opt in enumerate(opts):
        if opt.kind not in catalog.MATRIX_ONLY_OPTIMIZERS:
            return i, "fallback"
    return None


def _sel_text(sel: m.Selector) -> str:
    if sel.kind == "component":
        return f"component {sel.target}"
    if sel.kind == "glob":
        return f'"{sel.target}"'
    return sel.kind
