"""``nldsl.build`` and ``Compiled``: the API, overrides, devices, compile switch, steps, resume, sampling."""
from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_small

from nldsl.build import Compiled, build
from nldsl.errors import NLError
from nldsl.outer import LRSchedule
from nldsl.overrides import OverrideError

SPEC = """model m {{ vocab = 256  dim = 16
  component attn : attention(heads = 2)
  component ffn : cms {{ objective task
    level fast : mlp(hidden = 32) {{ update every 4 tokens  optimizer gd(lr = 0.05) }}
    level slow : mlp(hidden = 32) {{ update every 2 steps (reduce = mean) }}
  }}
}}
train {{
  optimizer adamw(lr = 0.01, weight_decay = 0.1) for all
  schedule cosine(warmup = 2)
  steps = 10  batch = 4  seq = 16  {extra}
  data = text("builtin:shakespeare")
}}
"""
PLAIN = """model m {{ vocab = 256  dim = 16  component ffn : swiglu(hidden = 32) }}
train {{ optimizer sgd(lr = 0.1) for all  grad_clip = 0  steps = 4  batch = 4  seq = 8  {extra}
  data = text("builtin:shakespeare") }}
"""


def _batch(seed: int, batch: int = 4, length: int = 17) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_build_returns_the_compiled_api():
    c = build_small(SPEC.format(extra=""))
    assert isinstance(c, Compiled) and c.spec.model.name == "m" and c.plan.model.dim == 16 and c.step == 0
    assert [type(o).__name__ for o in c.optimizers] == ["AdamW"] and len(c.schedulers) == 1
    metrics = c.train_step(_batch(0))
    assert set(metrics) == {"loss", "grad_norm", "lr", "step", "tokens", "level_steps"}
    assert metrics["tokens"] == 4 * 16 and metrics["step"] == c.step == 1
    assert isinstance(c.eval_loss(_batch(1)), float)


def test_overrides_are_applied_and_validated():
    c = build_small("tiny", **{"optimizer.1.lr": 0.5, "train.seq": 128})
    assert c.plan.model.dim == 32 and c.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.5 / 20)
    with pytest.raises(OverrideError, match="did you mean 'steps'"):
        build_small("tiny", stepz=3)
    with pytest.raises(NLError) as info:
        build_small("tiny", **{"train.steps": -5})
    assert [d.code for d in info.value.diagnostics if d.is_error] == ["NL301"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(NLError) as info:
        build(PLAIN.format(extra=""), device="cuda")
    assert info.value.diagnostics[0].code == "NL503" and "no CUDA GPU" in info.value.diagnostics[0].message


def test_compile_follows_the_spec_and_can_be_switched_off():
    text = PLAIN.format(extra="compile = compile(mode = \"default\", fullgraph = true)")
    assert build(text, compile=None).compiled
    assert isinstance(build(text, compile=None)._fwd, torch._dynamo.eval_frame.OptimizedModule)
    assert not build(text, compile=False).compiled
    assert not build(PLAIN.format(extra="")).compiled


def test_schedule_and_lr_follow_the_plan():
    c = build_small(SPEC.format(extra=""))
    sched = LRSchedule("cosine", 2, 10, 0.1)
    lrs = [c.train_step(_batch(i))["lr"] for i in range(4)]
    assert lrs == pytest.approx([0.01 * sched(s) for s in range(4)])


def test_resume_is_bit_identical_mid_accumulation():
    first = build_small(SPEC.format(extra=""))
    for i in range(3):  # the every-2-steps level holds one accumulated gradient now
        first.train_step(_batch(i))
    saved = copy.deepcopy(first.state_dict())
    assert saved["outer"]["acc"]
    expected = [first.train_step(_batch(i))["loss"] for i in range(3, 6)]
    second = build_small(SPEC.format(extra=""), seed=123)
    second.load_state_dict(saved)
    assert second.step == 3
    assert [second.train_step(_batch(i))["loss"] for i in range(3, 6)] == expected
    for p, q in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)


def test_load_state_dict_refuses_another_spec():
    c = build_small(SPEC.format(extra=""))
    state = c.state_dict()
    state["optimizers"].append({})
    with pytest.raises(NLError, match="optimizers"):
        c.load_state_dict(state)


def test_eval_loss_adapts_in_context_but_leaves_the_weights_alone():
    c = build_small(SPEC.format(extra=""))
    before = copy.deepcopy(c.model.state_dict())
    loss = c.eval_loss(_batch(0))
    assert loss == pytest.approx(c.eval_loss(_batch(0)))
    assert all(torch.equal(v, c.model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in c.model.parameters())


def test_accumulate_splits_the_batch_into_micro_batches():
    whole = build_small(PLAIN.format(extra=""), dtype=torch.float64)
    split = build_small(PLAIN.format(extra="accumulate = 2"), dtype=torch.float64)
    a, b = whole.train_step(_batch(0, length=9)), split.train_step(_batch(0, length=9))
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    for p, q in zip(whole.model.parameters(), split.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)


def test_generate_carries_the_state_token_by_token():
    c = build_small("titans")
    prompt = _batch(0, batch=2, length=9)
    out, state = c.generate(prompt, 6, temperature=0.0)
    assert out.shape == (2, 15) and torch.equal(out[:, :9], prompt)
    tokens = prompt
    with torch.no_grad():
        for _ in range(6):  # the same greedy samples when the whole text is re-read every time
            logits, _ = c.model(tokens)
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, tokens)
    more, _ = c.generate(out[:, -1:], 2, temperature=0.7, top_k=5, state=state,
                         generator=torch.Generator().manual_seed(0))
    assert more.shape == (2, 3)


def test_generate_adapts_task_levels_on_the_prompt():
    c = build_small(SPEC.format(extra=""))
    _, state = c.generate(_batch(0, batch=1, length=12), 1, temperature=0.0)
    assert state["1"]["ffn"]["level0"]["delta"]["w1"].abs().sum() > 0


def test_classifier_trains_on_feature_batches():
    c = build_small("continual")
    x, y = torch.randn(8, 64), torch.randint(0, 10, (8,))
    metrics = [c.train_step((x, y)) for _ in range(10)]
    assert sum(m["level_steps"] for m in metrics) == 1  # body.mid at step 10; body.slow never
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert c.model(x)[0].shape == (8, 10)


def test_bf16_precision_runs_in_fp32_on_cpu():
    c = build_small(SPEC.format(extra="precision = bf16"))
    assert c.autocast is None and c.train_step(_batch(0))["loss"] > 0


def test_repr_summarises():
    assert "m:" in repr(build_small(PLAIN.format(extra=""))) and "SGD" in repr(build_small(PLAIN.format(extra="")))
