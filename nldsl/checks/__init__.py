"""Stage 4: LevelGraph -> diagnostics. Every rule family is one module; ``CHECKS`` lists the rules.

Each rule is a function ``LevelGraph -> Iterator[Diagnostic]``; ``check`` runs them all, collects every
diagnostic (never only the first), drops exact repeats (a block stacked twice reports its mistakes once)
and sorts them by file, line and column. Adding a check is one function and one line in ``CHECKS``.
Codes: NL2xx graph and structure, NL3xx values, NL4xx training setup (``nldsl.checks.codes``).

>>> from nldsl.spec import load
>>> [d.code for d in check(load("model m { dim = 64  component a : attention(heads = 5) }"))]
['NL303']
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

from pydantic import BaseModel

from nldsl.checks import levels, names, ownership, periods, shapes, train, transfers, values
from nldsl.checks.codes import CHECK_CODES, CheckCode
from nldsl.errors import NLError
from nldsl.graph import LevelGraph, build_graph
from nldsl.source import Diagnostic, Span
from nldsl.spec import model as m

Check = Callable[[LevelGraph], Iterator[Diagnostic]]

CHECKS: tuple[Check, ...] = (
    names.check_vocabulary,
    names.check_references,
    names.check_duplicates,
    values.check_values,
    levels.check_roles,
    levels.check_periods,
    levels.check_inner_problem,
    levels.check_objectives,
    levels.check_shares,
    periods.check_alignment,
    periods.check_chunks,
    transfers.check_cycles,
    transfers.check_transfers,
    transfers.check_task_paths,
    ownership.check_ownership,
    ownership.check_matrix_only,
    shapes.check_heads,
    train.check_train_setup,
    train.check_task_data,
    train.check_step_periods,
    train.check_device,
)
"""The rules, run in this order (the output is sorted afterwards)."""

__all__ = ["CHECKS", "CHECK_CODES", "CheckCode", "check", "run_checks", "sort_key", "with_partial_checks"]


def sort_key(diag: Diagnostic) -> tuple:
    span = diag.span
    return (span.path, span.line, span.col, diag.code, diag.message)


def run_checks(graph: LevelGraph, checks: tuple[Check, ...] = CHECKS) -> list[Diagnostic]:
    """Run ``checks`` on a graph: every diagnostic, repeats removed, sorted by position."""
    seen: set[tuple] = set()
    out: list[Diagnostic] = []
    for rule in checks:
        for diag in rule(graph):
            key = (diag.code, diag.span, diag.message)
            if key not in seen:
                seen.add(key)
                out.append(diag)
    return sorted(out, key=sort_key)


def check(spec: m.Spec | LevelGraph | str | Path) -> list[Diagnostic]:
    """All diagnostics of a spec (or its level graph, or a path or text to load first).

    Loading failures (syntax, imports, unknown constants ...) come back as their NL1xx diagnostics
    instead of an exception, so ``check`` never raises for a user's mistake.
    """
    if isinstance(spec, (str, Path)):
        from nldsl.spec import load

        try:
            spec = load(spec)
        except NLError as err:
            return with_partial_checks(err)
    graph = spec if isinstance(spec, LevelGraph) else build_graph(spec)
    return run_checks(graph)


def with_partial_checks(err: NLError) -> list[Diagnostic]:
    """The loading errors plus what the checks find in the spec built without the statements in error.

    A syntax error leaves no spec (its diagnostic comes alone). Otherwise every check runs on the partial
    spec, leaving out what the loading errors cause rather than find: anything at the span of a loading
    error, a non-finite value computed from one (a failed division or constant is NaN), and a name of a
    block whose ``stack`` failed.
    """
    diags = list(err.diagnostics)
    partial = getattr(err, "spec", None)
    if partial is None:
        return sorted(diags, key=sort_key)
    spans = [d.span for d in diags if d.is_error]
    poisoned = {v.span for v in _numbers(partial) if math.isnan(v.value) and v.text != "nan"}
    stacked = {s.block.name for s in partial.model.stacks} if partial.model is not None else set()
    blocks = {b.name for b in partial.blocks} - stacked  # defined, but every `stack` of them failed
    seen = {(d.code, d.span, d.message) for d in diags}
    for diag in run_checks(build_graph(partial)):
        caused = (any(_overlap(diag.span, s) for s in spans) or (diag.code == "NL302" and diag.span in poisoned)
                  or (diag.code == "NL207" and diag.message.split("'")[1].split(".")[0] in blocks))
        if not caused and (diag.code, diag.span, diag.message) not in seen:
            diags.append(diag)
    return sorted(diags, key=sort_key)


def _overlap(a: Span, b: Span) -> bool:
    return a.path == b.path and (a.line, a.col) < (b.end_line, b.end_col) and (b.line, b.col) < (a.end_line, a.end_col)


def _numbers(node) -> Iterator[m.Number]:
    """Every Number inside a spec node."""
    if isinstance(node, m.Number):
        yield node
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _numbers(getattr(node, name))
    elif isinstance(node, tuple):
        for item in node:
            yield from _numbers(item)
