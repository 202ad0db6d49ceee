"""Fuzzing the checker: whatever the text, ``check`` returns diagnostics and never raises.

Two generators: token-level mutations of the examples (deleted, duplicated, swapped and replaced tokens)
and random specs written from the catalog's vocabulary with wrong names, odd numbers (``1e999``, ``nan``,
``-0``, huge integers), misplaced hyperparameter forms, random periods, transfers, flows and selectors.
Each case runs the whole pipeline (parse, build, graph, every check) and renders every diagnostic.
``NLDSL_FUZZ_SCALE=10`` multiplies the number of cases (CI runs the default, about 2500 cases).
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nldsl import catalog
from nldsl.checks import check
from nldsl.errors import NLError
from nldsl.explain import rows
from nldsl.graph import build_graph
from nldsl.source import Diagnostic, Source, render
from nldsl.spec import load
from nldsl.viz import ladder_events, level_graph_dot

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples").glob("*.nl"))}
SCALE = int(os.environ.get("NLDSL_FUZZ_SCALE", "1"))
TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d[\d_.eE+-]*|->|\s+|.', re.S)
_COMMON = dict(deadline=None, derandomize=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, **_COMMON)


def assert_only_diagnostics(text: str) -> list[Diagnostic]:
    source = Source(path="<fuzz>", text=text)
    diags = check(text if "\n" in text else text + "\n")
    assert isinstance(diags, list) and all(isinstance(d, Diagnostic) for d in diags)
    for diag in diags:
        render(diag, {"<fuzz>": source, "<string>": source})
    return diags


# ---------------------------------------------------------------------------------------------- mutations

REPLACEMENTS = ["nan", "inf", "1e999", "-0", "0", "-1", "99999999999999999999", "memory(eta)", "learned(1)",
                "data(softplus)", "every", "tokens", "steps", "never", "->", "{", "}", "(", ")", ",", "=",
                "component", "memory", "level", "transfer init", "flow", "share state across batch", "stack",
                '"x\\"y"', "ü", "mpl", "attention", "cms", "self_modifying_titans", "buffer", "task", "dgd",
                "muon", "for all", "for component x", "update every 3 tokens"]


@st.composite
def mutated_example(draw) -> str:
    text = EXAMPLES[draw(st.sampled_from(sorted(EXAMPLES)))]
    tokens = TOKEN.findall(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i] = " " + draw(st.sampled_from(REPLACEMENTS)) + " "
    return "".join(tokens)


@fuzz(250 * SCALE)
@given(mutated_example())
def test_mutated_examples_give_only_diagnostics(text: str):
    assert_only_diagnostics(text)


# ---------------------------------------------------------------------------------------------- random specs

NAMES = ["a", "b", "ffn", "mem", "k", "v", "q", "eta", "alpha", "fast", "mid", "slow", "w", "m", "input", "output"]
PARAMS = sorted({p.name for k in catalog.COMPONENTS.values() for p in k.params} | {"context", "dim", "hiden", "x"})
OPT_PARAMS = sorted({p.name for k in catalog.INNER_OPTIMIZERS.values() for p in k.params} | {"lr", "bogus"})
WORDS = ["gelu", "sequential", "nested", "independent", "static", "sum", "mean", "fp16", "bf16", "q", "k", "self",
         "value", "gradient", "softplus", "sigmoid", "weights", "updates", "stopgrad", "unrolled", "x"]
CALLS = ["learned(0.5)", "learned()", "data(softplus, scale = 0.1)", "data(tanh)", "memory(eta)", "memory(zz)",
         "memory()", "gradients(w)", "gradients(of = ffn)", "output(of = a)", 'text("builtin:shakespeare")',
         "text()", "bpe(vocab = 300)", "digits(tasks = 0)", "compile(mode = \"fast\")", "[q, k]", "[]", "[1, x]"]


NUMBER = st.one_of(st.integers(-3, 5000).map(str), st.sampled_from(
    ["0", "-0", "1e999", "nan", "inf", "-inf", "0.5", "1.5", "1e-3", "-1e-3", "3.7", "12345678901234567890",
     "4 * 16", "64 / 3", "2 - 2"]))
VALUE = st.one_of(NUMBER, st.sampled_from(WORDS + CALLS + ["true", "false", '"s"', '"a\\"b\\nc"']))


def args(names: list[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(st.sampled_from(names), VALUE).map(lambda p: f"{p[0]} = {p[1]}")
    return st.lists(st.one_of(pair, VALUE), max_size=3).map(lambda xs: f"({', '.join(xs)})" if xs else "")


PERIOD = st.one_of(st.sampled_from(["never", "nonparametric"]), st.tuples(
    NUMBER, st.sampled_from(["tokens", "steps", "tokenz", "step"])).map(lambda p: f"every {p[0]} {p[1]}"))
COMPONENT_ARGS, OPTIMIZER_ARGS, OBJECTIVE_ARGS = args(PARAMS), args(OPT_PARAMS), args(["target", "delta", "p"])
SIMPLE = st.one_of(
    st.tuples(st.sampled_from(PARAMS), VALUE).map(lambda p: f"{p[0]} = {p[1]}"),
    st.tuples(PERIOD, st.sampled_from(["", " (reduce = mean)", " (reduce = max)"])).map(
        lambda p: f"update {p[0]}{p[1]}"),
    st.tuples(st.sampled_from(sorted(catalog.OBJECTIVES) + ["l3"]), OBJECTIVE_ARGS).map(
        lambda p: f"objective {p[0]}{p[1]}"),
    st.tuples(st.sampled_from(sorted(catalog.INNER_OPTIMIZERS) + ["adamw", "sgdd"]), OPTIMIZER_ARGS).map(
        lambda p: f"optimizer {p[0]}{p[1]}"),
    st.sampled_from(["init meta", "init zeros", "init meta(grad = stopgrad)", "init mata", "share state across batch",
                     "share weights across batch"]),
    st.tuples(st.sampled_from(sorted(catalog.TRANSFERS) + ["copy"]), st.sampled_from(NAMES),
              st.sampled_from(NAMES + ["a.b"])).map(lambda p: f"transfer {p[0]} {p[1]} -> {p[2]}"),
    st.lists(st.sampled_from(NAMES), min_size=2, max_size=5).map(lambda xs: "flow " + " -> ".join(xs)),
)
BODY_LINKS = st.one_of(
    st.tuples(st.sampled_from(sorted(catalog.TRANSFERS) + ["copy"]), st.sampled_from(NAMES),
              st.sampled_from(NAMES + ["a.b", "b"])).map(lambda p: f"transfer {p[0]} {p[1]} -> {p[2]}"),
    st.lists(st.sampled_from(NAMES + ["b"]), min_size=2, max_size=5).map(lambda xs: "flow " + " -> ".join(xs)),
    st.just("share state across batch"))
KIND = st.sampled_from(sorted(catalog.COMPONENTS) + ["mpl", "foo"])
ROLE = st.sampled_from(["component", "memory", "level"])


def _key(statement: str) -> str:
    """Statements a body may hold once (update, objective ... a setting name, a child name)."""
    words = statement.split()
    return words[1] if words[0] in ("component", "memory", "level") else words[0]


def _component(body: st.SearchStrategy[str], role: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    bodies = st.lists(body, max_size=4, unique_by=_key).map(lambda xs: " { " + "\n".join(xs) + " }" if xs else "")
    return st.tuples(role, st.sampled_from(NAMES), KIND, COMPONENT_ARGS, bodies).map(
        lambda p: f"{p[0]} {p[1]} : {p[2]}{p[3]}{p[4]}")


LEAF = _component(SIMPLE, ROLE)
COMPONENT = _component(st.one_of(SIMPLE, LEAF), st.just("component"))   # up to one level of children
SELECTORS = st.lists(st.sampled_from(["all", "matrices", "vectors", "embeddings", "matrix", "component ffn",
                                      "component zz", '"*.ffn*"']), max_size=2)
OUTER = st.tuples(st.sampled_from(sorted(catalog.OUTER_OPTIMIZERS) + ["gd"]), args(["lr", "beta1", "x"]),
                  SELECTORS).map(lambda p: f"optimizer {p[0]}{p[1]}" + (" for " + ", ".join(p[2]) if p[2] else ""))
TRAIN_SETTING = st.tuples(st.sampled_from(sorted(catalog.TRAIN_SETTINGS) + ["stpes"]), VALUE).map(
    lambda p: f"{p[0]} = {p[1]}")
TRAIN = st.tuples(st.lists(st.one_of(TRAIN_SETTING, OUTER), max_size=6), st.sampled_from(
    ["", "schedule cosine(warmup = 50)", "schedule cosin", "eval every 10 steps", "eval every 5 tokens",
     "checkpoint every 100000 steps (keep = 0)"])).map(lambda p: "train {\n" + "\n".join(p[0] + [p[1]]) + "\n}\n")
MODEL_SETTING = st.tuples(st.sampled_from(sorted(catalog.MODEL_SETTINGS) + ["dimm"]), VALUE).map(
    lambda p: f"{p[0]} = {p[1]}")
BLOCK = "block b(h = 4) { component f : mlp(hidden = h)\nflow input -> f -> output }\n"


@st.composite
def random_spec(draw) -> str:
    lines = draw(st.lists(MODEL_SETTING, max_size=4, unique_by=_key))
    lines += draw(st.lists(COMPONENT, max_size=4, unique_by=_key))
    lines += draw(st.lists(BODY_LINKS, max_size=2))
    block = draw(st.sampled_from(["", BLOCK]))
    if block:
        lines.append("stack b" + (f" * {draw(NUMBER)}" if draw(st.booleans()) else ""))
    text = block + "model fuzz {\n" + "\n".join(lines) + "\n}\n"
    return text + (draw(TRAIN) if draw(st.booleans()) else "")


@fuzz(250 * SCALE)
@given(random_spec())
def test_random_specs_give_only_diagnostics(text: str):
    assert_only_diagnostics(text)


# ------------------------------------------------------------------ many more random specs, fast
# The same vocabulary written by a seeded ``random.Random`` (hypothesis draws the seeds): about 40x
# faster to generate than the strategies above, so CI runs thousands of cases; a failure prints its seed.


def seeded_spec(seed: int) -> str:
    rnd = random.Random(seed)
    pick = rnd.choice

    def val() -> str:
        return pick([pick(NUMBERS), str(rnd.randint(-3, 5000)), pick(WORDS), pick(CALLS), "true", '"s"'])

    def arglist(names: list[str]) -> str:
        parts = [f"{pick(names)} = {val()}" if rnd.random() < 0.7 else val() for _ in range(rnd.randint(0, 3))]
        return f"({', '.join(parts)})" if parts else ""

    def statement(depth: int) -> str:
        roll = rnd.random()
        if depth and roll < 0.25:
            return comp(depth - 1, pick(["component", "memory", "level"]))
        return pick([
            lambda: f"{pick(PARAMS)} = {val()}",
            lambda: f"update {pick(['never', 'nonparametric', f'every {pick(NUMBERS)} {pick(UNITS)}'])}"
                    + pick(["", " (reduce = mean)", " (reduce = x)"]),
            lambda: f"objective {pick(OBJECTIVES)}{arglist(['target', 'delta', 'p'])}",
            lambda: f"optimizer {pick(INNERS)}{arglist(OPT_PARAMS)}",
            lambda: pick(["init meta", "init zeros", "init mata", "share state across batch"]),
            lambda: f"transfer {pick(TRANSFERS)} {pick(NAMES)} -> {pick(NAMES + ['a.b'])}",
            lambda: "flow " + " -> ".join(rnd.choices(NAMES, k=rnd.randint(2, 5))),
        ])()

    def comp(depth: int, role: str = "component") -> str:
        body = {_key(x): x for x in (statement(depth) for _ in range(rnd.randint(0, 5)))}
        inner = " { " + "\n".join(body.values()) + " }" if body else ""
        return f"{role} {pick(NAMES)} : {pick(KINDS)}{arglist(PARAMS)}{inner}"

    lines = {_key(x): x for x in [f"{pick(MODEL_KEYS)} = {val()}" for _ in range(rnd.randint(0, 4))]}
    lines.update({_key(x): x for x in (comp(1) for _ in range(rnd.randint(0, 5)))})
    text = "model fuzz {\n" + "\n".join(lines.values()) + "\n}\n"
    if rnd.random() < 0.6:
        opts = [f"optimizer {pick(OUTERS)}{arglist(['lr', 'beta1'])}"
                + pick(["", " for all", " for matrices", " for vectors, embeddings", " for component ffn"])
                for _ in range(rnd.randint(0, 3))]
        sets = [f"{pick(TRAIN_KEYS)} = {val()}" for _ in range(rnd.randint(0, 5))]
        text += "train {\n" + "\n".join(opts + list({_key(x): x for x in sets}.values())) + "\n}\n"
    return text


NUMBERS = ["0", "-0", "1e999", "nan", "inf", "0.5", "1.5", "-1e-3", "16", "64", "2048", "12345678901234567890"]
UNITS = ["tokens", "steps", "tokenz"]
OBJECTIVES = sorted(catalog.OBJECTIVES) + ["l3"]
INNERS = sorted(catalog.INNER_OPTIMIZERS) + ["adamw"]
OUTERS = sorted(catalog.OUTER_OPTIMIZERS) + ["gd"]
TRANSFERS = sorted(catalog.TRANSFERS) + ["copy"]
KINDS = sorted(catalog.COMPONENTS) + ["mpl"]
MODEL_KEYS = sorted(catalog.MODEL_SETTINGS) + ["dimm"]
TRAIN_KEYS = sorted(catalog.TRAIN_SETTINGS) + ["stpes"]


@fuzz(1200 * SCALE)
@given(st.integers(0, 2**32 - 1))
def test_seeded_random_specs_give_only_diagnostics(seed: int):
    text = seeded_spec(seed)
    assert_only_diagnostics(text)
    try:
        graph = build_graph(load(text))
    except NLError:
        return
    rows(graph)                              # the table, the drawing and the ladder never crash either,
    level_graph_dot(graph).source            # even for a spec with check errors
    ladder_events(graph, 64)


def test_random_specs_mostly_reach_the_checks():
    """The generator is useful: many random specs parse and build, so the checks really run on them."""
    built = 0
    for text in _sample_specs():
        try:
            build_graph(load(text))
            built += 1
        except NLError:  # a builder diagnostic, fine
            pass
    assert built >= 10


def _sample_specs() -> list[str]:
    out: list[str] = []

    @fuzz(40)
    @given(random_spec())
    def collect(text: str) -> None:
        out.append(text)
    collect()
    return out
