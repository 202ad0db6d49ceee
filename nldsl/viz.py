"""Pictures of a level graph: the level graph (graphviz) and the frequency ladder (matplotlib).

``level_graph_dot``: components are nodes (name, kind, period), grouped in clusters by stacked block and
by container (a self-modifying Titans with its memories, a CMS with its levels); levels are ranks ordered
by frequency, fastest first (NL §1.3: equal frequency = same rank), labelled by a ruler on the left;
edges are styled per relation (flow, nesting, context, hyperparameter and the five transfer kinds of NL
§3.3) and explained by a legend.

``ladder_figure``: for the first N tokens of one sequence stream, which level updates when (one row per
level, fastest on top, a tick per update; outer steps every ``seq x accumulate`` tokens; in-context
state restarts at every sequence boundary).
"""
from __future__ import annotations

import html
from pathlib import Path

import graphviz

from nldsl.graph import EDGE_KINDS, LevelGraph
from nldsl.sizes import human, param_count

FONT = "Helvetica"
EDGE_STYLE: dict[str, dict[str, str]] = {
    "flow": {"color": "#333333", "penwidth": "1.6"},
    "nest": {"color": "#9a9a9a", "style": "dotted", "arrowhead": "none"},
    "context": {"color": "#8c8c8c", "style": "dashed", "arrowhead": "vee"},
    "hyper": {"color": "#2e7d32", "style": "dashed", "arrowhead": "diamond"},
    "parametric": {"color": "#1565c0", "penwidth": "1.6", "arrowhead": "normal"},
    "nonparametric": {"color": "#00838f", "style": "dashed", "penwidth": "1.6"},
    "backprop": {"color": "#c62828", "penwidth": "2.2", "arrowhead": "onormal", "dir": "both", "arrowtail": "onormal"},
    "init": {"color": "#ef6c00", "style": "dashed", "penwidth": "2", "arrowhead": "empty"},
    "generate": {"color": "#6a1b9a", "penwidth": "2.2", "arrowhead": "box"},
}
"""Line style of each edge kind (the legend shows them all)."""
EDGE_LABEL = {"flow": "data flow", "nest": "nesting", "context": "context (gradients/output of)",
              "hyper": "hyperparameter (memory(x))", "parametric": "parametric transfer",
              "nonparametric": "non-parametric transfer", "backprop": "transfer by backprop",
              "init": "init (meta-learned initial state)", "generate": "generate (weights/updates)"}
MAX_TICKS = 2000
"""More updates (or sequence boundaries) than this in one row are drawn as a band, not tick by tick."""
LEVEL_COLORS = ("#fde0dd", "#fff3cd", "#e2f0d9", "#d9ecf7", "#e8e0f5", "#f2f2f2", "#fbe5d6", "#e0f2f1")
"""Node fill per level (fast: warm, slow: cool; the outer loop is grey-blue)."""


def _fill(index: int, kind: str) -> str:
    if kind == "never":
        return "#eeeeee"
    if kind == "steps":
        return "#dde3ea"
    if kind == "nonparametric":
        return "#fde0dd"
    return LEVEL_COLORS[1 + (index - 1) % (len(LEVEL_COLORS) - 1)]


def _node_label(graph: LevelGraph, path: str) -> str:
    comp, freq = graph.component(path), graph.frequency(path)
    count = param_count(graph, path)
    size = f" · {human(count * graph.repeat(path))}" if count else ""
    name = html.escape(comp.name)
    implicit = graph.node(path)["implicit"]
    return (f'<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
            f'<tr><td><b>{name}</b></td></tr>'
            f'<tr><td><font point-size="9" color="#555555">{html.escape(comp.kind)}{" (implicit)" if implicit else ""}'
            f'{size}</font></td></tr>'
            f'<tr><td><font point-size="9" color="#1f4e79">{html.escape(freq.period)}</font></td></tr></table>>')


