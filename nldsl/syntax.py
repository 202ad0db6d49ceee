"""Stage 1: `.nl` text -> lark parse tree with positions (grammar/nl.lark, LALR + contextual lexer).

Every failure becomes an ``NLSyntaxError`` carrying one located ``Diagnostic`` (codes NL100-NL106, see
``nldsl.codes``) with the tokens the parser would have accepted as the hint; no lark exception and no
traceback ever reaches the user.

>>> tree = parse('model m { dim = 64 }')
>>> tree.children[0].data
Token('RULE', 'model')
"""
from __future__ import annotations

import re
import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

import nldsl
from nldsl.errors import NLSyntaxError
from nldsl.source import Diagnostic, Severity, Source, Span

MAX_DEPTH = 64
"""Deepest nesting of ``(``, ``[`` and ``{`` accepted (deeper input gets NL105, not a RecursionError)."""
MAX_TREE_DEPTH = 150
"""Deepest parse tree accepted (long operator chains like ``1+1+...+1`` nest without brackets)."""
MAX_BYTES = 64 * 1024 * 1024
"""Larger inputs get NL106 without being parsed."""

_TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "$END": "the end of the file",
}
_OPEN, _CLOSE = {"LPAR", "LSQB", "LBRACE"}, {"RPAR", "RSQB", "RBRACE"}


def grammar_text() -> str:
    """The grammar: grammar/nl.lark beside the package in a source checkout, else package data."""
    path = Path(nldsl.__file__).parent.parent / "grammar" / "nl.lark"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return resources.files("nldsl.grammar").joinpath("nl.lark").read_text(encoding="utf-8")


class _Collector(threading.local):
    """Per-thread sinks the lexer callbacks write to while one ``parse`` runs."""

    def __init__(self) -> None:
        self.comments: list[Token] = []
        self.depth = 0
        self.too_deep: Token | None = None
        self.text = ""
        self.glued: tuple[Token, str] | None = None
        """The first number with a name glued to it (``0x10``, ``4tokens``) and that name."""


_STATE = _Collector()


def _on_comment(tok: Token) -> Token:
    _STATE.comments.append(tok)
    return tok


def _on_open(tok: Token) -> Token:
    _STATE.depth += 1
    if _STATE.depth > MAX_DEPTH and _STATE.too_deep is None:
        _STATE.too_deep = tok
    return tok


def _on_close(tok: Token) -> Token:
    _STATE.depth -= 1
    return tok


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _on_number(tok: Token) -> Token:
    word = _WORD.match(_STATE.text, tok.end_pos) if _STATE.glued is None else None
    if word is not None:
        _STATE.glued = (tok, word.group())
    return tok


@lru_cache(maxsize=2)
def parser(keep_all_tokens: bool = False) -> Lark:
    """The cached LALR parser; ``keep_all_tokens`` keeps keywords and punctuation (for ``fmt``)."""
    callbacks = {"COMMENT": _on_comment, "NUMBER": _on_number}
    callbacks.update({name: _on_open for name in _OPEN})
    callbacks.update({name: _on_close for name in _CLOSE})
    return Lark(grammar_text(), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, keep_all_tokens=keep_all_tokens, lexer_callbacks=callbacks)


def parse(source: Source | str, *, keep_all_tokens: bool = False) -> Tree:
    """Parse ``source`` (a ``Source`` or text reported as ``<string>``) into a lark ``Tree``.

    Raises:
        NLSyntaxError: with one located diagnostic, for any text that is not valid `.nl`.
    """
    return parse_with_comments(source, keep_all_tokens=keep_all_tokens)[0]


