"""`--set key=value` overrides: small edits of the `.nl` source text, validated by the checks afterwards.

An override edits the source (the rest of the file is kept byte for byte) and the edited text is loaded
like any spec, so every value goes through the same parser and checks as a value written in the file
(an out-of-range value is the checks' NL3xx diagnostic). Keys:

==============================  ====================================================================
``NAME`` / ``const.NAME``       a constant of the file (``D=32``)
``steps`` / ``train.steps``     a ``train`` setting (added when the file does not write it)
``layers`` / ``model.layers``   a ``model`` setting (added when missing)
``optimizer.ARG``               an argument of the first ``optimizer`` of ``train``
``optimizer.KIND.ARG``          ... of the first optimizer of that kind (``optimizer.adamw.lr``)
``optimizer.I.ARG``             ... of the I-th optimizer (from 0)
``schedule=cosine(warmup=2)``   the whole schedule; ``schedule.ARG`` one of its arguments
``eval.every`` / ``.batches``   the eval statement (added by ``eval.every`` when missing); same for
``checkpoint.every|keep|dir``   the checkpoint statement
``BLOCK.PARAM``                 the default of a block parameter (``hope.slow=256``; also
                                ``block.hope.slow``); parameters without a default are refused
``data=PATH``                   shorthand for ``data = text("PATH")`` (``jsonl("PATH")`` for .jsonl)
==============================  ====================================================================

Bad keys and values raise ``OverrideError`` with a "did you mean" where it helps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from lark import Token, Tree

from nldsl import catalog
from nldsl.errors import NLError
from nldsl.source import Source
from nldsl.spec import model as m

_STATEMENT_OPTIONS = {"eval": ("every", "batches"), "checkpoint": ("every", "keep", "dir")}


class OverrideError(ValueError):
    """A ``--set`` item that names nothing, or whose value is not a single `.nl` value."""


@dataclass(frozen=True)
class Override:
    """One ``key=value`` item (the value as `.nl` source text)."""

    key: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


def parse_overrides(items: Sequence[str | Override]) -> list[Override]:
    """``["steps=3", "D=32"]`` -> Overrides (``OverrideError`` for an item without ``key=value``)."""
    out = []
    for item in items:
        if isinstance(item, Override):
            out.append(item)
            continue
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip() or not value.strip():
            raise OverrideError(f"--set {item!r} expects key=value (e.g. steps=100, D=32, optimizer.lr=1e-3)")
        override = Override(key.strip(), value.strip())
        _value_text(override, override.key.split(".")[-1])
        out.append(override)
    return out


def load_source(path: str | Path | Source) -> Source:
    """The source of a `.nl` file (``FileNotFoundError`` when it is missing)."""
    if isinstance(path, Source):
        return path
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such .nl file: {path}")
    return Source.from_path(path)


def load_with_overrides(path: str | Path | Source, items: Sequence[str | Override]) -> tuple[m.Spec, Source]:
    """Load a spec with overrides applied; returns the spec and the edited source it was built from."""
    from nldsl.spec import load

    edited = apply_overrides(load_source(path), parse_overrides(items))
    return load(edited), edited


def apply_overrides(source: Source, overrides: Sequence[Override]) -> Source:
    """The source with every override applied in order (a later item on the same key wins)."""
    text = source.text
    for item in overrides:
        text = _apply(text, source.path, item)
    return Source(path=source.path, text=text)


# ---------------------------------------------------------------------------------------------- values


def _value_text(item: Override, key: str) -> str:
    """The value as `.nl` text: a single expression (``data`` also takes a bare path)."""
    value = item.value
    if any(c in value for c in "{}\n\r;"):
        raise OverrideError(f"--set {item}: the value must be a single value, not statements")
    if key == "data" and not _parses(value):
        fn = "jsonl" if value.endswith(".jsonl") else "text"
        return f"{fn}({json.dumps(value)})"
    if not _parses(value):
        raise OverrideError(f"--set {item}: {value!r} is not valid .nl syntax for a value")
    return value


def _parses(value: str) -> bool:
    from nldsl.syntax import parse

    try:
        tree = parse(Source(path="<override>", text=f"const X_ = {value}\n"))
    except NLError:
        return False
    return len(tree.children) == 1


# ---------------------------------------------------------------------------------------------- keys


def _apply(text: str, path: str, item: Override) -> str:
    from nldsl.syntax import parse

    try:
        tree = parse(Source(path=path, text=text))
    except NLError as err:
        raise OverrideError(f"--set {item}: the file does not parse ({err})") from err
    top = {t.data: t for t in tree.children if isinstance(t, Tree)}
    consts = {str(t.children[0]): t for t in tree.children if isinstance(t, Tree) and t.data == "const"}
    blocks = {str(t.children[0]): t for t in tree.children if isinstance(t, Tree) and t.data == "block"}
    parts = item.key.split(".")
    head = parts[0]
    if head == "const" and len(parts) == 2 or len(parts) == 1 and head in consts:
        return _const(text, consts, parts[-1], item)
    if head in ("model", "train") and len(parts) == 2:
        return _setting(text, top, head, parts[1], item)
    if len(parts) == 1:
        return _bare(text, top, head, item)
    if head == "optimizer":
        return _optimizer(text, top, parts[1:], item)
    if head == "schedule" and len(parts) == 2:
        return _schedule_arg(text, top, parts[1], item)
    if head in _STATEMENT_OPTIONS and len(parts) == 2:
        return _statement(text, top, head, parts[1], item)
    if head == "block" and len(parts) == 3 or len(parts) == 2 and head in blocks:
        return _block_default(text, blocks, parts[-2], parts[-1], item)
    raise OverrideError(f"--set {item}: unknown key '{item.key}' (use a constant, a model/train setting, "
                        "optimizer.ARG, schedule, eval.*, checkpoint.* or BLOCK.PARAM)")


def _bare(text: str, top: dict, name: str, item: Override) -> str:
    if name in catalog.TRAIN_SETTINGS:
        return _setting(text, top, "train", name, item)
    if name in catalog.MODEL_SETTINGS:
        return _setting(text, top, "model", name, item)
    if name == "schedule":
        return _whole_schedule(text, top, item)
    known = list(catalog.TRAIN_SETTINGS) + list(catalog.MODEL_SETTINGS) + ["schedule"]
    near = catalog.suggest(name, known)
    hint = f"did you mean '{near}'?" if near else f"known: {catalog.known(known)}"
    raise OverrideError(f"--set {item}: unknown key '{name}'; {hint}")


def _const(text: str, consts: dict, name: str, item: Override) -> str:
    if name not in consts:
        raise OverrideError(f"--set {item}: no constant '{name}' in this file "
                            f"(constants: {catalog.known(consts) or 'none'})")
    return _replace(text, consts[name].children[1], _value_text(item, name))


def _setting(text: str, top: dict, where: str, name: str, item: Override) -> str:
    table = catalog.TRAIN_SETTINGS if where == "train" else catalog.MODEL_SETTINGS
    if name not in table:
        near = catalog.suggest(name, table)
        raise OverrideError(f"--set {item}: {where} has no setting; unknown setting '{name}'"
                            + (f" (did you mean '{near}'?)" if near else f" (known: {catalog.known(table)})"))
    stmt = top.get(where)
    if stmt is None:
        raise OverrideError(f"--set {item}: the file has no `{where}` block")
    value = _value_text(item, name)
    body = stmt.children[-1]
    for s in body.children:
        if isinstance(s, Tree) and s.data == "setting" and str(s.children[0]) == name:
            return _replace(text, s.children[1], value)
    return _insert_statement(text, body, f"{name} = {value}")


def _optimizer(text: str, top: dict, parts: list[str], item: Override) -> str:
    opts = [s for s in _body(top, "train") if s.data == "optimizer"]
    if not opts:
        raise OverrideError(f"--set {item}: train has no optimizer")
    if len(parts) == 1:
        opt, arg = opts[0], parts[0]
    elif len(parts) == 2 and parts[0].isdigit():
        if int(parts[0]) >= len(opts):
            raise OverrideError(f"--set {item}: no optimizer {parts[0]} (train has {len(opts)}, numbered from 0)")
        opt, arg = opts[int(parts[0])], parts[1]
    elif len(parts) == 2:
        found = [o for o in opts if str(o.children[0]) == parts[0]]
        if not found:
            raise OverrideError(f"--set {item}: no outer optimizer '{parts[0]}' in train "
                                f"(it has {', '.join(str(o.children[0]) for o in opts)})")
        opt, arg = found[0], parts[1]
    else:
        raise OverrideError(f"--set {item}: use optimizer.ARG, optimizer.KIND.ARG or optimizer.I.ARG")
    kind = str(opt.children[0])
    known = catalog.OUTER_OPTIMIZERS[kind].param_names if kind in catalog.OUTER_OPTIMIZERS else ()
    if arg not in known:
        near = catalog.suggest(arg, known)
        raise OverrideError(f"--set {item}: {kind} has no argument '{arg}'"
                            + (f" (did you mean '{near}'?)" if near else f" (known: {', '.join(known)})"))
    return _set_arg(text, opt, opt.children[0], arg, _value_text(item, arg))


def _whole_schedule(text: str, top: dict, item: Override) -> str:
    value = _value_text(item, "schedule")
    found = [s for s in _body(top, "train") if s.data == "schedule"]
    if found:
        return text[:_start(found[0])] + f"schedule {value}" + text[_end(found[0]):]
    return _insert_statement(text, top["train"].children[-1], f"schedule {value}")


def _schedule_arg(text: str, top: dict, arg: str, item: Override) -> str:
    found = [s for s in _body(top, "train") if s.data == "schedule"]
    if not found:
        raise OverrideError(f"--set {item}: train has no schedule (set the whole one: schedule=cosine(warmup = 100))")
    kind = str(found[0].children[0])
    known = catalog.SCHEDULES[kind].param_names if kind in catalog.SCHEDULES else ()
    if arg not in known:
        raise OverrideError(f"--set {item}: schedule {kind} has no argument '{arg}' (known: {', '.join(known)})")
    return _set_arg(text, found[0], found[0].children[0], arg, _value_text(item, arg))


def _statement(text: str, top: dict, what: str, opt: str, item: Override) -> str:
    if opt not in _STATEMENT_OPTIONS[what]:
        raise OverrideError(f"--set {item}: {what} has no option '{opt}' (known: {', '.join(_STATEMENT_OPTIONS[what])})")
    found = [s for s in _body(top, "train") if s.data == what]
    value = _value_text(item, opt)
    if opt == "every":
        period = "never" if value == "never" else f"every {value} steps"
        if found:
            return _replace(text, found[0].children[0], period)
        return _insert_statement(text, top["train"].children[-1], f"{what} {period}")
    if not found:
        raise OverrideError(f"--set {item}: the file has no `{what}` statement; also set {what}.every")
    stmt = found[0]
    options = stmt.children[1]
    if options is None:
        return text[:_end(stmt)] + f" ({opt} = {value})" + text[_end(stmt):]
    return _set_in_args(text, options, opt, value)


def _block_default(text: str, blocks: dict, block: str, param: str, item: Override) -> str:
    if block not in blocks:
        raise OverrideError(f"--set {item}: no block '{block}' in this file (blocks: {catalog.known(blocks) or 'none'})")
    params = blocks[block].children[1]
    found = [p for p in (params.children if params is not None else []) if isinstance(p, Tree)
             and str(p.children[0]) == param]
    if not found:
        raise OverrideError(f"--set {item}: block '{block}' has no parameter '{param}'")
    if found[0].children[1] is None:
        raise OverrideError(f"--set {item}: parameter '{param}' of block '{block}' has no default to override; "
                            "set the argument where the block is stacked")
    return _replace(text, found[0].children[1], _value_text(item, param))


# ---------------------------------------------------------------------------------------------- edits


def _body(top: dict, where: str) -> list[Tree]:
    stmt = top.get(where)
    return [s for s in stmt.children[-1].children if isinstance(s, Tree)] if stmt is not None else []


def _start(node) -> int:
    return node.start_pos if isinstance(node, Token) else node.meta.start_pos


def _end(node) -> int:
    return node.end_pos if isinstance(node, Token) else node.meta.end_pos


def _replace(text: str, node, new: str) -> str:
    return text[:_start(node)] + new + text[_end(node):]


def _set_arg(text: str, stmt: Tree, name_tok: Token, arg: str, value: str) -> str:
    args = stmt.children[1]
    if args is None:
        return text[:_end(name_tok)] + f"({arg} = {value})" + text[_end(name_tok):]
    return _set_in_args(text, args, arg, value)


def _set_in_args(text: str, args: Tree, arg: str, value: str) -> str:
    for a in args.children:
        if isinstance(a, Tree) and a.data == "keyword_arg" and str(a.children[0]) == arg:
            return _replace(text, a.children[1], value)
    close = _end(args) - 1  # the ')'
    sep = ", " if any(isinstance(a, Tree) for a in args.children) else ""
    return text[:close] + f"{sep}{arg} = {value}" + text[close:]


def _insert_statement(text: str, body: Tree, stmt: str) -> str:
    """Add a statement at the end of a ``{ ... }`` body, on its own line when the body spans lines."""
    close = _end(body) - 1  # the '}'
    line_start = text.rfind("\n", 0, close) + 1
    if text[line_start:close].strip() == "":
        return text[:line_start] + f"  {stmt}\n" + text[line_start:]
    return text[:close].rstrip() + f"  {stmt} " + text[close:]
