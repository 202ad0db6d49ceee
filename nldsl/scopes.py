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


def _roots(graph: LevelGraph) -> dict[str, list[str]]:
    """Top-level components by body ('' = model, ``b[0]`` = a stack), cached while no node is added."""
    cache = graph.__dict__.get("_roots_cache")
    if cache is None or cache[0] != graph.nx.number_of_nodes():
        roots: dict[str, list[str]] = {}
        for path, data in graph.nx.nodes(data=True):
            if data["parent"] is None:
                roots.setdefault(data["block"] or "", []).append(path)
        cache = (graph.nx.number_of_nodes(), roots)
        graph.__dict__["_roots_cache"] = cache
    return cache[1]


def scope_names(graph: LevelGraph, scope: str) -> dict[str, tuple[str, ...]]:
    """Names visible in a body: its components (and, in the model, the stacked block names)."""
    cache = graph.__dict__.get("_scope_cache")
    if cache is None or cache[0] != graph.nx.number_of_nodes():
        cache = (graph.nx.number_of_nodes(), {})
        graph.__dict__["_scope_cache"] = cache
    if scope not in cache[1]:
        cache[1][scope] = _scope_names(graph, scope)
    return cache[1][scope]


def _scope_names(graph: LevelGraph, scope: str) -> dict[str, tuple[str, ...]]:
    names: dict[str, list[str]] = {}
    if scope in graph.stacks or scope == "":
        for path in _roots(graph).get(scope, ()):
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
    """``(paths, candidates)``: what a dotted name written in ``scope`` denotes, innermost scope first.

    ``candidates`` (the names visible there, for "did you mean") is only filled in when nothing is found.
    """
    head, *rest = name.split(".")
    scopes = outer_scopes(graph, scope)
    for where in scopes:
        names = scope_names(graph, where)
        if head in names:
            found = tuple(p for p in (_walk(graph, base, rest) for base in names[head]) if p is not None)
            return (found, ()) if found else ((), _candidates(graph, scopes))
    return (), _candidates(graph, scopes)


def _walk(graph: LevelGraph, path: str, parts: list[str]) -> str | None:
    """Follow ``a.b.c`` from ``path`` into its members (``None`` when a part is missing)."""
    for part in parts:
        path = next((c for c in members(graph, path) if c.rsplit(".", 1)[-1] == part), None)
        if path is None:
            return None
    return path


def _candidates(graph: LevelGraph, scopes: list[str]) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for where in scopes:
        out.update(dict.fromkeys(scope_names(graph, where)))
    return tuple(out)


def members(graph: LevelGraph, path: str) -> list[str]:
    if path in graph.stacks:
        return list(_roots(graph).get(path, ()))
    return graph.children(path) if path in graph.nx else []
