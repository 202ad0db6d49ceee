"""Optimizer levels (``buffer`` components generating a weight's updates, examples/optimizers.nl): each group
of buffers is lowered to the runtime optimizer it spells out, and steps like the buffers' recurrence."""
from __future__ import annotations

import pytest
import torch
from conftest import build_small

from nldsl.errors import NLError
from nldsl.optim import newton_schulz
from nldsl.plan import plan
from nldsl.testing import assert_rel_close

EXPECTED = {
    "momentum[0].w": ("SGD", dict(lr=0.01, momentum=0.9)),
    "adam[1].w": ("AdamMemory", dict(lr=0.1, betas=(0.9, 0.999), form="ema")),
    "delta[2].w": ("DeltaMomentum", dict(lr=0.01, beta=0.9, delta=0.01)),
    "deep[3].w": ("DeepMomentum", dict(lr=0.01, beta=0.9, nonlinearity="none")),
    "muon[4].w": ("Muon", dict(lr=0.02, momentum=0.95, nesterov=False)),
    "m3[5].w": ("M3", dict(lr=0.02, betas=(0.9, 0.999, 0.9), alpha=1.0, slow_every=10, form="ema")),
}


def _level_optimizers(c) -> dict:
    return {o.level: opt for o, opt in zip(c.optimizer_plans, c.optimizers) if o.level is not None}


def test_each_block_gets_the_optimizer_its_buffers_spell_out():
    c = build_small("optimizers")
    levels = _level_optimizers(c)
    assert set(levels) == set(EXPECTED) and type(c.optimizers[0]).__name__ == "AdamW"
    for target, (name, hypers) in EXPECTED.items():
        opt = levels[target]
        assert type(opt).__name__ == name, target
        group = opt.param_groups[0]
        assert {k: group[k] for k in hypers} == hypers, target
        owned = {c.component_of(n) for n, p in c.model.named_parameters()
                 if any(p is q for g in opt.param_groups for q in g["params"])}
        assert owned == {target}, "a level optimizer trains exactly the weights of its `like` component"


def test_the_plan_shows_buffers_as_levels_of_gradients_every_step():
    p = plan(build_small("optimizers").spec)
    buffers = [comp for comp in p.components if comp.kind == "buffer"]
    assert len(buffers) == 9
    for b in buffers:
        assert b.rule.context == "gradients(w)" and b.period.kind == "steps"
        assert b.period.every == (10 if b.path == "m3[5].slow" else 1)
    assert "every step" in p.render() and "context gradients(w)" in p.render()


def _step_with(opt, w: torch.nn.Parameter, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for g in grads:
        w.grad = g.clone()
        opt.step()
        out.append(w.detach().clone())
    return out


def _literal(target: str, w0: torch.Tensor, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """The buffers' recurrence from the spec (gradient units B = -m / lr), written out."""
    w, B, m, v, out = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0), torch.zeros_like(w0), []
    for t, g in enumerate(grads, 1):
        if target == "momentum[0].w":  # m <- 0.9 m - 0.01 g;  w <- w + m
            B = 0.9 * B + g
            w = w - 0.01 * B
        elif target == "muon[4].w":  # w <- w - 0.02 NS(B)  (square matrix: Muon's shape scale is 1)
            B = 0.95 * B + g
            w = w - 0.02 * newton_schulz(B, 5)
        elif target == "delta[2].w":  # one GD step of 0.01 on 1/2 ||m K + G||^2, K = G / ||G||
            K = g / (torch.linalg.matrix_norm(g) + 1e-8)
            B = B @ (0.9 * torch.eye(B.shape[1], dtype=B.dtype) - 0.01 * K.T @ K) + g
            w = w - 0.01 * B
        else:  # adam: m / sqrt(v), both bias-corrected EMAs (v's lr = 1 - retain)
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            w = w - 0.1 * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
        out.append(w.clone())
    return out


@pytest.mark.parametrize("target", ["momentum[0].w", "adam[1].w", "delta[2].w", "muon[4].w"])
def test_level_optimizer_steps_like_the_buffer_recurrence(target):
    c = build_small("optimizers", dtype=torch.float64)
    opt = _level_optimizers(c)[target]
    w = next(p for g in opt.param_groups for p in g["params"] if p.dim() == 2)
    torch.manual_seed(0)
    grads = [torch.randn_like(w) * 0.1 for _ in range(4)]
    expected = _literal(target, w.detach().clone(), grads)
    for got, want in zip(_step_with(opt, w, grads), expected):
        assert_rel_close(got, want, 1e-6 if target == "muon[4].w" else 1e-12, target)


def test_optimizers_example_trains():
    c = build_small("optimizers", **{"train.steps": 40})
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(64, 10, generator=g)
    x = torch.rand(512, 64, generator=g) * 16  # digits-like pixel values
    y = (x @ teacher).argmax(-1)
    losses = []
    for _ in range(40):
        idx = torch.randint(0, 512, (32,), generator=g)
        losses.append(c.train_step((x[idx], y[idx]))["loss"])
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


BLOCK = """block b(dim = 16) {{
  component w : linear(out = dim) {{ objective task }}
{buffers}
  transfer generate m -> w (what = updates)
  flow input -> w -> output
}}
model m {{ task = classify  inputs = 8  classes = 3  dim = 16  stack b }}
train {{ optimizer adamw for all  data = digits() }}
"""
BUFFER = """  component {name} : buffer(like = w{args}) {{
    context = gradients(w)  update every {every} steps  objective {objective}  optimizer gd({gd})  init zeros }}"""


def _buffer(name="m", args="", every=1, objective="dot", gd="lr = 0.01, retain = 0.9") -> str:
    return BUFFER.format(name=name, args=args, every=every, objective=objective, gd=gd)


@pytest.mark.parametrize("buffers,message", [
    (_buffer(args=", output = sign"), "no runtime optimizer reads"),
    (_buffer(gd="lr = learned(0.01), retain = 0.9"), "takes lr as a number"),
    (_buffer(every=2), "updated every step"),
    (_buffer() + "\n" + _buffer("v", ", output = rsqrt", objective="l2(target = gradient_scale)",
                                gd="lr = 0.01, retain = 0.999") + "\n  transfer parametric v -> m", "1 - retain"),
], ids=["sign-output", "learned-lr", "every-2", "adam-v-rate"])
def test_unsupported_optimizer_levels_are_located_errors(buffers, message):
    with pytest.raises(NLError) as info:
        build_small(BLOCK.format(buffers=buffers))
    diag = info.value.diagnostics[0]
    assert diag.code == "NL501" and message in diag.message and diag.span.line >= 3
