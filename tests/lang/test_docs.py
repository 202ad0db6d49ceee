"""docs/language.md embeds the generated vocabulary tables and shows every construct."""
from __future__ import annotations

import re

from lang_paths import ROOT
from nldsl import catalog
from nldsl.codes import CODES
from nldsl.spec.reference import catalog_markdown, codes_markdown

DOC = ROOT / "docs" / "language.md"
BEGIN, END = "<!-- catalog:begin -->", "<!-- catalog:end -->"


def test_language_reference_embeds_the_current_catalog(update_golden):
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    expected = f"{head}{BEGIN}\n{catalog_markdown()}\n{END}{tail}"
    if update_golden:
        DOC.write_text(expected, encoding="utf-8")
    assert text == expected, "run pytest tests/lang --update-golden to regenerate the tables"


def test_every_statement_and_code_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for statements in catalog.STATEMENTS.values():
        for stmt in statements:
            assert f"`{stmt}" in text or f"| {stmt}" in text, stmt
    for code in CODES:
        assert code in text, code
    for kind in catalog.COMPONENTS:
        assert re.search(rf"`{kind}`", text), kind


def test_codes_markdown_has_every_example():
    text = codes_markdown()
    assert all(f"### {code}" in text for code in CODES)
