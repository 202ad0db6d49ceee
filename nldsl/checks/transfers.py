"""Graph checks on data flow and knowledge transfer (NL215, NL223, NL224, NL226), NL §3.3.

* NL215: a cycle of ``flow`` edges (the forward pass cannot be computed) or of transfers (levels that
  condition, initialise or generate each other in a circle have no order, NL §1.3's ≻). Gradients
  feeding an optimizer level that generates the updates (``context`` and ``generate``) are not a cycle:
  that is what an optimizer is, so ``context`` and ``hyper`` edges are left out.
* NL223: a transfer from a component to itself, or ``init`` into a component without an initial state
  to learn (attention, static layers).
* NL224 (warning): ``init`` from a level that is not slower than its target: NL Eq. 28 has the slower
  level meta-learn the faster one's initial state.
* NL226 (warning): a level with the ``task`` objective that no ``flow`` connects, in a body that
  declares its flow: the task loss has no path to it, so its local surprise signal is always zero.
"""
from __future__ import annotations

from typing import Iterator

import networkx as nx

from nldsl import catalog
from nldsl.checks.common import component_label, diag
from nldsl.graph import TRANSFER_KINDS, LevelGraph
from nldsl.source import Diagnostic


def check_cycles(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL215: one diagnostic per cycle of flows and per cycle of transfers."""
    seen: set[str] = set()
    for u, _, data in graph.edges("flow"):
        if u == _ and u not in seen:  # `flow a -> a`: a self-loop is the shortest cycle
            seen.add(u)
            yield diag("NL215", data["span"], f"data flow cycle: {component_label(u)} -> {component_label(u)}",
                       "levels must have an order (NL §1.3): a component cannot depend on itself through the "
                       "forward pass; remove one arrow")
    for kinds, what in ((("flow",), "data flow"), (TRANSFER_KINDS, "transfer")):
        sub = nx.MultiDiGraph()
        sub.add_edges_from((u, v, d) for u, v, d in graph.edges(*kinds) if u != v)
        for scc in nx.strongly_connected_components(sub):
            if len(scc) < 2:
                continue
            cycle = nx.find_cycle(sub.subgraph(scc))
            spans = sorted((sub.edges[e]["span"] for e in cycle), key=lambda s: (s.path, s.line, s.col))
            names = [component_label(e[0]) for e in cycle] + [component_label(cycle[0][0])]
            yield diag("NL215", spans[-1], f"{what} cycle: {' -> '.join(names)}",
                       "levels must have an order (NL §1.3): a component cannot depend on itself "
                       + ("through the forward pass; remove one arrow" if what == "data flow"
                          else "through transfers; drop or reverse one transfer"))


def check_transfers(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL223/NL224: transfers that cannot work as written."""
    for u, v, data in graph.edges(*TRANSFER_KINDS):
        transfer = data["transfer"]
        if u == v:
            yield diag("NL223", transfer.span, f"transfer {transfer.kind} from '{transfer.source}' to itself",
                       "a transfer links two levels; self-modification is written with memory(...) "
                       "hyperparameters and target = self")
            continue
        if transfer.kind != "init":
            continue
        target = catalog.COMPONENTS.get(graph.node(v)["kind"])
        tfreq, sfreq = graph.frequency(v), graph.frequency(u)
        if target is not None and (not target.stateful or tfreq.kind == "nonparametric"):
            yield diag("NL223", transfer.target_span, f"'{transfer.target}' has no initial state to learn",
                       f"init transfers meta-learn the starting state of an in-context level (NL Eq. 28); "
                       f"{'an' if target.name[0] in 'aeiou' else 'a'} {target.name} has none")
        elif tfreq.kind != "unknown" and sfreq.kind != "unknown" and sfreq.key >= tfreq.key:
            yield diag("NL224", transfer.source_span, f"'{transfer.source}' ({sfreq.period}) is not slower than "
                       f"'{transfer.target}' ({tfreq.period})",
                       "in NL Eq. 28 a slower level meta-learns the initial state of a faster one; "
                       "swap the arrow or the periods")


def check_task_paths(graph: LevelGraph) -> Iterator[Diagnostic]:
    """NL226: a ``task`` level that the declared data flow never reaches."""
    flowing = {n for u, v, _ in graph.edges("flow") for n in (u, v)}
    backprop = {n for u, v, _ in graph.edges("backprop") for n in (u, v)}
    for path, comp in graph.components():
        obj = comp.objective
        if obj is None or obj.kind != "task" or comp.children or graph.frequency(path).kind != "tokens":
            continue
        if path in flowing or path in backprop or not _body_has_flow(graph, path):
            continue
        yield diag("NL226", comp.name_span, f"no flow reaches '{comp.name}', so the task loss cannot train it",
                   "its local surprise signal is the gradient of the task loss at its output: add it to the "
                   "body's `flow` (or link it with `transfer backprop`)")


def _body_has_flow(graph: LevelGraph, path: str) -> bool:
    parent = graph.parent(path)
    if parent is not None:
        return bool(graph.component(parent).flows)
    block = graph.node(path)["block"]
    if block is not None:
        return bool(graph.stacks[block].block.flows)
    return bool(graph.spec.model.flows)
