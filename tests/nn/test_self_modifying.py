"""SelfModifyingTitans: two-chunk-size fast form vs the composed float64 token reference."""
import copy

import pytest
import torch
from torch.func import functional_call

from nldsl.nn import SelfModifyingTitans
from nldsl.nn.reference import ref_self_modifying
from nldsl.testing import assert_rel_close, rel_err

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make(dtype=F64, seed=0, **kw) -> SelfModifyingTitans:
    torch.manual_seed(seed)
    fields = dict(dim=8, n_heads=2, eta_scale=0.05, alpha_init=0.9)
    fields.update(kw)
    smt = SelfModifyingTitans(**fields).double()
    with torch.no_grad():
        for p in smt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return smt.to(dtype)


def inputs(B=2, T=19, D=8, dtype=F64, seed=1):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


CHUNKS = [(1, 1), (2, 3), (3, 2), (4, 8), (8, 4), (16, 5)]
"""(chunk_size of M_mem, proj_chunk_size of the projection memories); T = 19 is a multiple of neither."""


@pytest.mark.parametrize("chunk, proj_chunk", CHUNKS, ids=[f"mem{c}-proj{p}" for c, p in CHUNKS])
def test_fast_form_equals_composed_reference(chunk, proj_chunk):
    smt, x = make(chunk_size=chunk, proj_chunk_size=proj_chunk), inputs()
    y, state = smt(x)
    y_ref, state_ref = ref_self_modifying(smt, x)
    assert_rel_close(y, y_ref, 1e-10, f"C={chunk}/{proj_chunk} reads")
    for part in ("bank", "mem"):
        for key in state[part]["w"]:
            assert_rel_close(state[part]["w"][key], state_ref[part]["w"][key], 1e-10, f"{part} W{key}")
        assert state[part]["pos"] == state_ref[part]["pos"]
        assert max(w.abs().max() for w in state[part]["w"].values()) < 10  # a bounded, meaningful case


