"""docs/tutorial.md: every `.nl` step is run, and every `$ nldsl ...` output shown is what nldsl prints."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from nldsl import cli

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(nl|text)\n(.*?)```", TUTORIAL, re.S)


def sessions() -> list[tuple[str, str, str]]:
    """``(file text, command, expected output)`` for each shown `$ nldsl check|explain lm.nl` run."""
    out, current = [], ""
    for lang, body in BLOCKS:
        if lang == "nl":
            current = body
        elif body.startswith("$ nldsl ") and "lm.nl" in body.splitlines()[0]:
            command, _, expected = body.partition("\n")
            out.append((current, command[2:], expected))
    return out


CASES = sessions()


@pytest.mark.parametrize("text, command, expected", CASES, ids=[f"{i}-{c[1].split()[1]}" for i, c in enumerate(CASES)])
def test_tutorial_output_is_real(text: str, command: str, expected: str, tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "lm.nl").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert out == expected
    assert code == (1 if "error[" in expected else 0)


def test_every_step_loads_and_only_first_tries_have_errors(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    steps = [body for lang, body in BLOCKS if lang == "nl"]
    assert len(steps) >= 8
    for body in steps:
        (tmp_path / "lm.nl").write_text(body, encoding="utf-8")
        code = cli.main(["check", "--strict", "lm.nl"])
        capsys.readouterr()
        assert code == (1 if "first try" in body.splitlines()[0] else 0), body.splitlines()[0]


def test_pictures_exist():
    for name in re.findall(r"\(img/([\w.]+\.png)\)", TUTORIAL):
        assert (ROOT / "docs" / "img" / name).stat().st_size > 10_000, name
