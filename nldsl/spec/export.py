"""Spec <-> JSON: ``nldsl spec FILE --json`` and ``nldsl schema`` (pydantic's JSON Schema).

Non-finite numbers are written as the strings ``"Infinity"``, ``"-Infinity"`` and ``"NaN"`` (JSON has no
such numbers) and read back as floats; every other value round-trips exactly.

>>> from nldsl.spec import load
>>> spec = load("model m { dim = 64 }")
>>> from_json(to_json(spec)) == spec
True
"""
from __future__ import annotations

import json
from typing import Any

from nldsl.spec.model import Spec


def to_dict(spec: Spec, spans: bool = True) -> dict[str, Any]:
    """Plain JSON-compatible data; ``spans=False`` drops every span (to compare specs by content)."""
    data = json.loads(spec.model_dump_json())
    return data if spans else strip_spans(data)


def to_json(spec: Spec, spans: bool = True, indent: int | None = 2) -> str:
    """The spec as JSON text (stable key order: the field order of the classes)."""
    return json.dumps(to_dict(spec, spans), indent=indent, ensure_ascii=False) + "\n"


def from_json(text: str) -> Spec:
    """Read back what ``to_json`` wrote (spans included)."""
    return Spec.model_validate_json(text)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``Spec`` (draft 2020-12, as pydantic writes it)."""
    return Spec.model_json_schema()


def strip_spans(data: Any) -> Any:
    """Remove ``span`` and ``*_span(s)`` keys recursively."""
    if isinstance(data, dict):
        return {k: strip_spans(v) for k, v in data.items() if not _is_span_key(k)}
    if isinstance(data, list):
        return [strip_spans(v) for v in data]
    return data


def compact_spans(data: Any) -> Any:
    """Spans written as ``"path:line:col-end_line:end_col"`` strings (short, reviewable goldens)."""
    if isinstance(data, dict):
        if set(data) == {"path", "line", "col", "end_line", "end_col"}:
            return f"{data['path']}:{data['line']}:{data['col']}-{data['end_line']}:{data['end_col']}"
        return {k: compact_spans(v) for k, v in data.items()}
    if isinstance(data, list):
        return [compact_spans(v) for v in data]
    return data


def _is_span_key(key: str) -> bool:
    return key == "span" or key.endswith("_span") or key.endswith("_spans")