def level_graph_dot(graph: LevelGraph, title: str | None = None) -> graphviz.Digraph:
    """The level graph as a graphviz ``Digraph`` (``.source`` is the DOT text)."""
    dot = graphviz.Digraph("levels", graph_attr={
        "newrank": "true", "rankdir": "LR", "fontname": FONT, "nodesep": "0.35", "ranksep": "0.55",
        "compound": "true", "labelloc": "t", "fontsize": "18", "pad": "0.3",
        "label": title or _title(graph), "bgcolor": "white"},
        node_attr={"fontname": FONT, "fontsize": "11", "shape": "box", "style": "rounded,filled",
                   "color": "#555555", "penwidth": "1.1"},
        edge_attr={"fontname": FONT, "fontsize": "9", "arrowsize": "0.7"})
    levels = graph.levels()
    level_of = {p: lv for lv in levels for p in lv.components}
    _ruler(dot, levels)
    _clusters(dot, graph, level_of)
    for lv in levels:
        with dot.subgraph() as same:
            same.attr(rank="same")
            same.node(f"__level{lv.index}")
            groups: dict[tuple, list[str]] = {}
            for path in lv.components:
                data = graph.node(path)
                groups.setdefault((data["block"], data["parent"]), []).append(_id(path))
            for (block, parent), chain in groups.items():  # siblings in flow order, tied to the ruler box
                chain = (chain if block is None and parent is None else chain[::-1]) + [f"__level{lv.index}"]
                for a, b in zip(chain, chain[1:]):
                    same.edge(a, b, style="invis")
    for u, v, data in graph.edges():
        attrs = dict(EDGE_STYLE[data["kind"]])
        attrs["constraint"] = "false"
        if data["kind"] in ("init", "generate", "parametric", "nonparametric", "backprop"):
            attrs["xlabel"] = data["kind"]
            attrs["fontcolor"] = attrs["color"]
        dot.edge(_id(u), _id(v), **attrs)
    _legend(dot, {d["kind"] for _, _, d in graph.edges()})
    return dot


def _title(graph: LevelGraph) -> str:
    levels = graph.levels()
    name = graph.spec.model.name if graph.spec.model else "(no model)"
    file = Path(graph.spec.path).name.replace("\\", "\\\\")  # a backslash starts a DOT escape (\\n, \\l ...)
    return f"{name}: {len(levels)} level{'s' if len(levels) != 1 else ''}  ({file})"


def _id(path: str) -> str:
    """The DOT node id of a component (its path; graphviz quotes it)."""
    return f"c_{path}"


def _ruler(dot: graphviz.Digraph, levels) -> None:
    """The left column: one box per level (index, f, period), chained to fix the vertical order."""
    for lv in levels:
        label = (f'<<b>level {lv.index}</b><br/><font point-size="10">f = {html.escape(lv.frequency.label)}'
                 f'</font><br/><font point-size="9" color="#555555">{html.escape(lv.frequency.period)}</font>>')
        dot.node(f"__level{lv.index}", label=label, shape="box", style="filled", fillcolor=_fill(
            lv.index, lv.frequency.kind), color="#bbbbbb", fontsize="11", width="1.3")
    for a, b in zip(levels, levels[1:]):
        dot.edge(f"__level{a.index}", f"__level{b.index}", style="invis", weight="100")


def _clusters(dot: graphviz.Digraph, graph: LevelGraph, level_of: dict) -> None:
    """Model components at top level, each stacked block a cluster, containers nested clusters; all in
    flow order (dot keeps the declaration order where it can)."""
    roots = [p for p in graph.order() if graph.node(p)["parent"] is None]
    done: set[str] = set()
    for path in roots:
        block = graph.node(path)["block"]
        if block is None:
            _component(dot, graph, path, level_of)
            continue
        if block in done:
            continue
        done.add(block)
        members = [p for p in roots if graph.node(p)["block"] == block]
        with dot.subgraph(name=f"cluster_{_id(block)}") as sub:
            sub.attr(label=f"block {graph.stacks[block].block.name}  ×{graph.repeat(members[0])}",
                     style="rounded,dashed", color="#7a7a7a", fontsize="12", fontcolor="#444444",
                     labeljust="l", margin="14")
            for member in members:
                _component(sub, graph, member, level_of)


def _component(dot: graphviz.Digraph, graph: LevelGraph, path: str, level_of: dict) -> None:
    lv = level_of.get(path)
    data = graph.node(path)
    attrs = {"label": _node_label(graph, path),
             "fillcolor": _fill(lv.index, lv.frequency.kind) if lv else "#ffffff"}
    if data["implicit"]:
        attrs.update(style="rounded,filled,dashed", color="#999999")
    children = graph.children(path)
    if not children:
        dot.node(_id(path), **attrs)
        return
    comp = graph.component(path)
    with dot.subgraph(name=f"cluster_{_id(path)}") as sub:
        sub.attr(label=f"{comp.name} : {comp.kind}", style="rounded,filled", fillcolor="#fafafa",
                 color="#b0b0b0", fontsize="11", labeljust="l", margin="10")
        sub.node(_id(path), **attrs)
        for child in children:
            _component(sub, graph, child, level_of)


