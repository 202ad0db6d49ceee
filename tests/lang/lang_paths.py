"""Paths shared by the language-core tests (a uniquely named module: several conftest.py exist)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.nl"))
