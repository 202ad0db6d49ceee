"""NeuralMemory: chunk-parallel form vs float64 token references, pieces, batch isolation, meta-gradients."""
import pytest
import torch
from torch.func import functional_call

from nldsl.nn import NeuralMemory
from nldsl.nn.reference import ref_neural_memory
from nldsl.nn.state import detach_state, flatten_state, unflatten_state
from nldsl.testing import assert_rel_close, rel_err

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


CASES = {
    # name: NeuralMemory.Config overrides (rates small enough that the memories stay bounded)
    "linear_l2_gd": dict(depth=1, objective="l2"),
    "linear_dot_dgd_decay": dict(depth=1, objective="dot", dgd=True, retention=0.9, retention_mode="data"),
    "mlp2_l2_dgd_momentum": dict(depth=2, objective="l2", dgd=True, lr=0.1, momentum=0.8, momentum_mode="data"),
    "mlp2_self_all_data": dict(depth=2, objective="self", dgd=True, lr=0.05, lr_mode="data", retention=0.9,
                               retention_mode="data", momentum=0.7, momentum_mode="data", conv_size=4),
    "mlp3_dot_learned": dict(depth=3, objective="dot", lr=0.05, lr_mode="learned", retention=0.95,
                             retention_mode="learned", momentum=0.5, momentum_mode="learned", activation="gelu"),
    "titans_like": dict(depth=2, objective="l2", lr=0.03, lr_mode="data", retention=0.95, retention_mode="data",
                        momentum=0.9, momentum_mode="data", conv_size=4, qkv_activation="silu",
                        output_norm=True, output_gate=True),
    "mlp2_huber_dgd": dict(depth=2, objective="huber", huber_delta=0.3, dgd=True, lr=0.2, momentum=0.5),
    "linear_lp3_bounded_data_lr": dict(depth=1, objective="lp", lp_power=3.0, lr=0.2, lr_mode="data",
                                       lr_activation="sigmoid", retention=0.9, retention_mode="data"),
}


def make(case: str, chunk: int, dtype=F64, seed: int = 0, **extra) -> NeuralMemory:
    """A float64-initialised memory (then cast), so every dtype gets the same weights."""
    torch.manual_seed(seed)
    kw = dict(dim=8, n_heads=2, lr=0.3, chunk_size=chunk)
    kw.update(CASES[case])
    kw.update(extra)
    mem = NeuralMemory(**kw).double()
    with torch.no_grad():  # move every parameter off its tidy initial value
        for p in mem.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return mem.to(dtype)


def inputs(B=2, T=19, D=8, dtype=F64, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [2, 3, 4, 8, 16])
def test_chunked_equals_snapshot_reference(case, chunk):
    mem, x = make(case, chunk), inputs()
    y, state = mem(x)
    y_ref, state_ref = ref_neural_memory(mem, x, recurrence="snapshot")
    assert_rel_close(y, y_ref, 1e-10, f"{case} C={chunk} reads")
    for key in state["memory"]["w"]:
        assert_rel_close(state["memory"]["w"][key], state_ref["memory"]["w"][key], 1e-10, "fast weights")
    assert state["memory"]["pos"] == state_ref["memory"]["pos"] == 19 % chunk
    assert max(w.abs().max() for w in state["memory"]["w"].values()) < 10  # a bounded, meaningful case


@pytest.mark.parametrize("case", list(CASES))
def test_chunk1_equals_true_token_recurrence(case):
    mem, x = make(case, 1), inputs()
    y, state = mem(x)
    y_ref, state_ref = ref_neural_memory(mem, x, recurrence="token")
    assert_rel_close(y, y_ref, 1e-10, f"{case} reads")
    assert_rel_close(state["memory"]["w"]["0"], state_ref["memory"]["w"]["0"], 1e-10, "W_T")


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_float64_reference(case):
    mem64, x64 = make(case, 4), inputs()
    mem32 = make(case, 4, dtype=torch.float32)
    y32, _ = mem32(x64.float())
    y_ref, _ = ref_neural_memory(mem64, x64)
    assert_rel_close(y32, y_ref, 1e-4, f"{case} float32")


