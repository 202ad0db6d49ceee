"""Drawings: the level graph (DOT, SVG, PNG) and the frequency ladder (PNG, SVG)."""
from __future__ import annotations

from pathlib import Path

import pytest

import nldsl
from nldsl.graph import build_graph
from nldsl.spec import load
from nldsl.viz import (default_ladder_tokens, ladder_events, level_graph_dot, render_graph, render_ladder)

ROOT = Path(__file__).resolve().parents[1]


def graph_of(name: str):
    return build_graph(load(ROOT / "examples" / name))


def test_dot_has_block_and_container_clusters_levels_and_legend():
    dot = level_graph_dot(graph_of("tiny.nl")).source
    assert 'subgraph "cluster_c_tiny_hope[0]"' in dot          # the stacked block
    assert 'subgraph "cluster_c_tiny_hope[0].titans"' in dot   # a container with its memories
    assert "subgraph cluster_legend" in dot
    for index in range(1, 7):
        assert f"__level{index}" in dot
    assert "rank=same" in dot and "newrank=true" in dot
    assert "level 1" in dot and "f = 1/4" in dot and "every 4 tokens" in dot


def test_dot_edge_styles_per_kind():
    dot = level_graph_dot(graph_of("tiny.nl")).source
    assert '"c_tiny_hope[0].ffn.mid" -> "c_tiny_hope[0].ffn.fast"' in dot      # init transfer
    init_line = next(line for line in dot.splitlines() if '"c_tiny_hope[0].ffn.mid" -> "c_tiny_hope[0].ffn.fast"' in line)
    assert "#ef6c00" in init_line and "dashed" in init_line and "xlabel=init" in init_line
    backprop = next(line for line in dot.splitlines() if '"c_tiny_hope[0].ffn.outer" -> "c_tiny_hope[0].ffn.slow"' in line)
    assert "#c62828" in backprop
    hyper = next(line for line in dot.splitlines() if '"c_tiny_hope[0].titans.eta" -> "c_tiny_hope[0].titans"' in line)
    assert "diamond" in hyper
    assert "transfer by backprop" in dot and "init (meta-learned initial state)" in dot


def test_dot_is_deterministic():
    assert level_graph_dot(graph_of("hope.nl")).source == level_graph_dot(graph_of("hope.nl")).source


@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".png", b"\x89PNG"), (".dot", b"digraph")], ids=["svg", "png", "dot"])
def test_render_graph_writes_each_format(tmp_path: Path, suffix: str, magic: bytes):
    out = render_graph(graph_of("transformer.nl"), tmp_path / f"g{suffix}")
    assert out.exists() and out.read_bytes().startswith(magic)


def test_render_graph_rejects_unknown_format(tmp_path: Path):
    with pytest.raises(ValueError, match="unsupported output format"):
        render_graph(graph_of("transformer.nl"), tmp_path / "g.jpeg")


def test_ladder_events_follow_the_periods():
    g = graph_of("tiny.nl")   # seq = 128
    rows = {lv.frequency.period: events for lv, events in ladder_events(g, 512)}
    assert rows["every 4 tokens"][:3] == [4.0, 8.0, 12.0] and len(rows["every 4 tokens"]) == 128
    assert rows["every 32 tokens"] == [float(32 * k) for k in range(1, 17)]
    assert rows["every step"] == [128.0, 256.0, 384.0, 512.0]
    assert rows["every 4 steps"] == [512.0]


def test_ladder_chunks_restart_at_each_sequence():
    g = build_graph(load("model m { dim = 8  component c : cms { objective task  optimizer gd(lr = 0.1)\n"
                         "  level a : mlp { update every 48 tokens } } }\ntrain { seq = 100  optimizer adamw for all"
                         "  data = text(\"builtin:shakespeare\") }"))
    events = dict((lv.frequency.period, ev) for lv, ev in ladder_events(g, 300))
    assert events["every 48 tokens"] == [48.0, 96.0, 148.0, 196.0, 248.0, 296.0]


def test_ladder_nonparametric_is_every_token_and_frozen_is_empty():
    g = build_graph(load("model m { dim = 8  component a : attention  component f : mlp { update never } }"))
    rows = {lv.frequency.kind: ev for lv, ev in ladder_events(g, 10)}
    assert rows["nonparametric"] == [float(t) for t in range(1, 11)] and rows["never"] == []


def test_default_ladder_shows_the_slowest_level_twice():
    assert default_ladder_tokens(graph_of("tiny.nl")) == 1024      # every 4 steps x 128 tokens, twice
    assert default_ladder_tokens(graph_of("transformer.nl")) == 4096


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")], ids=["png", "svg"])
def test_render_ladder_writes_files(tmp_path: Path, suffix: str, magic: bytes):
    out = render_ladder(graph_of("hope.nl"), tmp_path / f"ladder{suffix}", tokens=4096)
    assert out.read_bytes().startswith(magic)


def test_package_api_renders_from_a_path(tmp_path: Path):
    out = nldsl.render_graph(str(ROOT / "examples" / "titans.nl"), tmp_path / "t.svg")
    assert b"lmm" in out.read_bytes()
    assert nldsl.render_ladder(ROOT / "examples" / "titans.nl", tmp_path / "l.png").exists()
