"""``nldsl fmt``: identity corpus, idempotence, comments kept, and specs unchanged by formatting."""
from __future__ import annotations

import random
import re

import pytest

from lang_paths import EXAMPLES, ROOT
from nldsl.fmt import fmt, is_formatted
from nldsl.spec import load
from nldsl.spec.export import to_dict
from nldsl.source import Source
from nldsl.syntax import parse, parse_with_comments, parser

IDENTITY = ROOT / "tests" / "identity.nl"


def _comment_words(text: str) -> list[str]:
    """Every word of every comment (formatting may move comments and join two on one line)."""
    _, comments = parse_with_comments(text)
    return sorted(w for c in comments for w in c.value.split() if w != "#")


def test_identity_corpus_is_unchanged():
    text = IDENTITY.read_text()
    out = fmt(text)
    changed = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(text.splitlines(), out.splitlines()), 1)
               if a != b]
    assert out == text, "\n".join(changed[:10])


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_are_canonical(name):
    assert is_formatted((ROOT / "examples" / name).read_text())


def _messy(text: str, seed: int) -> str:
    """The same tokens and line breaks with random spacing and indentation (fmt must undo it)."""
    rng = random.Random(seed)
    out, prev = [], None
    for tok in parser().lex(text, dont_ignore=True):
        if tok.type == "WS":
            lines = tok.value.count("\n")
            out.append("\n" * lines + " " * rng.randint(0, 6) if lines else " " * rng.randint(1, 3))
            prev = None
            continue
        word = re.match(r"\w", tok.value) is not None
        if prev is not None and (word and prev) and not out[-1].endswith(" "):
            out.append(" ")
        elif prev is not None and rng.random() < 0.5:
            out.append(" " * rng.randint(1, 2))
        out.append(tok.value)
        prev = re.search(r"\w$", tok.value) is not None
    return "".join(out)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", EXAMPLES + ["identity"])
def test_respaced_text_formats_back_to_the_canonical_text(name, seed):
    path = IDENTITY if name == "identity" else ROOT / "examples" / name
    text = path.read_text()
    messy = _messy(text, seed)
    assert messy != text
    assert fmt(messy) == text
    assert parse(messy) == parse(text)


MESSY = [
    ("one_line_to_keep", "model m{dim=64 layers=2}\n", "model m { dim = 64  layers = 2 }\n"),
    ("multi_line_body", "model m {dim=64\nlayers=2}\n", "model m {\n  dim = 64\n  layers = 2\n}\n"),
    ("blank_runs", "const A = 1\n\n\n\nconst B = 2\n\n", "const A = 1\n\nconst B = 2\n"),
    ("blank_after_brace", "model m {\n\n  dim = 1\n\n}\n", "model m {\n  dim = 1\n}\n"),
    ("comment_inside_statement", "train {\n  optimizer adamw(lr = 1,  # peak\n    weight_decay = 0)\n}\n",
     "train {\n  optimizer adamw(lr = 1, weight_decay = 0)  # peak\n}\n"),
    ("trailing_commas", "const L = [1, 2,]\nblock b(x,) { }\n", "const L = [1, 2]\nblock b(x) { }\n"),
    ("comment_after_close", "model m {\n  dim = 1\n}   # done\n", "model m {\n  dim = 1\n}  # done\n"),
    ("statement_after_open", "model m { dim = 1\n  layers = 2 }\n", "model m {\n  dim = 1\n  layers = 2\n}\n"),
    ("no_space_operators", "const X = -2*(3+4)/5-1\n", "const X = -2 * (3 + 4) / 5 - 1\n"),
    ("empty", "\n\n", ""),
]


@pytest.mark.parametrize("text,expected", [c[1:] for c in MESSY], ids=[c[0] for c in MESSY])
def test_layout_rules(text, expected):
    assert fmt(text) == expected
    assert fmt(expected) == expected


@pytest.mark.parametrize("name", EXAMPLES)
def test_formatting_keeps_the_spec_and_the_comments(name, in_root):
    path = f"examples/{name}"
    text = (ROOT / path).read_text()
    squashed = re.sub(r"\n\s*\n", "\n", text).replace("  ", " ")  # other blank lines and spacing
    out = fmt(squashed)
    assert fmt(out) == out
    assert _comment_words(out) == _comment_words(text)
    assert to_dict(load(Source(path=path, text=out)), spans=False) == to_dict(load(path), spans=False)
