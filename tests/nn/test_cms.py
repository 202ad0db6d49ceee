"""CMS (NL Eq. 70-74): fast chunked form vs the float64 token-by-token reference, periods, pieces, batch."""
import math

import pytest
import torch
from torch import nn

from nldsl.nn import CMS
from nldsl.nn.cms import CMSLevel, act_fn, act_grad, l2_grads, mlp_apply, param_shapes
from nldsl.nn.cms_reference import cms_reference, mlp_reference_grad
from nldsl.nn.layers import SwiGLU
from nldsl.nn.state import detach_state
from nldsl.testing import assert_rel_close, rel_err

D = 4


def _levels(variant: str, kind: str, objective: str = "l2") -> list[dict]:
    mlp = dict(kind=kind, bias=kind == "mlp", activation="silu" if kind == "mlp" else "gelu")
    if variant == "nested":  # one shared base, slow level first, periods nest
        return [dict(hidden=6, period=8, lr=0.05, objective=objective, **mlp),
                dict(hidden=6, period=4, lr=0.1, objective="l2", **mlp),
                dict(hidden=6, period=2, lr=0.1, objective=objective, **mlp)]
    return [dict(hidden=6, period=3, lr=0.1, objective="l2", **mlp), dict(hidden=5, period=None),
            dict(hidden=7, period=5, lr=0.05, objective=objective, kind=kind)]


def _cms(variant="sequential", kind="swiglu", objective="l2", seed=0, **cfg) -> CMS:
    torch.manual_seed(seed)
    cms = CMS(dim=D, levels=_levels(variant, kind, objective), variant=variant, **cfg).double()
    with torch.no_grad():
        for norm in cms.norms:
            norm.weight.uniform_(0.5, 1.5)
        if variant == "independent":
            cms.agg_logits.normal_()
    return cms


def _assert_states(actual: dict, expected: dict, tol: float) -> float:
    assert actual["pos"] == expected["pos"]
    worst = 0.0
    for level, node in expected.items():
        if level == "pos":
            continue
        for kind, tensors in node.items():
            for name, value in tensors.items():
                assert_rel_close(actual[level][kind][name], value, tol, f"{level}.{kind}.{name}")
                worst = max(worst, rel_err(actual[level][kind][name], value))
    return worst


VARIANTS = [(v, k) for v in ("sequential", "independent", "nested") for k in ("swiglu", "mlp")]


@pytest.mark.parametrize("variant,kind", VARIANTS, ids=[f"{v}-{k}" for v, k in VARIANTS])
def test_chunked_equals_token_reference(variant, kind):
    cms = _cms(variant, kind)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    y, state = cms(x)
    y_ref, state_ref = cms_reference(cms, x)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states(state, state_ref, 1e-10)
    assert all(state_ref[k]["delta"][n].abs().max() > 1e-3 for k in state_ref if k != "pos"
               for n in state_ref[k]["delta"]), "every in-context level must have moved"


@pytest.mark.parametrize("variant", ["sequential", "independent", "nested"])
def test_float32_fast_form_is_close_to_the_float64_reference(variant):
    cms = _cms(variant, "swiglu")
    x = torch.randn(2, 19, D, dtype=torch.float64)
    y_ref, state_ref = cms_reference(cms, x)
    y, state = _cms(variant, "swiglu").float()(x.float())
    assert_rel_close(y, y_ref, 1e-4, "y")
    _assert_states(state, state_ref, 1e-4)


@pytest.mark.parametrize("variant,kind", VARIANTS, ids=[f"{v}-{k}" for v, k in VARIANTS])
@pytest.mark.parametrize("splits", [(1, 2, 5, 11), (7,), (3, 3, 3, 3, 3, 3)], ids=["ragged", "two", "threes"])
def test_pieces_equal_whole(variant, kind, splits):
    cms = _cms(variant, kind)
    x = torch.randn(2, 19, D, dtype=torch.float64)
    y, state = cms(x)
    ys, st, t = [], None, 0
    for n in list(splits) + [19 - sum(splits)]:
        yt, st = cms(x[:, t:t + n], st)
        ys.append(yt)
        t += n
    assert_rel_close(torch.cat(ys, 1), y, 1e-12, "y")
    _assert_states(st, state, 1e-12)


def test_pieces_continue_from_a_given_state_like_the_reference():
    cms = _cms("sequential", "swiglu", objective="task")
    x = torch.randn(2, 13, D, dtype=torch.float64)
    _, state = cms(x[:, :6])
    torch.manual_seed(3)  # a pending task surprise, applied at the level's next boundary (position 10)
    state["level2"]["surprise"] = {k: torch.randn_like(v) for k, v in state["level2"]["surprise"].items()}
    y, out = cms(x[:, 6:], state)
    y_ref, out_ref = cms_reference(cms, x[:, 6:], state)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states(out, out_ref, 1e-10)
    assert not torch.equal(out["level2"]["delta"]["up"], state["level2"]["delta"]["up"])


