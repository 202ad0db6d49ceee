"""Lowering diagnostics: what the runtime cannot run (errors) or runs approximately (warnings).

Codes NL5xx belong to the back end: NL500 nothing to plan, NL501 not in the runtime, NL502 run
approximately (warning), NL503 device not available, NL504 a value the runtime rejects.
Every one is a ``Diagnostic`` located at the ``.nl`` line the plan entry came from, so a user sees
``file.nl:14:3: error[NL501]: ...`` and never a traceback.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from nldsl.errors import NLError
from nldsl.source import Diagnostic, Severity, Span, render


class LowerError(NLError):
    """One located lowering failure (raised from the registry functions)."""

    def __init__(self, span: Span | None, message: str, hint: str | None = None, code: str = "NL501"):
        span = span or Span(path="<plan>")
        super().__init__([Diagnostic(code=code, severity=Severity.error, span=span, message=message, hint=hint)])


class NLWarning(UserWarning):
    """Python warning category of lowering notes (``warnings.simplefilter`` can silence it)."""


@dataclass
class Notes:
    """Warning diagnostics collected while lowering (``Compiled.notes``)."""

    items: list[Diagnostic] = field(default_factory=list)

    def warn(self, span: Span | None, message: str, hint: str | None = None) -> None:
        diag = Diagnostic(code="NL502", severity=Severity.warning, span=span or Span(path="<plan>"),
                          message=message, hint=hint)
        if diag not in self.items:
            self.items.append(diag)

    def emit(self) -> None:
        """Show every note once as a Python warning (rendered like the CLI's diagnostics)."""
        for diag in self.items:
            warnings.warn(render(diag), NLWarning, stacklevel=3)


def located(span: Span, err: ValueError) -> LowerError:
    """A runtime constructor's ValueError, located at the component it was built for (NL504)."""
    return LowerError(span, str(err), "the runtime rejected this value", code="NL504")
