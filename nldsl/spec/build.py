"""Stage 2a: lark tree -> spec nodes, with constants and block parameters substituted.

``Builder`` turns the statements of one body into spec nodes under an environment (the visible
constants and, inside a block, its arguments). It collects every diagnostic instead of stopping at the
first; ``nldsl.spec.resolve`` drives it per file (imports, constants, blocks) and raises ``SpecError``.
The codes it emits (NL110-NL123) are listed with examples in ``nldsl.codes``.
"""
from __future__ import annotations

import math
from typing import Callable

from lark import Token, Tree

from nldsl import catalog
from nldsl.codes import CODES
from nldsl.source import Diagnostic, Severity, Source, Span
from nldsl.spec import model as m
from nldsl.syntax import span_of

CODE_TABLE = CODES
"""The NL1xx codes (re-exported for docs/errors.md)."""

Env = dict[str, m.Value]
def _bounded(value: int) -> int | float:
    """Integers stay exact while a float can hold them (|v| < 1.8e308); beyond that they are ±inf,
    so no later stage meets an int that ``float()`` cannot convert."""
    try:
        float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    return value
_STATIC = "static"
_SINGLE = ("update", "objective", "optimizer", "init")


class Builder:
    """Builds spec nodes from the trees of one file; ``diagnostics`` collects every problem."""

    def __init__(self, source: Source, lookup_block: Callable | None = None, lenient: bool = False):
        self.source = source
        self.path = source.path
        self.diagnostics: list[Diagnostic] = []
        self.lookup_block = lookup_block
        """``name -> (BlockDef, body tree, Env, Builder) | None`` for ``stack``."""
        self.lenient = lenient
        """Checking a block definition without arguments: no arithmetic errors."""

    # ------------------------------------------------------------------ diagnostics and spans

    def error(self, code: str, node: Tree | Token | Span, message: str, hint: str | None = None) -> None:
        span = node if isinstance(node, Span) else self.span(node)
        self.diagnostics.append(Diagnostic(code=code, severity=Severity.error, span=span,
                                           message=message, hint=hint))

    def span(self, node: Tree | Token) -> Span:
        return span_of(self.path, node)

    def text(self, node: Tree | Token) -> str:
        """The canonical text of an expression (the same before and after ``nldsl fmt``)."""
        return expr_text(node)

    # ------------------------------------------------------------------ values

    def value(self, node: Tree | Token, env: Env) -> m.Value:
        """Evaluate an expression tree: constants substituted, arithmetic folded."""
        kind = node.data
        if kind == "number":
            return m.Number(span=self.span(node), value=parse_number(node.children[0]),
                            text=str(node.children[0]))
        if kind == "string":
            return m.String(span=self.span(node), value=unquote(node.children[0]))
        if kind == "name":
            return self.name(node.children[0], env)
        if kind == "call":
            name, args = node.children
            return m.Call(span=self.span(node), name=str(name), args=self.args(args, env))
        if kind == "list":
            return m.ValueList(span=self.span(node),
                               items=tuple(self.value(c, env) for c in node.children if c is not None))
        if kind == "group":
            return self.value(node.children[0], env)
        return self.arithmetic(node, env)

    def name(self, tok: Token, env: Env) -> m.Value:
        span, name = self.span(tok), str(tok)
        if name in env:
            return env[name].model_copy(update={"span": span} | ({"text": name} if isinstance(
                env[name], m.Number) else {}))
        if name in ("true", "false"):
            return m.Bool(span=span, value=name == "true")
        if name in ("nan", "inf"):
            return m.Number(span=span, value=float(name), text=name)
        return m.Symbol(span=span, name=name)

    def arithmetic(self, node: Tree, env: Env) -> m.Value:
        operands = [self.number(c, env) for c in node.children]
        span, text = self.span(node), self.text(node)
        if any(o is None for o in operands):
            return m.Number(span=span, value=math.nan, text=text)
        try:
            result = fold(node.data, [o.value for o in operands])
        except ZeroDivisionError:
            if not self.lenient:
                self.error("NL114", node, f"division by zero in `{text}`")
            result = math.nan
        return m.Number(span=span, value=result, text=text)

    def number(self, node: Tree, env: Env) -> m.Number | None:
        """An arithmetic operand: a Number, else a located error and ``None``."""
        val = self.value(node, env)
        if isinstance(val, m.Number):
            return val
        if isinstance(val, m.Symbol):
            near = catalog.suggest(val.name, env)
            self.error("NL110", node, f"unknown constant '{val.name}'",
                       f"did you mean '{near}'?" if near else _known_hint(env))
        elif not self.lenient:
            self.error("NL114", node, f"{val.type} '{val.render()[:40]}' in arithmetic",
                       "only numbers can be added, subtracted, multiplied and divided")
        return None

    def args(self, node: Tree | None, env: Env) -> tuple[m.Arg, ...]:
        if node is None:
            return ()
        out: list[m.Arg] = []
        for arg in (c for c in node.children if c is not None):
            if arg.data == "keyword_arg":
                name, expr = arg.children
                out.append(m.Arg(span=self.span(arg), name=str(name), name_span=self.span(name),
                                 value=self.value(expr, env)))
            else:
                out.append(m.Arg(span=self.span(arg), value=self.value(arg.children[0], env)))
        return tuple(out)

    # ------------------------------------------------------------------ statements

    def statements(self, body: Tree | None, where: str) -> list[Tree]:
        """The statements of a body that ``where`` accepts (others get NL120)."""
        if body is None:
            return []
        allowed = catalog.STATEMENTS[where]
        kept = []
        for stmt in (c for c in body.children if isinstance(c, Tree)):
            if stmt.data in allowed:
                kept.append(stmt)
            else:
                self.error("NL120", stmt, f"`{stmt.data}` is not allowed in {_where(where)}",
                           f"{_where(where)} accepts: {', '.join(allowed)}")
        return kept

    def setting(self, stmt: Tree, env: Env) -> m.Setting:
        name, expr = stmt.children
        return m.Setting(span=self.span(stmt), name=str(name), name_span=self.span(name),
                         value=self.value(expr, env))

    def settings(self, stmts: list[Tree], env: Env, taken: tuple[m.Arg, ...] = ()) -> tuple[m.Setting, ...]:
        out: list[m.Setting] = []
        seen = {a.name: a.span for a in taken if a.name is not None}
        for stmt in stmts:
            if stmt.data != "setting":
                continue
            setting = self.setting(stmt, env)
            if setting.name in seen:
                first = seen[setting.name]
                self.error("NL123", setting.name_span, f"'{setting.name}' is given twice",
                           f"first given at line {first.line}; keep one")
            seen[setting.name] = setting.span
            out.append(setting)
        return tuple(out)

    def period(self, node: Tree, env: Env) -> m.Period:
        span = self.span(node)
        if node.data == "every":
            count, unit = node.children
            return m.Period(span=span, kind="every", count=self.value(count, env), unit=str(unit),
                            unit_span=self.span(unit))
        return m.Period(span=span, kind=node.data)

    def update(self, stmt: Tree, env: Env) -> m.Update:
        period, options = stmt.children
        return m.Update(span=self.span(stmt), period=self.period(period, env), args=self.args(options, env))

    def named(self, stmt: Tree, env: Env, cls: type) -> m.Node:
        """``objective``/``init``/``schedule``: ``keyword NAME [(args)]``."""
        name, args = stmt.children[:2]
        return cls(span=self.span(stmt), kind=str(name), kind_span=self.span(name), args=self.args(args, env))

    def optimizer(self, stmt: Tree, env: Env, outer: bool) -> m.Optimizer:
        name, args, *selectors = stmt.children
        selectors = [s for s in selectors if s is not None]
        if selectors and not outer:
            self.error("NL122", selectors[0], "`for` selects parameter groups of an outer optimizer",
                       "remove `for ...`; an inner optimizer updates its own level")
        return m.Optimizer(span=self.span(stmt), kind=str(name), kind_span=self.span(name),
                           args=self.args(args, env), selectors=tuple(self.selector(s) for s in selectors))

    def selector(self, node: Tree) -> m.Selector:
        tok = node.children[0]
        if node.data == "component_selector":
            return m.Selector(span=self.span(node), kind="component", target=str(tok))
        if node.data == "glob_selector":
            return m.Selector(span=self.span(node), kind="glob", target=unquote(tok))
        return m.Selector(span=self.span(node), kind=str(tok))

    def transfer(self, stmt: Tree, env: Env) -> m.Transfer:
        kind, source, _arrow, target, options = stmt.children
        return m.Transfer(span=self.span(stmt), kind=str(kind), kind_span=self.span(kind),
                          source=self.path_text(source), source_span=self.span(source),
                          target=self.path_text(target), target_span=self.span(target),
                          args=self.args(options, env))

    def flow(self, stmt: Tree) -> m.Flow:
        paths = [c for c in stmt.children if isinstance(c, Tree)]
        return m.Flow(span=self.span(stmt), steps=tuple(self.path_text(p) for p in paths),
                      step_spans=tuple(self.span(p) for p in paths))

    def share(self, stmt: Tree) -> m.Share:
        what, across = stmt.children
        return m.Share(span=self.span(stmt), what=str(what), across=str(across))

    @staticmethod
    def path_text(node: Tree) -> str:
        return ".".join(str(t) for t in node.children)

    def once(self, stmts: list[Tree], kind: str) -> Tree | None:
        """The single ``kind`` statement of a body (NL121 for the repeats)."""
        found = [s for s in stmts if s.data == kind]
        for extra in found[1:]:
            self.error("NL121", extra, f"a second `{kind}` statement here",
                       f"the first one is at line {found[0].meta.line}; keep one")
        return found[0] if found else None

    # ------------------------------------------------------------------ components

    def component(self, stmt: Tree, env: Env, parent: m.Component | None = None) -> m.Component:
        """``component|memory|level name : kind[(args)] [{ body }]`` with inheritance and defaults."""
        name, kind, args, body = stmt.children
        stmts = self.statements(body, "component")
        arg_nodes = self.args(args, env)
        fields = dict(
            span=self.span(stmt), role=stmt.data, name=str(name), name_span=self.span(name),
            kind=str(kind), kind_span=self.span(kind), args=arg_nodes,
            settings=self.settings(stmts, env, arg_nodes),
            transfers=tuple(self.transfer(s, env) for s in stmts if s.data == "transfer"),
            flows=tuple(self.flow(s) for s in stmts if s.data == "flow"),
            shares=tuple(self.share(s) for s in stmts if s.data == "share"),
        )
        fields.update(self.level_statements(stmts, env))
        comp = m.Component(**fields)
        comp = comp.model_copy(update=inherited(comp, parent))
        children = [s for s in stmts if s.data in ("component", "memory", "level")]
        self.unique_names(children)
        return comp.model_copy(update={"children": tuple(self.component(c, env, comp) for c in children)})

    def level_statements(self, stmts: list[Tree], env: Env) -> dict:
        out: dict = {}
        makers = {"update": lambda s: self.update(s, env),
                  "objective": lambda s: self.named(s, env, m.Objective),
                  "optimizer": lambda s: self.optimizer(s, env, outer=False),
                  "init": lambda s: self.named(s, env, m.Init)}
        for kind in _SINGLE:
            stmt = self.once(stmts, kind)
            if stmt is not None:
                out[kind] = makers[kind](stmt)
        return out

    def unique_names(self, stmts: list[Tree]) -> None:
        seen: dict[str, Tree] = {}
        for stmt in stmts:
            name = str(stmt.children[0])
            if name in seen:
                self.error("NL113", stmt.children[0], f"a second component named '{name}'",
                           f"the first is at line {seen[name].meta.line}; rename one")
            seen.setdefault(name, stmt)