@pytest.mark.parametrize("period", [1, 3, 4])
def test_weights_change_exactly_at_multiples_of_the_period(period):
    torch.manual_seed(0)
    cms = CMS(dim=D, levels=[dict(hidden=5, period=period, lr=0.5, objective="l2"), dict(hidden=5, period=None)]).double()
    x = torch.randn(2, 13, D, dtype=torch.float64)
    prev, st, changed = None, None, []
    for t in range(13):  # state after token t holds the weights token t was read with
        _, st = cms(x[:, t:t + 1], st)
        delta = st["level0"]["delta"]["gate"].clone()
        if prev is not None and not torch.equal(delta, prev):
            changed.append(t)
        prev = delta
    assert changed == [t for t in range(1, 13) if t % period == 0]
    assert "level1" not in st, "a frozen level keeps no state"


def test_sequences_in_a_batch_never_see_each_others_writes():
    cms = _cms("sequential", "swiglu")
    x = torch.randn(2, 17, D, dtype=torch.float64)
    y, state = cms(x)
    x2 = x.clone()
    x2[1] = torch.randn(17, D, dtype=torch.float64)
    y2, state2 = cms(x2)
    y0, state0 = cms(x[:1])
    assert torch.equal(y2[0], y[0]) and not torch.equal(y2[1], y[1])
    assert_rel_close(y0[0], y[0], 1e-14, "sequence 0 alone")
    for name, value in state["level0"]["delta"].items():
        assert torch.equal(state2["level0"]["delta"][name][0], value[0])
        assert_rel_close(state0["level0"]["delta"][name][0], value[0], 1e-13, name)


def _functional(cms: CMS, state: dict | None):
    names = [n for n, _ in cms.named_parameters()]

    def f(x, *params):
        y, _ = torch.func.functional_call(cms, dict(zip(names, params)), (x, state))
        return y
    return f, [p.detach().clone().requires_grad_() for p in cms.parameters()]


def test_gradcheck_base_weights_through_reads_with_stopgrad_writes():
    torch.manual_seed(1)
    cms = CMS(dim=3, levels=[dict(hidden=4, period=3, lr=0.5, objective="l2"), dict(hidden=2, period=None),
                             dict(hidden=3, period=4, lr=0.7, objective="task", kind="mlp", bias=True)]).double()
    # start at position 3 (a boundary of level 0, whose writes in the call then land after it ends) and
    # cross position 4 (level 2 applies a pending surprise): every write read here is a constant
    _, state = cms(torch.randn(2, 3, 3, dtype=torch.float64))
    state = detach_state(state)
    state["level2"]["surprise"] = {k: torch.randn_like(v) for k, v in state["level2"]["surprise"].items()}
    f, params = _functional(cms, state)
    x = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_gradcheck_meta_gradient_through_l2_writes():
    torch.manual_seed(2)
    cms = CMS(dim=3, levels=[dict(hidden=4, period=2, lr=0.5, objective="l2"),
                             dict(hidden=3, period=3, lr=0.5, objective="l2", kind="mlp", bias=True, activation="gelu")],
              stopgrad=False).double()
    f, params = _functional(cms, None)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
    # the stop-grad default really cuts that path: its gradients differ on the same sequence
    stop = CMS(CMS.Config(**{**cms.config.__dict__, "stopgrad": True})).double()
    stop.load_state_dict(cms.state_dict())
    g_meta = torch.autograd.grad(f(x, *params).sum(), params[0])[0]
    g_stop = torch.autograd.grad(_functional(stop, None)[0](x, *params).sum(), params[0])[0]
    assert rel_err(g_stop, g_meta) > 1e-6


@pytest.mark.parametrize("kind,act", [("swiglu", "silu"), ("mlp", "gelu"), ("mlp", "gelu_tanh"), ("mlp", "silu"),
                                      ("mlp", "relu")], ids=lambda v: v)
def test_closed_form_l2_gradient_matches_autograd(kind, act):
    torch.manual_seed(0)
    lv = CMSLevel(hidden=5, period=1, objective="l2", kind=kind, activation=act, bias=kind == "mlp")
    w = {n: torch.randn(2, *s, dtype=torch.float64) for n, s in param_shapes(kind, D, 5, lv.bias).items()}
    z = torch.randn(2, 3, D, dtype=torch.float64)
    o, cache = mlp_apply(kind, act, z, w)
    grads = l2_grads(kind, act, z, w, o, cache)
    for b in range(2):
        ref = [mlp_reference_grad(lv, {n: v[b] for n, v in w.items()}, z[b, t]) for t in range(3)]
        for name in w:
            assert_rel_close(grads[name][b], sum(r[name] for r in ref), 1e-12, name)


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu", "relu"])
def test_activation_derivative(act):
    a = torch.linspace(-3, 3, 61, dtype=torch.float64).requires_grad_()
    (g,) = torch.autograd.grad(act_fn(act, a).sum(), a)
    assert_rel_close(act_grad(act, a.detach()), g, 1e-12, act)


