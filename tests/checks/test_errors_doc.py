"""docs/errors.md is generated from the code tables and stays in sync; every example does what it says."""
from __future__ import annotations

import pytest

from nldsl.checks.codes import CHECK_CODES
from nldsl.checks.docs import errors_markdown, rendered
from nldsl.codes import CODES

from .conftest import ROOT

DOC = ROOT / "docs" / "errors.md"


def test_errors_doc_is_up_to_date(update_golden: bool):
    text = errors_markdown()
    if update_golden:
        DOC.write_text(text, encoding="utf-8")
    assert DOC.read_text(encoding="utf-8") == text, "run: python -m nldsl.checks.docs"


def test_every_code_has_a_section():
    text = DOC.read_text(encoding="utf-8")
    for code in list(CODES) + list(CHECK_CODES):
        assert f"### {code}: " in text, code


@pytest.mark.parametrize("code", sorted(CHECK_CODES))
def test_bad_example_gives_its_code_and_fixed_example_is_clean(code: str):
    entry = CHECK_CODES[code]
    bad = rendered(entry.bad)
    codes = {line.split("[")[1].split("]")[0] for line in bad.splitlines() if line.startswith("example.nl:")}
    assert codes == {code}, bad
    assert rendered(entry.fixed) == ""


def test_codes_are_stable_and_documented():
    assert len(CHECK_CODES) >= 25
    for code, entry in CHECK_CODES.items():
        assert code == entry.code and code[:3] in ("NL2", "NL3", "NL4")
        assert entry.title and entry.doc and entry.bad and entry.fixed
