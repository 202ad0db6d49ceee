"""Every optimizer against its plain float64 reference (nldsl/optim/reference.py), step by step.

Parameters cover a wide and a tall matrix, a conv kernel (2-D view), a bias (1-D rule: AdamW fallback)
and an ``adamw=True`` group with its own lr and adamw_lr_ratio. Gradients are random tensors, so the
update rules are compared directly. Errors are measured on the displacement W_t − W_0.
"""
from __future__ import annotations

import pytest
import torch

from nldsl.optim import M3, AdamMemory, DeepMomentum, DeltaMomentum, Muon
from nldsl.optim import reference as ref
from nldsl.optim.deep_momentum import init_phi, memory_grad
from nldsl.testing import assert_rel_close

MATRIX_SHAPES = {"wide": (6, 10), "tall": (10, 6), "conv": (4, 3, 2, 2)}
BIAS_SHAPE, EMBED_SHAPE = (7,), (5, 4)
EMBED_LR, EMBED_RATIO = 0.02, 0.5
STEPS = 10  # M3 below refreshes its slow momentum after steps 3, 6 and 9

CASES = {
    "muon_nesterov": (Muon, ref.muon_ref, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    "muon_plain": (Muon, ref.muon_ref, dict(lr=0.05, momentum=0.8, nesterov=False)),
    "m3_ema": (M3, ref.m3_ref, dict(lr=0.01, slow_every=3, weight_decay=0.1)),
    "m3_paper": (M3, ref.m3_ref, dict(lr=0.01, betas=(0.8, 0.9, 0.7), alpha=1.0, slow_every=3, form="paper")),
    "delta_normalized": (
        DeltaMomentum, ref.delta_momentum_ref, dict(lr=0.05, beta=0.8, delta=0.7, weight_decay=0.1)
    ),
    "delta_raw": (DeltaMomentum, ref.delta_momentum_ref, dict(lr=0.05, delta=0.02, normalize=False)),
    "deep_linear_out": (
        DeepMomentum, ref.deep_momentum_ref, dict(lr=0.05, inner_lr=0.1, inner_decay=0.05, weight_decay=0.1)
    ),
    "deep_newton_schulz": (
        DeepMomentum, ref.deep_momentum_ref, dict(lr=0.05, inner_lr=0.2, hidden=4, nonlinearity="newton_schulz")
    ),
    "adam_memory_sum": (AdamMemory, ref.adam_memory_ref, dict(lr=0.05, weight_decay=0.1)),
    "adam_memory_ema": (AdamMemory, ref.adam_memory_ref, dict(lr=0.05, betas=(0.8, 0.95), form="ema")),
}


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    shapes = [*MATRIX_SHAPES.values(), BIAS_SHAPE, EMBED_SHAPE]
    return [torch.nn.Parameter(torch.randn(s, dtype=dtype, generator=gen)) for s in shapes]


def _grads(params, steps):
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params] for _ in range(steps)]


def _run(cls, kwargs, dtype, steps=STEPS):
    """Trajectories (list per param of W_t) of the optimizer fed the fixed random gradients."""
    params = _params(dtype)
    *matrix, bias, embed = params
    embed_group = {"params": [embed], "adamw": True, "lr": EMBED_LR, "adamw_lr_ratio": EMBED_RATIO}
    opt = cls([{"params": [*matrix, bias]}, embed_group], **kwargs)
    w0 = [p.detach().clone() for p in params]
    grads = _grads(params, steps)
    traj = [[] for _ in params]
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(dtype)
        opt.step()
        for i, p in enumerate(params):
            traj[i].append(p.detach().clone())
    return opt, params, w0, grads, traj


def _references(cls, reference, kwargs, opt, params, w0, grads):
    """Reference trajectories for the same parameters, in float64."""
    out, decay = [], kwargs.get("weight_decay", 0.0)
    for i, p in enumerate(params):
        g = [step[i] for step in grads]
        if i == len(params) - 1:  # the adamw=True group
            out.append(ref.adamw_ref(w0[i], g, EMBED_LR * EMBED_RATIO, weight_decay=decay))
        elif p.ndim < 2 and cls is not AdamMemory:  # the 1-D rule
            out.append(ref.adamw_ref(w0[i], g, kwargs["lr"], weight_decay=decay))
        else:
            extra = {"phi0": opt.state[p]["phi_init"]} if cls is DeepMomentum else {}
            out.append(reference(w0[i], g, **kwargs, **extra))
    return out