def _sequential_mlp(bias: bool) -> nn.Module:
    return nn.Sequential(nn.Linear(D, 6, bias=bias), nn.GELU(), nn.Linear(6, D, bias=bias))


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_from_mlps_with_zero_lr_is_the_frozen_model(variant):
    torch.manual_seed(0)
    mlps = [SwiGLU(D, 8).double(), _sequential_mlp(True).double()]
    x = torch.randn(2, 11, D, dtype=torch.float64)
    frozen = CMS.from_mlps(mlps, periods=[2, 3], lrs=0.0, variant=variant, objective="l2")
    if variant == "sequential":
        h = x + mlps[0](x)
        expected = h + mlps[1](h)
    else:
        expected = x + 0.5 * (mlps[0](x) + mlps[1](x))
    y, _ = frozen(x)
    assert_rel_close(y, expected, 1e-13, "lr 0 == frozen model")
    adapted = CMS.from_mlps(mlps, periods=[2, 3], lrs=[0.5, 0.5], variant=variant, objective="l2")
    assert rel_err(adapted(x)[0], expected) > 1e-6, "with lr > 0 the levels adapt"


def test_from_mlps_reads_llama_style_names_and_rejects_unknown_modules():
    class LlamaMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = nn.Linear(D, 6, False), nn.Linear(D, 6, False), nn.Linear(6, D, False)

        def forward(self, x):
            return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
    mlp = LlamaMLP()
    x = torch.randn(1, 5, D)
    cms = CMS.from_mlps(mlp, periods=None)
    assert_rel_close(cms(x)[0], x + mlp(x), 1e-6, "llama mlp")
    with pytest.raises(ValueError, match="cannot read the weights"):
        CMS.from_mlps(nn.Linear(D, D), periods=4)
    with pytest.raises(ValueError, match="must match"):
        CMS.from_mlps([mlp, mlp], periods=[4])


def test_config_builds_from_plain_data():
    cfg = CMS.Config(dim=8, levels=[{"hidden": 16, "period": 4, "objective": "l2"}, CMSLevel(hidden=8)],
                     variant="independent")
    cms = cfg.build()
    assert [lv.period for lv in cms.levels] == [4, None] and cms.task_periods() == []
    assert set(cms.init_state(3)) == {"pos", "level0"}
    assert cms.init_state(3)["level0"]["acc"]["gate"].shape == (3, 16, 8)
    _, state = cms(torch.randn(3, 2, 8))  # nothing written yet: zero deltas are stride-0 views, no memory
    assert state["level0"]["delta"]["gate"].stride() == (0, 0, 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dim=0), "dim"),
    (dict(levels=[]), "at least one level"),
    (dict(levels=[dict(hidden=0)]), "hidden"),
    (dict(levels=[dict(hidden=4, period=-2)]), "period"),
    (dict(levels=[dict(hidden=4, period=2.5)]), "period"),
    (dict(levels=[dict(hidden=4, period=2, lr=math.inf)]), "lr"),
    (dict(levels=[dict(hidden=4, period=2, lr=-1.0)]), "lr"),
    (dict(levels=[dict(hidden=4, objective="dot")]), "objective"),
    (dict(levels=[dict(hidden=4, kind="conv")]), "kind"),
    (dict(levels=[dict(hidden=4, kind="mlp", activation="tanh")]), "activation"),
    (dict(levels=[dict(hidden=4, bias=True)]), "bias"),
    (dict(variant="tree"), "variant"),
    (dict(variant="nested", levels=[dict(hidden=4, period=4), dict(hidden=5, period=2)]), "same MLP shape"),
    (dict(variant="nested", levels=[dict(hidden=4, period=4), dict(hidden=4, period=3)]), "multiple"),
    (dict(variant="nested", levels=[dict(hidden=4, period=4), dict(hidden=4)]), "must have a period"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_values_raise_clear_errors(kwargs, match):
    args = dict(dim=D, levels=[dict(hidden=4, period=2)]) | kwargs
    with pytest.raises(ValueError, match=match):
        CMS(**args)


def test_bfloat16_accumulates_in_float32():
    cms32 = _cms("sequential", "swiglu").float()
    cms16 = _cms("sequential", "swiglu").to(torch.bfloat16)
    x = torch.randn(2, 16, D)
    y32, s32 = cms32(x)
    y16, s16 = cms16(x.bfloat16())
    assert y16.dtype == torch.bfloat16 and s16["level0"]["delta"]["gate"].dtype == torch.float32
    assert rel_err(y16, y32) < 3e-2
    assert rel_err(s16["level0"]["delta"]["gate"], s32["level0"]["delta"]["gate"]) < 5e-2


@pytest.mark.parametrize("variant", ["sequential", "independent", "nested"])
def test_compiles_without_graph_breaks(variant):
    torch._dynamo.reset()
    cms = _cms(variant, "swiglu", objective="task").float()
    x = torch.randn(2, 9, D)
    compiled = torch.compile(cms, fullgraph=True, backend="eager")  # dynamo: no graph breaks
    y, state = compiled(x)
    assert_rel_close(y, cms(x)[0], 1e-5, "fresh")
    state = detach_state(state)
    y2, _ = compiled(x[:, :5], state)
    assert_rel_close(y2, cms(x[:, :5], state)[0], 1e-5, "with state")
    y2.sum().backward()