@pytest.mark.parametrize("cuts", [(1, 2, 9), (5, 6, 7, 15), (4, 8, 12, 16)], ids=["short", "odd", "aligned"])
@pytest.mark.parametrize("case", ["linear_l2_gd", "mlp2_self_all_data", "titans_like"])
def test_pieces_with_state_equal_whole(case, cuts):
    mem, x = make(case, 4), inputs()
    y_whole, s_whole = mem(x)
    state, ys = None, []
    for a, b in zip((0,) + cuts, cuts + (19,)):
        y, state = mem(x[:, a:b], state)
        ys.append(y)
    assert_rel_close(torch.cat(ys, 1), y_whole, 1e-12, f"{case} pieces {cuts}")
    assert_rel_close(state["memory"]["w"]["1" if "1" in state["memory"]["w"] else "0"],
                     s_whole["memory"]["w"]["1" if "1" in s_whole["memory"]["w"] else "0"], 1e-12, "state")


def test_state_survives_save_and_restore():
    mem, x = make("mlp2_self_all_data", 4), inputs()
    y_whole, _ = mem(x)
    _, state = mem(x[:, :6])
    restored = unflatten_state(flatten_state(detach_state(state)))
    y_rest, _ = mem(x[:, 6:], restored)
    assert_rel_close(y_rest, y_whole[:, 6:], 1e-12, "restored state")


@pytest.mark.parametrize("case", ["linear_dot_dgd_decay", "mlp2_self_all_data"])
def test_sequences_in_a_batch_never_see_each_others_writes(case):
    mem, x = make(case, 4), inputs(B=3)
    y, _ = mem(x)
    x_other = x.clone()
    x_other[1:] = torch.randn_like(x_other[1:])
    y_other, _ = mem(x_other)
    alone, _ = mem(x[:1])
    assert torch.equal(y[0], y_other[0]) or rel_err(y[0], y_other[0]) < 1e-14
    assert_rel_close(alone[0], y[0], 1e-13, "sequence 0 alone")


@pytest.mark.parametrize("case", list(CASES))
def test_meta_gradients_match_reference(case):
    """Outer gradients flow through the unrolled writes into the initial weights and every projection."""
    mem, x = make(case, 3), inputs(T=10)
    params = [p for _, p in mem.named_parameters()]
    y, _ = mem(x)
    y_ref, _ = ref_neural_memory(mem, x)
    grads = torch.autograd.grad((y * y.detach().sin()).sum(), params, allow_unused=True)
    grads_ref = torch.autograd.grad((y_ref * y_ref.detach().sin()).sum(), params, allow_unused=True)
    for (name, _), g, g_ref in zip(mem.named_parameters(), grads, grads_ref):
        assert g is not None and g_ref is not None, name
        assert_rel_close(g, g_ref, 1e-10, f"d loss / d {name}")
    names = [n for n, _ in mem.named_parameters()]
    assert grads[names.index("init_weights.0")].abs().sum() > 0


def _gradcheck(mem, x, names, fast_mode=False):
    own = dict(mem.named_parameters())
    leaves = tuple(own[n].detach().clone().requires_grad_() for n in names)

    def f(*values):
        return functional_call(mem, dict(zip(names, values)), (x,))[0]

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("case", ["mlp2_self_all_data", "linear_dot_dgd_decay"])
def test_gradcheck_through_unrolled_inner_updates(case):
    """Every parameter, including the initial weights, through two chunks of writes (float64)."""
    mem = make(case, 2, dim=4, hidden_mult=1.0)
    x = inputs(B=1, T=5, D=4)
    _gradcheck(mem, x, [n for n, _ in mem.named_parameters()], fast_mode=case == "mlp2_self_all_data")