def parse_with_comments(source: Source | str, *, keep_all_tokens: bool = False) -> tuple[Tree, list[Token]]:
    """Like ``parse`` and also return the ``# comment`` tokens in source order (for the formatter)."""
    src = source if isinstance(source, Source) else Source(path="<string>", text=source)
    text = _check_text(src)
    _STATE.comments, _STATE.depth, _STATE.too_deep, _STATE.text, _STATE.glued = [], 0, None, text, None
    try:
        tree = parser(keep_all_tokens).parse(text)
    except UnexpectedInput as err:
        first = _too_deep(src) if _STATE.too_deep else _glued(src) if _STATE.glued else _diagnose(src, err)
        raise NLSyntaxError([first]) from None
    except (LarkError, RecursionError) as err:  # defensive: lark internals, never expected
        raise NLSyntaxError([_diag(src, "NL101", Span.point(src.path), f"cannot parse: {err}")]) from None
    if _STATE.too_deep is not None:
        raise NLSyntaxError([_too_deep(src)])
    if _STATE.glued is not None:
        raise NLSyntaxError([_glued(src)])
    deep = _deepest(tree)
    if deep is not None:
        raise NLSyntaxError([_diag(src, "NL105", span_of(src.path, deep), "expression nested too deeply",
                                   "split the expression into named constants")])
    return tree, list(_STATE.comments)


def _deepest(tree: Tree) -> Tree | None:
    """The first node deeper than ``MAX_TREE_DEPTH`` (iterative: deep trees must not recurse)."""
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            return node
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, Tree))
    return None


def source_text(text: str) -> str:
    """The text the parser reads: a leading BOM dropped, ``\r\n`` and a lone ``\r`` read as ``\n``.

    Lines are counted at ``\n`` only, so spans, ``nldsl fmt`` and the rendered source lines agree on
    files with Windows or classic Mac line endings (``\r\n`` keeps every line and column unchanged).
    """
    text = text[1:] if text.startswith("\ufeff") else text
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _check_text(src: Source) -> str:
    """Reject what is not text before lark sees it (binary data, huge files); normalise line ends."""
    text = source_text(src.text)
    if len(text) > MAX_BYTES:
        raise NLSyntaxError([_diag(src, "NL106", Span.point(src.path),
                                   f"input too large ({len(text) / 2**20:.0f} MB; the limit is "
                                   f"{MAX_BYTES // 2**20} MB)")])
    for bad in ("\x00", "\ufffd"):
        pos = text.find(bad)
        if pos >= 0:
            raise NLSyntaxError([_diag(src, "NL104", _span_at(src.path, text, pos),
                                       "this is not a UTF-8 text file",
                                       "`.nl` files are UTF-8 text; is this the right file?")])
    return text


def _too_deep(src: Source) -> Diagnostic:
    tok = _STATE.too_deep
    span = _token_span(src.path, tok) if tok is not None else Span.point(src.path)
    return _diag(src, "NL105", span, f"nesting deeper than {MAX_DEPTH} levels",
                 "split the expression or body into named constants, blocks or components")


def _diagnose(src: Source, err: UnexpectedInput) -> Diagnostic:
    """Turn a lark exception into a diagnostic with the accepted tokens as a hint."""
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(src, err)
    if isinstance(err, UnexpectedToken) and err.token.type != "$END":
        tok = err.token
        hint = _keyword_hint(err) or _expected_hint(err.expected)
        return _diag(src, "NL101", _token_span(src.path, tok), f"unexpected {_describe(tok)}", hint)
    expected = getattr(err, "expected", None) or ()
    span = _end_span(src)
    hint = _expected_hint(expected) if expected else None
    if "RBRACE" in expected:
        hint = "a `{` is not closed: add `}`" + (f"; {hint}" if hint else "")
    return _diag(src, "NL102", span, "unexpected end of file", hint)


def _bad_character(src: Source, err: UnexpectedCharacters) -> Diagnostic:
    char = _char_at(src, err.pos_in_stream)
    span = Span(path=src.path, line=err.line, col=err.column, end_line=err.line, end_col=err.column + 1)
    if char == '"':
        return _diag(src, "NL103", span, "unterminated string",
                     'a string ends with `"` on the same line; write \\n for a newline and \\" for a quote')
    hint = _expected_hint(err.allowed) if err.allowed else None
    if char.isalpha() or char.isdigit():
        hint = "names use ASCII letters, digits and `_`" + (f"; {hint}" if hint else "")
    return _diag(src, "NL100", span, f"unexpected character {char!r} (U+{ord(char):04X})"
                 if not char.isascii() or not char.isprintable() else f"unexpected character {char!r}", hint)


