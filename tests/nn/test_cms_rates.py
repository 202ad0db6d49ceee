"""CMS inner learning rates (constant / learned / data-dependent) and init transfers between levels
(``init_from``, NL Eq. 72 on any variant): fast chunked form vs the float64 token reference, gradients."""
import pytest
import torch
from torch import nn

from nldsl.nn import CMS
from nldsl.nn.cms_reference import cms_reference
from nldsl.nn.state import detach_state
from nldsl.nn.surprise import train_segments
from nldsl.testing import assert_rel_close, rel_err

D, OUT = 4, 3
RATES = {"constant": {}, "learned": {"lr_mode": "learned"},
         "data-softplus": {"lr_mode": "data"}, "data-sigmoid": {"lr_mode": "data", "lr_activation": "sigmoid"}}


def _randomize(cms: CMS, seed: int = 5) -> CMS:
    """Non-trivial norm gains and rate parameters (data rates really vary per token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in cms.norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=g, dtype=norm.weight.dtype) + 0.5)
        for rate in cms.rates:
            for p in rate.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        if hasattr(cms, "agg_logits"):
            cms.agg_logits.normal_(generator=g)
    return cms


def _cms(rate: str, variant: str = "sequential", objective: str = "l2", init: bool = False, **cfg) -> CMS:
    torch.manual_seed(0)
    mlp = dict(kind="mlp", bias=True, activation="silu")
    levels = [dict(hidden=6, period=2, lr=0.3, objective=objective, **mlp, **RATES[rate]),
              dict(hidden=5, period=None),
              dict(hidden=6, period=3, lr=0.2, objective="l2", **RATES[rate]),
              dict(hidden=6, period=6, lr=0.1, objective=objective, **mlp, **RATES[rate])]
    if init:  # the slow level (6) re-initialises the fast one (2) at each of its boundaries
        levels[0]["init_from"] = 3
    return _randomize(CMS(dim=D, levels=levels, variant=variant, **cfg).double())


def _assert_states(actual: dict, expected: dict, tol: float) -> None:
    assert actual["pos"] == expected["pos"]
    for level, node in expected.items():
        if level != "pos":
            for kind, tensors in node.items():
                for name, value in tensors.items():
                    assert_rel_close(actual[level][kind][name], value, tol, f"{level}.{kind}.{name}")


CASES = [(r, v, i) for r in RATES for v in ("sequential", "independent") for i in (False, True)]


@pytest.mark.parametrize("rate,variant,init", CASES, ids=[f"{r}-{v}{'-init' if i else ''}" for r, v, i in CASES])
def test_l2_levels_equal_the_token_reference(rate, variant, init):
    cms = _cms(rate, variant, init=init)
    x = torch.randn(2, 15, D, dtype=torch.float64)
    y, state = cms(x)
    y_ref, ref = cms_reference(cms, x)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states(state, ref, 1e-10)
    ys, st = [], None
    for a, b in ((0, 5), (5, 6), (6, 15)):  # pieces == whole
        yp, st = cms(x[:, a:b], st)
        ys.append(yp)
    assert_rel_close(torch.cat(ys, 1), y, 1e-12, "pieces")
    _assert_states(st, state, 1e-12)


class Tiny(nn.Module):
    def __init__(self, cms: CMS):
        super().__init__()
        self.cms, self.head = cms, nn.Linear(D, OUT, bias=False).double()

    def forward(self, x, state=None):
        y, st = self.cms(x, None if state is None else state["cms"])
        return self.head(y), {"cms": st}


def _token_loss(out, target):
    return 0.5 * (out - target).pow(2).sum(-1)


@pytest.mark.parametrize("rate,variant,init", CASES, ids=[f"{r}-{v}{'-init' if i else ''}" for r, v, i in CASES])
def test_task_levels_equal_the_token_reference(rate, variant, init):
    model = Tiny(_cms(rate, variant, objective="task", init=init))
    x, targets = torch.randn(2, 13, D, dtype=torch.float64), torch.randn(2, 13, OUT, dtype=torch.float64)
    _, state = train_segments(model, x, targets, _token_loss)
    W = model.head.weight.detach()
    _, ref = cms_reference(model.cms, x, task=(lambda y: W @ y, lambda o, t: 0.5 * (o - t).pow(2).sum(), targets))
    _assert_states(state["cms"], ref, 1e-10)
    assert all(v.abs().max() > 1e-4 for k in ref if k != "pos" for v in ref[k]["delta"].values())


def test_a_data_rate_weights_only_the_surprise_not_the_outer_gradient():
    """A task level reads the same with or without a rate: the base and input gradients must be too."""
    lv = dict(hidden=6, period=2, lr=0.3, kind="mlp", bias=True, activation="silu")
    data = _randomize(CMS(dim=D, levels=[dict(lr_mode="data", **lv)]).double())
    const = CMS(dim=D, levels=[lv]).double()
    const.load_state_dict(data.state_dict(), strict=False)
    x = torch.randn(2, 5, D, dtype=torch.float64)
    _, state = data(torch.randn(2, 3, D, dtype=torch.float64))
    state["level0"]["delta"] = {k: torch.randn_like(v) for k, v in state["level0"]["delta"].items()}
    grads = []
    for cms in (data, const):
        xi = x.clone().requires_grad_()
        delta = {k: v.clone().requires_grad_() for k, v in state["level0"]["delta"].items()}
        y, _ = cms(xi, {**state, "level0": {**state["level0"], "delta": delta}})
        y.pow(2).sum().backward()
        grads.append((xi.grad, cms.bases[0]["w1"].grad, delta["w1"].grad))
    assert_rel_close(grads[0][0], grads[1][0], 1e-12, "input")
    assert_rel_close(grads[0][1], grads[1][1], 1e-12, "base")
    assert rel_err(grads[0][2], grads[1][2]) > 1e-3, "the delta's gradient is rate-weighted"


def _outer_grad(cms: CMS, name: str, task: bool) -> torch.Tensor | None:
    x = torch.randn(2, 13, D, dtype=torch.float64)
    cms.zero_grad(set_to_none=True)
    if task:
        model = Tiny(cms)
        train_segments(model, x, torch.randn(2, 13, OUT, dtype=torch.float64), _token_loss)
    else:
        cms(x)[0].pow(2).sum().backward()
    return cms.get_parameter(name).grad


@pytest.mark.parametrize("objective", ["l2", "task"])
def test_learned_lr_is_outer_trained_through_differentiable_writes(objective):
    unrolled = _outer_grad(_cms("learned", objective=objective, stopgrad=False), "rates.3.raw", objective == "task")
    assert unrolled is not None and unrolled.abs() > 1e-8
    stop = _cms("learned", objective=objective)
    assert "rates.3.raw" in dict(stop.named_parameters()), "still a parameter the outer loop owns"
    grad = _outer_grad(stop, "rates.3.raw", objective == "task")
    assert grad is None or grad.abs() == 0, "stop-grad writes detach the rate"


def test_data_rate_projection_gets_the_meta_gradient_of_l2_writes():
    grad = _outer_grad(_cms("data-softplus", stopgrad=False), "rates.0.weight", False)
    assert grad is not None and grad.abs().max() > 1e-8


def _functional(cms: CMS):
    names = [n for n, _ in cms.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(cms, dict(zip(names, params)), (x, None))[0]
    return f, [p.detach().clone().requires_grad_() for p in cms.parameters()]


@pytest.mark.parametrize("rate", ["learned", "data-sigmoid"])
def test_gradcheck_meta_gradient_with_rates_and_an_unrolled_init_transfer(rate):
    torch.manual_seed(3)
    lv = dict(kind="mlp", hidden=3, bias=True, activation="gelu", objective="l2", **RATES[rate])
    cms = _randomize(CMS(dim=3, levels=[dict(period=2, lr=0.4, init_from=1, **lv), dict(period=4, lr=0.3, **lv)],
                         stopgrad=False).double())
    f, params = _functional(cms)
    x = torch.randn(1, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_init_transfer_resets_the_target_to_the_source_weights_at_source_boundaries():
    cms = _cms("constant", init=True)
    assert len(cms.bases[0]) == 0 and cms.sharing(0) == [0, 3], "the target reads its source's base"
    x = torch.randn(2, 12, D, dtype=torch.float64)
    st = None
    for t in range(12):
        _, st = cms(x[:, t:t + 1], st)
        if t % 6 == 0:  # read token t right after the reset: equal weights, empty accumulator
            for name, value in st["level3"]["delta"].items():
                assert torch.equal(st["level0"]["delta"][name], value)
        elif t % 2 == 0:
            assert not torch.equal(st["level0"]["delta"]["w1"], st["level3"]["delta"]["w1"])


def test_stopgrad_init_transfer_cuts_only_the_source_path():
    def grads(init_stopgrad):
        torch.manual_seed(0)
        lv = dict(hidden=5, objective="l2", stopgrad=False)
        cms = CMS(dim=D, levels=[dict(period=2, lr=0.5, init_from=1, init_stopgrad=init_stopgrad, **lv),
                                 dict(period=4, lr=0.5, **lv)]).double()
        x = torch.randn(2, 9, D, dtype=torch.float64, requires_grad=True)
        return torch.autograd.grad(cms(x)[0].pow(2).sum(), [x, cms.bases[1]["up"]])
    unrolled, stop = grads(False), grads(True)
    assert all(rel_err(a, b) > 1e-6 for a, b in zip(unrolled, stop))


@pytest.mark.parametrize("levels,match", [
    ([dict(hidden=4, period=2, init_from=1), dict(hidden=5, period=4)], "same MLP shape"),
    ([dict(hidden=4, period=4, init_from=1), dict(hidden=4, period=6)], "multiple"),
    ([dict(hidden=4, period=None, init_from=1), dict(hidden=4, period=4)], "must have a period"),
    ([dict(hidden=4, period=2, init_from=1), dict(hidden=4, period=2, init_from=0)], "cycle"),
    ([dict(hidden=4, period=2, init_from=0)], "another level"),
    ([dict(hidden=4, period=2, lr=0.0, lr_mode="learned")], "start > 0"),
    ([dict(hidden=4, period=2, lr_mode="data", lr_activation="tanh")], "lr_activation"),
], ids=["widths", "periods", "frozen-target", "cycle", "self", "learned-zero", "activation"])
def test_bad_rates_and_transfers_raise_clear_errors(levels, match):
    with pytest.raises(ValueError, match=match):
        CMS(dim=D, levels=levels)


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_independent_sum_and_mean_aggregates_equal_the_reference(aggregate):
    cms = _cms("constant", "independent", aggregate=aggregate)
    assert not hasattr(cms, "agg_logits")
    x = torch.randn(2, 7, D, dtype=torch.float64)
    y, state = cms(x)
    y_ref, ref = cms_reference(cms, x)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states(state, ref, 1e-10)
    with pytest.raises(ValueError, match="aggregate"):
        CMS(dim=D, levels=[dict(hidden=3)], variant="independent", aggregate="max")


def test_nested_follows_any_data_order_with_explicit_transfers():
    torch.manual_seed(0)
    mlp = dict(hidden=5, objective="l2")  # data path fast -> slow, init chain slow -> fast (Eq. 72)
    cms = _randomize(CMS(dim=D, variant="nested", levels=[dict(period=2, lr=0.3, init_from=1, **mlp),
                                                         dict(period=6, lr=0.2, **mlp)]).double())
    assert [len(b) for b in cms.bases] == [0, 3]
    x = torch.randn(2, 13, D, dtype=torch.float64)
    y, state = cms(x)
    y_ref, ref = cms_reference(cms, x)
    assert_rel_close(y, y_ref, 1e-10, "y")
    _assert_states(state, ref, 1e-10)
    with pytest.raises(ValueError, match="one shared base"):
        CMS(dim=D, variant="nested",
            levels=[dict(period=2, **mlp), dict(period=6, **mlp), dict(period=3, init_from=1, **mlp)])


def test_compiles_with_rates_and_init_transfers_without_graph_breaks():
    torch._dynamo.reset()
    cms = _cms("data-softplus", objective="task", init=True).float()
    x = torch.randn(2, 7, D)
    _, state = cms(x[:, :6])  # position 6: the slow level's boundary re-initialises the fast one
    state = detach_state(state)
    grads = []
    for fn in (torch.compile(cms, fullgraph=True, backend="eager"), cms):  # dynamo: no graph breaks
        st = {**state, "level0": {**state["level0"], "delta": {k: v.clone().requires_grad_()
                                                               for k, v in state["level0"]["delta"].items()}}}
        y, _ = fn(x[:, 3:], st)
        y.pow(2).sum().backward()
        grads.append((y.detach(), st["level0"]["delta"]["w1"].grad))
    assert_rel_close(grads[0][0], grads[1][0], 1e-5, "y")
    assert_rel_close(grads[0][1], grads[1][1], 1e-5, "rate-weighted surprise")


def test_a_positional_dim_is_a_clear_error():
    from nldsl.nn import HopeAttentionBlock, TransformerBlock

    for cls in (CMS, TransformerBlock, HopeAttentionBlock):
        with pytest.raises(TypeError, match="Config or keyword fields"):
            cls(16)
