"""The level graph: nodes, edges, frequencies and levels (NL §1.3: higher level = lower frequency)."""
from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest

import nldsl
from nldsl.checks import check
from nldsl.graph import Frequency, build_graph, resolve
from nldsl.spec import load

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.nl"))


def graph_of(name: str):
    return build_graph(load(ROOT / "examples" / name))


def test_transformer_is_two_levels_attention_infinite_everything_else_zero():
    levels = graph_of("transformer.nl").levels()
    assert len(levels) == 2
    fast, slow = levels
    assert fast.index == 1 and fast.frequency.per_token == math.inf and fast.frequency.label == "∞"
    assert [p.rsplit(".", 1)[-1] for p in fast.components] == ["attn"]
    assert slow.index == 2 and slow.frequency.per_token == 0 and slow.frequency.label == "0"
    assert set(slow.components) == {"embed", "transformer[0].ffn", "norm", "head"}


def test_hope_levels_are_ordered_fastest_first():
    g = graph_of("hope.nl")
    levels = g.levels()
    keys = [lv.frequency.key for lv in levels]
    assert keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)
    periods = [lv.frequency.period for lv in levels]
    assert periods == ["every 16 tokens", "every 64 tokens", "every 512 tokens", "every 2048 tokens", "every step"]
    assert set(levels[0].components) == {f"hope[0].titans.{m}" for m in ("k", "v", "eta", "alpha")}
    assert set(levels[1].components) == {"hope[0].titans.mem", "hope[0].ffn.fast"}  # equal frequency: one level
    assert g.level_of("hope[0].ffn.slow") == 4


def test_tiny_has_an_outer_level_slower_than_the_outer_loop():
    periods = [lv.frequency.period for lv in graph_of("tiny.nl").levels()]
    assert periods[-2:] == ["every step", "every 4 steps"]


def test_frequency_order_and_labels():
    ordered = [Frequency("nonparametric"), Frequency("tokens", 1), Frequency("tokens", 64), Frequency("steps", 1),
               Frequency("steps", 10), Frequency("never"), Frequency("unknown")]
    assert sorted(ordered, key=lambda f: f.key, reverse=True) == ordered
    assert [f.label for f in ordered] == ["∞", "1", "1/64", "0", "0", "0", "?"]
    assert [f.in_context for f in ordered] == [True, True, True, False, False, False, False]
    assert Frequency("tokens", 64).per_token == pytest.approx(1 / 64)


def test_nodes_carry_spec_objects_and_nx_is_reachable():
    g = graph_of("hope.nl")
    assert isinstance(g.nx, nx.DiGraph)
    comp = g.component("hope[0].titans.eta")
    assert comp.name == "eta" and comp.role == "memory"
    assert g.parent("hope[0].titans.eta") == "hope[0].titans"
    assert g.repeat("hope[0].titans.eta") == 12
    assert g.node("embed")["implicit"] and not g.node("hope[0].titans")["implicit"]


def edges(g, *kinds):
    return {(u, v, d["kind"]) for u, v, d in g.edges(*kinds)}


def test_edges_of_every_kind():
    tiny = graph_of("tiny.nl")
    p = "tiny_hope[0]"
    assert (f"{p}.titans", f"{p}.titans.k", "nest") in edges(tiny, "nest")
    assert (f"{p}.ffn.fast", f"{p}.ffn.mid", "flow") in edges(tiny, "flow")
    assert (f"{p}.titans.eta", f"{p}.titans", "hyper") in edges(tiny, "hyper")  # memory(eta) feeds its owner
    assert (f"{p}.ffn.mid", f"{p}.ffn.fast", "init") in edges(tiny, "init")
    assert (f"{p}.ffn.outer", f"{p}.ffn.slow", "backprop") in edges(tiny, "backprop")
    opt = graph_of("optimizers.nl")
    assert ("adam[1].m", "adam[1].w", "generate") in edges(opt, "generate")
    assert ("adam[1].v", "adam[1].m", "parametric") in edges(opt, "parametric")
    assert ("adam[1].w", "adam[1].m", "context") in edges(opt, "context")


def test_model_flow_runs_embed_blocks_norm_head():
    flow = edges(graph_of("transformer.nl"), "flow")
    assert {("embed", "transformer[0].attn", "flow"), ("transformer[0].attn", "transformer[0].ffn", "flow"),
            ("transformer[0].ffn", "norm", "flow"), ("norm", "head", "flow")} == flow


def test_nonparametric_transfer_and_generate_inputs_are_edges():
    g = build_graph(load("model m { dim = 8  component a : attention  component f : mlp\n"
                         "  transfer nonparametric a -> f  transfer generate f -> a (what = inputs) }"))
    assert {("a", "f", "nonparametric"), ("f", "a", "generate")} <= edges(g)


def test_names_resolve_innermost_scope_first():
    g = graph_of("hope.nl")
    assert resolve(g, "k", "hope[0].titans")[0] == ("hope[0].titans.k",)
    assert resolve(g, "titans.k", "hope[0]")[0] == ("hope[0].titans.k",)
    assert resolve(g, "hope", "")[0] == ("hope[0]",)
    paths, candidates = resolve(g, "nope", "hope[0].titans")
    assert paths == () and "eta" in candidates


def test_a_block_stacked_twice_gives_two_instances():
    text = ("block b { component f : mlp  flow input -> f -> output }\n"
            "model m { dim = 8  stack b  stack b }")
    g = build_graph(load(text))
    assert {"b[0].f", "b[1].f"} <= set(g.nx)
    assert ("b[0].f", "b[1].f", "flow") in edges(g, "flow")


def test_levels_of_a_spec_without_model_is_empty():
    g = build_graph(load("const A = 1\n"))
    assert g.levels() == [] and len(g.nx) == 0


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_check_strict_and_has_a_total_level_order(path: Path):
    spec = load(path)
    assert check(spec) == []
    g = build_graph(spec)
    levels = g.levels()
    assert [lv.index for lv in levels] == list(range(1, len(levels) + 1))
    assert sorted(p for lv in levels for p in lv.components) == sorted(g.nx)


def test_package_api_graph_is_callable_and_a_module():
    spec = nldsl.load(ROOT / "examples" / "transformer.nl")
    g = nldsl.graph(spec)
    assert isinstance(g, nldsl.graph.LevelGraph) and len(g.levels()) == 2
    assert nldsl.check(spec) == []
