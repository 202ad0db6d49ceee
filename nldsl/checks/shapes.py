"""Shape checks (NL303): widths that must split evenly into heads.

Multi-head components (attention, neural memories, self-modifying Titans) give each head
``dim / heads`` channels, and grouped-query attention gives each key/value head ``heads / kv_heads``
query heads, so both divisions must be exact.
"""
from __future__ import annotations

from typing import Iterator

from nldsl import catalog
from nldsl.checks.common import diag, whole
from nldsl.graph import LevelGraph
from nldsl.source import Diagnostic


def _divisors_near(n: int, k: int) -> str:
    """Divisors of ``n`` close to ``k`` for the hint (``4 or 6``)."""
    divs = sorted((d for d in range(1, min(n, 4096) + 1) if n % d == 0), key=lambda d: (abs(d - k), d))[:2]
    return " or ".join(str(d) for d in sorted(divs))


def check_heads(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL303: ``dim % heads``, ``heads > dim`` and ``heads % kv_heads``."""
    model_dim = graph.model_int("dim")
    for path, comp in graph.components():
        kind = catalog.COMPONENTS.get(comp.kind)
        if kind is None or kind.param("heads") is None:
            continue
        own = comp.get("dim") if kind.param("dim") is not None else None  # `dim` is no parameter of it: NL201
        dim = whole(own) if own is not None else model_dim
        heads_value = comp.get("heads")
        heads = whole(heads_value) if heads_value is not None else 1
        span = heads_value.span if heads_value is not None else comp.kind_span
        if dim is None or heads is None or dim <= 0 or heads <= 0:
            continue
        if heads > dim:
            yield diag("NL303", span, f"{heads} heads for {dim} channels",
                       f"each head needs at least one channel: use at most {dim} heads (a divisor of {dim})")
        elif dim % heads:
            yield diag("NL303", span, f"dim {dim} does not divide into {heads} heads",
                       f"each head gets dim / heads channels: use {_divisors_near(dim, heads)} heads, or a dim "
                       f"that is a multiple of {heads}")
        kv_value = comp.get("kv_heads")
        kv = whole(kv_value) if kv_value is not None else None
        if kv is not None and kv > 0 and heads % kv:
            yield diag("NL303", kv_value.span, f"{heads} heads do not divide into {kv} key/value heads",
                       f"grouped-query attention shares each key/value head among heads / kv_heads query heads: "
                       f"use {_divisors_near(heads, kv)}")
