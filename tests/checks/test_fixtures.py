"""Error fixtures: each ``tests/checks/<code>_<case>.nl`` renders exactly its ``.err`` file.

The first lines of a fixture are ``# key: value`` metadata; ``expect`` lists the codes that must appear
(and no others). ``NLDSL_UPDATE_GOLDEN=1 pytest tests/checks`` rewrites the ``.err`` files for review.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from nldsl.checks import check
from nldsl.checks.codes import CHECK_CODES
from nldsl.source import render

HERE = Path(__file__).resolve().parent
FIXTURES = sorted(HERE.glob("*.nl"))


def metadata(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#\s*(\w+):\s*(.*)$", line)
        if not line.startswith("#"):
            break
        if match and match.group(1) in ("expect",):
            out[match.group(1)] = match.group(2).strip()
    return out


def rendered(rel: str) -> tuple[str, list[str]]:
    """The diagnostics as ``nldsl check`` prints them (absolute repository paths made relative)."""
    diags = check(Path(rel))
    text = "\n\n".join(render(d) for d in diags).replace(str(Path.cwd()) + "/", "")
    return (text + "\n" if text else ""), [d.code for d in diags]


@pytest.mark.parametrize("fixture", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_fixture_renders_its_err_file(fixture: Path, in_root: Path, update_golden: bool):
    rel = fixture.relative_to(in_root).as_posix()
    text, codes = rendered(rel)
    golden = fixture.with_suffix(".err")
    if update_golden or not golden.exists():
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    expected = {c.strip() for c in metadata(fixture).get("expect", "").split(",") if c.strip()}
    assert set(codes) == expected, f"{fixture.name}: got {sorted(set(codes))}, metadata says {sorted(expected)}"


def test_every_check_code_has_a_fixture():
    stems = {p.stem.split("_", 1)[0] for p in FIXTURES}
    assert sorted(set(CHECK_CODES) - stems) == []


def test_every_fixture_is_named_after_a_code_it_expects():
    for path in FIXTURES:
        code = path.stem.split("_", 1)[0]
        if re.fullmatch(r"NL\d{3}", code):
            assert code in metadata(path)["expect"], path.name


def test_diagnostics_are_sorted_and_all_collected(in_root: Path):
    diags = check(Path("tests/checks/many_errors.nl"))
    positions = [(d.span.path, d.span.line, d.span.col) for d in diags]
    assert positions == sorted(positions)
    assert len({d.code for d in diags}) >= 10


def test_every_diagnostic_has_a_hint_and_a_real_span(in_root: Path):
    for path in FIXTURES:
        for diag in check(Path(path.relative_to(in_root))):
            assert diag.hint or diag.severity.value == "note", f"{path.name}: {diag.code} has no hint"
            assert diag.span.line >= 1 and diag.span.col >= 1
            if diag.code >= "NL200":
                assert diag.span.end_col > diag.span.col or diag.span.end_line > diag.span.line


def test_imported_file_errors_name_the_imported_file(in_root: Path):
    diags = check(Path("tests/checks/NL209_imported_block.nl"))
    assert [d.span.path for d in diags] == ["tests/checks/lib/good.nl"]
    text = render(diags[0])
    assert "activation = gleu" in text and text.startswith("tests/checks/lib/good.nl:4:")
