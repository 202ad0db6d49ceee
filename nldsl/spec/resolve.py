"""Stage 2b: files -> Spec. Imports, named constants, parameterised blocks.

A file sees its own constants and blocks plus everything visible in the files it imports (paths are
relative to the importing file). Constants may be used before their definition; cycles are NL117.
A block body sees the constants of the file that defines it and its own parameters, so imported
blocks keep working wherever they are stacked, and their diagnostics point into their own file.
Only the root file's ``model`` and ``train`` are built; those of imported files are ignored.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from lark import Tree

from nldsl import catalog
from nldsl.errors import NLSyntaxError, SpecError
from nldsl.source import Diagnostic, Severity, Source, Span
from nldsl.spec import model as m
from nldsl.spec.build import Builder, Env, unquote
from nldsl.syntax import MAX_BYTES, parse, source_text

MAX_IMPORT_DEPTH = 64
"""Longest chain of imports (a imports b imports c ...) followed; deeper chains get NL119."""

@dataclass
class BlockEntry:
    """A block definition with what instantiating it needs."""

    definition: m.BlockDef
    tree: Tree
    module: "Module"


@dataclass
class Module:
    """One loaded file: its builder, its own statements and what it makes visible."""

    source: Source
    builder: Builder
    tree: Tree | None = None
    imports: list[m.Import] = field(default_factory=list)
    consts: dict[str, m.Const] = field(default_factory=dict)
    blocks: dict[str, BlockEntry] = field(default_factory=dict)
    failed: bool = False
    _env: Env = field(default_factory=dict, repr=False)
    _env_size: int = -1

    @property
    def env(self) -> Env:
        """The visible constants by name (cached: constants are only ever added, never replaced)."""
        if self._env_size != len(self.consts):
            self._env = {name: const.value for name, const in self.consts.items()}
            self._env_size = len(self.consts)
        return self._env


class Loader:
    """Loads a root file and its imports once each, collecting every diagnostic."""

    def __init__(self) -> None:
        self.modules: dict[str, Module] = {}
        self.stack: list[str] = []
        self.extra: list[Diagnostic] = []

    def diagnostics(self) -> list[Diagnostic]:
        """Every diagnostic once, sorted by file, line and column."""
        seen, out = set(), []
        for diag in self.extra + [d for mod in self.modules.values() for d in mod.builder.diagnostics]:
            key = (diag.code, diag.span, diag.message)
            if key not in seen:
                seen.add(key)
                out.append(diag)
        return sorted(out, key=lambda d: (d.span.path, d.span.line, d.span.col))

    # ------------------------------------------------------------------ files

    def load(self, source: Source, tree: Tree | None = None) -> Module:
        key = _key(source.path)
        if key in self.modules:
            return self.modules[key]
        mod = Module(source=source, builder=Builder(source))
        self.modules[key] = mod
        try:
            mod.tree = tree if tree is not None else parse(source)
        except NLSyntaxError as err:
            mod.builder.diagnostics.extend(err.diagnostics)
            mod.failed = True
            return mod
        self.stack.append(key)
        try:
            self.fill(mod)
        finally:
            self.stack.pop()
        return mod

    def fill(self, mod: Module) -> None:
        stmts = mod.builder.statements(mod.tree, "file")
        for stmt in (s for s in stmts if s.data == "import"):
            self.import_(mod, stmt)
        self.define_consts(mod, [s for s in stmts if s.data == "const"])
        for stmt in (s for s in stmts if s.data == "block"):
            self.define_block(mod, stmt)
        for entry in [e for e in mod.blocks.values() if e.module is mod]:
            check_block(entry)

    def import_(self, mod: Module, stmt: Tree) -> None:
        builder = mod.builder
        written = unquote(stmt.children[0])
        if not written.strip():
            builder.error("NL115", stmt, "empty import path", 'write the file to import: import "lib/blocks.nl"')
            return
        base = Path(mod.source.path).parent if not mod.source.path.startswith("<") else Path.cwd()
        target = os.path.normpath(base / written)
        if _key(target) in self.stack:
            chain = " -> ".join(_shown(p) for p in self.stack[self.stack.index(_key(target)):] + [target])
            builder.error("NL116", stmt, f"circular import of '{written}'", f"import chain: {chain}")
            return
        if len(self.stack) >= MAX_IMPORT_DEPTH:
            builder.error("NL119", stmt, f"imports nested deeper than {MAX_IMPORT_DEPTH} files",
                          f"'{_shown(self.stack[0])}' imports a file that imports a file ... "
                          f"{MAX_IMPORT_DEPTH} times over; import the files you need directly")
            return
        source = read_source(target, builder, stmt)
        if source is None:
            return
        mod.imports.append(m.Import(span=builder.span(stmt), path=written, resolved=target))
        other = self.load(source)
        if other.failed or any(d.is_error for d in other.builder.diagnostics):
            self.extra.append(Diagnostic(code="NL118", severity=Severity.note, span=builder.span(stmt),
                                         message=f"'{written}' has errors"))
        for name, const in other.consts.items():
            self.expose(mod, "constant", name, const, const.span, mod.consts, stmt)
        for name, entry in other.blocks.items():
            self.expose(mod, "block", name, entry, entry.definition.span, mod.blocks, stmt)

    def expose(self, mod: Module, what: str, name: str, item, span: Span, table: dict, stmt: Tree) -> None:
        """Make an imported name visible; the same definition reached twice (diamond) is fine."""
        old = table.get(name)
        old_span = None if old is None else (old.span if isinstance(old, m.Const) else old.definition.span)
        if old is not None and old_span != span:
            mod.builder.error("NL113", stmt, f"{what} '{name}' is imported twice",
                              f"defined at {old_span} and at {span}")
            return
        table[name] = item

    # ------------------------------------------------------------------ constants and blocks

    def define_consts(self, mod: Module, stmts: list[Tree]) -> None:
        builder, own = mod.builder, {}
        for stmt in stmts:
            name = str(stmt.children[0])
            if name in own or name in mod.consts:
                where = own[name].meta.line if name in own else mod.consts[name].span
                builder.error("NL113", stmt.children[0], f"constant '{name}' is defined twice",
                              f"first defined at {'line ' + str(where) if name in own else where}")
                continue
            own[name] = stmt
        order, cyclic = _const_order(own, builder)
        for name in cyclic:  # already reported (NL117); nan keeps their uses quiet
            mod.consts[name] = m.Const(span=builder.span(own[name]), name=name,
                                       value=m.Number(span=builder.span(own[name]), value=math.nan, text=name))
        env = dict(mod.env)
        for name in (n for n in order if n not in cyclic):
            stmt = own[name]
            env[name] = builder.value(stmt.children[1], env)
            mod.consts[name] = m.Const(span=builder.span(stmt), name=name, value=env[name])

    def define_block(self, mod: Module, stmt: Tree) -> None:
        builder = mod.builder
        name_tok, params, body = stmt.children
        name = str(name_tok)
        if name in mod.blocks:
            builder.error("NL113", name_tok, f"block '{name}' is defined twice",
                          f"first defined at {mod.blocks[name].definition.span}")
            return
        plist = _param_nodes(params)
        scratch = Builder(mod.source, lenient=True)
        defs = tuple(m.Param(span=builder.span(p), name=str(p.children[0]),
                             default=_quiet_default(scratch, p, mod.env)) for p in plist)
        seen: set[str] = set()
        for p in plist:
            if str(p.children[0]) in seen:
                builder.error("NL113", p, f"parameter '{p.children[0]}' is listed twice")
            seen.add(str(p.children[0]))
        definition = m.BlockDef(span=builder.span(stmt), name=name, name_span=builder.span(name_tok), params=defs)
        mod.blocks[name] = BlockEntry(definition=definition, tree=stmt, module=mod)


# ---------------------------------------------------------------------------------------- model


def instantiate(entry: BlockEntry, args: dict[str, m.Value], builder: Builder | None = None) -> m.Block:
    """Build a block body with its arguments bound (``builder``: where diagnostics go)."""
    mod = entry.module
    builder = builder or mod.builder
    env = mod.env | args
    body = entry.tree.children[2]
    stmts = builder.statements(body, "block")
    comps = [s for s in stmts if s.data == "component"]
    builder.unique_names(comps)
    ordered = tuple(m.Arg(span=v.span, name=k, name_span=v.span, value=v) for k, v in args.items())
    return m.Block(span=builder.span(entry.tree), name=entry.definition.name, args=ordered,
                   components=tuple(builder.component(c, env) for c in comps),
                   transfers=tuple(builder.transfer(s, env) for s in stmts if s.data == "transfer"),
                   flows=tuple(builder.flow(s) for s in stmts if s.data == "flow"),
                   shares=tuple(builder.share(s) for s in stmts if s.data == "share"))


def check_block(entry: BlockEntry) -> None:
    """Report a block's own mistakes once, even if it is never stacked (arguments are placeholders)."""
    mod = entry.module
    scratch = Builder(mod.source, lenient=True)
    env = dict(mod.env)
    for p in _param_nodes(entry.tree.children[1]):
        default = _quiet_default(Builder(mod.source, lenient=True), p, env)
        env[str(p.children[0])] = default or m.Number(span=scratch.span(p), value=1, text=str(p.children[0]))
    instantiate(entry, {k: env[k] for k in env if k not in mod.env}, scratch)
    mod.builder.diagnostics.extend(scratch.diagnostics)


