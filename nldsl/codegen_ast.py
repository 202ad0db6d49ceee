"""Building blocks of the scripts ``nldsl codegen`` writes: values, names and comments as AST nodes.

Nothing from a spec ever becomes source text directly: values become ``ast.Constant`` / container / call
nodes (``value_ast``), names become identifiers only after validation (``Names``), and comment text is cut
to one printable line (``safe_comment``) before ``nldsl.codegen_format`` prints it after a ``#``.
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import keyword
import math
import textwrap
import unicodedata
from pathlib import Path
from typing import Any

import torch

from nldsl.runs import RunError

MARK = "__comment__"
"""Marker statements ``__comment__(i)`` that the printer turns into ``# <comment i>`` lines."""


class CodegenError(RunError):
    """The spec cannot be written as a script (something the generator does not know how to render)."""


# --------------------------------------------------------------------------- values -> AST
def value_ast(value: Any) -> ast.expr:
    """A Python value as an AST node: constants, containers, dataclass configs, dtypes."""
    if value is None or isinstance(value, (bool, int, str)):
        return ast.Constant(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return ast.Constant(value)
        return call("float", ast.Constant(repr(value)))
    if isinstance(value, (list, tuple)):
        items = [value_ast(v) for v in value]
        return ast.List(items, ast.Load()) if isinstance(value, list) else ast.Tuple(items, ast.Load())
    if isinstance(value, dict):
        return ast.Dict([value_ast(k) for k in value], [value_ast(v) for v in value.values()])
    if isinstance(value, torch.dtype):
        return attr("torch", str(value).removeprefix("torch."))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f for f in dataclasses.fields(value) if f.init]
        return call(_qualname(type(value)), **{f.name: value_ast(getattr(value, f.name)) for f in fields})
    raise CodegenError(f"codegen cannot write a {type(value).__name__} value ({value!r}) into a script")


def _qualname(cls: type) -> str:
    return cls.__qualname__


def attr(*parts: str) -> ast.expr:
    node: ast.expr = ast.Name(parts[0], ast.Load())
    for part in parts[1:]:
        node = ast.Attribute(node, part, ast.Load())
    return node


def call(func: str | ast.expr, *args: ast.expr, **kwargs: ast.expr) -> ast.Call:
    target = attr(*func.split(".")) if isinstance(func, str) else func
    return ast.Call(target, list(args), [ast.keyword(k, v) for k, v in kwargs.items()])


def assign(name: str, value: ast.expr) -> ast.Assign:
    return ast.Assign([ast.Name(name, ast.Store())], value, lineno=0)


def stmt(expr: ast.expr) -> ast.Expr:
    return ast.Expr(expr)


# --------------------------------------------------------------------------- identifiers and comments
RESERVED = {"model", "layers", "embed", "norm", "head", "torch", "nn", "F", "np", "math", "json", "random",
            "argparse", "contextlib", "Path", "copy", "sublayers", "params", "device", "steps", "groups"}


class Names:
    """Spec names as safe, unique Python identifiers (``component_N`` when a name cannot be one)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, name: str) -> str:
        norm = unicodedata.normalize("NFKC", name)
        ok = (name.isidentifier() and norm == name and not keyword.iskeyword(name) and not hasattr(builtins, name)
              and name not in RESERVED and not name.startswith("_") and norm not in self.used)
        chosen = name if ok else f"component_{len(self.used)}"
        while chosen in self.used:
            chosen += "_"
        self.used.add(chosen)
        return chosen


def safe_comment(text: str) -> str:
    """One line of comment text: non-printable characters (line breaks, tabs, NUL ...) escaped."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text).strip()


class Comments:
    """Comment texts referenced by ``__comment__(i)`` marker statements."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.lines: dict[str, list[str]] = {}

    def __call__(self, text: str) -> ast.Expr:
        self.texts.append(safe_comment(text))
        return stmt(call(MARK, ast.Constant(len(self.texts) - 1)))

    def quote(self, span: Any, what: str = "") -> list[ast.Expr]:
        """``# file.nl:14  <the source line>`` for a plan entry's span (and a second line saying ``what``)."""
        line = self._line(span.path, span.line) if span is not None else ""
        where = f"{Path(span.path).name}:{span.line}" if span is not None else "<plan>"
        return [self(f"{where}  {line.strip()}")] + ([self(f"  {what}")] if what else [])

    def _line(self, path: str, number: int) -> str:
        if path not in self.lines:
            try:
                self.lines[path] = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
            except OSError:
                self.lines[path] = []
        lines = self.lines[path]
        return lines[number - 1] if 1 <= number <= len(lines) else ""

    def template(self, tree: ast.Module) -> ast.Module:
        """Turn the template's ``__comment__("text")`` markers into numbered ones."""
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == MARK:
                self.texts.append(safe_comment(node.args[0].value))
                node.args = [ast.Constant(len(self.texts) - 1)]
        return tree


def _function(name: str, args: list[str], doc: str, body: list[ast.stmt],
              returns: str | None = None) -> ast.FunctionDef:
    arguments = ast.arguments(posonlyargs=[], args=[ast.arg(a) for a in args], kwonlyargs=[], kw_defaults=[],
                              defaults=[])
    doc = textwrap.fill(doc, 100, subsequent_indent="    ")
    node = ast.FunctionDef(name, arguments, [stmt(ast.Constant(doc)), *body], [],
                           ast.Name(returns, ast.Load()) if returns else None, lineno=0)
    if hasattr(node, "type_params"):
        node.type_params = []
    return node


