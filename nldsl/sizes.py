"""Parameter counts of components from their kind's shape (for ``nldsl explain`` and the graph labels).

The counts follow the shapes the component kinds have in NL and its predecessors, for one copy of the
component (multiply by ``LevelGraph.repeat`` for a stacked block). ``d`` is the component's ``dim`` (the
model's by default); a memory of a multi-head component works per head on ``d / heads`` channels:

==========================  =========================================================================
embedding                   vocab x d (a classifier's input layer: inputs x d)
head                        d x vocab (or classes); 0 when tied to the embedding
norm                        d (rmsnorm) or 2 d (layernorm)
linear                      d x out (+ out with a bias)
mlp (depth L, hidden h)     L = 1: d x d; else d h + (L - 2) h² + h d
swiglu (hidden h)           3 d h
conv (window w)             w d
attention                   2 d² (q, o) + 2 d² kv_heads / heads (k, v)
neural_memory               4 d² (q, k, v, o) + the per-head memory (heads x mlp(d / heads)) + conv,
                            gate, persistent tokens and one d x heads projection per data(...) rate
self_modifying_titans       2 d² (static q, output) + conv and gate; its memories are counted as children
cms                         0 (its levels are children)
buffer                      no parameters; its state has the size of ``like``'s parameters
==========================  =========================================================================
"""
from __future__ import annotations

from nldsl import catalog
from nldsl.graph import LevelGraph
from nldsl.spec import model as m


_LARGEST = 2**31 - 1
"""Sizes beyond the checks' limit (NL307) count as not given, like zero, negative or non-whole ones."""


def _int(value: m.Value | None, default: int | None) -> int | None:
    """A positive whole size as written, else ``default`` (a spec with errors can still be drawn)."""
    if isinstance(value, m.Number) and not isinstance(value.value, bool):
        x = value.value
        if isinstance(x, int) or (isinstance(x, float) and x == x and abs(x) < 2**53 and float(x).is_integer()):
            return int(x) if 0 < int(x) <= _LARGEST else default
    return default


def _model(graph: LevelGraph, name: str) -> int | None:
    """A model setting as a size (``None`` when absent or not a valid size)."""
    return _int(graph.spec.model.get(name), None) if graph.spec.model is not None else None


def _mlp(d: int, hidden: int, depth: int) -> int:
    return d * d if depth <= 1 else d * hidden + (depth - 2) * hidden * hidden + hidden * d


def _vocab(graph: LevelGraph) -> int | None:
    vocab = _model(graph, "vocab")
    if vocab is not None:
        return vocab
    tok = graph.spec.train.get("tokenizer") if graph.spec.train else None
    if isinstance(tok, m.Call) and tok.name == "bpe":
        return _int(tok.get("vocab"), 4096)
    return 256


def _task(graph: LevelGraph) -> str:
    task = graph.spec.model.get("task") if graph.spec.model else None
    return task.name if isinstance(task, m.Symbol) else "lm"


def component_dim(graph: LevelGraph, path: str) -> tuple[int | None, int]:
    """``(width, copies)``: its own ``dim``, else the model's; a memory of a multi-head parent works per
    head, on ``d / heads`` channels in ``heads`` copies."""
    comp = graph.component(path)
    own = _int(comp.get("dim"), None)
    if own is not None:
        return own, 1
    parent = graph.parent(path)
    if parent is None:
        return _model(graph, "dim"), 1
    pdim, _ = component_dim(graph, parent)
    heads = _int(graph.component(parent).get("heads"), 1) or 1
    if pdim and heads > 1 and pdim % heads == 0:
        return pdim // heads, heads
    return pdim, 1


def param_count(graph: LevelGraph, path: str) -> int | None:
    """Parameters of one copy of the component, without its children (``None``: unknown kind or sizes)."""
    comp = graph.component(path)
    d, copies = component_dim(graph, path)
    if d is None or d <= 0 or comp.kind not in catalog.COMPONENTS:
        return None
    return copies * _COUNTS.get(comp.kind, lambda g, p, c, d: 0)(graph, path, comp, d)


def _buffer(graph, path, comp, d):
    like = graph.node(path).get("like") or ()
    counts = [param_count(graph, p) for p in like if p != path and graph.component(p).kind != "buffer"]
    return sum(c for c in counts if c is not None)


def _embedding(graph, path, comp, d):
    rows = _model(graph, "inputs") if _task(graph) == "classify" else _int(comp.get("vocab"), _vocab(graph))
    return (rows or 0) * d


def _head(graph, path, comp, d):
    tied = comp.get("tied") or (graph.spec.model.get("tie_embeddings") if graph.spec.model else None)
    if _task(graph) == "classify":
        return d * (_model(graph, "classes") or 0)
    return 0 if isinstance(tied, m.Bool) and tied.value else d * (_vocab(graph) or 0)


def _norm(graph, path, comp, d):
    kind = comp.get("type")
    return 2 * d if isinstance(kind, m.Symbol) and kind.name == "layernorm" else d


def _linear(graph, path, comp, d):
    out = _int(comp.get("out"), d)
    bias = comp.get("bias")
    return d * out + (out if isinstance(bias, m.Bool) and bias.value else 0)


def _mlp_count(graph, path, comp, d):
    return _mlp(d, _int(comp.get("hidden"), 4 * d), _int(comp.get("depth"), 2))


def _swiglu(graph, path, comp, d):
    hidden = _int(comp.get("hidden"), None) or max(64, round(8 * d / 3 / 64) * 64)
    return 3 * d * hidden


def _attention(graph, path, comp, d):
    heads = _int(comp.get("heads"), 1)
    kv = _int(comp.get("kv_heads"), heads)
    return 2 * d * d + 2 * d * (d * kv // heads)


def _neural_memory(graph, path, comp, d):
    heads = _int(comp.get("heads"), 1)
    dh = max(1, d // heads)
    memory = heads * _mlp(dh, _int(comp.get("hidden"), dh), _int(comp.get("depth"), 2))
    rates = sum(1 for a in (comp.optimizer.args if comp.optimizer else ())
                if isinstance(a.value, m.Call) and a.value.name == "data")
    return 4 * d * d + memory + _extras(comp, d) + rates * d * heads + _int(comp.get("persistent"), 0) * d


def _self_modifying(graph, path, comp, d):
    return 2 * d * d + _extras(comp, d)


def _extras(comp: m.Component, d: int) -> int:
    conv = _int(comp.get("conv"), 0) or 0
    gate = comp.get("gate")
    return 3 * d * conv + (0 if isinstance(gate, m.Bool) and not gate.value else d)


_COUNTS = {"embedding": _embedding, "head": _head, "norm": _norm, "linear": _linear, "mlp": _mlp_count,
           "swiglu": _swiglu, "conv": lambda g, p, c, d: _int(c.get("window"), 4) * d,
           "attention": _attention, "buffer": _buffer, "neural_memory": _neural_memory, "self_modifying_titans": _self_modifying}


def total_params(graph: LevelGraph, paths: list[str] | tuple[str, ...]) -> int | None:
    """Sum over components (each times its stack repetitions); ``None`` when any count is unknown."""
    total = 0
    for path in paths:
        count = param_count(graph, path)
        if count is None:
            return None
        total += count * graph.repeat(path)
    return total


def human(n: int | None) -> str:
    """``1234567`` -> ``1.23M`` (``?`` for unknown)."""
    if n is None:
        return "?"
    if n >= 10**15:  # beyond any real model (a spec with errors): exact digits, no float overflow
        digits = str(int(n))
        return f"{digits[0]}.{digits[1:3]}e{len(digits) - 1}"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
