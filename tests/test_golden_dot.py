"""Golden DOT source of the level graph of every example (regenerate with --update-golden)."""
from pathlib import Path

import pytest

import nldsl
from nldsl.graph import build_graph
from nldsl.viz import level_graph_dot

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.nl"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_level_graph_dot_matches_golden(path, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    source = level_graph_dot(build_graph(nldsl.load(f"examples/{path.name}"))).source
    golden = ROOT / "tests" / "golden" / f"{path.stem}.dot"
    if update_golden:
        golden.write_text(source, encoding="utf-8")
    assert golden.exists(), f"no golden yet: run pytest --update-golden and review {golden}"
    assert source == golden.read_text(encoding="utf-8"), f"run pytest --update-golden and review {golden}"
