"""``nldsl explain``: the level table (rows as data, and the rendered text)."""
from __future__ import annotations

from pathlib import Path

import nldsl
from nldsl.explain import explain_text, rows
from nldsl.graph import build_graph
from nldsl.sizes import param_count, total_params
from nldsl.spec import load

ROOT = Path(__file__).resolve().parents[1]


def graph_of(name: str):
    return build_graph(load(ROOT / "examples" / name))


def test_transformer_table_is_two_levels_infinite_then_zero():
    table = rows(graph_of("transformer.nl"))
    assert {r.level for r in table} == {1, 2}
    attention = [r for r in table if r.level == 1]
    assert [(r.kind, r.frequency, r.period) for r in attention] == [("attention", "∞", "nonparametric")]
    assert {r.frequency for r in table if r.level == 2} == {"0"}
    text = explain_text(graph_of("transformer.nl"))
    assert "2 levels" in text and "∞" in text and "nonparametric" in text and "every step" in text


def test_hope_table_columns():
    table = {r.component: r for r in rows(graph_of("hope.nl"))}
    k = table["hope[0].titans.k"]
    assert (k.level, k.frequency, k.period) == (1, "1/16", "every 16 tokens")
    assert k.objective == "l2(target = self)" and k.optimizer == "dgd" and k.context == "tokens (chunk 16)"
    assert table["hope[0].titans"].transfers == "hyper ← eta, hyper ← alpha"
    assert table["hope[0].titans"].optimizer == "m3, adamw (outer)"
    assert table["embed"].optimizer == "adamw (outer)"


def test_optimizer_levels_show_context_and_generated_updates():
    table = {r.component: r for r in rows(graph_of("optimizers.nl"))}
    assert table["adam[1].v"].context == "gradients(w)"
    assert table["adam[1].w"].optimizer == "updates from m"
    assert "generate → w" in table["adam[1].m"].transfers


def test_parameter_counts_follow_the_shapes():
    g = graph_of("transformer.nl")            # d = 768, vocab 32000, 12 layers, swiglu hidden 2048
    assert param_count(g, "transformer[0].attn") == 4 * 768 * 768
    assert param_count(g, "transformer[0].ffn") == 3 * 768 * 2048
    assert param_count(g, "embed") == 32000 * 768
    total = total_params(g, list(g.nx))
    assert total == 2 * 32000 * 768 + 768 + 12 * (4 * 768 * 768 + 3 * 768 * 2048)
    tiny = graph_of("tiny.nl")                # memories work per head: 4 heads of 16 channels
    assert param_count(tiny, "tiny_hope[0].titans.k") == 4 * (16 * 64 + 64 * 16)
    assert param_count(tiny, "head") == 0     # tied to the embedding


def test_api_explain_returns_text():
    text = nldsl.explain(ROOT / "examples" / "tiny.nl")
    assert "6 levels" in text and "every 4 steps" in text