def inherited(comp: m.Component, parent: m.Component | None) -> dict:
    """Fields a memory or level takes from its parent, else the kind's default period (``catalog``)."""
    update: dict = {}
    if parent is not None:
        for field in _SINGLE:
            if getattr(comp, field) is None and getattr(parent, field) is not None:
                update[field] = getattr(parent, field).model_copy(update={"implicit": True})
    if comp.update is None and "update" not in update and comp.role != "memory":
        default = default_update(comp)
        if default is not None:
            update["update"] = default
    return update


def default_update(comp: m.Component) -> m.Update | None:
    """Static kinds: outer loop ``every 1 steps``; attention: ``nonparametric`` (``catalog``)."""
    kind = catalog.COMPONENTS.get(comp.kind)
    if kind is None or kind.default_update is None:
        return None
    span = comp.kind_span
    if kind.default_update == _STATIC:
        period = m.Period(span=span, kind="every", count=m.Number(span=span, value=1, text="1"),
                          unit="steps", unit_span=span)
    else:
        period = m.Period(span=span, kind=kind.default_update)
    return m.Update(span=span, period=period, implicit=True)


# ---------------------------------------------------------------------------------------- literals

_OPS = {"add": " + ", "sub": " - ", "mul": " * ", "div": " / "}


def expr_text(node: Tree | Token | None) -> str:
    """Canonical text of an expression tree: ``4 * dim``, ``learned(1e-4)``, ``[q, k]``."""
    if node is None:
        return ""
    if isinstance(node, Token):
        return str(node.value)
    kids = [c for c in node.children if c is not None]
    if node.data in _OPS:
        return expr_text(kids[0]) + _OPS[node.data] + expr_text(kids[1])
    if node.data == "neg":
        return "-" + expr_text(kids[0])
    if node.data == "group":
        return "(" + expr_text(kids[0]) + ")"
    if node.data == "list":
        return "[" + ", ".join(expr_text(k) for k in kids) + "]"
    if node.data == "call":
        return str(kids[0]) + "(" + ", ".join(expr_text(a) for a in kids[1].children if a is not None) + ")"
    if node.data == "keyword_arg":
        return f"{kids[0]} = {expr_text(kids[1])}"
    return " ".join(expr_text(k) for k in kids)



