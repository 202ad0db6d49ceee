"""Stage 2 (nldsl.spec): text -> Spec. Values, defaults, blocks, imports, every NL11x/NL12x code,
bad input through ``load``, and golden spec JSON for every example."""
from __future__ import annotations

import json
import math
import os

import pytest

from lang_paths import EXAMPLES, ROOT
from nldsl import catalog
from nldsl.codes import CODES
from nldsl.errors import NLError, SpecError
from nldsl.spec import build_spec, load
from nldsl.spec import model as m
from nldsl.spec.export import compact_spans, from_json, json_schema, to_dict, to_json
from nldsl.source import Source
from nldsl.syntax import parse


def _codes(text_or_path) -> list[str]:
    with pytest.raises(NLError) as info:
        load(text_or_path)
    return [d.code for d in info.value.diagnostics if d.is_error]


def _setting(spec: m.Spec, name: str) -> m.Value:
    return spec.model.get(name)


# ---------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("text,value", [
    ("64", 64), ("1e-3", 1e-3), ("1_000_000", 1_000_000), (".5", 0.5), ("-0", 0), ("64 / 16", 4),
    ("10 / 4", 2.5), ("2 * (3 + 4) - 1", 13), ("-(2)", -2), ("1e999", math.inf), ("-1e999", -math.inf),
    ("9" * 50, int("9" * 50)), ("9" * 400, math.inf), ("9" * 5000, math.inf), ("1.5 * 2", 3.0),
], ids=["int", "float", "underscores", "leading_dot", "minus_zero", "exact_division", "float_division",
        "precedence", "negated_group", "overflow", "negative_overflow", "huge_int", "beyond_float", "too_many_digits",
        "float_times_int"])
def test_numbers_are_kept_exactly_or_as_inf(text, value):
    got = _setting(load(f"model m {{ x = {text} }}"), "x")
    assert isinstance(got, m.Number) and got.value == value and type(got.value) is type(value)


def test_integer_arithmetic_beyond_the_float_range_is_inf():
    spec = load("const A = " + "9" * 300 + "\nmodel m { x = A * A  y = -A * A }")
    assert (_setting(spec, "x").value, _setting(spec, "y").value) == (math.inf, -math.inf)


def test_nan_and_negative_zero_float_are_stored():
    spec = load("model m { a = nan  b = -0.0  c = inf - inf }")
    assert math.isnan(_setting(spec, "a").value)
    assert math.copysign(1, _setting(spec, "b").value) == -1
    assert math.isnan(_setting(spec, "c").value)


def test_other_values():
    spec = load('model m { s = "a \\"q\\"\\nline"  b = true  y = self  l = [q, k]  c = learned(1e-4)'
                '  d = data(softplus, scale = 0.5) }')
    assert _setting(spec, "s").value == 'a "q"\nline'
    assert _setting(spec, "b").value is True
    assert _setting(spec, "y").name == "self"
    assert [v.name for v in _setting(spec, "l").items] == ["q", "k"]
    call = _setting(spec, "d")
    assert call.name == "data" and call.positional[0].name == "softplus" and call.get("scale").value == 0.5
    assert _setting(spec, "c").render() == "learned(0.0001)"


def test_constants_substitute_with_the_use_site_span_and_canonical_text():
    spec = load("const D = 64\nconst H = D/16\nmodel m { heads = H }\n")
    heads = _setting(spec, "heads")
    assert (heads.value, heads.text, heads.span.line, heads.span.col) == (4, "H", 3, 19)
    assert spec.consts[1].value.text == "D / 16"


def test_constants_may_be_used_before_their_definition():
    assert _setting(load("model m { dim = D }\nconst D = 2 * E\nconst E = 8"), "dim").value == 16


# ---------------------------------------------------------------------------------------- structure


def test_transformer_is_two_levels(in_root):
    """NL §1.3: attention is non-parametric (f = ∞), everything else is outer-loop (every 1 steps)."""
    comps = dict(load("examples/transformer.nl").components())
    periods = {path: (c.update.period.kind, c.update.period.unit) for path, c in comps.items()}
    assert periods == {"transformer[0].attn": ("nonparametric", None), "transformer[0].ffn": ("every", "steps")}