def bind(entry: BlockEntry, stmt: Tree, call_args: tuple[m.Arg, ...], builder: Builder) -> dict | None:
    """Match ``stack b(args)`` to the block's parameters (NL112 for every mismatch)."""
    params = [p for p in _param_nodes(entry.tree.children[1])]
    names = [str(p.children[0]) for p in params]
    bound: dict[str, m.Value] = {}
    ok = True
    positional = [a for a in call_args if a.name is None]
    if len(positional) > len(names):
        builder.error("NL112", positional[len(names)].span, f"block '{entry.definition.name}' takes "
                      f"{len(names)} argument(s), {len(positional)} given", _signature(entry))
        ok = False
    bound.update({n: a.value for n, a in zip(names, positional)})
    for arg in (a for a in call_args if a.name is not None):
        if arg.name not in names:
            near = catalog.suggest(arg.name, names)
            builder.error("NL112", arg.name_span, f"block '{entry.definition.name}' has no parameter "
                          f"'{arg.name}'", f"did you mean '{near}'?" if near else _signature(entry))
            ok = False
        elif arg.name in bound:
            builder.error("NL112", arg.name_span, f"parameter '{arg.name}' is given twice", _signature(entry))
            ok = False
        else:
            bound[arg.name] = arg.value
    return _defaults(entry, params, bound, stmt, builder) if ok else None


