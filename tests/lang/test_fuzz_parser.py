"""Fuzzing: whatever the text, ``load`` returns a Spec or raises NLSyntaxError/SpecError, never a
traceback; and every text that parses formats idempotently to the same tree.

Three sources of input (3000 cases per run, under a minute on 2 cores):
grammar-generated programs (``hypothesis.extra.lark.from_lark``, with explicit terminals because the
ignored whitespace is never inserted), token-level mutations of the examples (deleted, duplicated and
swapped tokens), and arbitrary unicode text.
"""
from __future__ import annotations

from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark
from lark import Lark

from lang_paths import EXAMPLES, ROOT
from nldsl.errors import NLError
from nldsl.fmt import fmt
from nldsl.source import Source
from nldsl.spec import load
from nldsl.syntax import grammar_text, parse, parser

def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))

NAMES = ["x", "dim", "heads", "D", "H", "mlp", "cms", "input", "output", "self", "memory", "level", "for",
         "update", "every", "tokens", "steps", "true", "nan", "inf", "b", "m", "k"]
NUMBERS = ["0", "1", "-0", "64", "1e999", "1e-3", "1_000", ".5", "0.0", "9" * 40, "3.14e+2"]
STRINGS = ['""', '"a.nl"', '"q\\"uote"', '"new\\nline"', '"*.bias"', '"é"', '"\\\\"']


@lru_cache(maxsize=1)
def _grammar() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual")


def _spaced(values: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).map(lambda v: f" {v} ")


def _programs() -> st.SearchStrategy[str]:
    grammar = _grammar()
    explicit = {t.name: st.just(f" {t.pattern.value} ") for t in grammar.terminals if t.pattern.type == "str"}
    explicit.update(NAME=_spaced(NAMES), NUMBER=_spaced(NUMBERS), STRING=_spaced(STRINGS),
                    COMMENT=st.just("# c\n"), WS=st.just(" "))
    return from_lark(grammar, explicit=explicit)


def _load_or_diagnose(text: str, path: str = "<fuzz>") -> None:
    try:
        load(Source(path=path, text=text))
    except NLError as err:
        assert err.diagnostics and all(d.code.startswith("NL1") for d in err.diagnostics)


@fuzz(400)
@given(_programs())
def test_generated_programs_load_or_diagnose(text):
    _load_or_diagnose(text)
    try:
        tree = parse(text)
    except NLError:
        return
    out = fmt(text)
    assert fmt(out) == out
    assert parse(out) == tree


@lru_cache(maxsize=None)
def _tokens(name: str) -> tuple[str, ...]:
    text = (ROOT / "examples" / name).read_text()
    return tuple(t.value for t in parser().lex(text, dont_ignore=True))


@st.composite
def _mutants(draw) -> tuple[str, str]:
    name = draw(st.sampled_from(EXAMPLES))
    tokens = list(_tokens(name))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        else:
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
    return name, "".join(tokens)


@fuzz(600)
@given(_mutants())
def test_mutated_examples_load_or_diagnose(mutant):
    name, text = mutant
    _load_or_diagnose(text, str(ROOT / "examples" / name))


@fuzz(2000)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
       | st.text(alphabet='{}()[]=,:.-+*/#"\\ \n\tabcmodelblock0123456789e', max_size=200))
def test_arbitrary_text_loads_or_diagnoses(text):
    _load_or_diagnose(text)


@pytest.mark.parametrize("text", ["model m {" * 200, "(" * 10_000, "[" * 5000 + "]" * 5000,
                                  "const X = " + "-" * 10_000 + "1", "x" * 1_000_000, '"' + "a" * 100_000])
def test_pathological_inputs_diagnose(text):
    _load_or_diagnose(text)
