"""LR schedules: values at the corners, shape, LambdaLR integration, pickling and validation."""
from __future__ import annotations

import io
import math
import pickle

import pytest
import torch

from nldsl.optim import M3, Schedule, warmup_constant, warmup_cosine, warmup_linear


def test_warmup_is_linear_and_starts_above_zero():
    sched = warmup_cosine(warmup=4, total=20)
    assert [sched(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    "sched,expected",
    [
        (warmup_cosine(2, 12, min_ratio=0.1), {2: 1.0, 7: 0.55, 12: 0.1, 100: 0.1}),
        (warmup_linear(2, 12), {2: 1.0, 7: 0.5, 12: 0.0, 50: 0.0}),
        (warmup_constant(3), {0: 1 / 3, 3: 1.0, 1000: 1.0}),
        (warmup_cosine(0, 10), {0: 1.0, 5: 0.5, 10: 0.0}),
    ],
    ids=["cosine_min_ratio", "linear", "constant", "cosine_no_warmup"],
)
def test_values(sched, expected):
    for step, value in expected.items():
        assert math.isclose(sched(step), value, abs_tol=1e-12), (step, sched(step), value)


@pytest.mark.parametrize("make", [warmup_cosine, warmup_linear], ids=["cosine", "linear"])
def test_decay_is_monotone(make):
    sched = make(5, 50, 0.05)
    values = [sched(s) for s in range(4, 60)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_drives_lambda_lr_and_its_state_dict():
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = M3([p], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(2, 10))
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(2, 2)
        opt.step()
        scheduler.step()
    assert [round(x, 6) for x in lrs] == [0.05, 0.1, 0.1, round(0.1 * 0.5 * (1 + math.cos(math.pi / 8)), 6)]
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["last_epoch"] == 4


def test_schedules_pickle():
    sched = warmup_linear(3, 30, 0.2)
    assert pickle.loads(pickle.dumps(sched)) == sched


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(kind="exp"), "kind must be one of"),
        (dict(warmup=-1, total=10), "warmup must be an int >= 0"),
        (dict(warmup=10, total=10), r"total \(10\) must be greater than warmup \(10\)"),
        (dict(total=1.5), "total must be an int >= 0"),
        (dict(total=10, min_ratio=1.5), r"min_ratio must be in \[0, 1\]"),
        (dict(total=10, min_ratio=math.nan), "min_ratio must be finite"),
    ],
    ids=["kind", "negative_warmup", "total_not_after_warmup", "float_total", "min_ratio_above_one", "min_ratio_nan"],
)
def test_bad_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Schedule(**kwargs)
