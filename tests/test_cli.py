"""The ``nldsl`` command line: exit codes, outputs, files written, and never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nldsl import cli

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"
UGLY = "model m{dim=64\n  component f:mlp(hidden=4*64)}\n"
WARN = "model m {\n  dim = 64\n  component f : mlp {\n    update never\n    optimizer gd(lr = 0.1)\n  }\n}\n"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# ---------------------------------------------------------------------------------------------- check


def test_check_examples_ok(capsys):
    code, out, _ = run(capsys, "check", "--strict", *map(str, sorted(EX.glob("*.nl"))))
    assert code == 0 and "checked 8 files: no problems" in out


def test_check_reports_every_error_and_exits_1(capsys):
    code, out, _ = run(capsys, "check", str(ROOT / "tests" / "checks" / "many_errors.nl"))
    assert code == 1
    assert out.count("error[NL") >= 10 and "warning[NL221]" in out and "= hint:" in out
    assert out.strip().endswith("in 1 file")


def test_warnings_fail_only_with_strict(capsys, tmp_path: Path):
    path = tmp_path / "warn.nl"
    path.write_text(WARN)
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0 and "warning[NL229]" in out and "1 warning in 1 file" in out
    assert run(capsys, "check", "--strict", str(path))[0] == 1


@pytest.mark.parametrize("make, code_text", [
    (lambda p: None, "NL115"),                                   # missing file
    (lambda p: p.mkdir(), "NL115"),                              # a directory
    (lambda p: p.write_bytes(b"\x7fELF\x00\x01binary"), "NL104"),  # binary data
    (lambda p: p.write_bytes(b"model m {\xff\xfe }"), "NL104"),   # invalid UTF-8
    (lambda p: p.write_text("model m { dim = 64 "), "NL102"),   # unexpected end of file
], ids=["missing", "directory", "binary", "bad-utf8", "truncated"])
def test_check_bad_inputs_give_diagnostics(capsys, tmp_path: Path, make, code_text: str):
    path = tmp_path / "x.nl"
    make(path)
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and code_text in out


def test_check_empty_file_is_fine(capsys, tmp_path: Path):
    path = tmp_path / "empty.nl"
    path.write_text("")
    assert run(capsys, "check", str(path))[0] == 0


def test_check_permission_denied(capsys, tmp_path: Path, monkeypatch):
    path = tmp_path / "secret.nl"
    path.write_text("model m { dim = 64 }\n")

    def deny(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", deny)
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and "NL115" in out and "Permission denied" in out


def test_bad_flags_exit_2(capsys):
    assert run(capsys, "check", "--no-such-flag", "x.nl")[0] == 2
    assert run(capsys, "no-such-command")[0] == 2
    assert run(capsys)[0] == 2
    assert run(capsys, "--help")[0] == 0


# ---------------------------------------------------------------------------------------------- drawings


@pytest.mark.parametrize("suffix", ["svg", "png", "dot"])
def test_graph_writes_file(capsys, tmp_path: Path, suffix: str):
    out = tmp_path / f"hope.{suffix}"
    code, _, err = run(capsys, "graph", str(EX / "hope.nl"), "-o", str(out))
    assert code == 0 and out.stat().st_size > 100 and f"wrote {out}" in err


def test_graph_without_output_prints_dot(capsys):
    code, out, _ = run(capsys, "graph", str(EX / "transformer.nl"))
    assert code == 0 and out.startswith("digraph levels {") and "cluster_legend" in out


def test_graph_of_a_file_with_errors_draws_nothing(capsys, tmp_path: Path):
    out = tmp_path / "bad.svg"
    code, _, err = run(capsys, "graph", str(ROOT / "tests" / "checks" / "NL200_kind.nl"), "-o", str(out))
    assert code == 1 and "NL200" in err and not out.exists()


def test_graph_bad_output_paths(capsys, tmp_path: Path):
    assert run(capsys, "graph", str(EX / "tiny.nl"), "-o", str(tmp_path / "g.jpeg"))[0] == 2
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "graph", str(EX / "tiny.nl"), "-o", str(tmp_path / "file" / "g.svg"))
    assert code == 1 and "cannot write" in err


def test_graph_creates_a_missing_output_directory(capsys, tmp_path: Path):
    out = tmp_path / "no" / "dir" / "g.svg"
    assert run(capsys, "graph", str(EX / "tiny.nl"), "-o", str(out))[0] == 0
    assert out.read_bytes().startswith(b"<?xml")


def test_ladder(capsys, tmp_path: Path):
    out = tmp_path / "ladder.png"
    code, _, _ = run(capsys, "ladder", str(EX / "tiny.nl"), "-o", str(out), "--tokens", "256")
    assert code == 0 and out.read_bytes().startswith(b"\x89PNG")
    assert run(capsys, "ladder", str(EX / "tiny.nl"), "-o", str(out), "--tokens", "0")[0] == 2
    assert run(capsys, "ladder", str(EX / "tiny.nl"))[0] == 2   # -o is required


def test_explain_transformer_is_two_levels(capsys):
    code, out, _ = run(capsys, "explain", str(EX / "transformer.nl"), "--width", "200")
    assert code == 0 and "2 levels" in out
    rows = [line for line in out.splitlines() if line.startswith("│ 1 ") or line.startswith("│ 2 ")]
    assert len(rows) == 2 and "∞" in rows[0] and "nonparametric" in rows[0] and "│ 0 " in rows[1]


# ---------------------------------------------------------------------------------------------- fmt, spec, schema


def test_fmt_check_then_rewrite(capsys, tmp_path: Path):
    path = tmp_path / "ugly.nl"
    path.write_text(UGLY)
    code, _, err = run(capsys, "fmt", "--check", str(path))
    assert code == 1 and "would reformat" in err and path.read_text() == UGLY
    code, _, err = run(capsys, "fmt", str(path))
    assert code == 0 and "1 file reformatted" in err and path.read_text() != UGLY
    assert run(capsys, "fmt", "--check", str(path))[0] == 0


def test_fmt_syntax_error_and_missing_file(capsys, tmp_path: Path):
    bad = tmp_path / "bad.nl"
    bad.write_text("model m {")
    code, _, err = run(capsys, "fmt", str(bad), str(tmp_path / "missing.nl"))
    assert code == 1 and "NL102" in err and "cannot read" in err and "2 files failed" in err


def test_fmt_stdin_to_stdout(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(UGLY))
    code, out, _ = run(capsys, "fmt", "-")
    assert code == 0 and out.startswith("model m {")


def test_spec_json_and_schema(capsys):
    code, out, _ = run(capsys, "spec", str(EX / "tiny.nl"), "--json")
    data = json.loads(out)
    assert code == 0 and data["model"]["name"] == "tiny" and data["path"].endswith("tiny.nl")
    code, out, _ = run(capsys, "spec", str(EX / "tiny.nl"), "--no-spans")
    assert "span" not in json.loads(out)
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0 and schema["title"] == "Spec" and "$defs" in schema


def test_spec_of_a_missing_file(capsys):
    code, _, err = run(capsys, "spec", "no_such_file.nl")
    assert code == 1 and "NL115" in err


# ---------------------------------------------------------------------------------------------- failures


def test_internal_error_exits_70_without_traceback(capsys, monkeypatch):
    import nldsl.checks

    def boom(*args, **kwargs):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(nldsl.checks, "check", boom)
    monkeypatch.delenv("NLDSL_DEBUG", raising=False)
    code, _, err = run(capsys, "check", str(EX / "tiny.nl"))
    assert code == 70 and "internal error" in err and "simulated bug" in err and "NLDSL_DEBUG=1" in err
    monkeypatch.setenv("NLDSL_DEBUG", "1")
    assert cli.main(["check", str(EX / "tiny.nl")]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(capsys, monkeypatch):
    import nldsl.checks

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(nldsl.checks, "check", interrupt)
    assert run(capsys, "check", str(EX / "tiny.nl"))[0] == 130


def test_adding_a_command_is_one_decorated_function(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_COMMANDS", list(cli._COMMANDS))

    @cli.command("hello", "say hello", cli.arg("name"))
    def cmd_hello(args):
        print(f"hello {args.name}")
        return 0
    assert run(capsys, "hello", "levels") == (0, "hello levels\n", "")


# ---------------------------------------------------------------------------------------------- processes


def _script() -> list[str]:
    exe = Path(sys.executable).with_name("nldsl")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "nldsl.cli"]


def test_console_script_end_to_end(tmp_path: Path):
    done = subprocess.run(_script() + ["check", str(EX / "hope.nl"), str(tmp_path / "missing.nl")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "NL115" in done.stdout and "Traceback" not in done.stderr


def test_broken_pipe_is_quiet():
    cmd = " ".join(_script()) + f" spec {EX / 'hope.nl'} | head -c 20 > /dev/null"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NLDSL_DEBUG": ""})
    assert "Traceback" not in done.stderr and "Error" not in done.stderr


def test_graph_without_the_dot_program(capsys, tmp_path: Path, monkeypatch):
    import graphviz

    def missing(*args, **kwargs):
        raise graphviz.ExecutableNotFound(("dot",))
    monkeypatch.setattr(graphviz.Digraph, "pipe", missing)
    code, _, err = run(capsys, "graph", str(EX / "tiny.nl"), "-o", str(tmp_path / "g.svg"))
    assert code == 1 and "not installed" in err
    assert run(capsys, "graph", str(EX / "tiny.nl"), "-o", str(tmp_path / "g.dot"))[0] == 0
