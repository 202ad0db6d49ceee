"""The front end as a new user meets it (issue 2): every promise tried from the outside.

Each test drives the command line (``nldsl.cli.main``, and the installed ``nldsl`` script once) or the
public Python API (``nldsl.load/check/graph/render_graph/render_ladder/explain/format_source``) on inputs
written here, not on the fixtures the implementation was developed against: odd characters before a
span, several files and imports, every example and odd specs drawn in every format, formatter round
trips, JSON with non-finite numbers, hostile input, and one spec that writes every concept of DESIGN §2.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nldsl
from nldsl import cli
from nldsl.checks.codes import CHECK_CODES
from nldsl.codes import CODES
from nldsl.errors import NLError
from nldsl.source import Diagnostic, Source, render
from nldsl.spec.export import from_json, json_schema, to_json
from nldsl.syntax import parse

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.nl"))
HEADER = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning|note)\[(?P<code>NL\d{3})\]: .+$")
TRAIN = 'train {\n  optimizer adamw(lr = 1e-3) for all\n  data = text("builtin:shakespeare")\n}\n'


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    return code, out, err


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def blocks(out: str) -> list[list[str]]:
    """The printed diagnostics, one list of lines each (they are separated by a blank line)."""
    return [b.splitlines() for b in out.strip().split("\n\n") if HEADER.match(b.splitlines()[0])]


def caret(block: list[str]) -> tuple[str, str]:
    """``(source line as shown, caret line)`` with the gutter removed."""
    return block[2].split(" | ", 1)[1], block[3].split(" | ", 1)[1]


# ---------------------------------------------------------------------------------------------- check


def test_check_prints_every_diagnostic_of_every_file_with_line_caret_and_hint(capsys, tmp_path):
    a = write(tmp_path / "a.nl", "model m {\n  dim = 64\n  component x : mpl\n  component y : mlp(hiden = 3)\n"
                                  "  component z : attention(heads = 5)\n}\n")
    b = write(tmp_path / "b.nl", "const D = 64\nmodel n { dim = DD * 2 }\n")
    code, out, _ = run(capsys, "check", a, b)
    found = blocks(out)
    heads = [HEADER.match(bl[0]) for bl in found]
    assert code == 1
    assert [(h["path"], h["line"], h["code"]) for h in heads] == [
        (str(a), "3", "NL200"), (str(a), "4", "NL201"), (str(a), "5", "NL303"), (str(b), "2", "NL110")]
    for block in found:
        line, marks = caret(block)
        col = int(HEADER.match(block[0])["col"])
        assert block[1].strip() == "|" and set(marks.strip()) == {"^"} and marks.index("^") == col - 1
        assert block[-1].strip().startswith("= hint:")
    assert "did you mean 'mlp'?" in out and "did you mean 'hidden'?" in out and "did you mean 'D'?" in out
    assert out.strip().endswith("4 errors in 2 files")


def test_check_exit_codes_warnings_and_strict(capsys, tmp_path):
    clean = write(tmp_path / "clean.nl", "model m { dim = 64  component f : mlp }\n" + TRAIN)
    warn = write(tmp_path / "warn.nl", "model m {\n  dim = 64\n  component f : mlp {\n    update never\n"
                                        "    objective l2\n  }\n}\n" + TRAIN)
    assert run(capsys, "check", clean)[0] == 0
    code, out, _ = run(capsys, "check", warn)
    assert code == 0 and "warning[NL229]" in out and "1 warning in 1 file" in out
    assert run(capsys, "check", "--strict", warn)[0] == 1
    assert run(capsys, "check", "--strict", clean)[0] == 0
    assert run(capsys, "check", "-q", clean)[1] == ""


def test_errors_of_imported_files_name_those_files(capsys, tmp_path):
    write(tmp_path / "lib" / "blocks.nl", "const W = 128\nblock ffn(width = W) {\n"
                                           "  component f : mlp(hidden = width, activation = gleu)\n}\n")
    write(tmp_path / "lib" / "broken.nl", "const X = (1\n")
    main = write(tmp_path / "main.nl", 'import "lib/blocks.nl"\nmodel m { dim = 64  stack ffn }\n')
    other = write(tmp_path / "other.nl", 'import "lib/broken.nl"\nmodel m { dim = 64 }\n')
    code, out, _ = run(capsys, "check", main, other)
    heads = {(HEADER.match(b[0])["path"], HEADER.match(b[0])["code"]) for b in blocks(out)}
    lib = tmp_path / "lib"
    assert code == 1
    assert heads == {(str(lib / "blocks.nl"), "NL209"), (str(lib / "broken.nl"), "NL102"), (str(other), "NL118")}
    shown = next(b for b in blocks(out) if "NL209" in b[0])
    assert "activation = gleu" in shown[2] and "did you mean 'gelu'" in shown[-1]
    assert blocks(out)[1][2].startswith("1 | const X = (1")


@pytest.mark.parametrize("before", ["\t", "\t\t  ", "名前 = 1", "😀😀", "é", "\u200b"],
                         ids=["tab", "tabs-and-spaces", "cjk", "emoji", "combining", "zero-width"])
def test_caret_sits_under_the_span_after_tabs_and_unicode(capsys, tmp_path, before):
    import unicodedata

    path = write(tmp_path / "u.nl", f'const S = "{before}"\tconst Z = S + 1\n')
    _, out, _ = run(capsys, "check", path)
    [block] = blocks(out)
    line, marks = caret(block)
    assert HEADER.match(block[0])["code"] == "NL114" and "\t" not in line

    def width(text: str) -> int:
        return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
                   for c in text)
    assert marks == " " * width(line[:line.index("S + 1")]) + "^", (line, marks)


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["", "bom"])
def test_line_numbers_and_shown_lines_agree_for_every_line_ending(capsys, tmp_path, newline, bom):
    text = bom + newline.join(["# header \f comment", "model m {", "  dim = 64", "  component a : attention(heads = 5)",
                               "}", ""])
    _, out, _ = run(capsys, "check", write(tmp_path / "n.nl", text))
    block = blocks(out)[0]
    assert HEADER.match(block[0])["line"] == "4" and block[2] == "4 |   component a : attention(heads = 5)"
    assert caret(block)[1] == " " * 34 + "^"


def test_line_separators_in_comments_do_not_shift_the_shown_line(capsys, tmp_path):
    text = "# a\u2028b\x0cc\x1cd\nmodel m {\n  dim = 64\n  component a : attention(heads = 5)\n}\n"
    _, out, _ = run(capsys, "check", write(tmp_path / "s.nl", text))
    assert blocks(out)[0][2] == "4 |   component a : attention(heads = 5)"


def test_long_lines_are_shown_as_a_window_around_the_span(capsys, tmp_path):
    text = "const A = [" + ", ".join(["1"] * 3000) + ", Q + 1]\nmodel m { dim = 64 }\n"
    _, out, _ = run(capsys, "check", write(tmp_path / "long.nl", text))
    block = blocks(out)[0]
    line, marks = caret(block)
    assert HEADER.match(block[0])["code"] == "NL110" and len(line) < 400
    assert line[marks.index("^")] == "Q"


def test_messages_stay_on_one_line_and_control_characters_are_not_printed(capsys, tmp_path):
    text = 'model m { dim = 64  component f : mlp }\n' + TRAIN.replace("builtin:shakespeare", "a\\nb\\tc")
    _, out, _ = run(capsys, "check", write(tmp_path / "c.nl", text))
    block = next(b for b in blocks(out) if "NL409" in b[0])
    assert "a\\nb\\tc" in block[0] and HEADER.match(block[0])
    _, out, _ = run(capsys, "check", write(tmp_path / "bin.nl", b"model m {\x01\x02\x1b[31m\x00}"))
    assert "NL104" in out and "\x1b" not in out and "\x01" not in out


def test_render_and_cli_agree_on_plain_text(capsys, tmp_path):
    path = write(tmp_path / "p.nl", "model m {\n  dim = 64\n  component a : attention(heads = 5)\n}\n")
    _, out, _ = run(capsys, "check", "-q", path)
    assert out == "\n\n".join(render(d) for d in nldsl.check(path)) + "\n\n"


# ---------------------------------------------------------------------------------------------- codes


def test_at_least_25_stable_codes_each_documented_with_bad_and_fixed_examples():
    doc = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert len(CHECK_CODES) >= 25
    for code in list(CODES) + list(CHECK_CODES):
        section = doc.split(f"### {code}: ", 1)[1].split("\n### ", 1)[0]
        if code != "NL118":
            assert "Bad" in section and "Fixed:" in section, code


@pytest.mark.parametrize("text, code, hint", [
    ("model m { dim = 64  component f : mlpp }", "NL200", "did you mean 'mlp'?"),
    ("const DIM = 64\nmodel m { dim = DIMM }", "NL300", "did you mean 'DIM'?"),
    ("block ffn { component f : mlp }\nmodel m { dim = 64  stack fnn }", "NL111", "did you mean 'ffn'?"),
    ("model m { dim = 64  component f : mlp { updte every 1 steps } }", "NL101", "did you mean `update`?"),
    ("modle m { dim = 64 }", "NL101", "did you mean `model`?"),
    ("model m { dim = 64  component f : mlp  flow input -> ff -> output }", "NL207", "did you mean 'f'?"),
    ("model m { dim = 64  component f : mlp(activation = gleu) }", "NL209", "did you mean 'gelu'?"),
    ("model m { dimm = 64 }", "NL201", "did you mean 'dim'?"),
], ids=["kind", "constant", "block", "keyword", "model-keyword", "flow", "activation", "setting"])
def test_unknown_names_say_did_you_mean(text, code, hint):
    diags = nldsl.check(text)
    assert any(d.code == code and hint in (d.hint or "") for d in diags), [(d.code, d.hint) for d in diags]


@pytest.mark.parametrize("text, code", [
    ("model m { dim = 64  component f : mlp  component f : mlp }", "NL113"),
    ("model m {\n  dim = 64\n  component t : neural_memory { update every 16 tokenz  objective l2"
     "  optimizer gd }\n}", "NL206"),
    ("model m { dim = 64  component f : mlp(hidden = -0) }", "NL301"),
    ("model m { dim = 64  component f : mlp(hidden = 1e999) }", "NL302"),
    ("model m { dim = 64.0  component a : attention(heads = 5) }", "NL303"),   # whole floats count
    ("model m {\n  dim = 64\n  component t : neural_memory { update every 512 tokens  objective l2"
     "  optimizer gd }\n}\n" + TRAIN.replace("  data", "  seq = 256.0\n  data"), "NL305"),
    ("model m {\n  dim = 64\n  component c : cms(variant = nested) { objective task  optimizer gd\n"
     "    level a : mlp { update every 16 tokens }\n    level b : mlp { update every 24 tokens } }\n}", "NL214"),
    ("model m { dim = 64  component a : mlp  flow input -> a -> a -> output }", "NL215"),  # a self-loop
    ("model m { dim = 64  component f : mlp }\n" + TRAIN.replace("  data", "  optimizer sgd for matrices\n  data"),
     "NL216"),
    ("model m { dim = 64  component f : mlp }\n" + TRAIN.replace("for all", "for vectors"), "NL217"),
    ("model m {\n  dim = 64\n  component t : neural_memory { update every 16 tokens  objective l2 }\n}", "NL218"),
    ("model m {\n  dim = 64\n  component t : neural_memory { update every 16 tokens  objective task"
     "  optimizer gd }\n}", "NL219"),
    ("model m { dim = 64  component a : attention { objective task } }", "NL220"),
    ("model m {\n  dim = 64\n  component t : neural_memory { update every 16 tokens  objective l2  optimizer gd\n"
     "    share state across batch }\n}", "NL221"),
    ("model m { dim = 64  component f : mlp }\n" + TRAIN.replace("  data", "  steps = 1e2\n  eval every 500 steps\n"
                                                                 "  data"), "NL403"),
], ids=["duplicate", "unit", "minus-zero", "overflow", "float-dim-heads", "float-seq-chunk", "periods",
        "self-loop", "two-owners", "no-owner", "no-optimizer", "memory-objective", "task-on-attention",
        "shared-state", "float-steps"])
def test_each_category_of_the_issue_is_diagnosed(text, code):
    assert code in {d.code for d in nldsl.check(text)}


@pytest.mark.parametrize("text, codes", [
    ("model m {\n  dim = 64\n  component f : mlp\n  component f : mlp\n  component a : attention(heads = 5)\n"
     "  component g : mpl\n}\n", ["NL113", "NL303", "NL200"]),
    ("block b { component f : mlp }\nmodel m {\n  dim = 64\n  stack bb\n  stack b(x = 1)\n  flow input -> b -> output\n"
     "  component a : attention(heads = 5)\n}\n", ["NL111", "NL112", "NL303"]),
    ("const A = 1 / 0\nconst B = A + 1\nmodel m {\n  dim = 64\n  layers = B\n  component g : mpl\n}\n",
     ["NL114", "NL200"]),
    ("model m {\n  dim = 8\n  dim = 16\n  component a : attention(heads = 5)\n}\n", ["NL123", "NL303"]),
], ids=["duplicate", "bad-stacks", "failed-constant", "repeated-setting"])
def test_spec_errors_and_check_errors_are_reported_together_without_echoes(capsys, tmp_path, text, codes):
    code, out, _ = run(capsys, "check", write(tmp_path / "x.nl", text))
    assert code == 1 and [HEADER.match(b[0])["code"] for b in blocks(out)] == codes


def test_imports_missing_circular_empty_directory_binary_and_self(capsys, tmp_path):
    write(tmp_path / "a.nl", 'import "b.nl"\nmodel m { dim = 64 }\n')
    write(tmp_path / "b.nl", 'import "a.nl"\n')
    cases = {"missing": ('import "nope.nl"\n', "NL115"), "empty": ('import ""\n', "NL115"),
             "directory": ('import "."\n', "NL115"), "self": ('import "self.nl"\n', "NL116"),
             "binary": (f'import "{tmp_path / "bin.dat"}"\n', "NL104")}
    write(tmp_path / "bin.dat", bytes(range(256)))
    assert "NL116" in run(capsys, "check", tmp_path / "a.nl")[1]
    for name, (text, code) in cases.items():
        path = write(tmp_path / f"{name}.nl", text)
        rc, out, _ = run(capsys, "check", path)
        assert rc == 1 and f"[{code}]" in out, name


def test_an_import_chain_of_50_files_works_and_a_deeper_one_is_diagnosed(capsys, tmp_path):
    for i in range(80):
        nxt = f'import "f{i + 1}.nl"\n' if i < 79 else ""
        write(tmp_path / f"f{i}.nl", nxt + f"const C{i} = {i}\n")
    write(tmp_path / "ok.nl", 'import "f30.nl"\nmodel m { dim = C79 }\n')   # 50 files deep
    assert run(capsys, "check", tmp_path / "ok.nl")[0] == 0
    write(tmp_path / "deep.nl", 'import "f0.nl"\nmodel m { dim = 64 }\n')
    code, out, _ = run(capsys, "check", tmp_path / "deep.nl")
    assert code == 1 and "[NL119]" in out and "recursion" not in out


# ---------------------------------------------------------------------------------------------- drawings

ODD = {
    "no_model": "const A = 1\n",
    "no_stacks": "model m { dim = 64 }\n",
    "one_component": "model m { dim = 64  component f : mlp }\n",
    "deep": "model m {\n  dim = 64\n  component c : cms { objective task  optimizer gd(lr = 0.1)\n"
            "    level a : mlp { update every 1 tokens }\n    level b : mlp { update every 4 tokens } }\n}\n"
            "train { optimizer adamw for all  data = text(\"builtin:shakespeare\")  seq = 2147483647 }\n",
}


@pytest.mark.parametrize("name", [p.name for p in EXAMPLES] + sorted(ODD))
def test_graph_and_ladder_draw_every_example_and_odd_specs(capsys, tmp_path, name):
    src = ROOT / "examples" / name if name.endswith(".nl") else write(tmp_path / f"{name}.nl", ODD[name])
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "dot": b"digraph"}
    for ext in ("svg", "png", "dot") if name in ("tiny.nl", "no_model", "one_component") else ("dot",):
        out = tmp_path / "g" / f"{name}.{ext}"
        assert run(capsys, "graph", src, "-o", out)[0] == 0 and out.read_bytes().startswith(magic[ext])
    for ext in {"hope.nl": ("png",), "no_model": ("png", "svg"), "deep": ("png",), "one_component": ("svg",),
                "no_stacks": ("svg",)}.get(name, ()):
        out = tmp_path / "l" / f"{name}.{ext}"
        assert run(capsys, "ladder", src, "-o", out)[0] == 0 and out.read_bytes().startswith(magic[ext])


def test_drawing_output_paths(capsys, tmp_path):
    src = ROOT / "examples" / "transformer.nl"
    for bad in ("g.jpg", "g", "g.", "l.dot"):
        cmd = "ladder" if bad.startswith("l") else "graph"
        code, _, err = run(capsys, cmd, src, "-o", tmp_path / bad)
        assert code == 2 and err.startswith("nldsl: ") and "use ." in err
    (tmp_path / "blocker").write_text("x")
    code, _, err = run(capsys, "graph", src, "-o", tmp_path / "blocker" / "g.svg")
    assert code == 1 and "cannot write" in err
    assert run(capsys, "ladder", src, "-o", tmp_path / "new" / "dir" / "l.png", "--steps", "2")[0] == 0
    assert run(capsys, "ladder", src, "-o", tmp_path / "l.png", "--steps", "10000000")[0] == 2


def test_a_dense_ladder_over_a_million_tokens_is_drawn(tmp_path):
    graph = nldsl.graph(ODD["deep"])
    assert nldsl.render_ladder(graph, tmp_path / "dense.png", tokens=10**6).read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------- explain


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_explain_every_example(capsys, path):
    code, out, _ = run(capsys, "explain", path, "--width", "220")
    assert code == 0 and re.search(r": \d+ levels?", out) and "level" in out and "optimizer" in out


def test_explain_transformer_is_two_levels_infinite_and_zero():
    from nldsl.explain import rows

    table = rows(nldsl.graph(ROOT / "examples" / "transformer.nl"))
    assert sorted({(r.level, r.frequency) for r in table}) == [(1, "∞"), (2, "0")]
    assert {r.kind for r in table if r.level == 1} == {"attention"}
    assert "2 levels" in nldsl.explain(str(ROOT / "examples" / "transformer.nl"))


# ---------------------------------------------------------------------------------------------- fmt

MESSY = "# top\nmodel m{dim=64 # width\n  component f:mlp(hidden=4*64,)\n\n\n\n  # lone\n  layers=2}\n" \
        "train{optimizer adamw(lr=1e-3)for all\r\ndata=text(\"builtin:shakespeare\")}  # end\n"


def test_fmt_rewrites_in_place_keeps_comments_and_the_spec(capsys, tmp_path):
    a, b = write(tmp_path / "a.nl", MESSY), write(tmp_path / "b.nl", "model m { dim = 64 }\n")
    before = nldsl.load(a)
    code, _, err = run(capsys, "fmt", a, b)
    text = a.read_text(encoding="utf-8")
    assert code == 0 and "1 file reformatted, 1 file left unchanged" in err
    for comment in ("# top", "# width", "# lone", "# end"):
        assert comment in text
    from nldsl.spec.export import to_dict
    assert to_dict(nldsl.load(a), spans=False) == to_dict(before, spans=False) | {"path": str(a)}
    assert parse(text) == parse(MESSY.replace("\r\n", "\n"))
    assert nldsl.format_source(text) == text == nldsl.format_source(a)


def test_fmt_check_reports_without_writing(capsys, tmp_path):
    a, b = write(tmp_path / "a.nl", MESSY), write(tmp_path / "b.nl", "model m { dim = 64 }\n")
    code, _, err = run(capsys, "fmt", "--check", a, b)
    assert code == 1 and f"would reformat {a}" in err and a.read_bytes() == MESSY.encode()
    assert run(capsys, "fmt", "--check", b)[0] == 0
    bad = write(tmp_path / "bad.nl", "model m {\n")
    code, _, err = run(capsys, "fmt", bad, b, tmp_path / "missing.nl")
    assert code == 1 and "NL102" in err and "NL115" in err and bad.read_text() == "model m {\n"
    assert "1 file left unchanged, 2 files failed" in err


def test_fmt_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("model m{dim=64}\n"))
    code, out, _ = run(capsys, "fmt", "-")
    assert code == 0 and out == "model m { dim = 64 }\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("model m{dim=64}\n"))
    code, out, err = run(capsys, "fmt", "--check", "-")
    assert code == 1 and out == "" and "would reformat <stdin>" in err
    monkeypatch.setattr(sys, "stdin", io.StringIO("model m { dim = 64 }\n"))
    assert run(capsys, "fmt", "--check", "-")[0] == 0


@pytest.mark.parametrize("text", [
    "const A = - -1\nconst B = 1 - -2\nconst C = -(3)\n",
    "const S = \"q\\\"uote\\\\ and \\n newline\"  # c\n",
    "model m {\n  dim = 64  # a\n  component f : mlp(\n    hidden = 3,  # b\n    depth = 2,\n  ) { update never }\n}\n",
    "block b(x,) { }\nmodel m { dim = 1  stack b(1) * 2 }\n",
    "\ufeffmodel m { dim = 64 }\r\n# crlf\r\n",
    "model m {\r  dim = 64\r}\r# classic mac\r",
], ids=["unary", "string", "multiline-args", "trailing-commas", "bom-crlf", "cr"])
def test_fmt_is_idempotent_and_keeps_the_tree(text):
    out = nldsl.format_source(text)
    assert nldsl.format_source(out) == out and parse(out) == parse(text)
    assert sorted(re.findall(r"#[^\n\r]*", out)) == sorted(c.rstrip() for c in re.findall(r"#[^\n\r]*", text)) \
        or "# b" in out


@pytest.mark.parametrize("seed", range(12))
def test_fmt_keeps_comments_and_tree_wherever_comments_and_line_breaks_are_put(seed):
    """Comments and line breaks inserted between random tokens of the examples (a seeded mutation fuzz)."""
    import random

    from nldsl.syntax import parse_with_comments, parser

    rng = random.Random(seed)
    text = rng.choice(EXAMPLES).read_text(encoding="utf-8")
    out = []
    for tok in parser().lex(text, dont_ignore=True):
        out.append(tok.value)
        roll = rng.random()
        if tok.type != "COMMENT" and roll < 0.05:
            out.append(f"  # note {len(out)}\n")
        elif roll < 0.1:
            out.append("\n" * rng.randint(1, 3) + " " * rng.randint(0, 5))
    messy = "".join(out)

    def words(source: str) -> list[str]:
        return sorted(w for c in parse_with_comments(source)[1] for w in c.value.split() if w != "#")
    formatted = nldsl.format_source(messy)
    assert nldsl.format_source(formatted) == formatted
    assert parse(formatted) == parse(messy) and words(formatted) == words(messy)


# ---------------------------------------------------------------------------------------------- spec and schema


def test_spec_json_with_non_finite_numbers_round_trips_and_fits_the_schema(capsys, tmp_path):
    path = write(tmp_path / "inf.nl", "const A = 1e999\nconst B = -1e999\nconst C = nan\nconst H = " + "9" * 300
                 + "\nmodel m { dim = 64 }\n")
    code, out, _ = run(capsys, "spec", path, "--json")
    data = json.loads(out)        # strict JSON: no NaN/Infinity literals
    assert code == 0 and [c["value"]["value"] for c in data["consts"][:3]] == ["Infinity", "-Infinity", "NaN"]
    spec = from_json(out)
    assert spec.consts[0].value.value == float("inf") and spec.consts[3].value.value == 10**300 - 1
    code, schema_text, _ = run(capsys, "schema")
    schema = json.loads(schema_text)
    assert code == 0 and schema["type"] == "object" and "Number" in schema["$defs"]
    allowed = schema["$defs"]["Number"]["properties"]["value"]["anyOf"]
    assert {"enum": ["Infinity", "-Infinity", "NaN"]} in allowed
    for example in [path] + EXAMPLES:
        data = json.loads(to_json(nldsl.load(example)))
        assert _schema_errors(data, schema, schema) == [], example
    bad = json.loads(to_json(nldsl.load(path)))
    bad["consts"][0]["value"]["value"] = "inf"
    bad["model"]["unknown"] = 1
    assert len(_schema_errors(bad, schema, schema)) == 2


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _schema_errors(value, node: dict, root: dict, where: str = "$") -> list[str]:
    """The subset of JSON Schema that pydantic writes ($ref, anyOf/oneOf, type, const, enum, properties,
    required, additionalProperties, items), enough to validate the spec JSON without jsonschema."""
    if "$ref" in node:
        return _schema_errors(value, root["$defs"][node["$ref"].split("/")[-1]], root, where)
    for key in ("anyOf", "oneOf"):
        if key in node:
            ok = [opt for opt in node[key] if not _schema_errors(value, opt, root, where)]
            return [] if ok else [f"{where}: no {key} option fits"]
    kind = node.get("type")
    if kind == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        return [f"{where}: not an integer"]
    if kind == "number" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return [f"{where}: not a number"]
    if kind in _TYPES and not isinstance(value, _TYPES[kind]):
        return [f"{where}: not {kind}"]
    if "const" in node and value != node["const"] or "enum" in node and value not in node["enum"]:
        return [f"{where}: {value!r} not allowed"]
    out: list[str] = []
    if isinstance(value, dict):
        props = node.get("properties", {})
        out += [f"{where}: missing {k}" for k in node.get("required", ()) if k not in value]
        for key, item in value.items():
            if key in props:
                out += _schema_errors(item, props[key], root, f"{where}.{key}")
            elif node.get("additionalProperties") is False:
                out.append(f"{where}: unexpected {key}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            out += _schema_errors(item, node["items"], root, f"{where}[{i}]")
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_spec_json_of_every_example_round_trips(path):
    spec = nldsl.load(path)
    assert from_json(to_json(spec)) == spec
    assert set(json_schema()["required"]) <= set(json.loads(to_json(spec)))


# ---------------------------------------------------------------------------------------------- bad input

BAD = {
    "emoji_name": ("model m { dim = 64  component 😀 : mlp }\n", "NL100"),
    "unicode_name": ("model m { dim = 64  component café : mlp }\n", "NL100"),
    "hex": ("model m { dim = 0x10 }\n", "NL100"),
    "glued_unit": ("model m {\n  dim = 64\n  component t : neural_memory { update every 4tokens }\n}\n", "NL100"),
    "overflow": ("model m { dim = 1e999 }\n", "NL302"),
    "neg_overflow": ("model m { dim = -1e999 }\n", "NL302"),
    "nan": ("model m { dim = nan }\n", "NL302"),
    "minus_zero": ("model m { dim = -0 }\n", "NL301"),
    "underflow": ("model m { dim = 64  component n : norm(eps = 1e-400) }\n", "NL301"),
    "huge_int": ("model m { dim = " + "9" * 5000 + " }\n", "NL302"),
    "string_nl": ('const S = "a\nb"\n', "NL103"),
    "string_nul": ('const S = "a\x00b"\n', "NL104"),
    "unclosed": ("model m {\n  dim = 64\n", "NL102"),
    "deep_brackets": ("const X = " + "(" * 500 + "1" + ")" * 500 + "\n", "NL105"),
    "deep_blocks": ("model m { dim = 8 " + "component a : cms { " * 200 + "}" * 200 + " }\n", "NL105"),
    "deep_operators": ("const X = " + " + ".join(["1"] * 400) + "\n", "NL105"),
    "deep_negation": ("const X = " + "-" * 400 + "1\n", "NL105"),
    "division": ("const X = 1 / 0\n", "NL114"),
    "const_cycle": ("const A = B\nconst B = A\n", "NL117"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_gives_diagnostics_never_a_traceback(capsys, tmp_path, name):
    text, code = BAD[name]
    path = write(tmp_path / f"{name}.nl", text)
    for argv in (("check", path), ("spec", path), ("fmt", "--check", path), ("explain", path), ("graph", path)):
        rc, out, err = run(capsys, *argv)
        if argv[0] == "check":
            assert rc == 1 and f"[{code}]" in out, out
        else:
            assert rc in (0, 1)
    assert code in {d.code for d in nldsl.check(text)}


def test_files_that_are_not_nl_text(capsys, tmp_path, monkeypatch):
    empty, blank = write(tmp_path / "empty.nl", ""), write(tmp_path / "blank.nl", "  \n# just a comment\n\t\n")
    assert run(capsys, "check", empty)[0] == 0 and run(capsys, "check", blank)[0] == 0
    (tmp_path / "dir.nl").mkdir()
    binary = write(tmp_path / "bin.nl", bytes(range(256)) * 4)
    for path, code in ((tmp_path / "missing.nl", "NL115"), (tmp_path / "dir.nl", "NL115"), (binary, "NL104")):
        for cmd in ("check", "spec", "explain", "graph", "fmt"):
            rc, out, err = run(capsys, cmd, path)
            assert rc == 1 and code in out + err, (cmd, path)

    def deny(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", deny)
    rc, out, _ = run(capsys, "check", empty)
    assert rc == 1 and "Permission denied" in out


def test_ten_megabytes_of_input(capsys, tmp_path):
    path = write(tmp_path / "big.nl", "# " + "x" * 10_000_000 + "\nmodel m { dim = 64  component f : mlp(hidden = 0) }\n")
    rc, out, _ = run(capsys, "check", path)
    assert rc == 1 and "NL301" in out and len(out) < 5000


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_device_is_read_no_further_than_the_size_limit(capsys, tmp_path):
    rc, out, _ = run(capsys, "check", "/dev/zero")
    assert rc == 1 and "[NL106]" in out
    rc, out, _ = run(capsys, "check", write(tmp_path / "z.nl", 'import "/dev/zero"\nmodel m { dim = 64 }\n'))
    assert rc == 1 and "[NL106]" in out


def test_long_chains_of_constants_do_not_exhaust_the_stack():
    forward = "\n".join(f"const C{i} = C{i + 1} + 1" for i in range(1500)) + "\nconst C1500 = 0\nmodel m { dim = C0 }\n"
    backward = "const C0 = 1\n" + "\n".join(f"const C{i} = C{i - 1} + 1" for i in range(1, 1500)) + "\n"
    assert nldsl.load(forward).model.get("dim").value == 1500
    assert nldsl.check(backward + "model m { dim = C1499 }\n") == []


def test_the_installed_script_never_prints_a_traceback(tmp_path):
    exe = shutil.which("nldsl") or str(Path(sys.executable).parent / "nldsl")
    bad = write(tmp_path / "x.nl", b"\xff\xfe model \x00 {")
    proc = subprocess.run([exe, "check", str(bad), str(tmp_path / "nope.nl")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert "[NL104]" in proc.stdout and "[NL115]" in proc.stdout


# ---------------------------------------------------------------------------------------------- concepts

LIB = """\
# constants and a parameterised block shared by the spec below
const D = 64
const HEADS = D / 16
block ffn_block(dim, mult = 4) {
  component ffn : mlp(hidden = mult * dim, activation = silu)
  flow input -> ffn -> output
}
"""

EVERYTHING = """\
import "lib/common.nl"
const CHUNK = 8

