"""The Plan stage (nldsl.plan): golden text for every example, JSON, ownership, resolved defaults, schedule."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLES, ROOT, example

from nldsl import catalog
from nldsl.errors import NLError
from nldsl.plan import plan

RULES = {p.default for k in catalog.COMPONENTS.values() for p in k.params
         if isinstance(p.default, str) and (" " in p.default or p.default == "heads")}
"""Catalog defaults written in words ("4 * dim", "model dim", ...): none may survive planning."""


@pytest.mark.parametrize("name", EXAMPLES)
def test_golden_plan(name, update_golden):
    text = plan(example(name)).render()
    golden = ROOT / "tests" / "golden" / f"{name}.plan.txt"
    if update_golden or not golden.exists():
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_trainable_group_is_owned_exactly_once(name):
    p = plan(example(name))
    owned = [(g.component, g.category) for o in p.optimizers for g in o.groups]
    assert len(owned) == len(set(owned))
    expected = {(c.path, g) for c in p.components for g in c.groups}
    assert expected <= set(owned)


@pytest.mark.parametrize("name", EXAMPLES)
def test_symbolic_defaults_are_resolved(name):
    p = plan(example(name))
    leftovers = [(c.path, k, v) for c in p.components for k, v in c.config if v in RULES]
    assert not leftovers and RULES


def test_resolved_widths_follow_the_catalog_rules():
    p = plan(example("tiny"))
    # every memory of a self-modifying Titans works per head: 4 * dim = 4x the head width
    assert p.component("tiny_hope[0].titans.k").get("hidden") == 4 * (64 // 4)
    assert p.component("tiny_hope[0].titans.mem").get("hidden") == 4 * (64 // 4)
    assert p.component("tiny_hope[0].ffn.fast").get("hidden") == 256
    assert p.component("head").get("tied") is True
    titans = plan(example("titans"))
    assert titans.component("titans_lmm[0].lmm").get("hidden") == 768 // 12  # dim per head
    assert titans.component("titans_lmm[0].ffn").get("hidden") == 2048


def test_update_rule_records_each_hyperparameter_form():
    rules = {c.path: c.rule for c in plan(example("tiny")).components}
    titans = rules["tiny_hope[0].titans.k"]
    forms = {h.name: h.form for h in titans.hypers}
    assert forms == {"lr": "memory", "retain": "memory", "momentum": "learned"}
    assert rules["tiny_hope[0].ffn.fast"].hyper("lr").form == "data"
    assert rules["tiny_hope[0].ffn.slow"].hyper("lr").form == "const"
    assert rules["tiny_hope[0].titans.mem"].grad == "stopgrad"
    assert rules["tiny_hope[0].titans.k"].grad == "unrolled"


def test_schedule_lists_token_offsets_and_outer_steps():
    p = plan(example("tiny"))
    by_period = {e.period.render(): e for e in p.schedule}
    assert by_period["every 4 tokens"].count == 128 // 4
    assert "after tokens 4, 8, 12, …, 128" in by_period["every 4 tokens"].when
    assert by_period["every 4 steps (mean)"].count == 200 // 4
    assert by_period["every step"].count == 200
    assert p.task_segment == 8  # gcd(8, 32, 128)


def test_every_n_steps_groups_carry_their_period():
    p = plan(example("continual"))
    periods = {(g.component, g.category): g.period for o in p.optimizers for g in o.groups}
    assert periods[("body.mid", "matrices")].every == 10
    assert periods[("body.mid", "matrices")].reduce == "mean"
    assert periods[("body.fast", "matrices")].every == 1


def test_model_assembly_order():
    mp = plan(example("tiny")).model
    assert (mp.embed, mp.trunk, mp.final_norm, mp.head) == ("embed", ("tiny_hope[0]",), "norm", "head")
    assert mp.blocks[0].flow == ("tiny_hope[0].titans", "tiny_hope[0].ffn") and mp.blocks[0].repeat == 2
    assert plan(example("continual")).model.trunk == ("body",)


def test_optimizer_levels_own_their_targets():
    p = plan(example("optimizers"))
    levels = [o for o in p.optimizers if o.level is not None]
    assert [o.level for o in levels] == [f"{b}.w" for b in ("momentum[0]", "adam[1]", "delta[2]", "deep[3]",
                                                             "muon[4]", "m3[5]")]
    outer = {(g.component, g.category) for o in p.optimizers if o.level is None for g in o.groups}
    assert ("momentum[0].w", "matrices") not in outer


def test_runtime_norm_gains_fall_back_to_the_vectors_optimizer():
    text = """model m { vocab = 256  dim = 8  component a : attention(heads = 2)  component f : mlp }