def test_gradcheck_stopgrad_reads_initial_state():
    """dot objective + GD: writes do not depend on W, so W_0 (reads) and α (decays) are gradcheckable."""
    mem = make("linear_dot_dgd_decay", 2, dim=4, dgd=False, stopgrad=True)
    x = inputs(B=1, T=6, D=4)
    _gradcheck(mem, x, ["init_weights.0", "retention_rate.proj.weight", "retention_rate.proj.bias", "out.weight"])


@pytest.mark.parametrize("case", ["mlp2_l2_dgd_momentum", "mlp2_self_all_data"])
def test_stopgrad_gradients_match_reference_and_cut_the_writes(case):
    mem, x = make(case, 3, stopgrad=True), inputs(T=10)
    named = dict(mem.named_parameters())
    y, _ = mem(x)
    y_ref, _ = ref_neural_memory(mem, x)
    g = torch.autograd.grad(y.sum(), list(named.values()), allow_unused=True)
    g_ref = torch.autograd.grad(y_ref.sum(), list(named.values()), allow_unused=True)
    for name, a, b in zip(named, g, g_ref):
        b = torch.zeros_like(named[name]) if b is None else b
        a = torch.zeros_like(named[name]) if a is None else a
        assert_rel_close(a, b, 1e-10, f"stopgrad d/d {name}")
    qkv_grad = g[list(named).index("qkv.weight")]  # rows: q | k | v
    assert qkv_grad[8:].abs().max() == 0 and qkv_grad[:8].abs().max() > 0
    assert g[list(named).index("init_weights.0")].abs().max() > 0  # the initial state still learns


def test_delta_rule_route_equals_engine():
    kw = dict(depth=1, objective="l2", dgd=True, retention=0.9, retention_mode="data")
    fast = make("linear_l2_gd", 1, **kw)
    slow = make("linear_l2_gd", 1, use_delta_rule=False, **kw)
    assert fast._delta_shaped() and not slow._delta_shaped()
    x = inputs()
    assert_rel_close(fast(x)[0], slow(x)[0], 1e-12, "delta route")


def test_empty_piece_and_bf16_smoke():
    mem = make("titans_like", 4, dtype=torch.float32)
    y, state = mem(inputs(T=0, dtype=torch.float32))
    assert y.shape == (2, 0, 8) and state["memory"]["pos"] == 0
    mem16 = mem.to(torch.bfloat16)
    y16, s16 = mem16(inputs(dtype=torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16.float()).all()
    assert s16["memory"]["w"]["0"].dtype == torch.float32  # fast weights accumulate in fp32
    y16.float().sum().backward()


@pytest.mark.parametrize("bad, match", [
    (dict(dim=0), "dim"), (dict(dim=6, n_heads=4), "divisible"), (dict(depth=0), "depth"),
    (dict(chunk_size=0), "chunk_size"), (dict(objective="hinge"), "objective"), (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(retention=1.5), "retention"),
    (dict(retention=1.0, retention_mode="data"), "retention"), (dict(momentum=1.0), "momentum"),
    (dict(momentum=0.0, momentum_mode="learned"), "momentum"), (dict(lr_mode="adaptive"), "lr_mode"),
    (dict(activation="swish"), "activation"), (dict(lr_activation="exp"), "lr_activation"),
    (dict(objective="huber", huber_delta=0.0), "huber_delta"), (dict(objective="lp", lp_power=0.5), "lp_power"),
], ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_bad_config_raises_clear_value_error(bad, match):
    kw = dict(dim=8, n_heads=2)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        NeuralMemory.Config(**kw)


def test_config_builds_from_plain_data():
    cfg = NeuralMemory.Config(dim=8, n_heads=2, depth=1, lr_mode="learned")
    mem = cfg.build()
    assert isinstance(mem, NeuralMemory) and mem.config is cfg and mem.rule.depth == 1