def _legend(dot: graphviz.Digraph, kinds: set[str]) -> None:
    """A legend cluster with one sample line per edge kind the drawing uses."""
    shown = [k for k in EDGE_KINDS if k in kinds]
    if not shown:
        return
    with dot.subgraph(name="cluster_legend") as leg:
        leg.attr(label="legend", style="rounded", color="#cccccc", fontsize="11", labeljust="l", margin="8")
        rows = "".join(f'<tr><td align="left"><font color="{EDGE_STYLE[k]["color"]}">{_sample(k)}</font></td>'
                       f'<td align="left">{html.escape(EDGE_LABEL[k])}</td></tr>' for k in shown)
        leg.node("__legend", label=f'<<table border="0" cellspacing="2" cellpadding="2">{rows}</table>>',
                 shape="plaintext", style="", fontsize="10")


def _sample(kind: str) -> str:
    style = EDGE_STYLE[kind].get("style", "solid")
    line = {"dotted": "┈┈┈┈", "dashed": "╌╌╌╌"}.get(style, "━━━━" if kind != "flow" else "────")
    head = {"none": " ", "diamond": "◆", "box": "■", "empty": "▷", "onormal": "▷", "vee": "›"}.get(
        EDGE_STYLE[kind].get("arrowhead", "normal"), "▶")
    return line + head


def render_graph(graph: LevelGraph, out: str | Path) -> Path:
    """Write the level graph to ``out`` (``.svg``, ``.png`` or ``.dot``, by extension)."""
    out = Path(out)
    fmt = _format(out, ("svg", "png", "pdf", "dot", "gv"), ".svg, .png, .pdf or .dot")
    dot = level_graph_dot(graph)
    _make_parent(out)
    if fmt in ("dot", "gv"):
        out.write_text(dot.source, encoding="utf-8")
        return out
    if fmt == "png":
        dot.graph_attr["dpi"] = "144"
    try:
        data = dot.pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound:
        raise RuntimeError("graphviz's `dot` program is not installed (apt-get install graphviz, "
                           "brew install graphviz); `-o out.dot` works without it") from None
    except graphviz.CalledProcessError as err:
        raise RuntimeError(f"dot failed: {(err.stderr or b'').decode(errors='replace').strip()[:300]}") from None
    out.write_bytes(data)
    return out


# ---------------------------------------------------------------------------------------------- ladder


def ladder_events(graph: LevelGraph, tokens: int) -> list[tuple[object, list[float]]]:
    """``(level, update positions)`` for the first ``tokens`` tokens of one sequence stream.

    A level updated every N tokens writes at the end of each full chunk, counted from the start of each
    sequence (in-context state restarts there); every N steps means after N outer steps of
    ``seq x accumulate`` tokens; nonparametric levels change at every token, frozen ones never.
    """
    seq = max(1, graph.train_int("seq") or 1)
    per_step = seq * max(1, graph.train_int("accumulate") or 1)
    out = []
    for lv in graph.levels():
        f = lv.frequency
        n = int(f.every) if f.kind in ("tokens", "steps") and float(f.every).is_integer() else 0
        if f.kind == "nonparametric":
            events = [float(t) for t in range(1, tokens + 1)]
        elif f.kind == "tokens" and n:
            events = [float(s + k) for s in range(0, tokens, seq) for k in range(n, min(seq, tokens - s) + 1, n)]
        elif f.kind == "steps" and n:
            events = [float(k) for k in range(n * per_step, tokens + 1, n * per_step)]
        else:
            events = []
        out.append((lv, events))
    return out


def default_ladder_tokens(graph: LevelGraph) -> int:
    """Enough tokens to see the slowest finite level update twice (at most 64 sequences)."""
    seq = max(1, graph.train_int("seq") or 1)
    per_step = seq * max(1, graph.train_int("accumulate") or 1)
    longest = max([lv.frequency.every * (per_step if lv.frequency.kind == "steps" else 1)
                   for lv in graph.levels() if lv.frequency.kind in ("tokens", "steps")] or [seq])
    return int(min(max(2 * seq, 2 * longest), 64 * seq, 10**6))