train { optimizer muon(lr = 0.02) for matrices  optimizer adamw for embeddings, vectors  data = text("x") }"""
    groups = {(g.component, g.category): (o.kind, g.via) for o in plan(text).optimizers for g in o.groups}
    assert groups[("a", "matrices")] == ("muon", "matrices")
    assert groups[("a", "vectors")] == ("adamw", "vectors")


def test_plan_json_has_spans_and_resolved_values():
    data = json.loads(plan(example("hope")).to_json())
    comp = next(c for c in data["components"] if c["path"] == "hope[0].ffn.fast")
    assert comp["config"]["hidden"] == 768  # hidden = dim, parameter-matched to transformer.nl
    assert comp["span"].endswith("hope.nl:37:11")
    assert comp["period"] == {"kind": "tokens", "every": 64, "reduce": None}
    assert data["train"]["compile"] == {"enabled": True, "mode": "default", "fullgraph": False, "dynamic": False,
                                        "scope": "auto"}


def test_plan_rejects_a_spec_with_errors():
    with pytest.raises(NLError) as info:
        plan("model m { dim = 64  component a : attention(heads = 5) }")
    assert [d.code for d in info.value.diagnostics] == ["NL303"]


def test_plan_stage_does_not_import_torch():
    code = ("import sys; from nldsl.plan import plan; p = plan('examples/hope.nl'); p.render(); p.to_json(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _cli(argv: list[str]) -> int:
    import argparse

    from nldsl import plan_cli

    parser = argparse.ArgumentParser()
    plan_cli.register(parser.add_subparsers())
    args = parser.parse_args(["plan", *argv])
    return args.func(args)


def test_plan_command_prints_the_golden_text(capsys):
    assert _cli([str(example("titans"))]) == 0
    assert capsys.readouterr().out == (ROOT / "tests" / "golden" / "titans.plan.txt").read_text(encoding="utf-8")


LAYERNORM_CMS = """model m { vocab = 256  dim = 8  norm = layernorm
  component c : cms { objective task  level f : mlp { update every 4 tokens  optimizer gd } } }
train { optimizer adamw  data = text("x") }
"""
CMS_WIDTHS = """model m { vocab = 256  dim = 8
  component c : cms { objective task
    level f : mlp(hidden = 8) { update every 4 tokens  optimizer gd }
    level s : mlp(hidden = 16) { update every 8 tokens  optimizer gd }
    transfer init s -> f } }
train { optimizer adamw  data = text("x") }
"""


def test_plan_command_json_overrides_and_runtime_notes(capsys, tmp_path):
    assert _cli([str(example("titans")), "--json", "--set", "D=48", "--runtime"]) == 0
    data = json.loads(capsys.readouterr().out)  # runs as written: no runtime notes
    assert data["model"]["dim"] == 48
    (tmp_path / "ln.nl").write_text(LAYERNORM_CMS, encoding="utf-8")
    assert _cli([str(tmp_path / "ln.nl"), "--runtime"]) == 0
    assert "\nruntime notes\n" in (out := capsys.readouterr().out) and "warning[NL502]" in out


def test_plan_command_reports_errors_without_a_traceback(capsys, tmp_path):
    assert _cli([str(example("tiny")), "--set", "D=0"]) == 1
    err = capsys.readouterr().err
    assert "error[NL301]" in err and "Traceback" not in err
    assert _cli([str(example("optimizers")), "--runtime"]) == 0
    capsys.readouterr()
    path = tmp_path / "widths.nl"
    path.write_text(CMS_WIDTHS, encoding="utf-8")
    assert _cli([str(path), "--runtime"]) == 1
    err = capsys.readouterr().err
    assert "error[NL501]" in err and "widths.nl:5:" in err and "different MLPs" in err
