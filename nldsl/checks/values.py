"""Value checks (NL201, NL209, NL210, NL222, NL300-NL307): every argument and setting against the catalog.

Each parameter of a kind, setting of ``model``/``train`` and argument of a call has a ``catalog.Param``
(type, choices, positive, required). Here every written value is compared with it: unknown names get
"did you mean", wrong types, non-finite numbers (``1e999``, ``nan``), non-positive sizes and rates
(``0``, ``-0``, ``-1e-3``), values outside [0, 1] for decays and momenta, too-large integers, and
hyperparameter forms (``learned``/``data``/``memory``) where a plain value is needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

from nldsl import catalog
from nldsl.checks.common import did_you_mean, diag, number, shown, transfer_statements
from nldsl.graph import LevelGraph
from nldsl.source import Diagnostic, Span
from nldsl.spec import model as m

MAX_INT = 2**31 - 1
"""Largest integer accepted for a size, count or period."""
CALL_KINDS: dict[str, dict[str, catalog.Kind]] = {
    "data": catalog.DATA, "tokenizer": catalog.TOKENIZERS, "compile": catalog.COMPILE, "context": catalog.CONTEXTS,
}
"""Parameters of type ``call``: which table their call names come from."""
_UNIT = (0.0, 1.0, True, True)
_UNIT_OPEN = (0.0, 1.0, True, False)
_NONNEG = (0.0, math.inf, True, True)
RANGES: dict[tuple[str, str], tuple[float, float, bool, bool]] = {
    ("inner", "retain"): _UNIT, ("inner", "beta"): _UNIT, ("inner", "momentum"): _UNIT_OPEN,
    ("inner", "beta1"): _UNIT_OPEN, ("inner", "beta2"): _UNIT_OPEN,
    ("outer", "beta1"): _UNIT_OPEN, ("outer", "beta2"): _UNIT_OPEN, ("outer", "beta3"): _UNIT_OPEN,
    ("outer", "beta"): _UNIT_OPEN, ("outer", "momentum"): _UNIT_OPEN, ("outer", "alpha"): _UNIT,
    ("outer", "weight_decay"): _NONNEG, ("schedule", "min"): _UNIT, ("schedule", "decay"): _UNIT,
    ("schedule", "warmup"): _NONNEG, ("train", "grad_clip"): _NONNEG, ("train", "seed"): _NONNEG,
    ("component", "conv"): _NONNEG, ("component", "window"): _NONNEG, ("component", "persistent"): _NONNEG,
    ("component", "depth"): _NONNEG, ("call", "length"): _NONNEG,
}
"""Allowed ranges ``(low, high, low included, high included)`` by ``(group, parameter)``."""
POSITIVE = {("inner", "lr"), ("hyper", "scale")}
"""Positive beyond what the catalog marks: inner learning rates."""
_TYPES = {"int": "a whole number", "number": "a number", "bool": "true or false", "string": "a quoted string",
          "symbol": "a name", "symbols": "a list of names", "name": "a component name",
          "hyper": "a number, learned(init), data(activation) or memory(name)", "call": "a call"}


@dataclass(frozen=True)
class Item:
    """One written parameter: ``name = value`` (``name`` is ``None`` for a positional argument)."""

    name: str | None
    name_span: Span
    value: m.Value


@dataclass(frozen=True)
class Where:
    """Where values are checked: the owner's words for messages, its range group, what it allows."""

    owner: str
    span: Span
    group: str
    memory_ok: bool = False
    names: tuple[str, ...] = ()
    """Constants and block parameters of the spec: a bare word close to one is most likely a typo."""


def items_of(args: Sequence[m.Arg] = (), settings: Sequence[m.Setting] = ()) -> list[Item]:
    out = [Item(a.name, a.name_span or a.span, a.value) for a in args]
    return out + [Item(s.name, s.name_span, s.value) for s in settings]