def ladder_figure(graph: LevelGraph, tokens: int | None = None):
    """A matplotlib figure: one row per level (fastest on top), a tick at every update."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tokens = int(tokens or default_ladder_tokens(graph))
    rows = ladder_events(graph, tokens)
    seq = max(1, graph.train_int("seq") or 1)
    per_step = seq * max(1, graph.train_int("accumulate") or 1)
    fig, ax = plt.subplots(figsize=(11, 0.62 * max(1, len(rows)) + 1.9), dpi=144)
    for i, (lv, events) in enumerate(rows):
        y = len(rows) - 1 - i
        color = _ladder_color(lv)
        ax.axhspan(y - 0.42, y + 0.42, color=_fill(lv.index, lv.frequency.kind), zorder=0, lw=0)
        dense = len(events) > MAX_TICKS
        if lv.frequency.kind == "nonparametric" or dense:
            ax.broken_barh([(0, tokens)], (y - 0.22, 0.44), color=color, alpha=0.55 if not dense else 0.35, lw=0,
                           zorder=2)
        elif events:
            width = 2.0 if lv.frequency.kind == "steps" else 1.0 if len(events) < 400 else 0.5
            ax.vlines(events, y - 0.3, y + 0.3, color=color, lw=width, zorder=2)
        note = {"never": "frozen: never updated", "nonparametric": "recomputed at every token"}.get(lv.frequency.kind)
        if dense and not note:
            note = f"{len(events)} updates: too dense to draw one tick each"
        if note or not events:
            ax.text(tokens * 0.995, y, note or "no update in this window", ha="right", va="center", fontsize=8,
                    color="#555555", zorder=3)
    if not rows:
        ax.text(tokens / 2, 0, "no levels: the file has no model", ha="center", va="center", fontsize=10,
                color="#555555", zorder=3, bbox={"facecolor": "white", "edgecolor": "none"})
    if tokens // seq <= MAX_TICKS:
        for s in range(seq, tokens, seq):
            ax.axvline(s, color="#9e9e9e", lw=0.8, ls=(0, (4, 3)), zorder=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_ladder_label(graph, lv) for lv, _ in reversed(rows)], fontsize=8.5)
    ax.set_xlim(0, tokens * 1.01)
    ax.set_ylim(-0.6, max(1, len(rows)) - 0.4)
    _ladder_legend(fig, ax, {lv.frequency.kind for lv, _ in rows})
    ax.set_xlabel(f"tokens of one sequence stream (dashed: a new sequence every {seq} tokens; "
                  f"one outer step every {per_step} tokens)", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    name = graph.spec.model.name if graph.spec.model else Path(graph.spec.path).name
    ax.set_title(f"{name}: frequency ladder, first {tokens} tokens (a tick = one update; fastest level on top)",
                 fontsize=11, loc="left")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _ladder_legend(fig, ax, kinds: set[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if "tokens" in kinds:
        handles.append(Line2D([], [], color="#1f4e79", lw=0, marker="|", markersize=11, markeredgewidth=1.6,
                              label="in-context update (end of a chunk)"))
    if "steps" in kinds:
        handles.append(Line2D([], [], color="#e65100", lw=0, marker="|", markersize=11, markeredgewidth=1.6,
                              label="outer-loop update (after N optimizer steps)"))
    if "nonparametric" in kinds:
        handles.append(Patch(color="#c62828", alpha=0.55, label="non-parametric: recomputed every token"))
    handles.append(Line2D([], [], color="#9e9e9e", lw=0.9, ls=(0, (4, 3)),
                          label="new sequence: in-context state restarts"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))


def _ladder_color(lv) -> str:
    return {"nonparametric": "#c62828", "steps": "#e65100", "never": "#9e9e9e"}.get(lv.frequency.kind, "#1f4e79")


def _ladder_label(graph: LevelGraph, lv) -> str:
    names = [graph.component(p).name for p in lv.components]
    shown = ", ".join(dict.fromkeys(names))
    shown = shown if len(shown) <= 34 else shown[:31] + "..."
    return f"level {lv.index}  f = {lv.frequency.label}  ({lv.frequency.period})\n{shown}"


def render_ladder(graph: LevelGraph, out: str | Path, tokens: int | None = None) -> Path:
    """Write the frequency ladder to ``out`` (``.png``, ``.svg`` or ``.pdf``)."""
    out = Path(out)
    fmt = _format(out, ("png", "svg", "pdf"), ".png, .svg or .pdf")
    if tokens is not None and not 1 <= int(tokens) <= MAX_LADDER_TOKENS:
        raise ValueError(f"tokens must be between 1 and {MAX_LADDER_TOKENS}, got {tokens}")
    _make_parent(out)
    fig = ladder_figure(graph, tokens)
    from matplotlib import pyplot as plt

    try:
        fig.savefig(out, format=fmt, metadata=_METADATA.get(fmt))
    finally:
        plt.close(fig)
    return out


MAX_LADDER_TOKENS = 10**6
"""The longest window a ladder shows."""


def _format(out: Path, allowed: tuple[str, ...], words: str) -> str:
    """The output format from the file extension (``ValueError`` with the accepted ones)."""
    fmt = out.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"'{out}' has no extension to choose the format: use {words}")
    if fmt not in allowed:
        raise ValueError(f"unsupported output format '.{fmt}': use {words}")
    return fmt


def _make_parent(out: Path) -> None:
    """Create the output's directory (``OSError`` when it cannot be, e.g. a file is in the way)."""
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)


_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None}, "png": {"Software": None}}
"""Reproducible files: no timestamps."""