def test_static_and_attention_defaults_are_implicit():
    spec = load("model m { component a : attention  component f : mlp  component n : neural_memory }")
    a, f, n = spec.model.components
    assert a.update.implicit and a.update.period.kind == "nonparametric"
    assert f.update.implicit and f.update.period.count.value == 1 and f.update.period.unit == "steps"
    assert n.update is None  # an in-context memory states its period


def test_memories_inherit_from_their_component_unless_they_say_otherwise():
    spec = load("block b { component t : self_modifying_titans {\n"
                "  update every 8 tokens  objective l2(target = self)  optimizer dgd(lr = memory(eta))\n"
                "  memory k : mlp  memory mem : mlp { update every 64 tokens  objective dot }\n} }\n"
                "model x { dim = 8  stack b }")
    t = spec.model.stacks[0].block.components[0]
    k, mem = t.children
    assert (k.update.period.count.value, k.update.implicit, k.objective.kind) == (8, True, "l2")
    assert k.update.span == t.update.span  # diagnostics point at the statement that set it
    assert (mem.update.period.count.value, mem.update.implicit, mem.objective.kind) == (64, False, "dot")
    assert mem.optimizer.implicit and mem.optimizer.get("lr").name == "memory"


def test_args_and_settings_are_both_parameters():
    comp = load("model m { component c : mlp(hidden = 32) { depth = 3 } }").model.components[0]
    assert comp.get("hidden").value == 32 and comp.get("depth").value == 3 and comp.get("x") is None
    assert set(comp.params()) == {"hidden", "depth"}


def test_train_statements():
    train = load('train { optimizer m3(lr = 1e-3) for matrices, component ffn, "*.bias"\n'
                 "  optimizer adamw\n  schedule cosine(warmup = 20)  eval every 50 steps (batches = 4)\n"
                 "  checkpoint every 100 steps (keep = 2)  steps = 10 }").train
    sels = train.optimizers[0].selectors
    assert [(s.kind, s.target) for s in sels] == [("matrices", None), ("component", "ffn"), ("glob", "*.bias")]
    assert train.optimizers[1].selectors == ()
    assert train.schedule.get("warmup").value == 20 and train.eval.period.count.value == 50
    assert train.checkpoint.get("keep").value == 2 and train.get("steps").value == 10


def test_transfer_flow_share():
    block = load("block b {\n transfer init titans.k -> ffn (grad = stopgrad)\n flow input -> a -> b\n"
                 " share state across batch\n}\nmodel m { dim = 8  stack b }").model.stacks[0].block
    t = block.transfers[0]
    assert (t.kind, t.source, t.target, t.get("grad").name) == ("init", "titans.k", "ffn", "stopgrad")
    assert block.flows[0].steps == ("input", "a", "b") and len(block.flows[0].step_spans) == 3
    assert (block.shares[0].what, block.shares[0].across) == ("state", "batch")


def test_block_arguments_bind_by_position_keyword_and_default():
    spec = load("block b(dim, hidden = 4 * dim, act = gelu) { component f : mlp(hidden = hidden) }\n"
                "model m { dim = 8  stack b(16, act = relu) * 3 }")
    stack = spec.model.stacks[0]
    assert {a.name: a.value.render() for a in stack.block.args} == {"dim": "16", "hidden": "64", "act": "relu"}
    assert stack.block.components[0].get("hidden").value == 64 and stack.times.value == 3
    assert spec.blocks[0].params[1].default is None  # depends on `dim`
    assert spec.blocks[0].params[2].default.name == "gelu"


def test_model_walk_paths():
    spec = load("block b { component t : cms { level f : mlp } }\nmodel m { dim = 8  component e : embedding"
                "  stack b  stack b }")
    assert [p for p, _ in spec.components()] == ["e", "b[0].t", "b[0].t.f", "b[1].t", "b[1].t.f"]


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("code", sorted(c for c in CODES if CODES[c].bad and "<" not in CODES[c].bad
                                        and c not in ("NL115", "NL116", "NL118")))
def test_every_code_example_fails_with_its_code_and_the_fix_loads(code):
    example = CODES[code]
    assert code in _codes(example.bad)
    load(example.fixed)


def test_all_errors_are_reported_not_only_the_first():
    text = ("const A = 1 / 0\nconst A = 2\nmodel m { dim = 2 * Z  dim = 3\n"
            "  component c : mlp { update never  update never }\n  stack nothere }\ntrain { flow a -> b }\n")
    assert sorted(_codes(text)) == ["NL110", "NL111", "NL113", "NL114", "NL120", "NL121", "NL123"]


