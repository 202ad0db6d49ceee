"""DGD (exact Sherman-Morrison step), decay coefficients, activations: nldsl.nn.functional."""
import pytest
import torch

from nldsl.nn.functional import (
    activation, chunk_decay_weights, dgd_step, logit, segsum, softplus_inverse,
)
from nldsl.nn.memory_ops import MemoryRule, init_memory_state, memory_scan
from nldsl.nn.neural_memory import NeuralMemory
from nldsl.testing import assert_rel_close

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids oversubscription on shared CI cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _solve_normal_equations(W, x, u, lr):
    """float64 reference: W (I + lr x xᵀ) = W_t + lr u xᵀ, solved with torch.linalg.solve."""
    eye = torch.eye(x.shape[-1], dtype=F64)
    A = eye + lr[..., None, None] * x[..., :, None] * x[..., None, :]  # (..., i, i), symmetric
    rhs = W + lr[..., None, None] * u[..., :, None] * x[..., None, :]  # (..., o, i)
    return torch.linalg.solve(A, rhs.transpose(-1, -2)).transpose(-1, -2)


@pytest.mark.parametrize("scale", [0.1, 1.0, 7.0], ids=["small_x", "unit_x", "large_x"])
def test_dgd_step_matches_linear_solve_for_unnormalised_x(scale):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 3, 4, generator=g, dtype=F64)
    x = torch.randn(5, 4, generator=g, dtype=F64) * scale
    u = torch.randn(5, 3, generator=g, dtype=F64)
    lr = torch.rand(5, generator=g, dtype=F64) * 2
    assert_rel_close(dgd_step(W, x, u, lr), _solve_normal_equations(W, x, u, lr), 1e-12, "dgd_step")


def test_dgd_step_shapes_and_float_lr():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(3, 4, generator=g, dtype=F64)
    x, u = torch.randn(4, generator=g, dtype=F64) * 3, torch.randn(3, generator=g, dtype=F64)
    single = dgd_step(W, x, u, 0.5)
    assert single.shape == (3, 4)
    assert_rel_close(single, _solve_normal_equations(W, x, u, torch.tensor(0.5, dtype=F64)), 1e-12, "unbatched")
    xs, us = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    batched = dgd_step(W, xs, us, 0.5)  # one shared W, six independent problems
    assert batched.shape == (6, 3, 4)
    assert_rel_close(batched[2], dgd_step(W, xs[2], us[2], 0.5), 1e-15, "broadcast W")


def test_dgd_step_is_the_argmin():
    """The gradient of ½‖Wx − u‖² + (1/2lr)‖W − W_t‖² vanishes at the returned W."""
    g = torch.Generator().manual_seed(2)
    Wt, x, u = (torch.randn(*s, generator=g, dtype=F64) for s in ((3, 4), (4,), (3,)))
    W = dgd_step(Wt, x * 5, u, 0.3)
    grad = torch.outer(W @ (x * 5) - u, x * 5) + (W - Wt) / 0.3
    assert grad.abs().max() < 1e-12


def _dgd_memory_case(T=9, B=2, H=2, d=3):
    g = torch.Generator().manual_seed(3)
    W0 = torch.randn(H, d, d, generator=g, dtype=F64)
    q, k, v = (torch.randn(B, H, T, d, generator=g, dtype=F64) for _ in range(3))
    eta = torch.rand(B, H, T, generator=g, dtype=F64)
    return W0, q, k * 2, v, eta


def test_chunk1_dgd_memory_equals_repeated_dgd_step():
    """Linear memory, dot objective (u = v) + DGD, chunk 1: the batched form is repeated dgd_step."""
    W0, q, k, v, eta = _dgd_memory_case()
    rule = MemoryRule(depth=1, objective="dot", dgd=True, chunk_size=1)
    y, state = memory_scan(rule, init_memory_state(rule, [W0], 2, F64), k, v, eta, q=q)
    W, ys = W0.expand(2, *W0.shape), []
    for t in range(k.shape[2]):
        ys.append(torch.einsum("bhoi,bhi->bho", W, q[:, :, t]))  # read before write
        W = dgd_step(W, k[:, :, t], v[:, :, t], eta[:, :, t])
    assert_rel_close(y, torch.stack(ys, 2), 1e-12, "reads")
    assert_rel_close(state["w"]["0"], W, 1e-12, "final W")