def check_items(items: list[Item], params: Sequence[catalog.Param], where: Where) -> Iterator[Diagnostic]:
    """Unknown, repeated and missing parameters, then each value against its ``Param``."""
    table = {p.name: p for p in params}
    positional = [p for p in params]
    seen: set[str] = set()
    used = 0
    for item in items:
        if item.name is None:
            if used >= len(positional):
                yield diag("NL201", item.value.span, f"too many arguments for {where.owner}",
                           f"{where.owner} takes: {', '.join(table) or 'no arguments'}")
                continue
            param, used = positional[used], used + 1
        else:
            param = table.get(item.name)
            if param is None:
                yield diag("NL201", item.name_span, f"{where.owner} has no parameter '{item.name}'",
                           did_you_mean(item.name, table) if table else f"{where.owner} takes no parameters")
                continue
        if param.name in seen:
            yield diag("NL210", item.name_span, f"'{param.name}' is given twice", "keep one of them")
            continue
        seen.add(param.name)
        yield from check_value(item.value, param, where)
    for param in params:
        if param.required and param.name not in seen:
            yield diag("NL306", where.span, f"{where.owner} needs '{param.name}'",
                       f"add `{param.name} = ...`: {param.doc or _TYPES.get(param.type, param.type)}")


def check_value(value: m.Value, param: catalog.Param, where: Where) -> Iterator[Diagnostic]:
    """One value against its parameter's type, range and form."""
    if isinstance(value, m.Call) and value.name in catalog.HYPER_FORMS and param.type != "hyper":
        yield diag("NL222", value.span, f"'{param.name}' cannot be {value.name}(...)",
                   f"learned(...), data(...) and memory(...) are forms of inner-optimizer hyperparameters; "
                   f"'{param.name}' takes {_TYPES.get(param.type, param.type)}")
        return
    check = _BY_TYPE.get(param.type, _check_any)
    yield from check(value, param, where)


def _check_int(value, param, where):
    x = number(value)
    if x is None:
        yield _type_error(value, param, names=where.names)
    elif not math.isfinite(x):
        yield _not_finite(value, param)
    elif isinstance(x, float) and not x.is_integer():
        yield diag("NL300", value.span, f"'{param.name}' must be a whole number, got {shown(value)}",
                   f"write an integer; {_doc(param)}")
    elif abs(x) > MAX_INT:
        yield diag("NL307", value.span, f"'{param.name}' = {shown(value)} is too large",
                   f"the largest accepted value is {MAX_INT}")
    else:
        yield from _bounds(value, x, param, where)


def _check_number(value, param, where):
    x = number(value)
    if x is None:
        yield _type_error(value, param, names=where.names)
    elif not math.isfinite(x):
        yield _not_finite(value, param)
    else:
        yield from _bounds(value, x, param, where)


def _bounds(value: m.Number, x: float, param: catalog.Param, where: Where) -> Iterator[Diagnostic]:
    if (param.positive or (where.group, param.name) in POSITIVE) and x <= 0:
        yield diag("NL301", value.span, f"'{param.name}' must be positive, got {shown(value)}",
                   f"'{param.name}' counts {param.unit}: use a whole number greater than 0" if param.unit
                   else f"use a value greater than 0; {_doc(param)}")
        return
    rng = RANGES.get((where.group, param.name))
    if rng is None:
        return
    lo, hi, lo_in, hi_in = rng
    if (x < lo or (x == lo and not lo_in)) or (x > hi or (x == hi and not hi_in)):
        decay = where.group in ("inner", "outer") and hi == 1.0
        hint = ("a decay or momentum is the fraction of the old state kept at each step (0.9 is typical)"
                if decay else f"{_doc(param)}: a fraction" if hi == 1.0 else f"{_doc(param)}: it cannot be negative")
        yield diag("NL304", value.span, f"'{param.name}' must be {_range_words(rng)}, got {shown(value)}", hint)


def _doc(param: catalog.Param) -> str:
    """``name: what it is`` (the description without the generic list of hyperparameter forms)."""
    doc = (param.doc or param.name).split(": a number, learned")[0]
    return f"{param.name}: {doc}" if doc != param.name else param.name


def _range_words(rng: tuple[float, float, bool, bool]) -> str:
    lo, hi, lo_in, hi_in = rng
    if hi == math.inf:
        return "at least 0" if lo_in else "greater than 0"
    left, right = "[" if lo_in else "(", "]" if hi_in else ")"
    return f"in {left}{lo:g}, {hi:g}{right}"


def _check_bool(value, param, where):
    if not isinstance(value, m.Bool):
        yield _type_error(value, param)


def _check_string(value, param, where):
    if not isinstance(value, m.String):
        hint = f'write it in quotes: "{value.render()}"' if isinstance(value, m.Symbol) else None
        yield _type_error(value, param, hint)
    elif param.choices and value.value not in param.choices:
        yield diag("NL209", value.span, f"unknown {param.name} {shown(value)}",
                   did_you_mean(value.value, param.choices))