VARIANTS = {
    "adaptive_q_two_proj_heads": dict(adaptive_q=True, proj_heads=2),
    "plain_gd_no_momentum_l2": dict(dgd=False, momentum=0.0, mem_objective="l2"),
    "depth3_gelu_no_conv": dict(depth=3, activation="gelu", conv_size=0, output_gate=False, output_norm=False,
                                eta_scale=0.02, momentum=0.0),
    "stopgrad": dict(stopgrad=True),
    "learned_momentum": dict(momentum=0.7, momentum_mode="learned"),
    "data_momentum": dict(momentum=0.7, momentum_mode="data"),
    "own_bank_depth_act_gd": dict(proj_depth=1, proj_activation="tanh", proj_dgd=False, activation="gelu"),
    "stopgrad_v_and_mem": dict(stopgrad_memories=("v", "mem")),
    "full_width_no_v_norm": dict(proj_heads=1, v_norm=False),
    "proj_in": dict(proj_in=True),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_equal_reference(variant):
    smt, x = make(chunk_size=3, proj_chunk_size=4, **VARIANTS[variant]), inputs()
    y, state = smt(x)
    assert_rel_close(y, ref_self_modifying(smt, x)[0], 1e-10, variant)
    assert max(w.abs().max() for w in state["bank"]["w"].values()) < 10  # a bounded, meaningful case


def test_float32_matches_float64_reference():
    smt = make(chunk_size=4, proj_chunk_size=3)
    smt32 = copy.deepcopy(smt).float()
    x = inputs()
    assert_rel_close(smt32(x.float())[0], ref_self_modifying(smt, x)[0], 1e-4, "float32")


@pytest.mark.parametrize("cuts", [(1, 2, 9), (5, 6, 7, 15)], ids=["short", "odd"])
def test_pieces_with_state_equal_whole(cuts):
    smt, x = make(chunk_size=4, proj_chunk_size=3, adaptive_q=True), inputs()
    y_whole, s_whole = smt(x)
    state, ys = None, []
    for a, b in zip((0,) + cuts, cuts + (19,)):
        y, state = smt(x[:, a:b], state)
        ys.append(y)
    assert_rel_close(torch.cat(ys, 1), y_whole, 1e-12, f"pieces {cuts}")
    assert_rel_close(state["mem"]["w"]["1"], s_whole["mem"]["w"]["1"], 1e-12, "M_mem state")
    assert_rel_close(state["bank"]["s"]["0"], s_whole["bank"]["s"]["0"], 1e-12, "bank momentum")


def test_sequences_in_a_batch_never_see_each_others_writes():
    smt, x = make(chunk_size=2, proj_chunk_size=3), inputs(B=3)
    y, _ = smt(x)
    x_other = x.clone()
    x_other[1:] = torch.randn_like(x_other[1:])
    assert_rel_close(smt(x_other)[0][0], y[0], 1e-14, "sequence 0 with other neighbours")
    assert_rel_close(smt(x[:1])[0][0], y[0], 1e-13, "sequence 0 alone")


GRADIENTS = {
    "unrolled": dict(),
    "learned_momentum": dict(momentum=0.6, momentum_mode="learned"),
    "data_momentum": dict(momentum=0.6, momentum_mode="data"),
    "stopgrad_v_and_mem": dict(stopgrad_memories=("v", "mem")),
    "stopgrad_k_alpha": dict(stopgrad_memories=("k", "alpha")),
}


@pytest.mark.parametrize("variant", list(GRADIENTS))
def test_meta_gradients_match_reference(variant):
    smt, x = make(chunk_size=3, proj_chunk_size=2, **GRADIENTS[variant]), inputs(T=9)
    names, params = zip(*smt.named_parameters())
    y, y_ref = smt(x)[0], ref_self_modifying(smt, x)[0]
    g = torch.autograd.grad((y * y.detach().cos()).sum(), params)
    g_ref = torch.autograd.grad((y_ref * y_ref.detach().cos()).sum(), params)
    for name, a, b in zip(names, g, g_ref):
        assert_rel_close(a, b, 1e-10, f"d loss / d {name}")
    assert g[names.index("bank_init.0")].abs().sum() > 0 and g[names.index("mem_init.0")].abs().sum() > 0
    if smt.momentum_raw is not None:
        assert g[names.index("momentum_raw")].abs().min() > 0  # every memory head's β learns
    if smt.momentum_readout is not None:
        assert g[names.index("momentum_readout.bias")].abs().min() > 0


def test_per_memory_stopgrad_cuts_only_those_writes():
    x = inputs(T=9)

    def grad(**kw):
        smt = make(chunk_size=3, proj_chunk_size=2, **kw)
        return torch.autograd.grad(smt(x)[0].sum(), smt.bank_init[0])[0]

    unrolled, only_v = grad(), grad(stopgrad_memories=("v",))
    every = grad(stopgrad_memories=("k", "v", "eta", "alpha", "mem"))
    assert_rel_close(every, grad(stopgrad=True), 1e-12, "all memories cut = stopgrad")
    assert rel_err(only_v, unrolled) > 1e-3 and rel_err(only_v, every) > 1e-3


def test_gradcheck_through_both_memory_systems():
    smt = make(dim=4, n_heads=2, chunk_size=2, proj_chunk_size=3, hidden_mult=1.0)
    x = inputs(B=1, T=5, D=4)
    names = [n for n, _ in smt.named_parameters()]
    own = dict(smt.named_parameters())
    leaves = tuple(own[n].detach().clone().requires_grad_() for n in names)

    def f(*values):
        return functional_call(smt, dict(zip(names, values)), (x,))[0]

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_stopgrad_gradients_match_reference():
    smt, x = make(chunk_size=3, proj_chunk_size=2, stopgrad=True), inputs(T=9)
    names, params = zip(*smt.named_parameters())
    g = torch.autograd.grad(smt(x)[0].sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad(ref_self_modifying(smt, x)[0].sum(), params, allow_unused=True)
    for name, p, a, b in zip(names, params, g, g_ref):
        zero = torch.zeros_like(p)
        assert_rel_close(zero if a is None else a, zero if b is None else b, 1e-10, f"stopgrad d/d {name}")
    assert g[names.index("mem_init.0")].abs().sum() > 0  # reads still teach the initial state


def test_empty_piece_and_bf16_smoke():
    smt = make(dtype=torch.float32, chunk_size=4, proj_chunk_size=8)
    y, state = smt(inputs(T=0, dtype=torch.float32))
    assert y.shape == (2, 0, 8) and state["mem"]["pos"] == 0
    smt16 = smt.to(torch.bfloat16)
    y16, s16 = smt16(inputs(dtype=torch.bfloat16))
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16.float()).all()
    assert s16["bank"]["w"]["0"].dtype == torch.float32
    y16.float().sum().backward()


def test_default_memories_are_per_head():
    smt = SelfModifyingTitans(dim=16, n_heads=4)
    state = smt.init_state(2)
    assert smt.config.proj_heads == 4 and smt.proj_in is None
    assert state["bank"]["w"]["0"].shape == (2, 4 * 4, 8, 4)  # (B, m·P, hidden = 2·d, d)
    assert state["mem"]["w"]["0"].shape == (2, 4, 8, 4)  # (B, H, hidden = 2·d, d)


@pytest.mark.parametrize("mode", ["constant", "learned"])
def test_eta_is_capped_by_the_step_budget(mode):
    smt = make(momentum=0.8, momentum_mode=mode, chunk_size=4, proj_chunk_size=6, step_budget=0.5)
    with torch.no_grad():
        smt.eta_readout.bias.fill_(30.0)  # a saturated read-out: η = η_max
    H = smt.config.n_heads
    log_beta = smt.log_momentum(torch.zeros(1, 1, 8, dtype=F64))
    keep = 1 - torch.exp(log_beta)
    cap_mem, cap_bank = smt.eta_max(log_beta, F64)
    assert_rel_close(cap_mem, 0.5 * keep[:H] / (2 * 4), 1e-12, "η_max of M_mem")
    assert_rel_close(cap_bank, 0.5 * keep[H:] / (2 * 6), 1e-12, "η_max of the projection memories")
    eta_mem, eta_bank, _ = smt.rates(torch.randn(3, 8, dtype=F64), torch.randn(3, 8, dtype=F64), log_beta)
    assert (eta_mem <= cap_mem).all() and (eta_bank <= cap_bank).all() and (eta_mem > 0.999 * cap_mem).all()


@pytest.mark.parametrize("budget, bounded", [(1.0, True), (4.0, False)], ids=["budget1-bounded", "budget4-diverges"])
def test_step_budget_keeps_aligned_keys_stable(budget, bounded):
    """The worst case of a chunk's summed steps: every key equal, η saturated at η_max (tiny.nl's rates)."""
    torch.manual_seed(0)
    smt = SelfModifyingTitans(dim=16, n_heads=2, chunk_size=8, proj_chunk_size=4, momentum=0.9, hidden_mult=4.0,
                              proj_hidden_mult=4.0, activation="gelu", alpha_init=0.999, step_budget=budget)
    x = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(0)).expand(1, 512, 16)
    with torch.no_grad():
        smt.eta_readout.bias.fill_(20.0)
        y, state = smt(x)
    w = max(float(t.abs().max()) for part in ("bank", "mem") for t in state[part]["w"].values())
    assert (torch.isfinite(y).all() and w < 10) == bounded, f"max |W| = {w:.3g}"


