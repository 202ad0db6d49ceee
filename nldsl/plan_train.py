"""Stage 5 (outer loop): the ``train`` block and the update schedule of the Plan.

``train_plan`` applies the catalog defaults to every train setting, schedule, eval and checkpoint option.
``schedule_entries`` says, level by level, when its state changes: in-context levels at token offsets of
one training sequence (``seq``), ``every N steps`` levels at outer steps, over ``steps`` steps.
"""
from __future__ import annotations

import math

from nldsl import catalog
from nldsl.graph import LevelGraph
from nldsl.plan import CompilePlan, Period, ScheduleEntry, TrainPlan
from nldsl.spec import model as m


def _py(value):
    from nldsl.plan_build import py

    return py(value)


def _call(value: m.Value | None, table: dict[str, catalog.Kind], default: str) -> tuple[str | None, tuple]:
    """``name(args)`` or a bare ``name`` -> (name, resolved args)."""
    from nldsl.plan_build import call_args

    if value is None:
        return (default, tuple(call_args(table[default], ()).items())) if default else (None, ())
    name = value.name if isinstance(value, (m.Call, m.Symbol)) else str(_py(value))
    args = value.args if isinstance(value, m.Call) else ()
    return name, tuple(call_args(table[name], args).items()) if name in table else ()


def _compile(value: m.Value | None) -> CompilePlan:
    name, args = _call(value, catalog.COMPILE, "off")
    if name == "off":
        return CompilePlan(False)
    opts = dict(args)
    return CompilePlan(True, str(opts.get("mode", "default")), bool(opts.get("fullgraph", False)),
                       bool(opts.get("dynamic", False)), str(opts.get("scope", "auto")))


def _every(stmt: m.Eval | m.Checkpoint | None, default_every: int | None) -> int | None:
    if stmt is None:
        return default_every
    count = _py(stmt.period.count) if stmt.period.kind == "every" else None
    return int(count) if isinstance(count, (int, float)) else None


def train_plan(spec: m.Spec) -> TrainPlan:
    """The outer loop's settings, catalog defaults applied (a spec without ``train`` gets all defaults)."""
    train = spec.train
    s = {name: p.default for name, p in catalog.TRAIN_SETTINGS.items()}
    written = {x.name: x.value for x in train.settings} if train is not None else {}
    s.update({k: _py(v) for k, v in written.items() if k not in ("compile", "data", "tokenizer")})
    data, data_args = _call(written.get("data"), catalog.DATA, "")
    tok, tok_args = _call(written.get("tokenizer"), catalog.TOKENIZERS, "bytes")
    sched = train.schedule if train is not None else None
    sched_name, sched_args = _call(m.Call(span=sched.span, name=sched.kind, args=sched.args) if sched else None,
                                   catalog.SCHEDULES, "constant")
    ev = train.eval if train is not None else None
    ck = train.checkpoint if train is not None else None
    ev_args = dict(_args(catalog.EVAL_ARGS, ev.args if ev else ()))
    ck_args = dict(_args(catalog.CHECKPOINT_ARGS, ck.args if ck else ()))
    return TrainPlan(steps=int(s["steps"]), batch=int(s["batch"]), seq=int(s["seq"]),
                     accumulate=int(s["accumulate"]), precision=str(s["precision"]),
                     compile=_compile(written.get("compile")), data=data, data_args=data_args,
                     tokenizer=tok, tokenizer_args=tok_args, parallel=str(s["parallel"]), seed=int(s["seed"]),
                     grad_clip=float(s["grad_clip"]), device=str(s["device"]), schedule=sched_name,
                     schedule_args=sched_args, eval_every=_every(ev, None), eval_batches=int(ev_args["batches"]),
                     checkpoint_every=_every(ck, None), checkpoint_keep=int(ck_args["keep"]),
                     checkpoint_dir=str(ck_args["dir"]), span=train.span if train is not None else None)


def _args(params: tuple[catalog.Param, ...], args: tuple[m.Arg, ...]) -> tuple:
    out = {p.name: p.default for p in params}
    out.update({a.name: _py(a.value) for a in args if a.name is not None})
    return tuple(out.items())


# ---------------------------------------------------------------------------------------------- schedule


def _series(every: int, last: int) -> tuple[str, int]:
    """``4, 8, 12, …, 128`` and the count of multiples of ``every`` up to ``last``."""
    n = last // every
    if n == 0:
        return "", 0
    shown = [every * i for i in range(1, min(n, 3) + 1)]
    text = ", ".join(map(str, shown))
    if n > 4:
        text += f", …, {every * n}"
    elif n == 4:
        text += f", {every * n}"
    return text, n


def schedule_entries(graph: LevelGraph, train: TrainPlan) -> tuple[ScheduleEntry, ...]:
    """When each level updates: token offsets in one sequence, or outer steps over training."""
    from nldsl.plan_build import _period

    out = []
    for lv in graph.levels():
        period = _period(graph, lv.components[0])
        out.append(_entry(lv.index, period, train))
    return tuple(out)


def _entry(index: int, period: Period, train: TrainPlan) -> ScheduleEntry:
    if period.kind == "nonparametric":
        return ScheduleEntry(index, period, "every token (recomputed from the context, no stored state)", -1)
    if period.kind == "never":
        return ScheduleEntry(index, period, "never (frozen)", 0)
    if period.kind == "tokens":
        text, n = _series(period.every, train.seq)
        when = f"after tokens {text} of each sequence" if n else f"never within a sequence of {train.seq} tokens"
        return ScheduleEntry(index, period, when, n)
    text, n = _series(period.every, train.steps)
    if period.every == 1:
        return ScheduleEntry(index, period, f"every outer step (1 … {train.steps})", train.steps)
    how = f"{period.reduce} of {period.every} outer gradients"
    return ScheduleEntry(index, period, f"outer steps {text} ({how})" if n else "never within training", n)


def task_segment(graph: LevelGraph) -> int | None:
    """gcd of the periods of in-context levels with the ``task`` objective (the surprise segments)."""
    periods = []
    for path, comp in graph.components():
        freq = graph.frequency(path)
        if freq.kind == "tokens" and comp.objective is not None and comp.objective.kind == "task" \
                and not comp.children:
            periods.append(int(freq.every))
    return math.gcd(*periods) if periods else None
