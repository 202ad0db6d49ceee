"""Task-objective CMS levels driven by the accumulated local surprise of the task loss (DESIGN.md 3.4)."""
import pytest
import torch
from torch import nn

from nldsl.nn import CMS, HopeAttentionBlock
from nldsl.nn.cms_reference import cms_reference
from nldsl.nn.surprise import task_segment_len, train_segments
from nldsl.testing import assert_rel_close, rel_err

D, OUT = 4, 3


class Tiny(nn.Module):
    """CMS followed by a linear head: every token's loss depends only on its own CMS output."""

    def __init__(self, cms: CMS):
        super().__init__()
        self.cms, self.head = cms, nn.Linear(D, OUT, bias=False)

    def forward(self, x, state=None):
        y, st = self.cms(x, None if state is None else state["cms"])
        return self.head(y), {"cms": st}


def token_loss(out, target):
    return 0.5 * (out - target).pow(2).sum(-1)  # (B, T) per-token losses


def _tiny(variant: str, seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    if variant == "nested":
        levels = [dict(hidden=6, period=8, lr=0.1), dict(hidden=6, period=4, lr=0.2, objective="l2"),
                  dict(hidden=6, period=2, lr=0.2)]
    else:
        levels = [dict(hidden=6, period=4, lr=0.2), dict(hidden=5, period=None),
                  dict(hidden=7, period=6, lr=0.1, objective="l2"), dict(hidden=3, period=6, lr=0.3, kind="mlp", bias=True)]
    model = Tiny(CMS(dim=D, levels=levels, variant=variant)).double()
    if variant == "independent":
        with torch.no_grad():
            model.cms.agg_logits.normal_()
    return model


def _reference(model: Tiny, x, targets, state=None):
    W = model.head.weight.detach().double()
    task = (lambda y: W @ y, lambda o, t: 0.5 * (o - t).pow(2).sum(), targets)
    return cms_reference(model.cms, x, state, task=task)


def _compare(state: dict, ref: dict, tol: float) -> float:
    worst = 0.0
    for level, node in ref.items():
        if level != "pos":
            for kind, tensors in node.items():
                for name, value in tensors.items():
                    assert_rel_close(state[level][kind][name], value, tol, f"{level}.{kind}.{name}")
                    worst = max(worst, rel_err(state[level][kind][name], value))
    return worst


@pytest.mark.parametrize("variant", ["sequential", "independent", "nested"])
def test_segments_equal_the_per_token_gradient_reference(variant):
    model = _tiny(variant)
    x, targets = torch.randn(2, 19, D, dtype=torch.float64), torch.randn(2, 19, OUT, dtype=torch.float64)
    loss, state = train_segments(model, x, targets, token_loss)
    _, ref = _reference(model, x, targets)
    assert state["cms"]["pos"] == 19
    _compare(state["cms"], ref, 1e-10)
    moved = [n for k in ref if k != "pos" for n, v in ref[k]["delta"].items() if v.abs().max() > 1e-3]
    assert len(moved) == sum(len(ref[k]["delta"]) for k in ref if k != "pos"), "every level must move"
    assert loss.shape == () and torch.isfinite(loss)


@pytest.mark.parametrize("split", [1, 5, 8], ids=lambda n: f"first{n}")
def test_pieces_equal_whole(split):
    model = _tiny("sequential")
    x, targets = torch.randn(2, 17, D, dtype=torch.float64), torch.randn(2, 17, OUT, dtype=torch.float64)
    _, whole = train_segments(model, x, targets, token_loss)
    _, st = train_segments(model, x[:, :split], targets[:, :split], token_loss)
    _, st = train_segments(model, x[:, split:], targets[:, split:], token_loss, st)
    _compare(st["cms"], {k: v for k, v in whole["cms"].items()}, 1e-12)


def test_update_is_the_sum_of_autograd_gradients_of_the_segment_loss():
    torch.manual_seed(0)
    lr = 0.3
    model = Tiny(CMS(dim=D, levels=[dict(hidden=5, period=4, lr=lr)])).double()
    x, targets = torch.randn(2, 8, D, dtype=torch.float64), torch.randn(2, 8, OUT, dtype=torch.float64)
    _, st = train_segments(model, x[:, :4], targets[:, :4], token_loss)
    init = model.cms.init_state(2)
    delta = {k: v.double().requires_grad_() for k, v in init["level0"]["delta"].items()}
    y, _ = model(x[:, :4], {"cms": {**init, "level0": {**init["level0"], "delta": delta}}})
    grads = torch.autograd.grad(token_loss(y, targets[:, :4]).sum(), list(delta.values()))
    for (name, _), g in zip(delta.items(), grads):
        assert_rel_close(st["cms"]["level0"]["surprise"][name], g, 1e-12, f"surprise {name}")
        assert torch.count_nonzero(st["cms"]["level0"]["delta"][name]) == 0, "no write before the boundary"
    _, st2 = train_segments(model, x[:, 4:5], targets[:, 4:5], token_loss, st)
    for name, g in zip(delta, grads):  # applied when token 4 is read: dW = -lr * sum of the chunk's grads
        assert_rel_close(st2["cms"]["level0"]["delta"][name], -lr * g, 1e-12, f"delta {name}")


def test_outer_gradient_is_that_of_the_mean_loss_through_reads():
    model = _tiny("sequential", seed=1)
    x, targets = torch.randn(2, 12, D, dtype=torch.float64), torch.randn(2, 12, OUT, dtype=torch.float64)
    model.zero_grad()
    loss, _ = train_segments(model, x, targets, token_loss)
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    # the same loss, segment by segment, read with the reference's fast state as constants
    model.zero_grad()
    total = 0.0
    for a in range(0, 12, 2):  # gcd(4, 6) = 2
        state = None if a == 0 else {"cms": _reference(model, x[:, :a], targets[:, :a])[1]}
        y, _ = model(x[:, a:a + 2], state)
        seg = token_loss(y, targets[:, a:a + 2]).sum() / 24
        seg.backward()
        total += float(seg.detach())
    assert abs(total - float(loss)) < 1e-12
    for name, grad in got.items():
        assert_rel_close(grad, model.get_parameter(name).grad, 1e-10, name)


def test_sequences_never_share_surprise():
    model = _tiny("sequential")
    x, targets = torch.randn(2, 12, D, dtype=torch.float64), torch.randn(2, 12, OUT, dtype=torch.float64)
    _, both = train_segments(model, x, targets, token_loss, outer_grads=False)
    _, first = train_segments(model, x[:1], targets[:1], token_loss, outer_grads=False)
    for name, value in both["cms"]["level0"]["delta"].items():
        assert_rel_close(first["cms"]["level0"]["delta"][name][0], value[0], 1e-12, name)
        assert not torch.allclose(value[0], value[1])


def test_outer_grads_false_only_adapts_the_state():
    model = _tiny("sequential")
    model.zero_grad(set_to_none=True)
    x, targets = torch.randn(2, 12, D, dtype=torch.float64), torch.randn(2, 12, OUT, dtype=torch.float64)
    _, adapted = train_segments(model, x, targets, token_loss, outer_grads=False)
    _, trained = train_segments(model, x, targets, token_loss)
    assert all(p.grad is not None for p in model.parameters())
    _compare(adapted["cms"], trained["cms"], 1e-12)


def test_zero_lr_gives_the_plain_forward_loss_and_no_writes():
    torch.manual_seed(0)
    model = Tiny(CMS(dim=D, levels=[dict(hidden=5, period=2, lr=0.0), dict(hidden=5, period=4, lr=0.0)])).double()
    x, targets = torch.randn(2, 9, D, dtype=torch.float64), torch.randn(2, 9, OUT, dtype=torch.float64)
    loss, st = train_segments(model, x, targets, token_loss)
    y, _ = model(x)
    assert abs(float(loss) - float(token_loss(y, targets).mean().detach())) < 1e-13
    assert all(torch.count_nonzero(v) == 0 for lv in ("level0", "level1") for v in st["cms"][lv]["delta"].values())


def test_segment_length_and_shape_checks():
    model = _tiny("sequential")
    assert task_segment_len(model) == 2 and task_segment_len(nn.Linear(2, 2)) is None
    x, targets = torch.randn(2, 6, D, dtype=torch.float64), torch.randn(2, 6, OUT, dtype=torch.float64)
    with pytest.raises(ValueError, match="must divide every task period"):
        train_segments(model, x, targets, token_loss, segment_len=4)
    with pytest.raises(ValueError, match="positive integer"):
        train_segments(model, x, targets, token_loss, segment_len=0)
    with pytest.raises(ValueError, match="per-token losses"):
        train_segments(model, x, targets, lambda o, t: token_loss(o, t).mean())
    with pytest.raises(ValueError, match="do not match"):
        train_segments(model, x, targets[:, :3], token_loss)


def test_hope_attention_language_model_trains_in_segments():
    torch.manual_seed(0)
    vocab, dim = 11, 8

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, dim)
            self.block = HopeAttentionBlock(dim=dim, n_heads=2, cms_levels=[dict(hidden=8, period=4, lr=0.5),
                                                                          dict(hidden=8, period=8, lr=0.5)])
            self.head = nn.Linear(dim, vocab)

        def forward(self, tokens, state=None):
            y, st = self.block(self.emb(tokens), None if state is None else state["block"])
            return self.head(y), {"block": st}

    lm = LM()
    tokens = torch.randint(0, vocab, (2, 16))
    ce = lambda logits, tgt: nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # noqa: E731
    loss, state = train_segments(lm, tokens[:, :-1], tokens[:, 1:], ce)
    assert state["block"]["attn"]["k"].shape[2] == 15 and state["block"]["cms"]["pos"] == 15
    assert state["block"]["cms"]["level0"]["delta"]["up"].abs().max() > 0
    assert lm.emb.weight.grad is not None and torch.isfinite(loss)
    logits, _ = lm(tokens[:, :-1])  # the plain forward never writes task levels: different from adapted
    assert abs(float(ce(logits, tokens[:, 1:]).mean().detach()) - float(loss)) > 1e-6


def test_initial_memory_states_of_a_hope_block_get_an_outer_gradient():
    from nldsl.nn.hope import HopeBlock

    torch.manual_seed(0)

    class HopeLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = HopeBlock(dim=8, n_heads=2, chunk_size=2, proj_chunk_size=2,
                                   cms_levels=[dict(hidden=8, period=4, lr=0.1)])
            self.head = nn.Linear(8, OUT)

        def forward(self, x, state=None):
            y, st = self.block(x, None if state is None else state["block"])
            return self.head(y), {"block": st}

    lm = HopeLM()
    x, targets = torch.randn(2, 8, 8), torch.randn(2, 8, OUT)
    train_segments(lm, x, targets, token_loss)  # the state starts from the meta-learned initial memories
    inits = {n: p for n, p in lm.named_parameters() if "_init" in n}
    assert inits, "the HOPE block's memories have meta-learned initial weights"
    for name, p in inits.items():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} gets no outer gradient"
