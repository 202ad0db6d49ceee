"""Printing the script ``nldsl codegen`` builds: ``ast.unparse`` per statement, long lines broken, comments.

``ast.unparse`` writes every statement on one line and drops comments. This printer keeps its output (so
every string is still quoted by ``ast``) and only adds layout: a statement longer than ``WIDTH`` is broken
after the opening bracket of its calls, lists, tuples, dicts and comprehensions, one item per line, like
black does; ``__comment__(i)`` marker statements become ``# text`` lines; top-level definitions get two
blank lines around them. ``format_module`` re-parses its result and checks it is the same AST as the
input without the markers, so layout can never change what the script does.
"""
from __future__ import annotations

import ast
import copy

WIDTH = 110
MARK = "__comment__"


def is_marker(node: ast.AST) -> int | None:
    """The comment index of a ``__comment__(i)`` statement, else None."""
    if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
            and node.value.func.id == MARK and len(node.value.args) == 1
            and isinstance(node.value.args[0], ast.Constant) and isinstance(node.value.args[0].value, int)):
        return node.value.args[0].value
    return None


# --------------------------------------------------------------------------- expressions
def pretty(node: ast.expr, indent: str, used: int = 0) -> str:
    """``node`` as source: one line when it fits in WIDTH after ``indent`` + ``used`` characters, else broken."""
    flat = ast.unparse(node)
    if len(indent) + used + len(flat) <= WIDTH:
        return flat
    inner = indent + "    "
    if isinstance(node, ast.Call):
        items = [pretty(a, inner) for a in node.args]
        items += [f"{k.arg}={pretty(k.value, inner, len(k.arg) + 1)}" if k.arg else f"**{pretty(k.value, inner, 2)}"
                  for k in node.keywords]
        head = pretty(node.func, indent, used)
        return _bracket(head + "(", items, ")", inner, indent)
    if isinstance(node, (ast.List, ast.Tuple)):
        opening, closing = ("[", "]") if isinstance(node, ast.List) else ("(", ")")
        return _bracket(opening, [pretty(e, inner) for e in node.elts], closing, inner, indent)
    if isinstance(node, ast.Dict):
        items = [f"**{pretty(v, inner, 2)}" if k is None else
                 f"{ast.unparse(k)}: {pretty(v, inner, len(ast.unparse(k)) + 2)}"
                 for k, v in zip(node.keys, node.values)]
        return _bracket("{", items, "}", inner, indent)
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)) and not any(g.ifs or g.is_async for g in node.generators):
        opening, closing = ("[", "]") if isinstance(node, ast.ListComp) else ("(", ")")
        lines = [f"{opening}\n{inner}{pretty(node.elt, inner)}"]
        for gen in node.generators:
            target = f"for {ast.unparse(gen.target)} in "
            lines.append(f"{inner}{target}{pretty(gen.iter, inner, len(target))}")
        return "\n".join(lines) + f"\n{indent}{closing}"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left = pretty(node.left, indent, used)
        return f"{left} + {pretty(node.right, indent, len(left.splitlines()[-1]) - len(indent) + 3)}"
    if isinstance(node, ast.Attribute):
        return f"{pretty(node.value, indent, used)}.{node.attr}"
    return flat


def _bracket(opening: str, items: list[str], closing: str, inner: str, indent: str) -> str:
    if not items:
        return opening + closing
    return opening + "\n" + "".join(f"{inner}{item},\n" for item in items) + indent + closing


# --------------------------------------------------------------------------- statements
def _header(node: ast.stmt) -> list[str]:
    """The first line(s) of a compound statement, body replaced (docstrings kept by unparse's quoting)."""
    shell = copy.copy(node)
    doc = node.body[:1] if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) is not None else []
    shell.body = doc + [ast.Pass()]
    if hasattr(shell, "orelse"):
        shell.orelse = []
    if isinstance(shell, ast.Try):
        shell.handlers, shell.finalbody = [], [ast.Pass()]
        return ["try:"]
    lines = ast.unparse(shell).splitlines()
    return lines[:-1]