block memories(dim, heads = HEADS, chunk = CHUNK) {
  component attn : attention(heads = heads, window = 64, kv_heads = 2, normalize = [q, k]) { update nonparametric }
  component titans : neural_memory(heads = heads, depth = 2, conv = 4, normalize = [q, k]) {
    update every chunk tokens
    objective huber(delta = 1.0)
    optimizer momentum(lr = data(softplus, scale = 0.01), retain = data(sigmoid), beta = learned(0.9))
    init meta(grad = stopgrad)
  }
  component lp_mem : neural_memory(heads = heads) {
    update every chunk tokens  objective lp(p = 3)  optimizer adam(lr = 0.01, beta1 = 0.9, beta2 = 0.999)  init zeros
  }
  component dot_mem : neural_memory(heads = heads) {
    update every chunk tokens  objective dot  optimizer delta_momentum(lr = 0.1, beta = 0.9)  init normal(std = 0.02)
  }
  component deep_mem : neural_memory(heads = heads) {
    update every chunk tokens  objective l2  optimizer deep_momentum(lr = 0.1, beta = 0.9, depth = 2)
  }
  component ns_mem : neural_memory(heads = heads) {
    update every chunk tokens  objective l2  optimizer newton_schulz(lr = 0.1, beta = 0.9, steps = 5)
  }
  component self_mod : self_modifying_titans(heads = heads, q = static) {
    update every chunk tokens
    objective l2(target = self)
    optimizer dgd(lr = memory(eta), retain = memory(alpha), momentum = learned(0.5))
    memory k : mlp
    memory v : mlp
    memory eta : mlp
    memory alpha : mlp
    memory mem : mlp { update every 2 * chunk tokens }
  }
  component cms_seq : cms(variant = sequential) {
    objective task
    optimizer gd(lr = 0.001)
    level fast : mlp { update every chunk tokens }
    level slow : mlp { update every 4 * chunk tokens }
    level outer : mlp { update every 2 steps (reduce = mean) }
    transfer backprop slow -> fast
    flow input -> fast -> slow -> outer -> output
  }
  component cms_nested : cms(variant = nested) {
    objective task
    optimizer gd(lr = 0.001)
    level fast : mlp { update every chunk tokens }
    level slow : mlp { update every 4 * chunk tokens }
    transfer init slow -> fast (grad = unrolled)
    flow input -> fast -> slow -> output
  }
  component cms_ind : cms(variant = independent, aggregate = learned) {
    objective task
    optimizer gd(lr = 0.001)
    level a : swiglu { update every chunk tokens }
    level b : linear { update every 2 * chunk tokens }
  }
  component frozen : linear(out = dim, bias = true) { update never }
  component conv1 : conv(window = 4)
  component pre : norm(type = layernorm, eps = 1e-5)
  transfer parametric titans -> attn
  transfer nonparametric lp_mem -> dot_mem
  transfer generate self_mod -> deep_mem (what = inputs)
  flow input -> pre -> conv1 -> attn -> titans -> lp_mem -> dot_mem -> deep_mem -> ns_mem -> self_mod -> cms_seq
  flow cms_seq -> cms_nested -> cms_ind -> frozen -> output
}

