"""Fixtures of the checker tests: repository paths and the golden-file switch.

Golden files are rewritten with ``NLDSL_UPDATE_GOLDEN=1`` (or ``--update-golden`` when a conftest that
pytest loads at start-up registers that option; tests/lang/conftest.py defines it for its own tests).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.fixture
def update_golden(request) -> bool:
    try:
        flag = bool(request.config.getoption("--update-golden"))
    except ValueError:
        flag = False
    return flag or os.environ.get("NLDSL_UPDATE_GOLDEN") == "1"


@pytest.fixture
def in_root(monkeypatch) -> Path:
    """Run from the repository root so spans carry short relative paths (``tests/checks/x.nl``)."""
    monkeypatch.chdir(ROOT)
    return ROOT
