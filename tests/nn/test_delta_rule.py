"""Chunkwise (WY/UT) gated delta rule vs the float64 token-by-token reference; the fla dispatch seam."""
import pytest
import torch

import nldsl.nn.delta_rule as delta_rule
from nldsl.nn import NeuralMemory
from nldsl.nn.delta_rule import chunk_gated_delta_rule, fla_available
from nldsl.nn.reference import ref_gated_delta_rule
from nldsl.testing import assert_rel_close

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def case(B=2, T=37, H=3, K=5, V=4, dtype=F64, seed=0, normalise=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = torch.randn(B, T, H, K, generator=g, dtype=F64)
    k = torch.nn.functional.normalize(k, dim=-1) if normalise else k * 0.5
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    gate = -0.3 * torch.rand(B, T, H, generator=g, dtype=F64)  # log decay
    beta = torch.rand(B, T, H, generator=g, dtype=F64)
    h0 = torch.randn(B, H, K, V, generator=g, dtype=F64)
    return [t.to(dtype) for t in (q, k, v, gate, beta, h0)]


@pytest.mark.parametrize("chunk", [1, 4, 16, 64], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("normalise", [True, False], ids=["unit_k", "raw_k"])
def test_chunked_equals_sequential_reference(chunk, normalise):
    q, k, v, g, beta, h0 = case(normalise=normalise)
    o, hT = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, chunk_size=chunk)
    o_ref, h_ref = ref_gated_delta_rule(q, k, v, g, beta, h0)
    assert_rel_close(o, o_ref, 1e-10, f"outputs C={chunk}")
    assert_rel_close(hT, h_ref, 1e-10, f"final state C={chunk}")


def test_float32_and_zero_initial_state():
    q, k, v, g, beta, _ = case()
    o32, h32 = chunk_gated_delta_rule(*(t.float() for t in (q, k, v, g, beta)))
    o_ref, h_ref = ref_gated_delta_rule(q, k, v, g, beta)
    assert_rel_close(o32, o_ref, 1e-5, "float32 outputs")
    assert h32.dtype == torch.float32 and h32.shape == (2, 3, 5, 4)
    _, none = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=False)
    assert none is None


def test_state_carries_across_pieces():
    q, k, v, g, beta, h0 = case()
    o_whole, h_whole = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, chunk_size=8)
    o1, h1 = chunk_gated_delta_rule(q[:, :11], k[:, :11], v[:, :11], g[:, :11], beta[:, :11], h0, chunk_size=8)
    o2, h2 = chunk_gated_delta_rule(q[:, 11:], k[:, 11:], v[:, 11:], g[:, 11:], beta[:, 11:], h1, chunk_size=8)
    assert_rel_close(torch.cat([o1, o2], 1), o_whole, 1e-12, "pieces")
    assert_rel_close(h2, h_whole, 1e-12, "state")


def test_gradients_match_reference():
    leaves = [t.requires_grad_() for t in case(T=13)]
    o, hT = chunk_gated_delta_rule(*leaves[:5], initial_state=leaves[5], chunk_size=4)
    o_ref, h_ref = ref_gated_delta_rule(*leaves)
    weights = torch.randn_like(o)
    grads = torch.autograd.grad((o * weights).sum() + hT.sum(), leaves)
    grads_ref = torch.autograd.grad((o_ref * weights).sum() + h_ref.sum(), leaves)
    for name, a, b in zip("q k v g beta h0".split(), grads, grads_ref):
        assert_rel_close(a, b, 1e-10, f"d/d {name}")


def test_fla_is_off_on_cpu_and_forcing_it_off_always_works(monkeypatch):
    assert not fla_available(torch.device("cpu"))
    monkeypatch.setattr(delta_rule, "FLA_INSTALLED", True)  # even with fla "installed", CPU stays on torch
    assert not fla_available(torch.device("cpu"))
    monkeypatch.setattr(delta_rule, "fla_refused", lambda device: None)
    assert fla_available(torch.device("cuda"))
    monkeypatch.setattr(delta_rule, "fla_refused", lambda device: "a reason")
    assert not fla_available(torch.device("cuda"))
    q, k, v, g, beta, h0 = case(T=5)
    o, _ = chunk_gated_delta_rule(q, k, v, g, beta, h0, use_fla=False)
    assert_rel_close(o, ref_gated_delta_rule(q, k, v, g, beta, h0)[0], 1e-10, "forced torch path")


def test_linear_memory_runs_through_the_delta_rule_seam(monkeypatch):
    """A linear, chunk-1, momentum-free NeuralMemory with a delta-shaped rule calls the seam."""
    calls = []
    real = delta_rule.chunk_gated_delta_rule

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr("nldsl.nn.neural_memory.chunk_gated_delta_rule", spy)
    torch.manual_seed(0)
    mem = NeuralMemory(dim=8, n_heads=2, depth=1, chunk_size=1, dgd=True, objective="dot",
                       retention=0.9, retention_mode="learned").double()
    x = torch.randn(2, 6, 8, dtype=F64)
    y, _ = mem(x)
    assert calls == [(2, 6, 2, 4)]
    mem.config.use_delta_rule = False
    assert_rel_close(y, mem(x)[0], 1e-12, "delta route vs engine")


@pytest.mark.parametrize("capability, triton_version, refused", [
    ((9, 0), "3.6.0", True), ((9, 0), "3.4.0", True), ((9, 0), "3.7.1", False), ((9, 0), "3.3.1", False),
    ((8, 0), "3.6.0", False), ((10, 0), "3.6.0", False)], ids=["hopper-3.6", "hopper-3.4", "hopper-3.7.1",
                                                               "hopper-3.3", "ampere", "blackwell"])
def test_version_guard_refuses_fla_on_hopper_with_a_broken_triton(monkeypatch, capability, triton_version, refused):
    """fla 0.6 raises for Triton 3.4.0 - 3.7.0 on sm 9.x (fla #640): the guard sends those to the torch path."""
    import sys
    import types

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=triton_version))
    reason = delta_rule.fla_refused(torch.device("cuda"))
    assert (reason is not None) == refused
    if refused:
        assert triton_version in reason and "3.7.1" in reason
    assert delta_rule.fla_refused(torch.device("cpu")) is None