LOWERED = {
    "default": dict(),
    "tiny_nl": dict(chunk_size=8, proj_chunk_size=4, momentum=0.9, hidden_mult=8.0, proj_hidden_mult=4.0,
                    activation="gelu"),
    "hope_nl": dict(chunk_size=64, proj_chunk_size=16, momentum=0.9, hidden_mult=4.0, proj_hidden_mult=4.0,
                    activation="gelu"),
}
"""The configurations examples/tiny.nl and hope.nl lower to (before this fix tiny.nl's gave NaN by token ~60)."""


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", list(LOWERED))
def test_lowered_configs_stay_bounded_on_long_repetitive_input(config, precision):
    torch.manual_seed(0)
    smt = SelfModifyingTitans(dim=16, n_heads=2, **LOWERED[config])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 16, generator=g).repeat(1, 64, 1) + 0.05 * torch.randn(1, 1024, 16, generator=g)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y, state = smt(x)
    y = y.float()
    assert torch.isfinite(y).all() and y[:, -128:].abs().max() < 4 * y[:, :128].abs().max()
    assert max(float(t.abs().max()) for part in ("bank", "mem") for t in state[part]["w"].values()) < 10


def test_checkpointed_chunks_give_identical_gradients():
    smt, x = make(chunk_size=2, proj_chunk_size=3), inputs(T=13)
    params = list(smt.parameters())
    g_plain = torch.autograd.grad(smt(x)[0].square().sum(), params)
    smt.config.checkpoint_chunks = 2
    y, state = smt(x)
    g_ckpt = torch.autograd.grad(y.square().sum(), params)
    for a, b in zip(g_ckpt, g_plain):
        assert_rel_close(a, b, 1e-12, "checkpointed gradient")
    assert state["bank"]["pos"] == 13 % 3


@pytest.mark.parametrize("bad, match", [
    (dict(dim=6, n_heads=4), "divisible"), (dict(proj_heads=3), "divisible"), (dict(chunk_size=0), "chunk_size"),
    (dict(proj_chunk_size=-2), "proj_chunk_size"), (dict(momentum=1.0), "momentum"),
    (dict(alpha_init=1.0), "alpha_init"), (dict(eta_scale=0.0), "eta_scale"),
    (dict(eta_scale=float("inf")), "eta_scale"), (dict(mem_objective="dot"), "mem_objective"),
    (dict(step_budget=0.0), "step_budget"), (dict(momentum_mode="adaptive"), "momentum_mode"),
    (dict(momentum=0.0, momentum_mode="learned"), "momentum"), (dict(checkpoint_chunks=-1), "checkpoint_chunks"),
    (dict(stopgrad_memories=("q",)), "stopgrad_memories"), (dict(proj_activation="swish"), "proj_activation"),
    (dict(proj_depth=0), "proj_depth"), (dict(stopgrad_memories=("w",)), "stopgrad_memories"),
], ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_bad_config_raises_clear_value_error(bad, match):
    fields = dict(dim=8, n_heads=2)
    fields.update(bad)
    with pytest.raises(ValueError, match=match):
        SelfModifyingTitans.Config(**fields)