NAMES = [*MATRIX_SHAPES, "bias", "adamw_group"]


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_matches_reference(case, dtype, tol):
    cls, reference, kwargs = case
    opt, params, w0, grads, traj = _run(cls, kwargs, dtype)
    expected = _references(cls, reference, kwargs, opt, params, w0, grads)
    for name, start, got, want in zip(NAMES, w0, traj, expected):
        for t, (a, b) in enumerate(zip(got, want), start=1):
            assert_rel_close(a.double() - start.double(), b - start.double(), tol, f"{name} step {t}")


def test_adamw_fallback_is_torch_adamw():
    """The 1-D rule's AdamW is bit-for-bit the textbook update (float64, tolerance 1e-12)."""
    gen = torch.Generator().manual_seed(2)
    ours = torch.nn.Parameter(torch.randn(9, dtype=torch.float64, generator=gen))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt_ours = Muon([ours], lr=0.03, weight_decay=0.2, adamw_betas=(0.8, 0.99), adamw_eps=1e-6)
    opt_theirs = torch.optim.AdamW([theirs], lr=0.03, weight_decay=0.2, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(6):
        g = torch.randn(9, dtype=torch.float64, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert_rel_close(ours.detach(), theirs.detach(), 1e-12, "fallback vs torch AdamW")


def test_adam_memory_ema_form_is_torch_adamw():
    gen = torch.Generator().manual_seed(3)
    ours = torch.nn.Parameter(torch.randn(4, 6, dtype=torch.float64, generator=gen))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt_ours = AdamMemory([ours], lr=0.01, betas=(0.85, 0.98), weight_decay=0.1, form="ema")
    opt_theirs = torch.optim.AdamW([theirs], lr=0.01, betas=(0.85, 0.98), weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(4, 6, dtype=torch.float64, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert_rel_close(ours.detach(), theirs.detach(), 1e-12, "AdamMemory(ema) vs torch AdamW")


def test_adam_memory_step_is_ridge_optimum():
    """Eq. 101-105: each sum-form step is −η·(β1/β2)·argmin_m Σ_i ‖m ⊙ g_i − P‖² (P = √Σg², λ = 0)."""
    gen = torch.Generator().manual_seed(4)
    lr, betas = 0.1, (0.9, 0.99)
    w = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64, generator=gen))
    opt = AdamMemory([w], lr=lr, betas=betas, eps=0.0)
    grads = []
    for _ in range(5):
        grads.append(torch.randn(3, 4, dtype=torch.float64, generator=gen))
        before = w.detach().clone()
        w.grad = grads[-1].clone()
        opt.step()
        optimum = ref.adam_memory_optimum(grads)
        assert_rel_close(w.detach() - before, -lr * betas[0] / betas[1] * optimum, 1e-10, "step vs optimum")


def test_m3_slow_momentum_refreshes_only_every_f_steps():
    w = torch.nn.Parameter(torch.zeros(4, 6))
    opt = M3([w], lr=0.0, slow_every=4)
    gen = torch.Generator().manual_seed(5)
    changed = []
    for t in range(1, 13):
        before = opt.state[w]["slow_update"].clone() if opt.state[w] else torch.zeros(4, 6)
        w.grad = torch.randn(4, 6, generator=gen)
        opt.step()
        if not torch.equal(opt.state[w]["slow_update"], before):
            changed.append(t)
    assert changed == [4, 8, 12]


def test_delta_momentum_without_erase_is_sgd_momentum():
    gen = torch.Generator().manual_seed(6)
    ours = torch.nn.Parameter(torch.randn(5, 3, dtype=torch.float64, generator=gen))
    theirs = torch.nn.Parameter(ours.detach().clone())
    opt_ours = DeltaMomentum([ours], lr=0.1, beta=0.9, delta=0.0, weight_decay=0.0)
    opt_theirs = torch.optim.SGD([theirs], lr=0.1, momentum=0.9)
    for _ in range(5):
        g = torch.randn(5, 3, dtype=torch.float64, generator=gen)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert_rel_close(ours.detach(), theirs.detach(), 1e-12, "delta=0 vs SGD momentum")


def test_deep_momentum_closed_form_memory_grad_matches_autograd():
    gen = torch.Generator().manual_seed(7)
    hidden = 6
    phi = init_phi(hidden, 3, torch.float64, torch.device("cpu"))
    phi = phi + 0.3 * torch.randn(phi.shape, dtype=torch.float64, generator=gen)  # off the init point
    z = torch.randn(50, 2, dtype=torch.float64, generator=gen)
    target = torch.randn(50, dtype=torch.float64, generator=gen)
    grad, loss = memory_grad(phi, z.T.contiguous(), target, hidden)
    phi_var = phi.clone().requires_grad_(True)
    want_loss = 0.5 * ((ref._memory(phi_var, z, hidden) - target) ** 2).mean()
    (want,) = torch.autograd.grad(want_loss, phi_var)
    assert_rel_close(grad, want, 1e-12, "inner gradient")
    assert abs(float(loss) - float(want_loss.detach())) < 1e-12


def test_deep_momentum_without_inner_learning_is_normalised_momentum():
    """φ fixed at its init (inner_lr = 0): W ← W − η·m̂, m̂ the bias-corrected EMA of g/rms(g)."""
    gen = torch.Generator().manual_seed(8)
    w = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64, generator=gen))
    opt = DeepMomentum([w], lr=0.1, beta=0.8, inner_lr=0.0, eps=0.0)
    m, expected = torch.zeros(4, 5, dtype=torch.float64), w.detach().clone()
    for t in range(1, 6):
        g = torch.randn(4, 5, dtype=torch.float64, generator=gen)
        m = 0.8 * m + 0.2 * g / g.pow(2).mean().sqrt()
        expected = expected - 0.1 * m / (1 - 0.8**t)
        w.grad = g
        opt.step()
    assert_rel_close(w.detach(), expected, 1e-12, "DMGD with frozen memory")