def format_stmt(node: ast.stmt, indent: str, comments: list[str]) -> list[str]:
    """Source lines of one statement (recursing into bodies)."""
    mark = is_marker(node)
    if mark is not None:
        return [f"{indent}# {comments[mark]}"]
    if not indent and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and \
            isinstance(node.value.value, str):  # a module docstring: unparse quotes it as one
        return ast.unparse(ast.Module(body=[node], type_ignores=[])).splitlines()
    if isinstance(node, (ast.FunctionDef, ast.For, ast.If, ast.While, ast.With, ast.Try)):
        return _compound(node, indent, comments)
    text = ast.unparse(node)
    if all(len(indent) + len(line) <= WIDTH for line in text.splitlines()):
        return [indent + line for line in text.splitlines()]
    value = getattr(node, "value", None)
    if isinstance(node, ast.Assign):
        prefix = " = ".join(ast.unparse(t) for t in node.targets) + " = "
    elif isinstance(node, ast.Return):
        prefix = "return "
    elif isinstance(node, ast.Expr):
        prefix = ""
    else:
        return [indent + line for line in text.splitlines()]
    return (indent + prefix + pretty(value, indent, len(prefix))).splitlines()


def _compound(node: ast.stmt, indent: str, comments: list[str]) -> list[str]:
    inner = indent + "    "
    if isinstance(node, ast.For):
        target = f"for {ast.unparse(node.target)} in "
        head = [f"{indent}{target}{pretty(node.iter, indent, len(target) + 1)}:"]
    else:
        head = [indent + line for line in _header(node)]
    lines = head + _body(node.body[1:] if head and isinstance(node, ast.FunctionDef) and
                         ast.get_docstring(node) is not None else node.body, inner, comments)
    if isinstance(node, ast.Try):
        for handler in node.handlers:
            lines += [indent + ast.unparse(copy.copy(handler)).splitlines()[0]] + _body(handler.body, inner, comments)
        if node.finalbody:
            lines += [f"{indent}finally:"] + _body(node.finalbody, inner, comments)
    orelse = getattr(node, "orelse", [])
    if orelse:
        if isinstance(node, ast.If) and len(orelse) == 1 and isinstance(orelse[0], ast.If):
            nested = _compound(orelse[0], indent, comments)
            return lines + [f"{indent}el{nested[0].lstrip()}"] + nested[1:]
        lines += [f"{indent}else:"] + _body(orelse, inner, comments)
    return lines


def _body(stmts: list[ast.stmt], indent: str, comments: list[str]) -> list[str]:
    out: list[str] = []
    for s in stmts:
        out += format_stmt(s, indent, comments)
    return out


def _group(node: ast.stmt) -> int:
    """Import block order: standard library, third party, nldsl."""
    name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
    root = (name or "").split(".")[0]
    return 3 if root == "nldsl" else 2 if root in ("torch", "numpy", "safetensors") else 1


def format_module(body: list[ast.stmt], comments: list[str]) -> str:
    """The whole script, checked to parse back to the same program."""
    lines: list[str] = []
    previous: ast.stmt | None = None
    for node in body:
        imports = isinstance(node, (ast.Import, ast.ImportFrom))
        if previous is not None:
            was_import = isinstance(previous, (ast.Import, ast.ImportFrom))
            if isinstance(node, ast.FunctionDef) or isinstance(previous, ast.FunctionDef) or isinstance(node, ast.If):
                lines += ["", ""]
            elif was_import != imports or (imports and _group(node) != _group(previous)):
                lines.append("")
        lines += format_stmt(node, "", comments)
        previous = node
    text = "\n".join(lines) + "\n"
    _same_program(text, body)
    return text


def _strip_markers(body: list[ast.stmt]) -> ast.Module:
    module = ast.Module(body=copy.deepcopy(body), type_ignores=[])
    for node in ast.walk(module):
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts:
                kept = [s for s in stmts if is_marker(s) is None]
                setattr(node, field, kept or [ast.Pass()])
    return module


def _same_program(text: str, body: list[ast.stmt]) -> None:
    expected = ast.dump(ast.parse(ast.unparse(ast.fix_missing_locations(_strip_markers(body)))))
    if ast.dump(ast.parse(text)) != expected:
        raise AssertionError("codegen layout changed the program (a bug in nldsl.codegen_format)")
