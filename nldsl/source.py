"""Source text, spans and diagnostics: the vocabulary every compiler stage reports errors in.

A ``Diagnostic`` is plain data (code, severity, span, message, hint); ``render`` turns it into the
``file:line:col: error[NL203]: message`` form with the source line, a caret under the span and a hint.
Rendering is separate so the CLI, tests and the Python API share one format.
"""
from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class Source(BaseModel):
    """One `.nl` text and the name it is reported under (a path, or ``<string>``)."""

    model_config = ConfigDict(frozen=True)

    path: str
    text: str

    @classmethod
    def from_path(cls, path: str | Path) -> "Source":
        """Read a file as UTF-8 (invalid bytes are replaced so binary input still gets diagnostics)."""
        data = Path(path).read_bytes()
        return cls(path=str(path), text=data.decode("utf-8", errors="replace"))

    def line(self, number: int) -> str:
        """The 1-based source line ``number`` without its newline ('' when out of range)."""
        lines = self.text.splitlines()
        return lines[number - 1] if 1 <= number <= len(lines) else ""


class Span(BaseModel):
    """A 1-based, end-exclusive region of a source file (lines and columns as editors count them)."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int = 1
    col: int = 1
    end_line: int = 1
    end_col: int = 1

    @classmethod
    def point(cls, path: str, line: int = 1, col: int = 1) -> "Span":
        return cls(path=path, line=line, col=col, end_line=line, end_col=col + 1)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class Severity(str, Enum):
    error = "error"
    warning = "warning"
    note = "note"


class Diagnostic(BaseModel):
    """A located finding: errors stop the pipeline, warnings only do under ``--strict``."""

    model_config = ConfigDict(frozen=True)

    code: str = Field(pattern=r"^NL\d{3}$")
    severity: Severity
    span: Span
    message: str
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.error


def render(diag: Diagnostic, sources: dict[str, Source] | None = None) -> str:
    """Render like rustc/clang: header, gutter, source line, carets, hint.

    >>> src = Source(path="a.nl", text="model m {\\n  dim = -1\\n}\\n")
    >>> d = Diagnostic(code="NL301", severity="error", span=Span(path="a.nl", line=2, col=9,
    ...     end_line=2, end_col=11), message="dim must be positive", hint="use a positive integer")
    >>> print(render(d, {"a.nl": src}))
    a.nl:2:9: error[NL301]: dim must be positive
      |
    2 |   dim = -1
      |         ^^
      = hint: use a positive integer
    """
    from nldsl.diagnostics import SourceLines, render_diagnostic

    # one renderer for every caller: lines counted as the parser counts them (a lone \r, form feed or
    # U+2028 does not shift them), carets measured in terminal columns (tabs, wide characters)
    return render_diagnostic(diag, SourceLines(sources)(diag.span.path))


def has_errors(diags: list[Diagnostic], strict: bool = False) -> bool:
    """True when the run must fail: any error, or any warning under ``strict``."""
    return any(d.is_error or (strict and d.severity is Severity.warning) for d in diags)