def _check_symbol(value, param, where):
    if isinstance(value, m.Symbol):
        if param.choices and value.name not in param.choices:
            yield diag("NL209", value.span, f"unknown {param.name} '{value.name}'",
                       did_you_mean(value.name, param.choices))
    elif isinstance(value, m.String) and value.value in param.choices:
        yield _type_error(value, param, f"write it without quotes: {value.value}")
    else:
        yield _type_error(value, param, f"one of: {', '.join(param.choices)}" if param.choices else None)


def _check_symbols(value, param, where):
    items = value.items if isinstance(value, m.ValueList) else (value,)
    for item in items:
        yield from _check_symbol(item, param, where)


def _check_name(value, param, where):
    if not isinstance(value, m.Symbol):
        hint = f"write the name without quotes: {value.value}" if isinstance(value, m.String) else None
        yield _type_error(value, param, hint)


def _check_hyper(value, param, where):
    if isinstance(value, m.Number):
        yield from _check_number(value, param, where)
        return
    if not isinstance(value, m.Call):
        yield _type_error(value, param, names=where.names)
        return
    kind = catalog.HYPER_CALLS.get(value.name)
    if kind is None:
        yield diag("NL209", value.span, f"unknown hyperparameter form '{value.name}(...)'",
                   did_you_mean(value.name, catalog.HYPER_CALLS))
        return
    if value.name == "memory" and not where.memory_ok:
        yield diag("NL222", value.span, f"memory(...) outside a self-modifying component",
                   "only a self_modifying_titans (and its memories) has memories that produce its "
                   "hyperparameters; use a number, learned(init) or data(softplus)")
        return
    inner = Where(f"{value.name}(...)", value.span, "hyper", names=where.names)
    yield from check_items(items_of(value.args), kind.params, inner)
    init = None
    if value.name == "learned":
        init = value.get("init")
        init = value.positional[0] if init is None and value.positional else init
    if isinstance(init, m.Number) and math.isfinite(init.value):
        yield from _bounds(init, init.value, param, where)


def _check_call(value, param, where):
    table = CALL_KINDS.get(param.name, {})
    name = value.name if isinstance(value, (m.Call, m.Symbol)) else None
    if name is None:
        yield _type_error(value, param, f"one of: {', '.join(table)}" if table else None)
        return
    kind = table.get(name)
    if kind is None:
        yield diag("NL209", value.span, f"unknown {param.name} '{name}'", did_you_mean(name, table))
        return
    args = value.args if isinstance(value, m.Call) else ()
    yield from check_items(items_of(args), kind.params, Where(f"{name}(...)", value.span, "call", names=where.names))


def _check_any(value, param, where):
    return iter(())


_BY_TYPE = {"int": _check_int, "number": _check_number, "bool": _check_bool, "string": _check_string,
            "symbol": _check_symbol, "symbols": _check_symbols, "name": _check_name, "hyper": _check_hyper,
            "call": _check_call}


def _type_error(value: m.Value, param: catalog.Param, hint: str | None = None,
                names: tuple[str, ...] = ()) -> Diagnostic:
    expected = _TYPES.get(param.type, param.type)
    if hint is None and isinstance(value, m.String) and param.type in ("int", "number"):
        hint = (f"numbers are written without quotes: every {value.value} ..." if param is _COUNT
                else f"numbers are written without quotes: {param.name} = {value.value}")
    near = catalog.suggest(value.name, names) if isinstance(value, m.Symbol) and hint is None else None
    if near is not None:
        hint = f"'{value.name}' is no constant or block parameter: did you mean '{near}'?"
    return diag("NL300", value.span, f"'{param.name}' expects {expected}, got {_describe(value)}",
                hint or f"write {expected}; {_doc(param)}")


def _not_finite(value: m.Value, param: catalog.Param) -> Diagnostic:
    return diag("NL302", value.span, f"'{param.name}' is not a finite number: {shown(value)}",
                "inf and nan are not sizes or rates (a literal like 1e999 overflows to inf)")


def _describe(value: m.Value) -> str:
    if isinstance(value, m.Number):
        return f"the number {shown(value)}"
    if isinstance(value, m.String):
        return f"the string {shown(value)}"
    if isinstance(value, m.Bool):
        return value.render()
    if isinstance(value, m.Symbol):
        return f"the name '{value.name}'"
    if isinstance(value, m.Call):
        return f"{value.name}(...)"
    return "a list"