def _defaults(entry: BlockEntry, params: list[Tree], bound: dict, stmt: Tree, builder: Builder) -> dict | None:
    """Fill missing arguments from defaults, evaluated in order (a default may use earlier params)."""
    mod, out = entry.module, {}
    for p in params:
        name, default = str(p.children[0]), p.children[1]
        if name in bound:
            out[name] = bound[name]
        elif default is not None:
            out[name] = mod.builder.value(default, mod.env | out)
        else:
            builder.error("NL112", stmt, f"block '{entry.definition.name}' needs a value for '{name}'",
                          _signature(entry))
            return None
    return out


def build_model(mod: Module, stmt: Tree) -> m.Model:
    builder, env = mod.builder, mod.env
    name_tok, body = stmt.children
    stmts = builder.statements(body, "model")
    comps = [s for s in stmts if s.data == "component"]
    builder.unique_names(comps)
    return m.Model(span=builder.span(stmt), name=str(name_tok), name_span=builder.span(name_tok),
                   settings=builder.settings(stmts, env),
                   components=tuple(builder.component(c, env) for c in comps),
                   stacks=tuple(s for s in (build_stack(mod, st) for st in stmts if st.data == "stack") if s),
                   transfers=tuple(builder.transfer(s, env) for s in stmts if s.data == "transfer"),
                   flows=tuple(builder.flow(s) for s in stmts if s.data == "flow"),
                   shares=tuple(builder.share(s) for s in stmts if s.data == "share"))


def build_stack(mod: Module, stmt: Tree) -> m.Stack | None:
    builder = mod.builder
    name_tok, args, times = stmt.children
    name = str(name_tok)
    entry = mod.blocks.get(name)
    if entry is None:
        near = catalog.suggest(name, mod.blocks)
        hint = (f"did you mean '{near}'?" if near else f"known: {catalog.known(mod.blocks)}" if mod.blocks
                else f"define it with `block {name} {{ ... }}` or import the file that does")
        builder.error("NL111", name_tok, f"unknown block '{name}'", hint)
        return None
    bound = bind(entry, stmt, builder.args(args, mod.env), builder)
    if bound is None:
        return None
    return m.Stack(span=builder.span(stmt), block=instantiate(entry, bound), block_span=builder.span(name_tok),
                   times=builder.value(times, mod.env) if times is not None else None)


def build_train(mod: Module, stmt: Tree) -> m.Train:
    builder, env = mod.builder, mod.env
    stmts = builder.statements(stmt.children[0], "train")
    fields: dict = {}
    for kind, cls in (("schedule", m.Schedule), ("eval", m.Eval), ("checkpoint", m.Checkpoint)):
        found = builder.once(stmts, kind)
        if found is None:
            continue
        if kind == "schedule":
            fields[kind] = builder.named(found, env, m.Schedule)
        else:
            period, options = found.children
            fields[kind] = cls(span=builder.span(found), period=builder.period(period, env),
                               args=builder.args(options, env))
    return m.Train(span=builder.span(stmt), settings=builder.settings(stmts, env),
                   optimizers=tuple(builder.optimizer(s, env, outer=True) for s in stmts if s.data == "optimizer"),
                   **fields)


