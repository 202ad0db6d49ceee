"""Fixtures of the language-core tests (``update_golden`` lives in tests/conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from lang_paths import ROOT


@pytest.fixture
def in_root(monkeypatch) -> Path:
    """Run from the repository root so spans carry short relative paths (``examples/tiny.nl``)."""
    monkeypatch.chdir(ROOT)
    return ROOT
