"""Helpers every check module shares: making diagnostics, "did you mean" hints, value walking."""
from __future__ import annotations

import math
from typing import Iterable, Iterator

from nldsl import catalog
from nldsl.source import Diagnostic, Severity, Span
from nldsl.spec import model as m


def diag(code: str, span: Span, message: str, hint: str | None = None,
         severity: Severity | str | None = None) -> Diagnostic:
    """A diagnostic with the code's default severity (``nldsl.checks.codes``) unless one is given."""
    from nldsl.checks.codes import CHECK_CODES

    sev = Severity(severity) if severity is not None else CHECK_CODES[code].severity
    return Diagnostic(code=code, severity=sev, span=span, message=message, hint=hint)


def did_you_mean(name: str, known: Iterable[str], listing: bool = True) -> str:
    """``did you mean 'x'? known: a, b, c`` (the listing is cut at 12 names)."""
    names = sorted(set(known))
    near = catalog.suggest(name, names)
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    if near and listing and names:
        return f"did you mean '{near}'? known: {shown}"
    if near:
        return f"did you mean '{near}'?"
    return f"known: {shown}" if names else "nothing of that kind is defined here"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def number(value: m.Value | None) -> float | int | None:
    """The numeric value of a Number (``None`` for anything else, booleans included)."""
    if isinstance(value, m.Number) and not isinstance(value.value, bool):
        return value.value
    return None


def whole(value: m.Value | None) -> int | None:
    """The value as an ``int`` when it is a finite whole number (``64`` or ``1e3``), else ``None``."""
    x = number(value)
    if isinstance(x, int):
        return x
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    return None


def shown(value: m.Value) -> str:
    """A value as the user wrote it (numbers keep their source text), cut to 40 characters."""
    text = value.text if isinstance(value, m.Number) and value.text else value.render()
    return text if len(text) <= 40 else text[:37] + "..."


def effective_objective(comp: m.Component) -> str | None:
    return comp.objective.kind if comp.objective is not None else None


def walk_calls(value: m.Value) -> Iterator[m.Call]:
    """Every call inside a value (nested calls and list items included)."""
    if isinstance(value, m.Call):
        yield value
        for arg in value.args:
            yield from walk_calls(arg.value)
    elif isinstance(value, m.ValueList):
        for item in value.items:
            yield from walk_calls(item)


def component_label(path: str) -> str:
    """``hope[0].titans.k`` -> ``titans.k`` for messages (block instance prefixes are noise there)."""
    head, _, rest = path.partition(".")
    return rest if head.endswith("]") and rest else path


def transfer_statements(graph) -> Iterator[m.Transfer]:
    """Every transfer statement (each block body once per stack)."""
    model = graph.spec.model
    if model is None:
        return
    yield from model.transfers
    for stack in model.stacks:
        yield from stack.block.transfers
    for _, comp in graph.components():
        yield from comp.transfers


def keyword_span(span: Span, width: int) -> Span:
    """The first ``width`` characters of a statement (its keyword), for a caret under ``train``."""
    return Span(path=span.path, line=span.line, col=span.col, end_line=span.line, end_col=span.col + width)
