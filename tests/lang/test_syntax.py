"""Stage 1 (nldsl.syntax): valid text parses with positions; invalid text gives one located NL10x."""
from __future__ import annotations

import pytest
from lark import Tree

from nldsl.errors import NLSyntaxError
from nldsl.source import Source
from nldsl.syntax import MAX_DEPTH, parse, parse_with_comments, terminal_text


def _error(text: str):
    with pytest.raises(NLSyntaxError) as info:
        parse(Source(path="t.nl", text=text))
    (diag,) = info.value.diagnostics
    return diag


STATEMENTS = {
    "import": 'import "lib.nl"',
    "const": "const D = 64 / 16 + 2 * (3 - 1)",
    "block": "block b(dim, heads = 4,) { component f : mlp }",
    "model": "model m { vocab = 256  dim = 64 }",
    "train": "train { steps = 10 }",
    "component": "model m { component c : mlp(hidden = 4 * 64) { depth = 2 } }",
    "memory": "block b { component t : self_modifying_titans { memory k : mlp(depth = 2) } }",
    "level": "block b { component f : cms { level fast : mlp { update every 8 tokens } } }",
    "update": "block b { component f : mlp { update every 4 steps (reduce = mean) } }",
    "objective": "block b { component f : mlp { objective huber(delta = 1.0, target = self) } }",
    "optimizer": "train { optimizer adamw(lr = 3e-3) for vectors, component ffn, \"*.bias\" }",
    "init": "block b { component f : mlp { init meta(grad = stopgrad) } }",
    "transfer": "block b { transfer init slow -> fast (grad = unrolled) }",
    "flow": "block b { flow input -> titans.k -> ffn -> output }",
    "share": "block b { share state across batch }",
    "stack": "model m { stack hope(dim = 64) * 2 }",
    "schedule": "train { schedule cosine(warmup = 20) }",
    "eval": "train { eval every 50 steps (batches = 4) }",
    "checkpoint": "train { checkpoint every 100 steps (keep = 2) }",
    "setting": "model m { data = text(\"a\", field = \"t\")  normalize = [q, k,]  x = -y }",
}


@pytest.mark.parametrize("rule", sorted(STATEMENTS))
def test_every_statement_parses_into_its_rule(rule):
    tree = parse(STATEMENTS[rule])
    assert any(sub.data == rule for sub in tree.iter_subtrees())


def test_positions_are_one_based_lines_and_columns():
    tree = parse("\nmodel m {\n  dim = 64\n}\n")
    setting = next(tree.find_data("setting"))
    assert (setting.meta.line, setting.meta.column, setting.meta.end_column) == (3, 3, 11)


def test_keywords_are_contextual_names_elsewhere():
    """`memory(eta)` is a call and `level` a setting value: keywords only bind at statement starts."""
    tree = parse("block b { component t : x { optimizer dgd(lr = memory(eta))  x = level } }")
    calls = [str(t.children[0]) for t in tree.find_data("call")]
    assert calls == ["memory"]


def test_empty_and_comment_only_files_parse():
    assert parse("").children == []
    tree, comments = parse_with_comments("# a\n  # b\n")
    assert tree.children == [] and [c.value for c in comments] == ["# a", "# b"]


def test_comments_are_returned_in_order_with_positions():
    _, comments = parse_with_comments('model m { # one\n  dim = 1  # two "not a string"\n}\n')
    assert [(c.line, c.value) for c in comments] == [(1, "# one"), (2, '# two "not a string"')]


def test_bom_is_ignored():
    assert isinstance(parse("\ufeffmodel m { dim = 1 }"), Tree)


ERRORS = [
    ("bad_character", "model m { dim = 64 ; }", "NL100", (1, 20), "unexpected character ';'"),
    ("unicode_name", "model é { }", "NL100", (1, 7), "unexpected character 'é' (U+00E9)"),
    ("missing_equals", "model m { dim 64 }", "NL101", (1, 15), "unexpected number 64"),
    ("keyword_as_setting", "model m { update = 1 }", "NL101", (1, 18), "unexpected '='"),
    ("unclosed_brace", "model m {\n  dim = 64\n", "NL102", (2, 10), "unexpected end of file"),
    ("dangling_operator", "const X = 1 +", "NL102", (1, 13), "unexpected end of file"),
    ("unterminated_string", 'train { data = text("a.txt) }', "NL103", (1, 21), "unterminated string"),
    ("newline_in_string", 'const S = "a\nb"', "NL103", (1, 11), "unterminated string"),
    ("nul_byte", "model m {}\x00", "NL104", (1, 11), "this is not a UTF-8 text file"),
    ("replacement_char", "\ufffd\ufffd", "NL104", (1, 1), "this is not a UTF-8 text file"),
    ("deep_brackets", "const X = " + "(" * (MAX_DEPTH + 5) + "1" + ")" * (MAX_DEPTH + 5), "NL105",
     (1, 11 + MAX_DEPTH), "nesting deeper than 64 levels"),
    ("long_operator_chain", "const X = " + " + ".join(["1"] * 400), "NL105", None,
     "expression nested too deeply"),
]


@pytest.mark.parametrize("text,code,where,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_syntax_errors_are_located_diagnostics(text, code, where, message):
    diag = _error(text)
    assert (diag.code, diag.message) == (code, message)
    assert diag.span.path == "t.nl"
    if where is not None:
        assert (diag.span.line, diag.span.col) == where


def test_unexpected_token_hint_lists_expected_tokens():
    diag = _error("model m { dim 64 }")
    assert diag.hint == "expected '='"
    assert (diag.span.col, diag.span.end_col) == (15, 17)


def test_unclosed_brace_hint_says_so():
    assert _error("model m {\n").hint.startswith("a `{` is not closed: add `}`")


def test_terminal_names_read_well():
    assert terminal_text("RBRACE") == "'}'"
    assert terminal_text("NAME") == "a name"
    assert terminal_text("UPDATE") == "'update'"


def test_large_input_parses(tmp_path):
    """Thousands of statements parse (the parser is linear; 10 MB of input is in test_spec)."""
    line = "const C{} = {} * 2  # a constant with a comment\n"
    text = "".join(line.format(i, i) for i in range(4_000))
    tree = parse(text)
    assert len(tree.children) == 4_000
