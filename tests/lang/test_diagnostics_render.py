"""``nldsl.source.render`` (used by compiler errors and the demo) renders like the CLI's printer."""
from __future__ import annotations

import pytest

from nldsl.diagnostics import SourceLines, render_diagnostic
from nldsl.source import Diagnostic, Source, Span, render

TRICKY = {
    "lone-cr": "# a\rcomment\nmodel m {\n  dim = -1\n}\n",
    "form-feed": "# page\x0c break\nmodel m {\n  dim = -1\n}\n",
    "line-separator": "# a\u2028b\nmodel m {\n  dim = -1\n}\n",
    "crlf": "# a\r\nmodel m {\r\n  dim = -1\r\n}\r\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_render_shows_the_parsers_line_with_the_caret_under_the_span(name):
    from nldsl.syntax import source_text

    text = TRICKY[name]
    lines = source_text(text).split("\n")
    number = next(i for i, line in enumerate(lines, 1) if "dim = -1" in line)
    span = Span(path="t.nl", line=number, col=9, end_line=number, end_col=11)
    diag = Diagnostic(code="NL301", severity="error", span=span, message="dim must be positive", hint="h")
    out = render(diag, {"t.nl": Source(path="t.nl", text=text)})
    assert out == render_diagnostic(diag, SourceLines({"t.nl": Source(path="t.nl", text=text)})("t.nl"))
    shown, caret = out.splitlines()[2:4]
    assert shown.endswith("  dim = -1") and caret.index("^") == shown.index("-1") and caret.count("^") == 2


def test_caret_counts_wide_characters_as_two_columns():
    text = 'model m {\n  name = "中文" dim = -1\n}\n'
    col = text.splitlines()[1].index("-1") + 1
    diag = Diagnostic(code="NL301", severity="error", span=Span(path="w.nl", line=2, col=col, end_line=2,
                                                                  end_col=col + 2), message="m")
    shown, caret = render(diag, {"w.nl": Source(path="w.nl", text=text)}).splitlines()[2:4]
    assert caret.index("^") == shown.index("-1") + 2  # the two wide characters take four columns