def test_unknown_constant_suggests_the_closest():
    with pytest.raises(SpecError) as info:
        load("const HEADS = 4\nmodel m { h = 2 * HEDS }")
    (diag,) = info.value.diagnostics
    assert (diag.span.line, diag.span.col, diag.hint) == (2, 19, "did you mean 'HEADS'?")


def test_block_errors_are_reported_once_even_if_never_or_often_stacked():
    text = "block b { component f : mlp(hidden = 2 * nope) }\nmodel m { dim = 1  stack b  stack b }"
    assert _codes(text) == ["NL110"]
    assert _codes("block b { component f : mlp(hidden = 2 * nope) }") == ["NL110"]


@pytest.mark.parametrize("text,message", [
    ("block b(x) { component f : mlp }\nmodel m { stack b }", "block 'b' needs a value for 'x'"),
    ("block b(x) { component f : mlp }\nmodel m { stack b(1, 2) }", "block 'b' takes 1 argument(s), 2 given"),
    ("block b(x) { component f : mlp }\nmodel m { stack b(1, x = 2) }", "parameter 'x' is given twice"),
], ids=["missing", "too_many", "twice"])
def test_block_argument_errors(text, message):
    with pytest.raises(SpecError) as info:
        load(text)
    assert [d.message for d in info.value.diagnostics] == [message]


def test_circular_constants_are_one_error():
    assert _codes("const A = B + 1\nconst B = A\nmodel m { x = A }") == ["NL117"]


# ---------------------------------------------------------------------------------------- imports


def _write(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_imports_bring_constants_and_blocks_relative_to_the_file(tmp_path):
    _write(tmp_path, {"lib/common.nl": 'import "more.nl"\nconst D = 2 * E\nblock b(w = D) { component f : mlp(hidden = w) }\n'
                                       "model ignored { dim = 1 }\n",
                      "lib/more.nl": "const E = 32\n",
                      "main.nl": 'import "lib/common.nl"\nmodel m { dim = D  stack b }\n'})
    spec = load(str(tmp_path / "main.nl"))
    assert spec.model.name == "m" and [c.name for c in spec.consts] == ["E", "D"]
    assert spec.model.stacks[0].block.components[0].get("hidden").value == 64
    assert spec.imports[0].resolved == str(tmp_path / "lib" / "common.nl")
    assert spec.blocks[0].span.path == str(tmp_path / "lib" / "common.nl")


def test_errors_in_an_imported_file_point_into_that_file(tmp_path):
    _write(tmp_path, {"lib.nl": "const X = 1\nconst Y = 2 * nope\n", "main.nl": '\nimport "lib.nl"\n'})
    with pytest.raises(SpecError) as info:
        load(str(tmp_path / "main.nl"))
    where = [(d.code, os.path.basename(d.span.path), d.span.line) for d in info.value.diagnostics]
    assert sorted(where) == [("NL110", "lib.nl", 2), ("NL118", "main.nl", 2)]


def test_syntax_error_in_an_imported_file(tmp_path):
    _write(tmp_path, {"lib.nl": "const X = \n", "main.nl": 'import "lib.nl"\n'})
    with pytest.raises(SpecError) as info:
        load(str(tmp_path / "main.nl"))
    assert {(d.code, os.path.basename(d.span.path)) for d in info.value.diagnostics} == {
        ("NL102", "lib.nl"), ("NL118", "main.nl")}


def test_circular_import_points_at_the_import_that_closes_the_cycle(tmp_path):
    _write(tmp_path, {"a.nl": 'import "b.nl"\n', "b.nl": 'const Q = 1\nimport "a.nl"\n'})
    with pytest.raises(SpecError) as info:
        load(str(tmp_path / "a.nl"))
    (diag,) = [d for d in info.value.diagnostics if d.is_error]
    assert (diag.code, os.path.basename(diag.span.path), diag.span.line) == ("NL116", "b.nl", 2)


def test_missing_import_and_self_import(tmp_path):
    _write(tmp_path, {"a.nl": 'import "nothere.nl"\n', "s.nl": 'import "s.nl"\n', "d.nl": 'import "sub"\n'})
    (tmp_path / "sub").mkdir()
    assert _codes(str(tmp_path / "a.nl")) == ["NL115"]
    assert _codes(str(tmp_path / "s.nl")) == ["NL116"]
    assert _codes(str(tmp_path / "d.nl")) == ["NL115"]


def test_diamond_imports_are_not_duplicates_but_clashes_are(tmp_path):
    _write(tmp_path, {"d.nl": "const D = 1\n", "b.nl": 'import "d.nl"\n', "c.nl": 'import "d.nl"\n',
                      "a.nl": 'import "b.nl"\nimport "c.nl"\nmodel m { dim = D }\n',
                      "e.nl": "const D = 2\n", "x.nl": 'import "d.nl"\nimport "e.nl"\n'})
    assert _setting(load(str(tmp_path / "a.nl")), "dim").value == 1
    assert _codes(str(tmp_path / "x.nl")) == ["NL113"]


# ---------------------------------------------------------------------------------------- bad input


def test_load_distinguishes_paths_from_text(tmp_path):
    assert load("model m { dim = 1 }").path == "<string>"
    (tmp_path / "x.nl").write_text("model m { dim = 1 }")
    assert load(str(tmp_path / "x.nl")).path == str(tmp_path / "x.nl")
    assert load(tmp_path / "x.nl").model.name == "m"
    assert load("") == load("# nothing\n").model_copy(update={"span": load("").span})


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "empty", "latin1"])
def test_bad_files_give_diagnostics(tmp_path, kind):
    path = tmp_path / "f.nl"
    if kind == "directory":
        path.mkdir()
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "latin1":
        path.write_bytes("model m { x = \"é\" }".encode("latin-1"))
    expected = {"missing": "NL115", "directory": "NL115", "binary": "NL104", "empty": None, "latin1": "NL104"}
    if expected[kind] is None:
        assert load(str(path)).model is None
    else:
        assert _codes(str(path)) == [expected[kind]]


