"""``nldsl fmt``: the canonical layout of a `.nl` file, comments kept.

Like gofmt, the formatter fixes what is mechanical and keeps what the author chose:

* indentation (2 spaces per body), spacing inside statements (``a = b``, ``f(a, b)``, ``a -> b``,
  ``x * 2``, ``-x``, no trailing commas), one space before a trailing ``# comment`` pair (two spaces);
* which statements share a line is kept (``steps = 200  batch = 8``: joined by two spaces), a body
  written on one line stays on one line (``{ update never }``), one written over several lines gets
  one line per source line; a statement with a multi-line body always starts and ends its line;
* blank lines between statements are kept (runs collapse to one; none after ``{`` or before ``}``);
* every comment is kept: a comment on its own line stays on its own line before what follows it, a
  comment after code stays at the end of that line (comments inside a multi-line statement move to
  the end of the statement's line).

Formatting is idempotent and ``load(fmt(x)) == load(x)`` up to spans (tests/lang/test_fmt.py).

>>> print(fmt("model m{dim=64  layers=2}"), end="")
model m { dim = 64  layers = 2 }
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lark import Token, Tree

from nldsl.source import Source
from nldsl.syntax import parse_with_comments

INDENT = "  "
_NO_SPACE_BEFORE = {",", ")", "]", "."}
_NO_SPACE_AFTER = {"(", "[", "."}


def fmt(source: Source | str) -> str:
    """The canonical text of ``source`` (raises ``NLSyntaxError`` when it does not parse)."""
    src = source if isinstance(source, Source) else Source(path="<string>", text=source)
    tree, comments = parse_with_comments(src, keep_all_tokens=True)
    printer = _Printer(comments)
    lines = printer.region([c for c in tree.children if isinstance(c, Tree)], 0, None, 0)
    text = "\n".join(line.rstrip() for line in lines).strip("\n")
    return text + "\n" if text else ""


def is_formatted(source: Source | str) -> bool:
    """True when ``fmt`` would not change the text (``nldsl fmt --check``)."""
    text = source.text if isinstance(source, Source) else source
    return fmt(source) == text


# ---------------------------------------------------------------------------------------- printing


def inline(node: Tree | Token | None) -> str:
    """One statement or expression on one line, canonical spacing (bodies inline too)."""
    if node is None:
        return ""
    if isinstance(node, Token):
        return str(node.value)
    if node.data == "body":
        stmts = [c for c in node.children if isinstance(c, Tree)]
        return "{ " + "  ".join(inline(s) for s in stmts) + " }" if stmts else "{ }"
    if node.data in ("neg", "path"):
        return "".join(inline(c) for c in node.children if c is not None)
    if node.data in ("args", "options", "params", "list", "group"):
        return _bracketed(node)
    out = ""
    for child in (c for c in node.children if c is not None):
        piece = inline(child)
        glue = _glue(out, child, piece)
        out += glue + piece
    return out


def _glue(before: str, child: Tree | Token, piece: str) -> str:
    if not before:
        return ""
    if isinstance(child, Tree) and child.data in ("args", "params"):
        return ""  # a call, a kind or a block: name(args)
    if piece in _NO_SPACE_BEFORE or before[-1] in _NO_SPACE_AFTER:
        return ""
    return " "


def _bracketed(node: Tree) -> str:
    """``(a, b)`` / ``[a, b]``: items joined by ``, ``, trailing comma dropped."""
    kids = [c for c in node.children if c is not None]
    opening, closing = str(kids[0]), str(kids[-1])
    items = [inline(c) for c in kids[1:-1] if not (isinstance(c, Token) and c.value == ",")]
    return opening + ", ".join(items) + closing


@dataclass
class _Line:
    """One output line being assembled: code pieces, trailing comments, where its source ended."""

    indent: int
    parts: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    end: int = 0
    """Source line on which the last thing put on this line ended."""
    open: bool = True
    """False once nothing may be joined after it (a multi-line body, a trailing comment)."""

    def render(self) -> str:
        code = "  ".join(self.parts)
        text = "  ".join([code] + self.comments) if code else "  ".join(self.comments)
        return INDENT * self.indent + text


class _Printer:
    def __init__(self, comments: list[Token]):
        self.comments = sorted(comments, key=lambda c: c.start_pos)

    def comments_in(self, start: int, end: int) -> list[Token]:
        return [c for c in self.comments if start <= c.start_pos < end]

    def region(self, stmts: list[Tree], indent: int, first: _Line | None, start_pos: int,
               end_pos: int | None = None) -> list[str]:
        """Lay out the statements and free comments between ``start_pos`` and ``end_pos``."""
        end_pos = end_pos if end_pos is not None else 1 << 62
        elements = [(s.meta.start_pos, s) for s in stmts]
        inside = [(s.meta.start_pos, s.meta.end_pos) for s in stmts]
        free = [c for c in self.comments_in(start_pos, end_pos)
                if not any(a <= c.start_pos < b for a, b in inside)]
        elements += [(c.start_pos, c) for c in free]
        elements.sort(key=lambda e: e[0])
        out: list[str] = []
        current = first
        for _, element in elements:
            current = self.place(element, indent, current, out, first_in_region=current is first)
        if current is not None:
            out.append(current.render())
        return out

    def place(self, element: Tree | Token, indent: int, current: _Line | None, out: list[str],
              first_in_region: bool) -> _Line:
        """Put one statement or comment after ``current``; finished lines go to ``out``."""
        if isinstance(element, Token):  # a free comment
            if current is not None and element.line == current.end:
                current.comments.append(element.value.rstrip())
                current.open = False
                return current
            new = self.new_line(indent, current, out, element.line, first_in_region)
            new.comments.append(element.value.rstrip())
            new.end, new.open = element.line, False
            return new
        body = _multiline_body(element, self)
        joinable = (current is not None and current.open and current.parts and body is None
                    and element.meta.line == current.end)
        if joinable:
            line = current
        else:
            line = self.new_line(indent, current, out, element.meta.line, first_in_region)
        if body is None:
            line.parts.append(inline(element))
            line.comments += [c.value.rstrip() for c in self.comments_in(element.meta.start_pos,
                                                                         element.meta.end_pos)]
            line.end = element.meta.end_line
            line.open = not line.comments
            return line
        return self.with_body(element, body, line, out)

    def with_body(self, stmt: Tree, body: Tree, line: _Line, out: list[str]) -> _Line:
        """``header {`` + the body's lines + ``}``; returns the ``}`` line (may take a comment)."""
        header = inline(Tree(stmt.data, [c for c in stmt.children if c is not body], stmt.meta))
        opening, closing = body.children[0], body.children[-1]
        line.parts.append(header + " {")
        line.comments += [c.value.rstrip() for c in self.comments_in(stmt.meta.start_pos, opening.start_pos)]
        line.end, line.open = opening.line, False
        stmts = [c for c in body.children if isinstance(c, Tree)]
        out.extend(self.region(stmts, line.indent + 1, line, opening.end_pos, closing.start_pos))
        end = _Line(indent=line.indent, parts=["}"], end=closing.line, open=False)
        return end

    def new_line(self, indent: int, current: _Line | None, out: list[str], start_line: int,
                 first_in_region: bool) -> _Line:
        """Finish ``current`` and start a line, keeping one blank line where the source had some."""
        if current is not None:
            out.append(current.render())
            if start_line > current.end + 1 and not first_in_region:
                out.append("")
        return _Line(indent=indent)


def _multiline_body(stmt: Tree, printer: _Printer) -> Tree | None:
    """The statement's body when it must be laid out over several lines, else ``None``."""
    body = next((c for c in stmt.children if isinstance(c, Tree) and c.data == "body"), None)
    if body is None:
        return None
    opening, closing = body.children[0], body.children[-1]
    if opening.line == closing.line and not printer.comments_in(opening.start_pos, closing.start_pos):
        return None
    return body
