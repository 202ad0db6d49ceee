"""The fused memory scan (Triton kernels, here through Triton's CPU interpreter) against the float64 references.

* forward reads and final state against the token-by-token snapshot reference (``snapshot_recurrence``);
* every gradient (keys, values, queries, rates, initial weights, through the final state too) against
  the torch path's autograd, which tests/nn/test_neural_memory.py checks against the same reference
  (gradcheck included); a gradcheck of the fused function on the rates and initial weights;
* the route: which rules and inputs take the fused kernels, ``NLDSL_FUSED_SCAN``, partial chunks at
  both ends, and a whole NeuralMemory / TitansBlock with the route on and off.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the fused scan's kernels need Triton (CPU interpreter here)")
if not __import__("nldsl.nn.fused_memory", fromlist=["x"]).interpreter_on():
    pytest.skip("Triton's interpreter is off (tests/conftest.py turns it on without CUDA; on a GPU, "
                "tests/gpu checks the compiled kernels)", allow_module_level=True)

from nldsl.nn import NeuralMemory, TitansBlock  # noqa: E402
from nldsl.nn import fused_memory  # noqa: E402
from nldsl.nn.fused_memory import fused_scan_mode, usable  # noqa: E402
from nldsl.nn.memory_ops import MemoryRule, init_memory_state, memory_scan  # noqa: E402
from nldsl.nn.reference import snapshot_recurrence  # noqa: E402
from nldsl.testing import assert_rel_close  # noqa: E402

F64 = torch.float64

RULES = {
    "momentum_decay": (MemoryRule(2, "silu", "l2", momentum=True, chunk_size=16), True),
    "momentum_no_decay": (MemoryRule(2, "silu", "l2", momentum=True, chunk_size=16), False),
    "plain_decay": (MemoryRule(2, "silu", "l2", momentum=False, chunk_size=16), True),
    "momentum_stopgrad": (MemoryRule(2, "silu", "l2", momentum=True, stopgrad=True, chunk_size=16), True),
    "plain_stopgrad": (MemoryRule(2, "silu", "l2", momentum=False, stopgrad=True, chunk_size=16), True),
}


def case(rule: MemoryRule, decay: bool, B=2, Hm=2, T=48, d=16, hidden=32, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    w0 = [torch.randn(Hm, o, i, generator=g, dtype=F64) / math.sqrt(i) for o, i in [(hidden, d), (d, hidden)]]
    q, k, v = (torch.randn(B, Hm, T, d, generator=g, dtype=F64) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    eta = 0.05 + 0.2 * torch.rand(B, Hm, T, generator=g, dtype=F64)
    la = F.logsigmoid(2 + torch.randn(B, Hm, T, generator=g, dtype=F64)) if decay else None
    lb = F.logsigmoid(1 + torch.randn(B, Hm, T, generator=g, dtype=F64)) if rule.momentum else None
    cast = (lambda t: None if t is None else t.to(dtype))
    return [cast(w) for w in w0], cast(q), cast(k), cast(v), cast(eta), cast(la), cast(lb)


def run(rule, w0, q, k, v, eta, la, lb, mode: str, pos: int = 0, split: int | None = None):
    """memory_scan under ``mode`` (optionally in two pieces); returns reads, final state and the gradients
    of a functional of the reads and the final weights and momentum."""
    leaves = [t.clone().requires_grad_() for t in (*w0, q, k, v, eta)] + [
        t.clone().requires_grad_() for t in (la, lb) if t is not None]
    ws, (qq, kk, vv, ee), rates = leaves[:2], leaves[2:6], iter(leaves[6:])
    la_ = next(rates) if la is not None else None
    lb_ = next(rates) if lb is not None else None
    state = init_memory_state(rule, ws, q.shape[0], q.dtype)
    state["pos"] = pos
    T = q.shape[-2]
    cuts = [(0, T)] if split is None else [(0, split), (split, T)]
    ys = []
    with fused_scan_mode(mode):
        for a, b in cuts:
            sl = (lambda t: None if t is None else t[..., a:b, :])
            sr = (lambda t: None if t is None else t[..., a:b])
            y, state = memory_scan(rule, state, sl(kk), sl(vv), sr(ee), sr(la_), sr(lb_), sl(qq))
            ys.append(y)
    y = torch.cat(ys, dim=-2)
    g = torch.Generator().manual_seed(1)
    loss = (y * torch.randn(y.shape, generator=g, dtype=F64).to(y.dtype)).sum()
    finals = list(state["w"].values()) + list(state.get("s", {}).values())
    loss = loss + sum((t * torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)).sum() for t in finals)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(x) if gr is None else gr for gr, x in zip(grads, leaves)]
    return y.detach(), {k_: {n: t.detach() for n, t in v_.items()} if isinstance(v_, dict) else v_
                        for k_, v_ in state.items()}, grads


LABELS = ["dW1", "dW2", "dq", "dk", "dv", "deta", "dlog_alpha/beta", "dlog_beta"]


@pytest.mark.parametrize("name", list(RULES))
def test_forward_matches_float64_snapshot_reference(name):
    rule, decay = RULES[name]
    w0, q, k, v, eta, la, lb = case(rule, decay)
    y, state, _ = run(rule, w0, q, k, v, eta, la, lb, "interpret")
    ref_state = init_memory_state(rule, w0, q.shape[0], F64)
    alpha = None if la is None else la.exp()
    beta = None if lb is None else lb.exp()
    y_ref, ref = snapshot_recurrence(rule, ref_state, q, k, v, eta, alpha, beta)
    assert_rel_close(y, y_ref, 1e-12, f"{name} reads")
    for part in ("w", "snap") + (("s",) if rule.momentum else ()):
        for i in ("0", "1"):
            assert_rel_close(state[part][i], ref[part][i], 1e-12, f"{name} final {part}{i}")
    assert state["pos"] == ref["pos"] == 0


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("pos,T,split", [(0, 48, None), (5, 50, None), (3, 61, 22)])
def test_gradients_match_torch_path(name, pos, T, split):
    """Partial chunks at either end (the torch path) around the fused whole chunks, and a sequence cut in
    two pieces carried with its state, give the torch path's reads, state and gradients."""
    rule, decay = RULES[name]
    inputs = case(rule, decay, T=T)
    y, state, grads = run(rule, *inputs, "interpret", pos=pos, split=split)
    y_ref, ref, grads_ref = run(rule, *inputs, "off", pos=pos, split=split)
    assert_rel_close(y, y_ref, 1e-12, f"{name} reads")
    assert state["pos"] == ref["pos"]
    for part in ("w", "snap") + (("s",) if rule.momentum else ()):
        for i in ("0", "1"):
            assert_rel_close(state[part][i], ref[part][i], 1e-12, f"{name} {part}{i}")
    for label, a, b in zip(LABELS, grads, grads_ref):
        if float(b.norm()) == 0:
            assert float(a.norm()) == 0, f"{name} {label}: gradient where the torch path has none"
        else:
            assert_rel_close(a, b, 1e-10, f"{name} {label}")


