"""state_dict save/load (through torch.save / torch.load(weights_only=True)) resumes bit-identically."""
from __future__ import annotations

import io

import pytest
import torch

from nldsl.optim import M3, AdamMemory, DeepMomentum, DeltaMomentum, Muon

SHAPES = [(6, 10), (10, 6), (4, 3, 2, 2), (7,), (5, 4)]  # last one: an adamw=True group
BEFORE, AFTER = 4, 5  # M3 below (slow_every=3) is saved mid-block and refreshes again after resuming

CASES = {
    "muon": (Muon, dict(lr=0.05, weight_decay=0.1)),
    "m3_ema": (M3, dict(lr=0.01, slow_every=3, weight_decay=0.1)),
    "m3_paper": (M3, dict(lr=0.01, slow_every=3, form="paper")),
    "delta_momentum": (DeltaMomentum, dict(lr=0.05, weight_decay=0.1)),
    "deep_momentum": (DeepMomentum, dict(lr=0.05, inner_lr=0.1, inner_decay=0.01)),
    "deep_momentum_ns": (DeepMomentum, dict(lr=0.05, nonlinearity="newton_schulz")),
    "adam_memory": (AdamMemory, dict(lr=0.05, weight_decay=0.1)),
}


def _grads():
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(s, generator=gen) for s in SHAPES] for _ in range(BEFORE + AFTER)]


def _build(cls, kwargs, values):
    params = [torch.nn.Parameter(v.clone()) for v in values]
    groups = [{"params": params[:-1]}, {"params": params[-1:], "adamw": True, "lr": 0.02}]
    return params, cls(groups, **kwargs)


def _step(params, opt, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_resume_is_bit_identical(case):
    cls, kwargs = case
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen) for s in SHAPES]
    grads = _grads()

    params, opt = _build(cls, kwargs, init)
    uninterrupted = [_step(params, opt, g) for g in grads][BEFORE:]

    params, opt = _build(cls, kwargs, init)
    for g in grads[:BEFORE]:
        _step(params, opt, g)
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    params, opt = _build(cls, kwargs, checkpoint["params"])
    opt.load_state_dict(checkpoint["optimizer"])
    resumed = [_step(params, opt, g) for g in grads[BEFORE:]]

    for t, (want, got) in enumerate(zip(uninterrupted, resumed), start=BEFORE + 1):
        for i, (a, b) in enumerate(zip(want, got)):
            assert torch.equal(a, b), f"param {i} differs at step {t}"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_state_dict_round_trip(case):
    """load_state_dict(state_dict()) reproduces every state entry and group setting."""
    cls, kwargs = case
    params, opt = _build(cls, kwargs, [torch.ones(s) for s in SHAPES])
    for g in _grads()[:3]:
        _step(params, opt, g)
    saved = opt.state_dict()
    _, fresh = _build(cls, kwargs, [torch.ones(s) for s in SHAPES])
    fresh.load_state_dict(saved)
    again = fresh.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    for key, state in saved["state"].items():
        for name, value in state.items():
            other = again["state"][key][name]
            assert torch.equal(other, value) if torch.is_tensor(value) else other == value, name
