"""Diagnostic rendering: header, source line, caret width, hint; files read lazily."""
from nldsl.source import Diagnostic, Source, Span, has_errors, render


def _diag(**kw):
    base = dict(code="NL301", severity="error", message="bad", span=Span(path="x.nl", line=1, col=3, end_line=1, end_col=6))
    base.update(kw)
    return Diagnostic(**base)


def test_render_points_carets_under_the_span():
    src = Source(path="x.nl", text="a = 123\n")
    out = render(_diag(hint="try 1"), {"x.nl": src}).splitlines()
    assert out[0] == "x.nl:1:3: error[NL301]: bad"
    assert out[2] == "1 | a = 123"
    assert out[3] == "  |   ^^^"
    assert out[4] == "  = hint: try 1"


def test_render_reads_files_not_passed_in(tmp_path):
    p = tmp_path / "y.nl"
    p.write_text("first\nsecond line\n")
    d = _diag(span=Span(path=str(p), line=2, col=1, end_line=2, end_col=7))
    assert "2 | second line" in render(d)


def test_render_without_source_still_prints_header_and_hint():
    d = _diag(span=Span(path="/no/such/file.nl", line=4, col=2, end_line=4, end_col=3), hint="h")
    lines = render(d).splitlines()
    assert lines[0].startswith("/no/such/file.nl:4:2: error[NL301]")
    assert lines[-1].strip() == "= hint: h"


def test_strict_turns_warnings_into_failures():
    warn = _diag(severity="warning")
    assert not has_errors([warn]) and has_errors([warn], strict=True) and has_errors([_diag()])