def test_ten_megabytes_of_input_load(tmp_path):
    path = tmp_path / "big.nl"
    filler = "# " + "x" * 97 + "\n"
    path.write_text(filler * 100_000 + 'model m { dim = 64  s = "a\\"b" }\n')
    assert path.stat().st_size > 10_000_000
    assert load(str(path)).model.get("dim").value == 64


def test_build_spec_from_a_tree():
    src = Source(path="m.nl", text="const D = 4\nmodel m { dim = D * 2 }")
    assert build_spec(parse(src), src) == load(src)


# ---------------------------------------------------------------------------------------- catalog


def test_catalog_entries_are_consistent():
    for kind in catalog.COMPONENTS.values():
        assert set(kind.owns) <= set(catalog.CATEGORIES)
        assert kind.default_update in (None, "static", "nonparametric")
        for p in kind.params:
            assert p.type in catalog.PARAM_TYPES, (kind.name, p.name)
    for table in (catalog.OBJECTIVES, catalog.INNER_OPTIMIZERS, catalog.OUTER_OPTIMIZERS, catalog.SCHEDULES):
        for kind in table.values():
            assert len(set(kind.param_names)) == len(kind.param_names), kind.name
    assert set(catalog.OUTER_OPTIMIZERS) >= {"adamw", "muon", "m3", "deep_momentum", "delta_momentum", "sgd"}
    assert catalog.suggest("moun", catalog.OUTER_OPTIMIZERS) == "muon"


# ---------------------------------------------------------------------------------------- golden + JSON


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_spec_matches_golden(name, in_root, update_golden):
    spec = load(f"examples/{name}")
    text = json.dumps(compact_spans(to_dict(spec)), indent=1, ensure_ascii=False) + "\n"
    golden = ROOT / "tests" / "golden" / name.replace(".nl", ".spec.json")
    if update_golden:
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"no golden yet: run pytest tests/lang --update-golden and review {golden}"
    assert text == golden.read_text(encoding="utf-8"), f"run pytest tests/lang --update-golden and review {golden}"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_json_round_trips(name, in_root):
    spec = load(f"examples/{name}")
    assert from_json(to_json(spec)) == spec


def test_json_schema_describes_the_spec():
    schema = json_schema()
    assert schema["title"] == "Spec" and "Component" in schema["$defs"]
    json.dumps(schema)
