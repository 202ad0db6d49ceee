"""`--set key=value` overrides (nldsl.overrides): source edits, validation through the checks, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from nldsl.overrides import OverrideError, apply_overrides, load_with_overrides, parse_overrides
from nldsl.runs import SpecInvalid, load_spec, spec_hash, train_settings
from nldsl.source import Source

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.nl"
SMALL = """const D = 16
model m { vocab = 256  dim = D }
train {
  optimizer adamw(lr = 1e-3) for all
  steps = 10  batch = 2  seq = 8
  data = text("builtin:shakespeare")
}
"""


def _src(text: str = SMALL) -> Source:
    return Source(path="<string>", text=text)


@pytest.mark.parametrize("item, check", [
    ("steps=3", lambda s: s.train.get("steps").value == 3),
    ("train.seq=4", lambda s: s.train.get("seq").value == 4),
    ("D=32", lambda s: s.model.get("dim").value == 32),
    ("const.D=8", lambda s: s.model.get("dim").value == 8),
    ("layers=2", lambda s: s.model.get("layers").value == 2),
    ("optimizer.lr=0.5", lambda s: s.train.optimizers[0].get("lr").value == 0.5),
    ("optimizer.adamw.weight_decay=0.1", lambda s: s.train.optimizers[0].get("weight_decay").value == 0.1),
    ("schedule=cosine(warmup = 2)", lambda s: s.train.schedule.get("warmup").value == 2),
    ("checkpoint.every=5", lambda s: s.train.checkpoint.period.count.value == 5),
    ("tokenizer=bpe(vocab = 300)", lambda s: s.train.get("tokenizer").get("vocab").value == 300),
    ("data=builtin:shakespeare", lambda s: s.train.get("data").positional[0].value == "builtin:shakespeare"),
], ids=["train-setting", "dotted-train", "const", "const-dotted", "new-model-setting", "optimizer-arg",
        "optimizer-kind-arg", "whole-schedule", "new-checkpoint", "call-value", "data-shorthand"])
def test_override_applies(item, check):
    spec, _ = load_with_overrides(_src(), [item])
    assert check(spec)


def test_last_override_of_a_key_wins():
    spec, _ = load_with_overrides(_src(), ["steps=3", "steps=7"])
    assert spec.train.get("steps").value == 7


def test_overrides_keep_the_rest_of_the_file():
    edited = apply_overrides(Source.from_path(TINY), parse_overrides(["D=32", "eval.batches=1"]))
    original = TINY.read_text().splitlines()
    changed = [(a, b) for a, b in zip(original, edited.text.splitlines()) if a != b]
    assert changed == [("const D = 64", "const D = 32"),
                       ("  eval every 50 steps (batches = 4)", "  eval every 50 steps (batches = 1)")]


@pytest.mark.parametrize("item, message", [
    ("steps", "expects key=value"),
    ("=3", "expects key=value"),
    ("stepz=3", "did you mean 'steps'"),
    ("model.widht=3", "unknown setting 'widht'"),
    ("optimizer.lrr=1", "adamw has no argument 'lrr'"),
    ("optimizer.muon.lr=1", "no outer optimizer 'muon'"),
    ("steps=3 }  model x {", "must be a single value"),
    ("lr=1e-3 +", "not valid .nl syntax"),
    ("eval.batches=2", "also set eval.every"),
], ids=["no-equals", "no-key", "typo-key", "typo-model", "bad-arg", "missing-optimizer", "smuggled-statement",
        "bad-syntax",
        "eval-without-period"])
def test_bad_override_is_a_clear_error(item, message):
    with pytest.raises(OverrideError, match=message):
        load_with_overrides(_src(), [item])


@pytest.mark.parametrize("item, code", [("seq=-4", "NL3"), ("steps=0", "NL3"), ("optimizer.lr=-1", "NL3")],
                         ids=["negative-seq", "zero-steps", "negative-lr"])
def test_out_of_range_override_gets_the_checks_diagnostic(tmp_path, item, code):
    file = tmp_path / "m.nl"
    file.write_text(SMALL)
    with pytest.raises(SpecInvalid) as info:
        load_spec(file, parse_overrides([item]))
    assert any(d.code.startswith(code) and d.is_error for d in info.value.diagnostics)


def test_spec_hash_ignores_run_only_settings_but_not_the_model():
    base, _ = load_with_overrides(_src(), [])
    assert spec_hash(load_with_overrides(_src(), ["steps=99"])[0]) == spec_hash(base)
    assert spec_hash(load_with_overrides(_src(), ["D=32"])[0]) != spec_hash(base)
    assert spec_hash(load_with_overrides(_src(), ["optimizer.lr=0.1"])[0]) != spec_hash(base)


def test_train_settings_fill_defaults():
    s = train_settings(load_with_overrides(_src(), [])[0])
    assert (s.steps, s.batch, s.seq, s.tokenizer, s.data_kind, s.eval_every, s.checkpoint_every) == \
        (10, 2, 8, "bytes", "text", 0, 0)


def test_block_parameter_default_override():
    spec, _ = load_with_overrides(ROOT / "examples" / "hope.nl", ["hope.slow=256", "block.hope.mid=128"])
    periods = {c.name: c.update.period.count.value for _, c in spec.components() if c.role == "level"}
    assert periods == {"fast": 64, "mid": 128, "slow": 256}


def test_block_parameter_without_default_is_refused():
    with pytest.raises(OverrideError, match="has no default"):
        load_with_overrides(ROOT / "examples" / "hope.nl", ["hope.dim=32"])