block optimizer_levels(dim) {
  component w : linear(out = dim)
  component m : buffer(like = w, output = newton_schulz) {
    context = gradients(of = w)
    update every 1 steps  objective dot  optimizer gd(lr = 0.02, retain = 0.95)  init zeros
  }
  component o : buffer(like = w, elementwise = false) {
    context = gradients(of = w)
    update every 1 steps  objective orthogonality  optimizer gd(lr = 0.01)  init zeros
  }
  transfer generate m -> w (what = updates)
  transfer generate o -> w (what = updates)
  flow input -> w -> output
}

model everything {
  vocab = 256  dim = D  layers = 2  tie_embeddings = true  norm = rmsnorm  task = lm
  stack memories(dim = D)
  stack ffn_block(D, mult = 2) * 1
  stack optimizer_levels(dim = D) * 1
}

train {
  optimizer m3(lr = 0.001, slow_every = 10) for matrices
  optimizer adamw(lr = 3e-3, weight_decay = 0.1) for vectors, embeddings
  schedule wsd(warmup = 10, decay = 0.2)
  steps = 100  batch = 4  seq = 128  accumulate = 2
  precision = bf16  compile = compile(mode = "max-autotune", fullgraph = false, dynamic = true)
  data = text("builtin:shakespeare")  tokenizer = bytes
  eval every 50 steps (batches = 2)
  checkpoint every 50 steps (keep = 2, dir = "runs")
  parallel = ddp  device = cuda  seed = 1  grad_clip = 1.0
}
"""

OUTER = [
    'optimizer muon(lr = 0.02, momentum = 0.95, ns_steps = 5) for matrices\n  optimizer adamw for vectors, embeddings\n'
    '  schedule constant(warmup = 5)\n  data = text("builtin:shakespeare")  tokenizer = bpe(vocab = 256)',
    'optimizer deep_momentum(lr = 0.01, beta = 0.9, depth = 2, hidden = 32) for all\n'
    '  schedule linear(warmup = 5, min = 0.0)\n  data = generated(task = copy, length = 64)  compile = on\n'
    '  precision = fp16  parallel = fsdp',
    'optimizer delta_momentum(lr = 0.01) for matrices\n  optimizer sgd(lr = 0.1, momentum = 0.9) for vectors, '
    'embeddings\n  schedule cosine(warmup = 2, min = 0.1)\n  data = text("builtin:shakespeare")  compile = off',
    'optimizer adamw for component f\n  optimizer sgd for component g, "embed", "norm", "head"\n'
    '  data = text(path = "builtin:shakespeare")',
]


def test_every_concept_of_design_section_2_loads_and_checks_cleanly(capsys, tmp_path):
    write(tmp_path / "lib" / "common.nl", LIB)
    path = write(tmp_path / "everything.nl", EVERYTHING)
    assert run(capsys, "check", "--strict", path)[:2] == (0, "checked 1 file: no problems\n")
    graph = nldsl.graph(path)
    kinds = {d["kind"] for _, _, d in graph.edges()}
    assert {"parametric", "nonparametric", "backprop", "init", "generate", "hyper", "context", "nest", "flow"} <= kinds
    periods = {graph.frequency(p).kind for p, _ in graph.components()}
    assert periods == {"nonparametric", "tokens", "steps", "never"}
    assert nldsl.format_source(nldsl.format_source(EVERYTHING)) == nldsl.format_source(EVERYTHING)


@pytest.mark.parametrize("i", range(len(OUTER)), ids=["muon-bpe", "deep-momentum-generated", "delta-sgd",
                                                       "selectors"])
def test_outer_setups_check_cleanly(i):
    text = ("model m {\n  vocab = 256  dim = 64\n  component f : mlp\n  component g : linear { update every 4 steps "
            "(reduce = sum) }\n}\ntrain {\n  " + OUTER[i] + "\n  steps = 100\n}\n")
    assert nldsl.check(text) == []


@pytest.mark.parametrize("data", ["digits(tasks = 5)", "fashion_mnist(tasks = 2)"])
def test_classifiers_check_cleanly(data):
    text = ("model c {\n  task = classify  inputs = 64  classes = 10  dim = 64\n  component f : mlp\n}\n"
            f"train {{\n  optimizer adamw for all\n  data = {data}  tokenizer = none\n}}\n")
    assert nldsl.check(text) == []


# ---------------------------------------------------------------------------------------------- Python API


def test_python_api_accepts_paths_texts_and_specs(tmp_path):
    txt = write(tmp_path / "spec.txt", "model m { dim = 64  component f : mlp }\n")
    spec = nldsl.load(str(txt))                       # an existing file without the .nl extension
    assert spec.path == str(txt) and nldsl.load(txt) == spec
    assert nldsl.load("model m { dim = 64 }").path == "<string>"
    assert nldsl.format_source(str(txt)) == txt.read_text()
    graph = nldsl.graph(spec)
    assert graph.nx.number_of_nodes() == 4 and [lv.index for lv in graph.levels()] == [1]
    assert nldsl.check(spec) == [] and nldsl.check(graph) == []
    diags = nldsl.check("model m { dim = ")
    assert diags and all(isinstance(d, Diagnostic) for d in diags)
    with pytest.raises(NLError) as err:
        nldsl.load(str(tmp_path / "missing.nl"))
    assert err.value.diagnostics[0].code == "NL115"
    with pytest.raises(NLError):
        nldsl.format_source(tmp_path / "missing.nl")
    assert nldsl.render_graph(spec, tmp_path / "o" / "g.dot").read_text().startswith("digraph")
    with pytest.raises(ValueError):
        nldsl.render_ladder(spec, tmp_path / "l.png", tokens=0)
    rendered = render(diags[0], {"<string>": Source(path="<string>", text="model m { dim = ")})
    assert rendered.startswith("<string>:1:")
