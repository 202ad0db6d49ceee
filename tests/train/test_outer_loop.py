"""The outer step: clipping equal to torch's, one read of loss and norm, no update from non-finite values."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from nldsl.outer import OuterLoop
from nldsl.runtime_guard import NonFiniteLossError


def _loop(grad_clip: float, seed: int = 0, scale: float = 3.0):
    gen = torch.Generator().manual_seed(seed)
    params = {n: nn.Parameter(torch.randn(*shape, generator=gen, dtype=torch.float64))
              for n, shape in (("w", (5, 4)), ("b", (4,)), ("u", (3, 2, 2)))}
    for p in params.values():
        p.grad = scale * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    opt = torch.optim.SGD(list(params.values()), lr=1.0)
    return OuterLoop([opt], [], params, grad_clip), params


@pytest.fixture(params=["torch", "fallback"])
def norm_api(request, monkeypatch):
    """Both the grouped torch API (>= 2.6) and the plain path used on older torch."""
    if request.param == "fallback":
        monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
        monkeypatch.delattr(torch.nn.utils, "clip_grads_with_norm_", raising=False)
    return request.param


@pytest.mark.parametrize("grad_clip,scale", [(1.0, 3.0), (0.5, 0.01), (0.0, 3.0)])
def test_clipped_update_equals_torch_clip_grad_norm(norm_api, grad_clip, scale):
    loop, params = _loop(grad_clip, scale=scale)
    ref = {n: (p.detach().clone(), p.grad.clone()) for n, p in params.items()}
    ref_params = [nn.Parameter(w) for w, _ in ref.values()]
    for p, (_, g) in zip(ref_params, ref.values()):
        p.grad = g.clone()
    ref_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for _, g in ref.values()])))
    if grad_clip > 0:
        ref_norm = float(torch.nn.utils.clip_grad_norm_(ref_params, grad_clip))
    info = loop.step(0, torch.tensor(2.5, dtype=torch.float64))
    assert info["loss"] == 2.5 and not info["skipped"]
    assert info["grad_norm"] == pytest.approx(ref_norm, rel=1e-12)
    for (name, p), q in zip(params.items(), ref_params):
        torch.testing.assert_close(p.detach(), q.detach() - q.grad, rtol=1e-12, atol=1e-12, msg=name)
        assert p.grad is None


def test_non_finite_loss_updates_nothing_and_keeps_the_gradients():
    loop, params = _loop(1.0)
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in params.items()}
    info = loop.step(0, torch.tensor(float("nan")))
    assert info["skipped"] and info["level_steps"] == 0
    assert info["loss"] != info["loss"]  # NaN
    for n, p in params.items():
        assert torch.equal(p.detach(), before[n][0]) and torch.equal(p.grad, before[n][1])


def test_non_finite_gradient_raises_naming_it_before_any_update(norm_api):
    loop, params = _loop(1.0)
    params["b"].grad[2] = float("inf")
    before = {n: p.detach().clone() for n, p in params.items()}
    with pytest.raises(NonFiniteLossError) as err:
        loop.step(4, torch.tensor(1.0))
    assert "b" in str(err.value) and err.value.step == 5
    for n, p in params.items():
        assert torch.equal(p.detach(), before[n]) and p.grad is None


def test_step_without_loss_or_gradients():
    loop, params = _loop(1.0)
    for p in params.values():
        p.grad = None
    info = loop.step(0)
    assert info == {"loss": 0.0, "grad_norm": 0.0, "level_steps": 0, "skipped": False}