def _char_at(src: Source, pos: int) -> str:
    """The character at ``pos`` of the text lark saw."""
    text = source_text(src.text)
    return text[pos] if 0 <= pos < len(text) else "?"


def _glued(src: Source) -> Diagnostic:
    """A number with a name glued to it: ``0x10``, ``1e``, ``4tokens``, ``64px``."""
    number, name = _STATE.glued
    span = Span(path=src.path, line=number.line, col=number.column, end_line=number.line,
                end_col=number.column + len(number.value) + len(name))
    return _diag(src, "NL100", span, f"invalid number '{number.value}{name}'",
                 "numbers are decimal (64, 0.5, .5, 1e-3, 1_000); hexadecimal and units are not part of a "
                 "number: put a space between a number and a name")


def _describe(tok: Token) -> str:
    if tok.type == "NAME":
        return f"name '{tok.value}'"
    if tok.type == "NUMBER":
        return f"number {tok.value}"
    if tok.type == "STRING":
        return f"string {tok.value[:40]}"
    return f"'{tok.value}'"


def keywords() -> tuple[str, ...]:
    """The statement keywords of the grammar (``model``, ``update``, ``component`` ...)."""
    return tuple(sorted({t.pattern.value for t in parser().terminals
                         if t.pattern.type == "str" and t.pattern.value.isidentifier()}))


def _keyword_hint(err: UnexpectedToken) -> str | None:
    """``updte every 1 steps`` reads as a setting ``updte = ...``: suggest the keyword it resembles."""
    history = [t for t in getattr(err, "token_history", None) or () if isinstance(t, Token)]
    if not history or history[-1].type != "NAME" or set(err.expected) != {"EQUAL"}:
        return None
    from nldsl.catalog import suggest

    word = str(history[-1].value)
    near = suggest(word, keywords())
    if near is None:
        return None
    return f"did you mean `{near}`? (`{word}` is read as a setting `{word} = value`)"


def _expected_hint(expected) -> str | None:
    names = sorted({terminal_text(t) for t in expected if t not in ("COMMENT", "WS")})
    if not names:
        return None
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"expected {shown}"


def terminal_text(name: str) -> str:
    """How a grammar terminal is named in messages: ``'}'``, ``'update'``, ``a name``."""
    if name in _TOKEN_NAMES:
        return _TOKEN_NAMES[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else name.lower()


def _token_span(path: str, tok: Token) -> Span:
    line, col = tok.line or 1, tok.column or 1
    end_line = tok.end_line or line
    end_col = tok.end_column or col + 1
    if end_line != line:  # carets stay on the first line
        end_line, end_col = line, col + max(1, len(str(tok.value).split("\n")[0]))
    return Span(path=path, line=line, col=col, end_line=end_line, end_col=max(end_col, col + 1))


def _span_at(path: str, text: str, pos: int) -> Span:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(path=path, line=line, col=col, end_line=line, end_col=col + 1)


def _end_span(src: Source) -> Span:
    text = source_text(src.text).rstrip()
    if not text:
        return Span.point(src.path)
    return _span_at(src.path, text, len(text) - 1)


def _diag(src: Source, code: str, span: Span, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(code=code, severity=Severity.error, span=span, message=message, hint=hint)


def span_of(path: str, node: Tree | Token) -> Span:
    """The span of a tree node or token (a point at 1:1 for an empty node)."""
    if isinstance(node, Token):
        return _token_span(path, node)
    meta = node.meta
    if getattr(meta, "empty", True):
        return Span.point(path)
    return Span(path=path, line=meta.line, col=meta.column, end_line=meta.end_line, end_col=meta.end_column)