def build_root(mod: Module) -> m.Spec:
    """The Spec of the root file: its model and train, with every visible constant and block."""
    builder = mod.builder
    stmts = [c for c in mod.tree.children if isinstance(c, Tree)]
    parts: dict = {}
    for kind in ("model", "train"):
        found = [s for s in stmts if s.data == kind]
        for extra in found[1:]:
            builder.error("NL113", extra, f"a second `{kind}` in one file",
                          f"the first is at line {found[0].meta.line}; a file describes one {kind}")
        if found:
            parts[kind] = build_model(mod, found[0]) if kind == "model" else build_train(mod, found[0])
    lines = source_text(mod.source.text).count("\n") + 1
    return m.Spec(span=Span(path=mod.source.path, line=1, col=1, end_line=lines, end_col=1),
                  path=mod.source.path, imports=tuple(mod.imports),
                  consts=tuple(mod.consts.values()), blocks=tuple(e.definition for e in mod.blocks.values()),
                  **parts)


# ---------------------------------------------------------------------------------------- helpers


def read_source(path: str, builder: Builder | None = None, stmt: Tree | None = None) -> Source | None:
    """Read a `.nl` file; failures become NL115 (NL106 when too large) at the import or at the file itself.

    At most ``MAX_BYTES`` are read: a huge file, or a device or pipe that never ends (``/dev/zero``), is
    reported without being loaded into memory.
    """
    try:
        data = Path(path)
        if data.is_dir():
            raise IsADirectoryError(f"'{path}' is a directory")
        if data.is_file():
            if data.stat().st_size <= MAX_BYTES:
                return Source.from_path(path)
            return _too_large(path, builder, stmt)
        with open(path, "rb") as stream:  # a device or a pipe
            raw = stream.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            return _too_large(path, builder, stmt)
        return Source(path=str(path), text=raw.decode("utf-8", errors="replace"))
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return _unreadable("NL115", path, f"cannot read '{path}': {reason}", builder, stmt)


def _too_large(path: str, builder: Builder | None, stmt: Tree | None) -> None:
    return _unreadable("NL106", path, f"'{path}' is larger than {MAX_BYTES // 2**20} MB", builder, stmt)


def _unreadable(code: str, path: str, message: str, builder: Builder | None, stmt: Tree | None) -> None:
    if builder is not None and stmt is not None:
        builder.error(code, stmt, message, "paths are relative to the importing file" if code == "NL115"
                      else "split it into files that import each other")
        return None
    raise SpecError([Diagnostic(code=code, severity=Severity.error, span=Span.point(str(path)), message=message)])


def _const_order(own: dict[str, Tree], builder: Builder) -> tuple[list[str], set[str]]:
    """Own constants in dependency order, and those on a cycle (NL117, reported once per cycle).

    An iterative depth-first search: a chain of thousands of constants must not exhaust the stack.
    """
    order: list[str] = []
    state: dict[str, str] = {}
    cyclic: set[str] = set()
    deps = {name: [str(t) for t in stmt.children[1].scan_values(lambda v: getattr(v, "type", None) == "NAME")
                   if str(t) in own] for name, stmt in own.items()}
    for root in own:
        if state.get(root):
            continue
        trail, todo = [root], [iter(deps[root])]
        state[root] = "active"
        while todo:
            dep = next(todo[-1], None)
            if dep is None:
                done = trail.pop()
                todo.pop()
                state[done] = "done"
                order.append(done)
            elif state.get(dep) == "active":
                cycle = trail[trail.index(dep):] + [dep]
                cyclic.update(cycle)
                builder.error("NL117", own[dep].children[0], f"constant '{dep}' is defined in terms of itself",
                              "cycle: " + " -> ".join(cycle))
            elif state.get(dep) is None:
                state[dep] = "active"
                trail.append(dep)
                todo.append(iter(deps[dep]))
    return order, cyclic


def _param_nodes(params: Tree | None) -> list[Tree]:
    return [] if params is None else [p for p in params.children if isinstance(p, Tree)]


def _quiet_default(scratch: Builder, p: Tree, env: Env) -> m.Value | None:
    """A parameter default evaluated without diagnostics (``None`` when it needs other parameters)."""
    if p.children[1] is None:
        return None
    before = len(scratch.diagnostics)
    value = scratch.value(p.children[1], env)
    clean = len(scratch.diagnostics) == before
    del scratch.diagnostics[before:]
    return value if clean else None


def _signature(entry: BlockEntry) -> str:
    params = ", ".join(p.name + (f" = {p.default.render()}" if p.default is not None else "")
                       for p in entry.definition.params)
    return f"block {entry.definition.name}({params})"


def _key(path: str) -> str:
    return path if path.startswith("<") else os.path.realpath(path)


def _shown(path: str) -> str:
    """A path for messages: relative to the working directory when that is shorter."""
    if path.startswith("<"):
        return path
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return rel if len(rel) < len(path) else path
