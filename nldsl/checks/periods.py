"""Period checks (NL214, NL305): do the update periods of nested levels line up, and fit a sequence?

NL214. Levels whose periods are not multiples of each other never finish their chunks together, so
the slower level's update falls in the middle of the faster one's chunk. Decision:

* CMS levels (children of a ``cms``), sorted by period: each period must be a multiple of the next faster
  one. In the ``nested`` variant (NL Eq. 72) a slower level re-initialises the faster one at its chunk
  boundary, which is undefined mid-chunk: an **error**. In ``sequential`` and ``independent`` CMS it
  still runs, but the frequencies are not the clean ladder of NL §7.1: a **warning**.
* Any other child with its own period inside a parent with one (a memory of a self-modifying Titans): the
  two periods must divide one another, else a **warning**.

``every N steps`` is compared with ``every N tokens`` as N x seq x accumulate tokens (one outer step
consumes one sequence of every batch row).

NL305. In-context state restarts with every sequence, so a chunk longer than the training sequence
(``seq`` in ``train``) never completes: the memory is never written while training, and the level silently
becomes a static layer. That is an **error**.
"""
from __future__ import annotations

from typing import Iterator

from nldsl.checks.common import diag, whole
from nldsl.graph import LevelGraph
from nldsl.source import Diagnostic, Span
from nldsl.spec import model as m


def _tokens(graph: LevelGraph, period: m.Period) -> int | None:
    """The period in tokens of one sequence stream (``None`` for never/nonparametric/invalid)."""
    n = whole(period.count) if period.kind == "every" else None
    if n is None or n <= 0:
        return None
    if period.unit == "tokens":
        return n
    if period.unit == "steps":
        return n * (graph.train_int("seq") or 1) * (graph.train_int("accumulate") or 1)
    return None


def _words(period: m.Period) -> str:
    return f"every {period.count.render() if period.count is not None else '?'} {period.unit}"


def check_alignment(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL214: CMS levels and nested periods that never line up."""
    for path, comp in graph.components():
        kind = graph.node(path)["kind"]
        if kind == "cms":
            yield from _cms(graph, comp)
            continue
        own = comp.update
        if own is None or own.implicit or _tokens(graph, own.period) is None or own.period.unit != "tokens":
            continue
        for child in comp.children:
            yield from _child(graph, comp, own.period, child)


def _cms(graph: LevelGraph, cms: m.Component) -> Iterator[Diagnostic]:
    periods = []
    for level in cms.children:
        n = _tokens(graph, level.update.period) if level.update is not None else None
        if n is not None:
            periods.append((n, level))
    periods.sort(key=lambda p: p[0])
    variant = cms.get("variant")
    nested = isinstance(variant, m.Symbol) and variant.name == "nested"
    for (fast_n, fast), (slow_n, slow) in zip(periods, periods[1:]):
        if slow_n % fast_n == 0:
            continue
        yield diag("NL214", _count_span(slow), f"CMS level '{slow.name}' ({_words(slow.update.period)}) does not "
                   f"line up with '{fast.name}' ({_words(fast.update.period)})",
                   f"make it a multiple of {fast_n} tokens (e.g. {fast_n * max(1, round(slow_n / fast_n))}) so "
                   "each slower update falls on a chunk boundary of the faster level"
                   + ("; the nested variant re-initialises the faster level there (NL Eq. 72)" if nested else ""),
                   severity="error" if nested else "warning")


def _child(graph: LevelGraph, parent: m.Component, period: m.Period, child: m.Component) -> Iterator[Diagnostic]:
    update = child.update
    if update is None or update.implicit or update.period.unit != "tokens":
        return
    a, b = _tokens(graph, period), _tokens(graph, update.period)
    if a is None or b is None or a % b == 0 or b % a == 0:
        return
    yield diag("NL214", _count_span(child), f"'{child.name}' ({_words(update.period)}) and its parent "
               f"'{parent.name}' ({_words(period)}) never line up",
               f"use a divisor or a multiple of {a} so both chunks end together")


def _count_span(comp: m.Component) -> Span:
    period = comp.update.period
    return period.count.span if period.count is not None and not comp.update.implicit else period.span


def check_chunks(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL305: an in-context period longer than the training sequence."""
    train = graph.spec.train
    if train is None:
        return
    seq = graph.train_int("seq")
    if seq is None or seq <= 0:
        return
    for path, comp in graph.components():
        update = comp.update
        if update is None or update.period.kind != "every" or update.period.unit != "tokens":
            continue
        n = whole(update.period.count)
        if n is not None and n > seq:
            yield diag("NL305", _count_span(comp), f"a chunk of {n} tokens is longer than the training "
                       f"sequence (seq = {seq})",
                       f"in-context state restarts with every sequence, so '{comp.name}' would never be "
                       f"written while training: use a period of at most {seq} tokens, or a longer seq")