@pytest.mark.parametrize("route", ["delta_rule", "engine"])
def test_neural_memory_dgd_chunk1_equals_repeated_dgd_step(route):
    torch.manual_seed(0)
    mem = NeuralMemory(dim=6, n_heads=2, depth=1, objective="dot", dgd=True, lr=0.7, chunk_size=1,
                       qk_norm=False, use_delta_rule=route == "delta_rule").double()
    with torch.no_grad():
        mem.init_weights[0].normal_()
    x = torch.randn(2, 7, 6, dtype=F64)
    y_mem, state = mem(x)
    q, k, v, _ = mem.project(x, None)
    W, ys = mem.init_weights[0].expand(2, 2, 3, 3), []
    for t in range(7):
        ys.append(torch.einsum("bhoi,bhi->bho", W, q[:, :, t]))
        W = dgd_step(W, k[:, :, t], v[:, :, t], 0.7)
    assert_rel_close(y_mem, mem.read_out(x, torch.stack(ys, 2)), 1e-12, route)
    assert_rel_close(state["memory"]["w"]["0"], W, 1e-12, "final W")


def _decays_by_loop(alpha, beta):
    """Fold S_t = β S + U_t, W_t = α W + S_t symbolically: coefficients of W_0, S_0 and each U_i."""
    n = alpha.shape[-1]
    w = {"W0": torch.ones(()), "S0": torch.zeros(()), **{i: torch.zeros(()) for i in range(n)}}
    s = {"W0": torch.zeros(()), "S0": torch.ones(()), **{i: torch.zeros(()) for i in range(n)}}
    for t in range(n):
        s = {key: beta[t] * val + (1.0 if key == t else 0.0) for key, val in s.items()}
        w = {key: alpha[t] * val + s[key] for key, val in w.items()}
    return w, s


def test_chunk_decay_weights_match_the_unrolled_recurrence():
    g = torch.Generator().manual_seed(4)
    alpha, beta = 0.5 + 0.5 * torch.rand(6, generator=g, dtype=F64), torch.rand(6, generator=g, dtype=F64)
    A, c, s0, b, Bn = chunk_decay_weights(alpha.log(), beta.log())
    w, s = _decays_by_loop(alpha, beta)
    assert_rel_close(A, w["W0"], 1e-14, "A")
    assert_rel_close(s0, w["S0"], 1e-14, "s0")
    assert_rel_close(c, torch.stack([w[i] for i in range(6)]), 1e-14, "c")
    assert_rel_close(Bn, s["S0"], 1e-14, "Bn")
    assert_rel_close(b, torch.stack([s[i] for i in range(6)]), 1e-14, "b")
    A2, c2, *rest = chunk_decay_weights(alpha.log(), None)  # no momentum: S_t = U_t
    w2, _ = _decays_by_loop(alpha, torch.zeros(6, dtype=F64))
    assert_rel_close(c2, torch.stack([w2[i] for i in range(6)]), 1e-14, "c without momentum")
    assert rest == [None, None, None]


def test_segsum_is_the_masked_sum():
    x = torch.arange(1.0, 5.0, dtype=F64)
    out = segsum(x)
    assert out[3, 1] == x[2] + x[3] and out[2, 2] == 0 and out[1, 3] == 0


@pytest.mark.parametrize("name", ["silu", "gelu", "tanh", "relu"])
def test_activation_derivatives_match_autograd(name):
    sigma, dsigma = activation(name)
    h = (torch.randn(50, dtype=F64) * 3).requires_grad_()
    (auto,) = torch.autograd.grad(sigma(h).sum(), h)
    assert_rel_close(dsigma(h.detach()), auto, 1e-12, name)


def test_inverse_maps_and_unknown_activation():
    assert abs(torch.nn.functional.softplus(torch.tensor(softplus_inverse(0.3), dtype=F64)) - 0.3) < 1e-14
    assert abs(torch.sigmoid(torch.tensor(logit(0.99), dtype=F64)) - 0.99) < 1e-14
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        activation("swish")
