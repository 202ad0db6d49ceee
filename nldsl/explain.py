"""``nldsl explain``: the level table of a model (NL §1.3-1.6 read off the level graph).

One row per component, grouped by level, fastest level first (level 1). Columns: level index, update
frequency f (NL Def. 2: updates per token at inference; outer-loop levels have f = 0 and are told apart by
their training period), period, component and kind, parameter count (``nldsl.sizes``, times the stack's
repetitions; for an optimizer buffer, its state), context (what the level compresses), objective, optimizer (the inner one, or the outer one
from ``train`` that owns the component), and knowledge-transfer edges. The paper's point shows directly:
``explain examples/transformer.nl`` has two levels, attention (f = ∞) and everything else (f = 0).
"""
from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from nldsl._callable import make_callable
from nldsl.checks.ownership import generated, owned_groups, owners_of_group
from nldsl.graph import LevelGraph
from nldsl.sizes import human, param_count
from nldsl.spec import model as m

_ARROWS = {"init": "init", "generate": "generate", "parametric": "parametric", "nonparametric": "nonparametric",
           "backprop": "backprop", "hyper": "hyper", "context": "context"}


@dataclass(frozen=True)
class Row:
    """One component of the table (plain data, for tests and other front ends)."""

    level: int
    frequency: str
    period: str
    component: str
    kind: str
    params: int | None
    context: str
    objective: str
    optimizer: str
    transfers: str


def rows(graph: LevelGraph) -> list[Row]:
    """The table as data: levels fastest first, components in flow order inside a level."""
    out = []
    gens = generated(graph)
    for level in graph.levels():
        for path in level.components:
            count = param_count(graph, path)
            out.append(Row(level.index, level.frequency.label, level.frequency.period, path,
                           graph.component(path).kind, None if count is None else count * graph.repeat(path),
                           _context(graph, path), _objective(graph, path), _optimizer(graph, path, gens),
                           _transfers(graph, path)))
    return out


def _context(graph: LevelGraph, path: str) -> str:
    comp, freq = graph.component(path), graph.frequency(path)
    ctx = comp.get("context")
    if isinstance(ctx, (m.Call, m.Symbol)):
        return ctx.render()
    if freq.kind == "nonparametric":
        window = comp.get("window")
        return f"last {window.render()} tokens" if isinstance(window, m.Number) and window.value else "all tokens"
    if freq.kind == "tokens":
        return f"tokens (chunk {freq.period.split()[1]})" if freq.every != 1 else "tokens"
    if freq.kind == "never":
        return "-"
    return "training data"


def _objective(graph: LevelGraph, path: str) -> str:
    comp, freq = graph.component(path), graph.frequency(path)
    if comp.objective is not None:
        return comp.objective.kind + "".join(f", {a.render()}" for a in comp.objective.args).replace(", ", "(", 1) \
            + (")" if comp.objective.args else "")
    if freq.kind in ("steps",):
        return "task (outer)"
    return "-"


def _optimizer(graph: LevelGraph, path: str, generators: dict[str, list[str]]) -> str:
    comp, freq = graph.component(path), graph.frequency(path)
    if comp.optimizer is not None and freq.kind != "steps" or comp.kind == "buffer" and comp.optimizer:
        return comp.optimizer.kind
    gens = generators.get(path)
    if gens:
        return "updates from " + ", ".join(g.rsplit(".", 1)[-1] for g in gens)
    train = graph.spec.train
    if train is None or freq.kind in ("never", "tokens"):
        return "-" if freq.kind != "tokens" else "(none)"
    kinds = []
    for group in owned_groups(graph, path):
        kinds += [train.optimizers[i].kind for i, _ in owners_of_group(graph, train, path, group)]
    return ", ".join(dict.fromkeys(kinds)) + " (outer)" if kinds else "-"


def _transfers(graph: LevelGraph, path: str) -> str:
    parts = []
    for u, v, data in graph.nx.in_edges(path, data=True):
        if data["kind"] in _ARROWS:
            parts.append(f"{_ARROWS[data['kind']]} ← {u.rsplit('.', 1)[-1]}")
    for u, v, data in graph.nx.out_edges(path, data=True):
        if data["kind"] in _ARROWS and data["kind"] not in ("context",):
            parts.append(f"{_ARROWS[data['kind']]} → {v.rsplit('.', 1)[-1]}")
    return ", ".join(parts) or "-"


def explain_table(graph: LevelGraph) -> Table:
    """The rich table (levels separated by rules)."""
    levels = graph.levels()
    title = f"{graph.spec.path}: {len(levels)} level{'s' if len(levels) != 1 else ''}"
    table = Table(title=title, title_justify="left", show_lines=False, header_style="bold")
    for name, style in (("level", "bold"), ("f", "bold cyan"), ("period", "cyan"), ("component", ""),
                        ("kind", "dim"), ("size", ""), ("context", ""), ("objective", ""),
                        ("optimizer", ""), ("transfers", "magenta")):
        table.add_column(name, style=style, justify="right" if name == "size" else "left",
                         no_wrap=name in ("level", "f", "component", "size"))
    data = rows(graph)
    for i, row in enumerate(data):
        first = i == 0 or data[i - 1].level != row.level
        last = i == len(data) - 1 or data[i + 1].level != row.level
        table.add_row(str(row.level) if first else "", row.frequency if first else "", row.period if first else "",
                      row.component, row.kind, human(row.params), row.context, row.objective, row.optimizer,
                      row.transfers, end_section=last)
    table.caption = ("f: updates per token (NL Def. 2); outer-loop levels have f = 0 after pre-training and "
                     "are ordered by their training period. Higher level = lower frequency. size: parameters "
                     "(times the stack's layers); for an optimizer buffer, its state.")
    table.caption_justify = "left"
    return table


def explain_text(graph: LevelGraph, width: int = 160, color: bool = False) -> str:
    """The table rendered as text (``color=False``: plain characters, for files and tests)."""
    console = Console(width=width, record=True, force_terminal=color, color_system="auto" if color else None,
                      file=_Null())
    console.print(explain_table(graph))
    text = console.export_text(styles=color)
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def explain(spec_or_graph, width: int = 160) -> str:
    """``nldsl.explain(spec)``: the level table as plain text (a path or text is loaded first)."""
    from nldsl.graph import _call

    return explain_text(_call(spec_or_graph), width=width)


make_callable(__name__, explain)