# ---------------------------------------------------------------------------------------------- check


def check_values(graph: LevelGraph) -> Iterator[Diagnostic]:
    """Every setting and argument of the spec against the catalog."""
    spec = graph.spec
    names = tuple(dict.fromkeys([c.name for c in spec.consts] + [p.name for b in spec.blocks for p in b.params]))
    if spec.model is not None:
        model = spec.model
        yield from check_items(items_of(settings=model.settings), tuple(catalog.MODEL_SETTINGS.values()),
                               Where(f"model '{model.name}'", model.name_span, "model", names=names))
        for stack in model.stacks:
            if stack.times is not None:
                yield from check_value(stack.times, _TIMES, Where("stack", stack.span, "stack", names=names))
    for path, comp in graph.components():
        if not graph.node(path)["implicit"]:
            yield from _component_values(graph, path, comp, names)
    for transfer in transfer_statements(graph):
        kind = catalog.TRANSFERS.get(transfer.kind)
        if kind is not None:
            yield from check_items(items_of(transfer.args), kind.params,
                                   Where(f"transfer {transfer.kind}", transfer.kind_span, "transfer", names=names))
    if spec.train is not None:
        yield from _train_values(spec.train, names)


_TIMES = catalog.Param("times", "int", 1, "how many times the block repeats", positive=True)
_COUNT = catalog.Param("period", "int", 1, "N in `every N tokens|steps`", positive=True)


def _component_values(graph: LevelGraph, path: str, comp: m.Component,
                      names: tuple[str, ...] = ()) -> Iterator[Diagnostic]:
    kind = catalog.COMPONENTS.get(comp.kind)
    if kind is not None:
        yield from check_items(items_of(comp.args, comp.settings), kind.params + catalog.COMMON_PARAMS,
                               Where(f"'{comp.kind}'", comp.kind_span, "component", names=names))
    if comp.update is not None and not comp.update.implicit:
        yield from period_values(comp.update.period, "update", names)
        yield from check_items(items_of(comp.update.args), catalog.UPDATE_ARGS,
                               Where("update", comp.update.span, "update", names=names))
    memory_ok = comp.kind == "self_modifying_titans" or (
        graph.parent(path) is not None and graph.component(graph.parent(path)).kind == "self_modifying_titans")
    for stmt, table, group in ((comp.objective, catalog.OBJECTIVES, "objective"),
                               (comp.optimizer, catalog.INNER_OPTIMIZERS, "inner"),
                               (comp.init, catalog.INITS, "init")):
        if stmt is None or stmt.implicit or stmt.kind not in table:
            continue
        where = Where(f"{group if group != 'inner' else 'optimizer'} {stmt.kind}", stmt.kind_span, group, memory_ok,
                      names)
        yield from check_items(items_of(stmt.args), table[stmt.kind].params, where)


def period_values(period: m.Period, owner: str, names: tuple[str, ...] = ()) -> Iterator[Diagnostic]:
    """The N of ``every N tokens|steps``: a positive whole number."""
    if period.kind == "every" and period.count is not None:
        yield from check_value(period.count, _COUNT, Where(owner, period.span, "period", names=names))


def _train_values(train: m.Train, names: tuple[str, ...] = ()) -> Iterator[Diagnostic]:
    yield from check_items(items_of(settings=train.settings), tuple(catalog.TRAIN_SETTINGS.values()),
                           Where("train", train.span, "train", names=names))
    for opt in train.optimizers:
        kind = catalog.OUTER_OPTIMIZERS.get(opt.kind)
        if kind is not None:
            yield from check_items(items_of(opt.args), kind.params, Where(f"optimizer {opt.kind}", opt.kind_span,
                                                                          "outer", names=names))
    if train.schedule is not None and train.schedule.kind in catalog.SCHEDULES:
        sched = train.schedule
        yield from check_items(items_of(sched.args), catalog.SCHEDULES[sched.kind].params,
                               Where(f"schedule {sched.kind}", sched.kind_span, "schedule", names=names))
    for stmt, params, word in ((train.eval, catalog.EVAL_ARGS, "eval"),
                               (train.checkpoint, catalog.CHECKPOINT_ARGS, "checkpoint")):
        if stmt is not None:
            yield from period_values(stmt.period, word, names)
            yield from check_items(items_of(stmt.args), params, Where(word, stmt.span, word, names=names))