@pytest.mark.parametrize("d,hidden,chunk", [(32, 16, 16), (16, 64, 32)])
def test_other_widths_and_chunks_match_torch_path(d, hidden, chunk):
    """Key width above the hidden width, a chunk wider than the key: the kernels index both right."""
    rule = MemoryRule(2, "silu", "l2", momentum=True, chunk_size=chunk)
    inputs = case(rule, True, T=2 * chunk + 5, d=d, hidden=hidden)
    y, state, grads = run(rule, *inputs, "interpret", pos=3)
    y_ref, ref, grads_ref = run(rule, *inputs, "off", pos=3)
    assert_rel_close(y, y_ref, 1e-12, "reads")
    for label, a, b in zip(LABELS, grads, grads_ref):
        assert_rel_close(a, b, 1e-10, label)


def test_no_chunk_states_are_kept_without_grad(monkeypatch):
    """Under no_grad (evaluation, generation) the forward keeps no chunk-start states for a backward."""
    seen = []
    fwd, bwd = fused_memory._kernels()

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                seen.append(kw["SAVE_STATES"])
                return fwd[grid](*args, **kw)
            return launch

    monkeypatch.setattr(fused_memory, "_kernels", lambda: (Spy(), bwd))
    rule, decay = RULES["momentum_decay"]
    w0, q, k, v, eta, la, lb = case(rule, decay, T=32)
    w0 = [w.requires_grad_() for w in w0]
    with fused_scan_mode("interpret"):
        with torch.no_grad():
            memory_scan(rule, init_memory_state(rule, w0, 2, F64), k, v, eta, la, lb, q)
        memory_scan(rule, init_memory_state(rule, w0, 2, F64), k, v, eta, la, lb, q)
    assert seen == [False, True]


def test_fp32_kernel_within_fp32_bounds_of_float64():
    rule, decay = RULES["momentum_decay"]
    exact = run(rule, *case(rule, decay), "interpret")
    fp32 = run(rule, *case(rule, decay, dtype=torch.float32), "interpret")
    assert_rel_close(fp32[0].double(), exact[0], 1e-5, "reads")
    for label, a, b in zip(LABELS, fp32[2], exact[2]):
        assert_rel_close(a.double(), b, 1e-4, label)


def test_gradcheck_rates_and_initial_weights():
    """Finite differences through the fused function itself (interpreter, float64, 2 chunks)."""
    rule = RULES["momentum_decay"][0]
    w0, q, k, v, eta, la, lb = case(rule, True, B=1, Hm=1, T=32, d=16, hidden=16)

    def f(eta_, la_, lb_, w1, w2):
        with fused_scan_mode("interpret"):
            state = init_memory_state(rule, [w1, w2], 1, F64)
            y, new = memory_scan(rule, state, k, v, eta_, la_, lb_, q)
        return y.sum(dim=-1), new["w"]["0"], new["s"]["1"]

    leaves = [t.clone().requires_grad_() for t in (eta, la, lb)] + [w.clone().requires_grad_() for w in w0]
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


