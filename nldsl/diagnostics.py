"""Printing diagnostics on a terminal: ``nldsl.source.render`` made safe for any source line.

``render_diagnostic`` prints exactly what ``nldsl.source.render`` prints for ordinary text, and also
holds for the lines a user can throw at it:

* lines are counted as the parser counts them (at ``\\n``; ``\\r\\n`` and a lone ``\\r`` end a line too,
  see ``nldsl.syntax.source_text``), so a form feed or U+2028 in a comment does not shift the line shown;
* tabs and control characters are shown one column wide (control characters as U+FFFD, so binary data
  cannot move the cursor or change colours), wide characters (CJK, emoji) count two columns and
  combining marks none, so the caret stays under the span;
* a line longer than ``LINE_WIDTH`` columns is shown as a window around the span;
* the message and hint stay on one line (they may quote a string holding a newline).

Each file is read once per ``print_diagnostics`` call, and never more than ``nldsl.syntax.MAX_BYTES``.
"""
from __future__ import annotations

import sys
import unicodedata

LINE_WIDTH = 160
"""Longer source lines are shown as a window around the span."""
_SHADE = {"error": "\033[1;31m", "warning": "\033[1;33m", "note": "\033[1;36m"}
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": "\\0"}


def print_diagnostics(diags, stream=None, sources=None, color: bool = False) -> None:
    """Render diagnostics (source line, caret, hint), one blank line apart; each file is read once.

    Args:
        sources: ``path -> Source`` for texts that are not files (``<stdin>``) or already read.
        color: colour the ``error[NL...]`` word (ANSI escapes, for a terminal).
    """
    stream = stream or sys.stdout
    lines = SourceLines(sources)
    for diag in diags:
        text = render_diagnostic(diag, lines(diag.span.path))
        if color:
            shade = _SHADE[diag.severity.value]
            head, _, rest = text.partition("\n")
            word = f"{diag.severity.value}[{diag.code}]"
            text = head.replace(word, f"{shade}{word}\033[0m", 1) + ("\n" + rest if rest else "")
        print(text, file=stream)
        print(file=stream)


class SourceLines:
    """The lines of each file diagnostics point into, counted as the parser counts them (at ``\\n``)."""

    def __init__(self, sources=None):
        self.sources = dict(sources or {})
        self.cache: dict[str, list[str] | None] = {}

    def __call__(self, path: str) -> list[str] | None:
        if path not in self.cache:
            from nldsl.errors import NLError
            from nldsl.spec.resolve import read_source
            from nldsl.syntax import source_text

            source = self.sources.get(path)
            try:
                source = source if source is not None else None if path.startswith("<") else read_source(path)
            except NLError:  # unreadable, a directory, too large: the header and hint are still printed
                source = None
            self.cache[path] = None if source is None else source_text(source.text).split("\n")
        return self.cache[path]


def render_diagnostic(diag, lines: list[str] | None = None) -> str:
    """``nldsl.source.render`` with the source line made safe to print: tabs and control characters
    shown one column wide, wide (CJK, emoji) characters counted as two columns under the caret, and
    a long line cut to a window around the span."""
    span = diag.span
    head = f"{span}: {diag.severity.value}[{diag.code}]: {_one_line(diag.message)}"
    text = lines[span.line - 1] if lines is not None and 1 <= span.line <= len(lines) else None
    if text is None:
        return head + (f"\n  = hint: {_one_line(diag.hint)}" if diag.hint else "")
    start, end = span.col - 1, (span.end_col - 1 if span.end_line == span.line else len(text))
    shown, pad, width = _window(text, start, max(end, start + 1))
    gutter = " " * len(str(span.line))
    out = [head, f"{gutter} |", f"{span.line} | {shown}", f"{gutter} | {' ' * pad}{'^' * max(1, width)}"]
    if diag.hint:
        out.append(f"{gutter} = hint: {_one_line(diag.hint)}")
    return "\n".join(out)


def _window(text: str, start: int, end: int) -> tuple[str, int, int]:
    """``(line shown, caret offset, caret width)`` in terminal columns."""
    cells = [_cell(c) for c in text.rstrip("\r")]
    lo, hi, prefix = 0, len(cells), ""
    if sum(w for _, w in cells) > LINE_WIDTH:
        lo = max(0, min(start - LINE_WIDTH // 3, len(cells) - LINE_WIDTH))
        hi = min(len(cells), max(lo + LINE_WIDTH, min(end, lo + 2 * LINE_WIDTH)))
        prefix = "…" if lo else ""
    visible = cells[lo:hi]
    shown = prefix + "".join(c for c, _ in visible) + ("…" if hi < len(cells) else "")
    pad = len(prefix) + sum(w for _, w in cells[lo:max(lo, start)])
    width = sum(w for _, w in cells[max(lo, start):min(hi, end)])
    if start >= len(cells):  # the span is the end of the line (or past it)
        pad, width = len(prefix) + sum(w for _, w in visible) + max(0, start - len(cells)), 1
    return shown, pad, width


def _cell(char: str) -> tuple[str, int]:
    """A character as printed and its width: tab -> one space, control -> U+FFFD, CJK -> 2, combining -> 0."""
    if char == "\t":
        return " ", 1
    category = unicodedata.category(char)
    if category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and char != "\u200d"):
        return "\ufffd", 1
    if unicodedata.combining(char) or category in ("Mn", "Me") or char == "\u200d":  # ZWJ joins emoji
        return char, 0
    return char, 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _one_line(text: str) -> str:
    """Messages quote user text (strings may hold newlines): keep the header on one line."""
    return "".join(_ESCAPES.get(c, c) if ord(c) < 32 or c in "\x7f\u2028\u2029" else c for c in text)