def test_deep_momentum_memory_learns_alternating_gradients():
    """EMA momentum cannot predict g_t = (−1)^t c; the trained memory learns to, so its loss collapses."""
    w = torch.nn.Parameter(torch.zeros(16, 16))
    opt = DeepMomentum([w], lr=0.0, inner_lr=0.1)
    gen = torch.Generator().manual_seed(9)
    c = torch.randn(16, 16, generator=gen)
    losses = []
    for t in range(120):
        w.grad = (-1) ** t * c + 0.1 * torch.randn(16, 16, generator=gen)
        opt.step()
        losses.append(float(opt.state[w]["inner_loss"]))
    assert sum(losses[-20:]) / 20 < 0.1 * losses[1]


@pytest.mark.parametrize("form", ["ema", "paper"])
def test_m3_floor_bounds_a_coordinate_with_tiny_gradients(form):
    """O is orthogonalised, so O/√V is unbounded where one gradient entry is tiny; the √V̂ floor caps it.

    Without the floor (v_floor=0, the printed update) one entry at 1e-6 of the mean |g| moved ~1e5x more
    than a typical entry; with it, at most 1/v_floor = 10x the typical step (times O's spread).
    """
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(16, 16, generator=gen)
    g[0, 0] = 1e-6 * g.abs().mean()
    moves = {}
    for floor in (0.0, 0.1):
        w = torch.nn.Parameter(torch.zeros(16, 16))
        opt = M3([w], lr=1e-3, form=form, v_floor=floor)
        w.grad = g.clone()
        opt.step()
        moves[floor] = (float(w.detach()[0, 0].abs()), float(w.detach()[1:].abs().median()))
    assert moves[0.0][0] > 1e4 * moves[0.0][1]  # the printed update explodes there
    assert moves[0.1][0] < 50 * moves[0.1][1]
