"""Exceptions that carry diagnostics; the CLI renders them instead of printing a traceback."""
from __future__ import annotations

from nldsl.source import Diagnostic


class NLError(Exception):
    """Base class: a user-facing failure described by one or more diagnostics."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(f"{d.span}: {d.code}: {d.message}" for d in self.diagnostics))


class NLSyntaxError(NLError):
    """The text does not parse."""


class SpecError(NLError):
    """The text parses but does not describe a valid spec (unknown names, bad values, imports)."""
