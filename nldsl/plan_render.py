"""``Plan.render()``: the plan as plain-text tables (what ``nldsl plan FILE`` prints; golden-tested).

Spans are shown as ``file.nl:line`` (the file's base name), so the text does not depend on the directory
the spec was loaded from.
"""
from __future__ import annotations

from pathlib import Path

from nldsl.plan import Plan, _val
from nldsl.source import Span


def table(headers: tuple[str, ...], rows: list[tuple], indent: str = "  ") -> list[str]:
    """Left-aligned columns separated by two spaces (trailing spaces stripped)."""
    cells = [tuple(headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths))).rstrip() for r in cells]


def loc(span: Span | None) -> str:
    return f"{Path(span.path).name}:{span.line}" if span is not None else "-"


def render_plan(p: Plan) -> str:
    out = [f"plan {p.model.name} ({Path(p.path).name})", ""]
    for section in (_model, _components, _configs, _rules, _levels, _transfers, _optimizers, _train, _schedule):
        lines = section(p)
        if lines:
            out += lines + [""]
    return "\n".join(out).rstrip() + "\n"


def _model(p: Plan) -> list[str]:
    mp = p.model
    size = f"vocab {mp.vocab}" if mp.task == "lm" else f"inputs {mp.inputs} · classes {mp.classes}"
    head = [f"model {mp.name}: task {mp.task} · {size} · dim {mp.dim} · layers {mp.layers} · "
            f"tie_embeddings {_val(mp.tie_embeddings)} · norm {mp.norm}  ({loc(mp.span)})"]
    trunk = [mp.embed] + [f"{t} ×{mp.block(t).repeat}" if mp.block(t) else t for t in mp.trunk]
    head.append("  " + " -> ".join(x for x in trunk + [mp.final_norm, mp.head] if x))
    for b in mp.blocks:
        names = [f.split(".", 1)[1] for f in b.flow]
        head.append(f"  {b.prefix} ×{b.repeat}: " + " -> ".join(["input"] + names + ["output"])
                    + f"  ({loc(b.span)})")
    return head


def _components(p: Plan) -> list[str]:
    rows = [(c.path, c.kind, c.role, c.level, c.period.render(), ", ".join(c.groups) or "-",
             c.repeat, loc(c.span)) for c in p.components]
    return ["components"] + table(("path", "kind", "role", "level", "period", "outer groups", "copies", "span"),
                                  rows)


def _configs(p: Plan) -> list[str]:
    rows = [(c.path, "  ".join(f"{k} = {_val(v)}" for k, v in c.config)) for c in p.components]
    return ["config (defaults applied)"] + table(("path", "resolved parameters"), rows)


def _rules(p: Plan) -> list[str]:
    rows = [(c.path, c.rule.render(), loc(c.rule.span)) for c in p.components
            if c.rule.optimizer or c.rule.init or c.period.in_context and c.period.kind == "tokens"]
    if not rows:
        return []
    return ["update rules (in-context levels and optimizer levels)"] + table(("path", "rule", "span"), rows)


def _levels(p: Plan) -> list[str]:
    rows = [(lv.index, lv.frequency, lv.period.render(), ", ".join(lv.components)) for lv in p.levels]
    return ["levels (1 = fastest)"] + table(("level", "f", "period", "components"), rows)


def _transfers(p: Plan) -> list[str]:
    if not p.transfers:
        return []
    rows = [(t.kind, f"{t.source} -> {t.target}", "  ".join(f"{k} = {_val(v)}" for k, v in t.args) or "-",
             loc(t.span)) for t in p.transfers]
    return ["transfers"] + table(("kind", "source -> target", "args", "span"), rows)


def _optimizers(p: Plan) -> list[str]:
    out = ["outer optimizers (every trainable group owned once)"]
    for opt in p.optimizers:
        out.append(f"  [{opt.index}] {opt.render()}  ({loc(opt.span)})")
        rows = [(g.component, g.category, g.period.render(), g.via) for g in opt.groups]
        out += table(("component", "group", "steps", "via"), rows, indent="      ")
    return out


def _train(p: Plan) -> list[str]:
    t = p.train
    comp = "off" if not t.compile.enabled else \
        f"compile(mode = {t.compile.mode}, fullgraph = {_val(t.compile.fullgraph)}, dynamic = {_val(t.compile.dynamic)}, " \
        f"scope = {t.compile.scope})"
    call = lambda name, args: name + (f"({', '.join(f'{k} = {_val(v)}' for k, v in args)})" if args else "")  # noqa: E731
    lines = [f"steps = {t.steps}  batch = {t.batch}  seq = {t.seq}  accumulate = {t.accumulate}  "
             f"precision = {t.precision}  compile = {comp}",
             f"data = {call(t.data, t.data_args) if t.data else 'unset'}  tokenizer = {call(t.tokenizer, t.tokenizer_args)}",
             f"schedule = {call(t.schedule, t.schedule_args)}  grad_clip = {_val(t.grad_clip)}  seed = {t.seed}  "
             f"device = {t.device}  parallel = {t.parallel}",
             f"eval = {_every(t.eval_every)} (batches = {t.eval_batches})  checkpoint = {_every(t.checkpoint_every)} "
             f"(keep = {t.checkpoint_keep}, dir = {t.checkpoint_dir})"]
    return [f"train  ({loc(t.span)})"] + ["  " + x for x in lines]


def _every(n: int | None) -> str:
    return "never" if n is None else f"every {n} steps"


def _schedule(p: Plan) -> list[str]:
    t = p.train
    rows = [(e.level, e.period.render(), e.when, "∞" if e.count < 0 else e.count) for e in p.schedule]
    out = [f"schedule (a sequence of {t.seq} tokens; {t.steps} outer steps)"]
    out += table(("level", "period", "updates", "count"), rows)
    if p.task_segment:
        n = -(-t.seq // p.task_segment)
        out.append(f"  task-objective levels learn from the surprise of the task loss in segments of "
                   f"{p.task_segment} tokens ({n} forward/backward passes per sequence)")
    return out
