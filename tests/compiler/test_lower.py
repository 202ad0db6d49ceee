"""Lowering (nldsl.lower, nldsl.registry): modules from the registry, parameter ownership, located errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SHRINK, build_small, example

from nldsl.errors import NLError
from nldsl.lower import lower
from nldsl.nn.cms import CMS
from nldsl.nn.neural_memory import NeuralMemory
from nldsl.nn.self_modifying import SelfModifyingTitans
from nldsl.nn.transformer import CausalSelfAttention
from nldsl.plan import plan
from nldsl.registry import COMPONENTS, lowering
from nldsl.source import render

RUNNABLE = list(SHRINK)

SMALL = """model m {{ vocab = 256  dim = 16  {body} }}
train {{ optimizer adamw(lr = 0.01) for all  steps = 4  batch = 2  seq = 16  data = text("builtin:shakespeare") }}
"""


def _lower_text(body: str):
    return lower(plan(SMALL.format(body=body)))


def _modules(model, cls) -> list:
    return [m for m in model.modules() if isinstance(m, cls)]


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_runnable_example_lowers_and_runs(name):
    c = build_small(name)
    trainable = [p for p in c.model.parameters() if p.requires_grad]
    in_groups = [p for o in c.optimizers for g in o.param_groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)
    x = torch.randn(2, c.plan.model.inputs) if c.plan.model.task == "classify" else torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        logits, _ = c.model(x)
    width = c.plan.model.classes if c.plan.model.task == "classify" else 256
    assert logits.shape[-1] == width and torch.isfinite(logits).all()


def test_registry_maps_kinds_to_runtime_classes():
    c = build_small("tiny")
    assert len(_modules(c.model, SelfModifyingTitans)) == 2 and len(_modules(c.model, CMS)) == 2
    t = build_small("titans")
    assert len(_modules(t.model, NeuralMemory)) == 2
    h = build_small("hope_attention")
    assert len(_modules(h.model, CausalSelfAttention)) == 1


def test_configs_come_from_the_plan():
    c = build_small("tiny")
    titans = _modules(c.model, SelfModifyingTitans)[0].config
    assert (titans.n_heads, titans.chunk_size, titans.proj_chunk_size, titans.dgd) == (2, 8, 4, True)
    assert (titans.mem_objective, titans.stopgrad, titans.conv_size, titans.qk_norm) == ("self", False, 4, True)
    assert (titans.momentum, titans.momentum_mode, titans.stopgrad_memories) == (0.9, "learned", ("mem",))
    assert (titans.proj_heads, titans.proj_hidden_mult) == (2, 4.0), "per-head projection memories (the plan's)"
    cms = _modules(c.model, CMS)[0]
    assert [lv.period for lv in cms.levels] == [8, 32, 128, None]
    assert [lv.lr for lv in cms.levels[2:3]] == [1e-4] and cms.levels[0].objective == "task"
    mem = _modules(build_small("titans").model, NeuralMemory)[0].config
    assert (mem.lr_mode, mem.retention_mode, mem.momentum_mode, mem.chunk_size) == ("data", "data", "data", 8)
    assert mem.objective == "l2" and not mem.dgd
    assert (mem.lr_activation, mem.lr) == ("sigmoid", pytest.approx(0.005)), \
        "lr = data(sigmoid, scale = 0.01): 0.01 * sigmoid(W x + b) = 2 * 0.005 * sigmoid(W x + b)"
    rate = _modules(build_small("titans").model, NeuralMemory)[0].lr_rate
    eta = rate(100 * torch.randn(2, 5, 48), torch.float32)
    assert eta.shape == (2, 4, 5) and 0 <= eta.min() and eta.max() <= 0.01 and eta.std() > 1e-3
    attn = _modules(build_small("hope_attention").model, CausalSelfAttention)[0]
    assert attn.q_norm is not None and attn.k_norm is not None and (attn.kv_heads, attn.window) == (attn.n_heads, 0)


def test_attention_options_are_lowered():
    low = _lower_text("component a : attention(heads = 4, kv_heads = 2, window = 8, rope = false, normalize = [k])")
    attn = _modules(low.model, CausalSelfAttention)[0]
    assert (attn.n_heads, attn.kv_heads, attn.window, attn.rope, attn.q_norm) == (4, 2, 8, None, None)
    assert attn.k_norm is not None and low.notes.items == []


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_example_runs_as_written(name):
    assert build_small(name).notes == [], "no NL502: nothing runs approximately"


def test_approximations_are_located_warnings():
    low = _lower_text("norm = layernorm  component c : cms { objective task\n"
                      "  level f : mlp { update every 4 tokens  optimizer gd(lr = 0.1) } }")
    assert [d.code for d in low.notes.items] == ["NL502"] and low.notes.items[0].severity.value == "warning"
    assert "RMSNorm" in low.notes.items[0].message and low.notes.items[0].span.line == 1
    assert "<string>:1:" in render(low.notes.items[0])


def test_every_n_steps_level_gets_its_own_param_group():
    c = build_small("tiny")
    periodic = [g for o in c.optimizers for g in o.param_groups if g["nl_every"] > 1]
    assert {(g["nl_every"], g["nl_reduce"]) for g in periodic} == {(4, "mean")}
    names = {id(p): n for n, p in c.model.named_parameters()}
    owners = {c.component_of(names[id(p)]) for g in periodic for p in g["params"]}
    assert owners == {"tiny_hope[0].ffn.outer"}


def test_tied_head_shares_the_embedding():
    c = build_small("tiny")
    assert c.model.head.weight is c.model.embed.weight


def test_frozen_components_do_not_train():
    low = _lower_text("component f : mlp { update never }  component g : swiglu")
    frozen = [n for n, p in low.model.named_parameters() if not p.requires_grad]
    assert frozen and all(".f." in n for n in frozen)


def test_component_of_names_the_spec_component():
    c = build_small("tiny")
    names = dict(c.model.named_parameters())
    mem = next(n for n in names if n.endswith("mem_init.0"))
    assert c.component_of(mem) == "tiny_hope[0].titans.mem"
    bank = next(n for n in names if "bank_init" in n)
    assert c.component_of(bank) == "tiny_hope[0].titans.k"


@pytest.mark.parametrize("body, line_text, code", [
    ("component c : cms { objective task  level f : mlp(hidden = 8) { update every 4 tokens  optimizer gd }\n"
     "  level s : mlp(hidden = 16) { update every 8 tokens  optimizer gd }  transfer init s -> f }",
     "different MLPs", "NL501"),
    ("component c : cms { objective task  level f : mlp { update every 4 tokens  optimizer gd }\n"
     "  level s : mlp { update every 6 tokens  optimizer gd }  transfer init s -> f }", "not a multiple", "NL501"),
    ("component m : neural_memory { update every 4 tokens  objective l2  optimizer gd(retain = data(softplus)) }",
     "data-dependent retain uses sigmoid", "NL502"),
    ("component m : neural_memory(persistent = 4) { update every 4 tokens  objective l2  optimizer gd }",
     "persistent memory tokens", "NL501"),
    ("component m : neural_memory { update every 4 tokens  objective l2  optimizer gd  init zeros }",
     "init meta", "NL501"),
    ("component c : cms { objective task  level f : mlp(depth = 3) { update every 4 tokens  optimizer gd } }",
     "residual 2-layer", "NL501"),
], ids=["init-widths", "init-periods", "rate-activation", "persistent", "init-zeros", "cms-depth"])
def test_what_the_runtime_cannot_run_is_a_located_error(body, line_text, code):
    if code == "NL502":
        diags = _lower_text(body).notes.items
    else:
        with pytest.raises(NLError) as info:
            _lower_text(body)
        diags = info.value.diagnostics
    diag = diags[0]
    assert diag.code == code and line_text in diag.message
    assert diag.span.path == "<string>" and diag.span.line in (1, 2) and diag.span.col > 1


def test_a_value_the_runtime_rejects_is_located():
    with pytest.raises(NLError) as info:
        _lower_text("component a : attention(heads = 16)")  # head dim 1 is odd: no rotary embedding
    assert info.value.diagnostics[0].code == "NL504" and info.value.diagnostics[0].span.line == 1


def test_a_registry_miss_lists_the_known_kinds():
    p = plan(SMALL.format(body="component f : mlp"))
    entry = dataclasses.replace(p.component("f"), kind="hypernet")
    with pytest.raises(NLError) as info:
        lowering(entry)
    assert all(k in info.value.diagnostics[0].hint for k in COMPONENTS)


def test_nested_cms_follows_the_flow_and_its_init_transfers():
    c = build_small("cms_variants")
    nested = [m for m in _modules(c.model, CMS) if m.variant == "nested"][0]
    assert [lv.period for lv in nested.levels] == [16, 128, 512]  # data path: the flow, fastest first
    assert [lv.init_from for lv in nested.levels] == [1, 2, None]  # transfer init slow -> mid -> fast
    assert [len(b) for b in nested.bases] == [0, 0, 2] and not nested.levels[0].init_stopgrad


def test_cms_rates_and_init_transfers_come_from_the_plan():
    c = build_small("tiny")
    cms = _modules(c.model, CMS)[0]
    fast, mid, slow, outer = cms.levels
    assert (fast.lr_mode, fast.lr_activation, fast.lr) == ("data", "softplus", 0.01)
    assert (mid.lr_mode, mid.lr, slow.lr_mode) == ("learned", 0.001, "constant")
    assert (fast.init_from, fast.init_stopgrad, mid.init_from, mid.init_stopgrad) == (1, False, 2, True)
    assert slow.init_from is None and outer.init_from is None and fast.stopgrad is False
    owners = {c.component_of(n) for n in c._owners if ".ffn.fn.rates.1." in n}
    assert owners == {"tiny_hope[0].ffn.mid"}, "a learned lr is a parameter of its level"
    assert {n.split(".fn.")[1] for n in c._owners if ".ffn.fn.bases" in n} == {"bases.2.w1", "bases.2.w2",
                                                                             "bases.3.w1", "bases.3.w2"}


def test_plan_spans_reach_runtime_failures():
    c = build_small("transformer")
    with pytest.raises(RuntimeError, match=r"transformer\.nl:\d+:\d+: in 'transformer\[0\]\.attn'"):
        c.model.layers[0].sublayers["attn"](torch.randn(1, 3, 7))


def test_examples_lower_without_compile_or_gpu():
    p = plan(example("continual"))
    low = lower(p)
    assert [type(o).__name__ for o in low.optimizers] == ["AdamW"] and len(low.schedulers) == 1


SMT = """component t : self_modifying_titans(heads = 2) {
    update every 4 tokens  objective l2(target = self)
    optimizer dgd(lr = memory(eta), retain = memory(alpha), momentum = data(sigmoid, scale = 0.5))
    memory k : mlp(depth = 2)  memory v : mlp(depth = 2)  memory eta : mlp(depth = 2)  memory alpha : mlp(depth = 2)
    memory mem : linear { update every 8 tokens  optimizer gd(lr = memory(eta), retain = memory(alpha))
                          init meta(grad = stopgrad) } }"""


def test_self_modifying_memories_keep_their_own_settings():
    low = _lower_text(SMT)
    cfg = _modules(low.model, SelfModifyingTitans)[0].config
    assert (cfg.depth, cfg.proj_depth, cfg.dgd, cfg.proj_dgd) == (1, 2, False, True)
    assert (cfg.momentum_mode, cfg.momentum, cfg.stopgrad_memories) == ("data", pytest.approx(0.45), ("mem",))
    assert (cfg.chunk_size, cfg.proj_chunk_size, cfg.proj_heads) == (8, 4, cfg.n_heads) and low.notes.items == []


@pytest.mark.parametrize("objective,expected", [("huber(delta = 0.5)", ("huber", 0.5, 3.0)),
                                                ("lp(p = 4)", ("lp", 1.0, 4.0)), ("dot", ("dot", 1.0, 3.0))])
def test_neural_memory_objectives_are_lowered(objective, expected):
    low = _lower_text(f"component m : neural_memory {{ update every 4 tokens  objective {objective}  optimizer gd }}")
    cfg = _modules(low.model, NeuralMemory)[0].config
    assert (cfg.objective, cfg.huber_delta, cfg.lp_power) == expected
    y, _ = low.model(torch.randint(0, 256, (1, 9)))
    assert torch.isfinite(y).all()
