"""Name resolution in a level graph: what a component name written in a body denotes.

A name is looked up in the body it was written in, then in the bodies around it (a component's children,
then its parent's, then the stacked block, then the model), innermost first; a dotted name walks into
components (``titans.k``). In the model body the name of a stacked block denotes the stack (``hope`` ->
``hope[0]``; a block stacked twice denotes both).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nldsl.graph import LevelGraph


def scope_names(graph: LevelGraph, scope: str) -> dict[str, tuple[str, ...]]:
    """Names visible in a body: its components (and, in the model, the stacked block names)."""
    names: dict[str, list[str]] = {}
    if scope in graph.stacks or scope == "":
        for path, data in graph.nx.nodes(data=True):
            if data["parent"] is None and (data["block"] or "") == scope:
                names.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    else:
        for child in graph.children(scope):
            names.setdefault(child.rsplit(".", 1)[-1], []).append(child)
    if scope == "":
        for prefix, stack in graph.stacks.items():
            names.setdefault(stack.block.name, []).append(prefix)
    return {k: tuple(v) for k, v in names.items()}


def outer_scopes(graph: LevelGraph, scope: str) -> list[str]:
    """The scope and those around it, innermost first (component -> parent -> block -> model)."""
    out = [scope]
    while scope:
        if scope in graph.stacks:
            scope = ""
        elif scope in graph.nx:
            data = graph.node(scope)
            scope = data["parent"] if data["parent"] is not None else (data["block"] or "")
        else:
            scope = ""
        out.append(scope)
    return out


def resolve(graph: LevelGraph, name: str, scope: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(paths, candidates)``: what a dotted name written in ``scope`` denotes, innermost scope first."""
    head, *rest = name.split(".")
    candidates: list[str] = []
    for where in outer_scopes(graph, scope):
        names = scope_names(graph, where)
        candidates += [n for n in names if n not in candidates]
        if head in names:
            found = []
            for base in names[head]:
                path = base
                for part in rest:
                    nxt = [c for c in members(graph, path) if c.rsplit(".", 1)[-1] == part]
                    path = nxt[0] if nxt else None
                    if path is None:
                        break
                if path is not None:
                    found.append(path)
            return tuple(found), tuple(candidates)
    return (), tuple(candidates)


def members(graph: LevelGraph, path: str) -> list[str]:
    if path in graph.stacks:
        return [p for p, d in graph.nx.nodes(data=True) if d["block"] == path and d["parent"] is None]
    return graph.children(path) if path in graph.nx else []