# ---------------------------------------------------------------------------------------- route
def test_route_takes_only_rules_it_implements():
    k = torch.zeros(1, 1, 32, 16)
    ok = MemoryRule(2, "silu", "l2", momentum=True, chunk_size=16)
    with fused_scan_mode("interpret"):
        assert usable(ok, k, k, torch.float32)
        assert not usable(ok, k, None, torch.float32)  # no read
        assert not usable(ok, torch.zeros(1, 1, 32, 24), torch.zeros(1, 1, 32, 24), torch.float32)  # width 24
        assert usable(ok, k, k, torch.float32, hidden=64)
        assert not usable(ok, k, k, torch.float32, hidden=48)  # hidden width 48
        for bad in (MemoryRule(1, "silu", "l2", chunk_size=16), MemoryRule(2, "gelu", "l2", chunk_size=16),
                    MemoryRule(2, "silu", "self", chunk_size=16), MemoryRule(2, "silu", "l2", dgd=True, chunk_size=16),
                    MemoryRule(2, "silu", "l2", chunk_size=8), MemoryRule(2, "silu", "l2", chunk_size=24),
                    MemoryRule(2, "silu", "l2", chunk_size=128),
                    MemoryRule(2, "silu", "l2", chunk_size=16, normalized_rate=True),
                    MemoryRule(2, "silu", "l2", chunk_size=16, detached_heads=(True,))):
            assert not usable(bad, k, k, torch.float32), bad
    with fused_scan_mode("off"):
        assert not usable(ok, k, k, torch.float32)
    assert not usable(ok, k, k, torch.float32)  # auto: CPU tensors take the torch path
    with pytest.raises(ValueError, match="fused scan mode"):
        with fused_scan_mode("fast"):
            pass


def test_environment_variable_selects_the_mode(monkeypatch):
    monkeypatch.setenv("NLDSL_FUSED_SCAN", "interpret")
    assert fused_memory.mode() == "interpret"
    monkeypatch.setenv("NLDSL_FUSED_SCAN", "OFF")
    assert fused_memory.mode() == "off"
    monkeypatch.setenv("NLDSL_FUSED_SCAN", "sometimes")
    with pytest.raises(ValueError, match="NLDSL_FUSED_SCAN must be one of auto, off, interpret"):
        fused_memory.mode()


def test_hidden_width_off_the_kernel_grid_takes_the_torch_path(monkeypatch):
    """A memory whose hidden width is no power of two runs (on the torch path) instead of failing to compile."""
    called = []
    monkeypatch.setattr(fused_memory, "scan_full_chunks", lambda *a, **kw: called.append(1))
    rule, decay = RULES["momentum_decay"]
    y, _, _ = run(rule, *case(rule, decay, hidden=24), "interpret")
    assert not called and torch.isfinite(y).all()


def test_double_backward_is_refused_clearly():
    rule, decay = RULES["momentum_decay"]
    w0, q, k, v, eta, la, lb = case(rule, decay, T=32)
    k = k.clone().requires_grad_()
    with fused_scan_mode("interpret"):
        y, _ = memory_scan(rule, init_memory_state(rule, w0, 2, F64), k, v, eta, la, lb, q)
    (g,) = torch.autograd.grad(y.square().sum(), k, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|marked with @once_differentiable"):
        g.sum().backward()


def test_the_kernels_run_when_routed(monkeypatch):
    """The route is taken (not silently the torch path): count kernel launches."""
    calls = []
    real = fused_memory.scan_full_chunks
    monkeypatch.setattr(fused_memory, "scan_full_chunks", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    rule, decay = RULES["momentum_decay"]
    run(rule, *case(rule, decay, T=40), "interpret", pos=0)
    assert calls == [1]
    run(rule, *case(rule, decay, T=40), "off")
    assert calls == [1]


@pytest.mark.parametrize("make", ["memory", "titans_block"])
def test_whole_module_same_with_route_on_and_off(make):
    torch.manual_seed(0)
    if make == "memory":
        mod = NeuralMemory(dim=64, n_heads=4, depth=2, hidden_mult=1.0, chunk_size=16, lr_mode="data",
                           retention=0.9, retention_mode="data", momentum=0.9, momentum_mode="data").double()
    else:
        mod = TitansBlock.Config(dim=64, n_heads=4, chunk_size=16, memory=dict(hidden_mult=1.0)).build().double()
    x = torch.randn(2, 70, 64, dtype=F64)
    outs = {}
    for m in ("interpret", "off"):
        mod.zero_grad()
        with fused_scan_mode(m):
            y1, st = mod(x[:, :37])
            y2, _ = mod(x[:, 37:], st)
        y = torch.cat([y1, y2], 1)
        y.square().mean().backward()
        outs[m] = y.detach(), {n: p.grad.clone() for n, p in mod.named_parameters() if p.grad is not None}
    assert_rel_close(outs["interpret"][0], outs["off"][0], 1e-12, "output")
    assert outs["interpret"][1].keys() == outs["off"][1].keys()
    for n, g in outs["off"][1].items():
        assert_rel_close(outs["interpret"][1][n], g, 1e-9, n)
