"""nldsl: a declarative compiler for Nested Learning (Behrouz et al. 2025).

A model is a hierarchy of levels written in a `.nl` file. The Python API mirrors the command line::

    import nldsl
    spec = nldsl.load("examples/hope.nl")          # typed Spec (raises NLError with diagnostics)
    diags = nldsl.check(spec)                      # every diagnostic, sorted ([] when clean)
    g = nldsl.graph(spec)                          # LevelGraph; g.nx is the networkx graph
    g.levels()                                     # levels, fastest first
    nldsl.render_graph(spec, "hope.svg")           # level graph (svg, png, pdf, dot)
    nldsl.render_ladder(spec, "ladder.png")        # frequency ladder
    print(nldsl.explain(spec))                     # the level table
    nldsl.format_source(text)                      # canonical formatting

Importing the package is cheap: every function imports its stage on first use (torch is never imported
here). ``nldsl.graph`` and ``nldsl.explain`` are modules that can also be called like functions.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

__version__ = "0.1.0"
__all__ = ["load", "check", "graph", "explain", "plan", "build", "render_graph", "render_ladder", "format_source", "__version__"]


def load(path_or_text: str | Path) -> Any:
    """Parse and build a `.nl` file or text into a ``Spec`` (raises ``NLError`` with diagnostics)."""
    from nldsl.spec import load as _load

    return _load(path_or_text)


def check(spec: Any) -> list:
    """All diagnostics of a ``Spec``, ``LevelGraph``, path or text (loading errors included), sorted."""
    from nldsl.checks import check as _check

    return _check(spec)


def _graph_of(spec_or_graph: Any) -> Any:
    from nldsl.graph import LevelGraph, build_graph

    if isinstance(spec_or_graph, LevelGraph):
        return spec_or_graph
    if isinstance(spec_or_graph, (str, Path)):
        spec_or_graph = load(spec_or_graph)
    return build_graph(spec_or_graph)


def render_graph(spec_or_graph: Any, out: str | Path) -> Path:
    """Draw the level graph to ``out`` (``.svg``, ``.png``, ``.pdf`` or ``.dot``)."""
    from nldsl.viz import render_graph as _render

    return _render(_graph_of(spec_or_graph), out)


def render_ladder(spec_or_graph: Any, out: str | Path, tokens: int | None = None) -> Path:
    """Draw the frequency ladder to ``out`` (``.png``, ``.svg`` or ``.pdf``) for the first ``tokens``."""
    from nldsl.viz import render_ladder as _render

    return _render(_graph_of(spec_or_graph), out, tokens)


def format_source(text_or_path: str | Path) -> str:
    """The canonical formatting of `.nl` text, or of a file (a ``Path``, or a one-line ``str`` that ends in
    ``.nl`` or names an existing file, as for ``load``). Raises ``NLError`` with diagnostics."""
    from nldsl.fmt import fmt
    from nldsl.spec import is_path
    from nldsl.spec.resolve import read_source

    if isinstance(text_or_path, Path) or is_path(str(text_or_path)):
        return fmt(read_source(str(text_or_path)))
    return fmt(str(text_or_path))


def __getattr__(name: str) -> Any:
    """``nldsl.graph`` / ``explain`` / ``plan`` / ``build``: their (callable) modules, imported on first use."""
    if name in ("graph", "explain", "plan", "build"):
        return importlib.import_module(f"nldsl.{name}")
    raise AttributeError(f"module 'nldsl' has no attribute '{name}'")