def parse_number(tok: Token) -> int | float:
    """Integer literals stay exact ints (``inf`` beyond the float range); others are floats."""
    text = str(tok).replace("_", "")
    if any(c in text for c in ".eE"):
        return float(text)
    if len(text) > 400:  # beyond any float, and int() refuses more than ~4300 digits
        return math.inf
    return _bounded(int(text))


def unquote(tok: Token) -> str:
    r"""The value of a string literal: ``\n``, ``\t``, ``\"`` and ``\\`` unescaped, others kept."""
    body, out, i = str(tok)[1:-1], [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i:i + 2]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def fold(op: str, values: list) -> int | float:
    """Apply one arithmetic node: exact on ints (``/`` stays an int when it divides), IEEE otherwise."""
    if op == "neg":
        return -values[0]
    a, b = values
    exact = isinstance(a, int) and isinstance(b, int)
    if op == "div" and b == 0:
        raise ZeroDivisionError
    if exact and (op != "div" or a % b == 0):
        result = {"add": int.__add__, "sub": int.__sub__, "mul": int.__mul__, "div": int.__floordiv__}[op](a, b)
        return _bounded(result)
    x, y = _float(a), _float(b)
    try:
        return {"add": x + y, "sub": x - y, "mul": x * y}[op] if op != "div" else x / y
    except OverflowError:
        return math.inf


def _float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _where(where: str) -> str:
    return {"file": "a file", "block": "a block", "model": "model", "component": "a component",
            "train": "train"}[where]


def _known_hint(env: Env) -> str | None:
    names = [n for n in env if not n.startswith("_")]
    return f"known: {catalog.known(names[:20])}" if names else "no constants are defined"
