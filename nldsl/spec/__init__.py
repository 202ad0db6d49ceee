"""The typed spec stage: ``load(path_or_text) -> Spec`` (parse, imports, constants, blocks).

>>> spec = load("const D = 32\\nmodel m { dim = D }\\n")
>>> spec.model.get("dim").value
32
"""
from __future__ import annotations

from pathlib import Path

from lark import Tree

from nldsl.errors import NLSyntaxError, SpecError
from nldsl.source import Source
from nldsl.spec.model import *  # noqa: F401,F403  (the Spec classes are this package's API)
from nldsl.spec.model import Spec
from nldsl.spec.resolve import Loader, build_root, read_source


def load(path_or_text: str | Path | Source) -> Spec:
    """Load a `.nl` file or text into a ``Spec``.

    A ``Path``, or a one-line ``str`` that ends in ``.nl`` or names an existing file, is a file; any
    other ``str`` is text (reported as ``<string>``). Imports are resolved relative to the file (to the
    working directory for text).

    Raises:
        NLSyntaxError: the root text does not parse (one located diagnostic).
        SpecError: anything else that prevents building the spec, every problem at once
            (syntax errors of imported files included); its ``spec`` attribute holds the spec built
            without the statements in error (``nldsl.checks.check`` runs the other checks on it).
    """
    source = _source(path_or_text)
    return build_spec(source)


def build_spec(tree_or_source: Tree | Source | str, source: Source | None = None) -> Spec:
    """Build the Spec of a parse tree (with the ``Source`` it came from) or of a source/text.

    >>> from nldsl.syntax import parse
    >>> src = Source(path="m.nl", text="model m { dim = 8 * 8 }")
    >>> build_spec(parse(src), src).model.get("dim").text
    '8 * 8'
    """
    tree = tree_or_source if isinstance(tree_or_source, Tree) else None
    if tree is None:
        source = tree_or_source if isinstance(tree_or_source, Source) else Source(path="<string>",
                                                                                  text=tree_or_source)
    source = source or Source(path="<tree>", text="")
    loader = Loader()
    mod = loader.load(source, tree)
    if mod.failed:
        errors = loader.diagnostics()
        raise NLSyntaxError(errors)
    spec = build_root(mod)
    diags = loader.diagnostics()
    if any(d.is_error for d in diags):
        err = SpecError(diags)
        err.spec = spec  # what could be built, so `check` can still run the other checks on it
        raise err
    return spec


def _source(path_or_text: str | Path | Source) -> Source:
    if isinstance(path_or_text, Source):
        return path_or_text
    if isinstance(path_or_text, Path):
        return read_source(str(path_or_text))
    text = str(path_or_text)
    if is_path(text):
        return read_source(text)
    return Source(path="<string>", text=text)


def is_path(text: str) -> bool:
    """Does a ``str`` argument name a file rather than hold `.nl` text?

    One line ending in ``.nl`` is a path (a missing one is reported as NL115), and so is one line naming
    a file that exists (``spec.txt``); anything else is text.
    """
    if "\n" in text or not text.strip():
        return False
    if text.endswith(".nl"):
        return True
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL character
        return False
