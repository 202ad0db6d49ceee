"""`nldsl codegen`: a standalone script that trains exactly like `nldsl train`, and that no spec content can
turn into code."""
from __future__ import annotations

import ast
import io
import json
import runpy
import subprocess
import sys
import tokenize

import pytest

from nldsl.codegen import Names, generate, safe_comment, write_script
from nldsl.datasets import DataError
from nldsl.train import train

from .nl_runs import ROOT, SUBPROCESS_ENV, TINY, TINY_SET, mem_spec, small_spec, train_losses

STEPS = 3


def _run_script(script, out, steps=STEPS):
    """Run the generated script's main() in this process (it seeds everything itself)."""
    namespace = runpy.run_path(str(script), run_name="generated")
    namespace["main"](["--steps", str(steps), "--out", str(out)])
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _tiny(tmp_path):
    """examples/tiny.nl copied (so it can be removed), shrunk with overrides at codegen time."""
    copy = tmp_path / "tiny.nl"
    copy.write_text(TINY.read_text(encoding="utf-8"), encoding="utf-8")
    return copy


@pytest.mark.parametrize("make, overrides", [
    (small_spec, []), (small_spec, ["tokenizer=bpe(vocab = 320)", "vocab=320"]), (mem_spec, []), (_tiny, TINY_SET)],
    ids=["transformer", "transformer-bpe", "memory-task-cms-m3", "tiny-hope"])
def test_script_logs_the_same_losses_as_nldsl_train(tmp_path, make, overrides):
    spec = make(tmp_path)
    ref = train(spec, steps=STEPS, out=tmp_path / "run", overrides=overrides, progress=False, tensorboard=False)
    assert ref.status == "finished"
    script = write_script(spec, tmp_path / "train_x.py", overrides=overrides)
    spec.unlink()  # the script must not need the .nl file
    rows = _run_script(script, tmp_path / "script")
    assert train_losses(rows) == ref.losses()  # exact, from the same seed
    assert train_losses(rows, "val") == ref.losses("val")


def test_script_runs_standalone(tmp_path):
    script = write_script(small_spec(tmp_path), tmp_path / "train_small.py")
    proc = subprocess.run([sys.executable, str(script), "--steps", "1", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**SUBPROCESS_ENV, "PYTHONPATH": str(ROOT), "PATH": ""},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "step 1/1" in proc.stdout and (tmp_path / "o" / "model.safetensors").is_file()


def test_script_is_readable_and_quotes_the_spec(tmp_path):
    text = generate(small_spec(tmp_path), output="train_small.py")
    assert text.startswith('"""Train model small of small.nl')
    assert "# small.nl:4  component attn : attention(heads = 2)" in text
    assert "# small.nl:13  optimizer adamw(lr = 3e-3, weight_decay = 0.0) for all" in text
    assert "CausalSelfAttention.Config(" in text and "SwiGLU.Config(" in text and "torch.optim.AdamW(" in text
    assert "def build_model()" in text and "def train_step(" in text
    code = text.split('"""', 2)[2]  # after the module docstring
    assert max(len(line) for line in code.splitlines() if not line.lstrip().startswith("#")) <= 110
    compile(text, "train_small.py", "exec")


def test_tiny_hope_script_builds_every_runtime_piece(tmp_path):
    text = generate(ROOT / "examples" / "tiny.nl", ["D=32", "layers=2"])
    for piece in ("SelfModifyingTitans.Config(", "CMS.Config(", "CMSLevel(", "M3(", "'nl_every': 4",
                  "'nl_reduce': 'mean'", "for copy in range(2):", "LRSchedule('cosine', warmup=20"):
        assert piece in text, piece


PAYLOAD = "__import__('os').system('touch PWNED')"
DATA = r'''jsonl("x\"); P #\n'''  + "'''" + r'''\"\"\"\\ é ü \t end.jsonl", field = "\"); P")'''
"""A .nl string with an escaped quote, a newline escape, triple quotes, a backslash, unicode and the payload."""
HOSTILE = """# hostile names and strings: nothing here may become code<CR># P<LS>P
const D = 32
block blk(dim) {
  component lambda : attention(heads = 2)  # <CR># P<LS>P
  component __import__ : swiglu(hidden = 64)
  flow input -> lambda -> __import__ -> output
}
model print {
  vocab = 256  dim = D  layers = 1
  stack blk(dim = D)
}
train {
  optimizer adamw(lr = 3e-3) for all
  steps = 2  batch = 2  seq = 32
  data = DATA
}
""".replace("DATA", DATA).replace("<CR>", "\r").replace("<LS>", "\u2028").replace("P", PAYLOAD)


def test_hostile_names_and_strings_cannot_inject_code(tmp_path, monkeypatch):
    folder = tmp_path / 'we"ird\'\nname'
    folder.mkdir()
    spec = folder / "evil.nl"
    spec.write_bytes(HOSTILE.encode("utf-8").replace(b"\\r", b"\r").replace(b"\\u2028", "\u2028".encode()))
    text = generate(spec)
    compile(text, "evil.py", "exec")
    names = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.NAME]
    assert "__import__" not in names and "system" not in names and "PWNED" not in names
    assert "lambda" not in names  # the component called `lambda` got a safe variable name
    strings = [n.value for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert any(PAYLOAD in s and "\n" in s for s in strings)  # the data path survived, as a string
    assert all("\r" not in line and "\u2028" not in line for line in text.split("\n") if line.lstrip().startswith("#"))
    script = tmp_path / "evil.py"
    script.write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="end.jsonl"):  # it tries to read that odd path, and nothing else
        _run_script(script, tmp_path / "o", steps=1)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("name, safe", [("titans", True), ("lambda", False), ("print", False), ("model", False),
                                        ("_private", False), ("__import__", False), ("class", False)],
                         ids=["plain", "keyword", "builtin", "script-name", "underscore", "dunder", "class"])
def test_identifiers_are_validated(name, safe):
    chosen = Names()(name)
    assert chosen.isidentifier() and (chosen == name) == safe


def test_comments_stay_on_one_line():
    assert safe_comment("a\nb\rc\u2028d\x00e\tf") == "a\\nb\\rc\\u2028d\\x00e\\tf"


CONTAINER_NAMES = """\
block blk(dim) {
  component items : attention(heads = 2)
  component forward : swiglu(hidden = 64)
  component training : swiglu(hidden = 32)
  flow input -> items -> forward -> training -> output
}
model state_dict {
  vocab = 256  dim = 32  layers = 2
  stack blk(dim = 32)
}
train {
  optimizer adamw(lr = 3e-3) for all
  steps = 2  batch = 2  seq = 32  data = text("builtin:shakespeare")
  eval every 2 steps (batches = 1)
}
"""


def test_components_named_like_container_attributes_build_train_and_generate(tmp_path):
    """``items``, ``forward``, ``training`` are attributes of nn.ModuleDict: they get mangled parameter keys,
    keep their names in the state and in ``component_of``, and the script trains like ``nldsl train``."""
    import nldsl
    spec = tmp_path / "clash.nl"
    spec.write_text(CONTAINER_NAMES)
    c = nldsl.build(spec, compile=False)
    owners = {c.component_of(n) for n, _ in c.model.named_parameters()}
    assert {"blk[0].items", "blk[0].forward", "blk[0].training"} <= owners
    ref = train(spec, steps=2, out=tmp_path / "run", progress=False, tensorboard=False)
    assert ref.status == "finished" and all(loss == loss for _, loss in ref.losses())
    script = write_script(spec, tmp_path / "train_clash.py")
    assert train_losses(_run_script(script, tmp_path / "script", steps=2)) == ref.losses()
