"""DESIGN.md §3 at the whole-model level, on compiled examples shrunk to toy sizes (float64 where exactness
matters): pieces == whole (§3.2), fast state per sequence (§3.7), ``every N steps`` accumulation (§3.5),
meta-gradient vs stopgrad initial states (§3.3), the Transformer example against the runtime's
TransformerBlock, and training that lowers the loss on the shipped text."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import build_small
from torch import nn

from nldsl.build import token_losses
from nldsl.datasets import builtin_path
from nldsl.nn.layers import RMSNorm
from nldsl.nn.state import states_close
from nldsl.nn.surprise import train_segments
from nldsl.nn.transformer import TransformerBlock
from nldsl.testing import assert_rel_close

TASK_CMS = """model m {{ vocab = 256  dim = 16
  component attn : attention(heads = 2)
  component ffn : cms {{ objective task
    level fast : mlp(hidden = 32) {{ update every 4 tokens  optimizer gd(lr = 0.05) }}
    level slow : mlp(hidden = 32) {{ update every 8 tokens  optimizer gd(lr = 0.05) }}
  }}
}}
train {{ optimizer adamw(lr = 0.01) for all  steps = 8  batch = 2  seq = 16  {extra}  data = text("builtin:shakespeare") }}
"""
STEP_LEVELS = """model m {{ vocab = 256  dim = 16
  component ffn : cms {{ objective task
    level fast : mlp(hidden = 32) {{ update every 1 steps }}
    level slow : mlp(hidden = 32) {{ update every 3 steps (reduce = {reduce}) }}
  }}
}}
train {{ optimizer sgd(lr = 0.5) for all  grad_clip = 0  steps = 6  batch = 2  seq = 8  data = text("builtin:shakespeare") }}
"""
MEMORY = """model m {{ vocab = 256  dim = 8
  component mem : neural_memory(heads = 1, depth = 2, gate = false) {{
    update every 2 tokens  objective l2  optimizer gd(lr = 0.5)  init meta{grad}
  }}
}}
train {{ optimizer adamw for all  steps = 2  batch = 1  seq = 8  data = text("builtin:shakespeare") }}
"""
STATEFUL = ["tiny", "titans", "hope", "hope_attention", "cms_variants", "task_cms"]
SPLITS = [(0, 3), (3, 11), (11, 12), (12, 40)]


def _build(name: str, **kw):
    return build_small(TASK_CMS.format(extra=""), **kw) if name == "task_cms" else build_small(name, **kw)


def _tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- §3.2


@pytest.mark.parametrize("name", STATEFUL)
def test_pieces_equal_whole_for_the_compiled_model(name):
    c = _build(name, dtype=torch.float64)
    x = _tokens(2, 40)
    with torch.no_grad():
        whole, _ = c.model(x)
        state, outs = None, []
        for a, b in SPLITS:
            y, state = c.model(x[:, a:b], state)
            outs.append(y)
    assert_rel_close(torch.cat(outs, 1), whole, 1e-10, f"{name}: pieces vs whole")


def test_pieces_equal_whole_for_task_levels_learning_from_their_surprise():
    c = _build("task_cms", dtype=torch.float64)
    x = _tokens(2, 25)
    _, whole = train_segments(c.model, x[:, :-1], x[:, 1:], token_losses, outer_grads=False)
    _, first = train_segments(c.model, x[:, :10], x[:, 1:11], token_losses, outer_grads=False)
    _, pieces = train_segments(c.model, x[:, 10:-1], x[:, 11:], token_losses, state=first, outer_grads=False)
    assert states_close(pieces, whole, rtol=1e-10, atol=1e-12)
    delta = whole["1"]["ffn"]["level0"]["delta"]["w1"]
    assert delta.abs().sum() > 0  # the fast level did learn inside the sequence


# ---------------------------------------------------------------------------------------------- §3.7


@pytest.mark.parametrize("name", STATEFUL)
def test_fast_state_is_per_sequence(name):
    c = _build(name, dtype=torch.float64)
    a, b = _tokens(1, 24, seed=1), _tokens(1, 24, seed=2)
    with torch.no_grad():
        both, _ = c.model(torch.cat([a, b]))
        alone, _ = c.model(a)
        other, _ = c.model(torch.cat([a, _tokens(1, 24, seed=3)]))
    assert_rel_close(both[:1], alone, 1e-12, f"{name}: batched vs alone")
    assert_rel_close(other[:1], both[:1], 1e-12, f"{name}: sequence 0 sees sequence 1's writes")


def test_task_surprise_is_per_sequence():
    c = _build("task_cms", dtype=torch.float64)
    a, b, b2 = _tokens(1, 17, 1), _tokens(1, 17, 2), _tokens(1, 17, 3)
    states = []
    for other in (b, b2):
        x = torch.cat([a, other])
        _, st = train_segments(c.model, x[:, :-1], x[:, 1:], token_losses, outer_grads=False)
        states.append(st["1"]["ffn"]["level0"]["delta"]["w1"][0])
    assert_rel_close(states[1], states[0], 1e-12, "sequence 0's fast weights")


# ---------------------------------------------------------------------------------------------- §3.5


def _manual_steps(model: nn.Module, periodic: set[str], batches, lr: float, every: int, mean: bool) -> None:
    """Plain SGD: every-step parameters step each time, periodic ones on the sum/mean of ``every`` gradients."""
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items() if n in periodic}
    for t, batch in enumerate(batches):
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        with torch.no_grad():
            for n, p in params.items():
                if n in periodic:
                    acc[n] += grads[n]
                    if (t + 1) % every == 0:
                        p -= lr * (acc[n] / every if mean else acc[n])
                        acc[n].zero_()
                else:
                    p -= lr * grads[n]


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_every_n_steps_equals_n_accumulated_gradients_then_one_step(reduce):
    c = build_small(STEP_LEVELS.format(reduce=reduce), dtype=torch.float64)
    reference = copy.deepcopy(c.model)
    periodic = {n for n, _ in c.model.named_parameters() if c.component_of(n) == "ffn.slow"}
    start = {n: p.detach().clone() for n, p in c.model.named_parameters()}
    batches = [_tokens(2, 9, seed=s) for s in range(3)]
    for t, batch in enumerate(batches):
        metrics = c.train_step(batch)
        moved = {n for n, p in c.model.named_parameters() if not torch.equal(p, start[n])}
        assert (moved & periodic) == (periodic if t == 2 else set())
        assert metrics["level_steps"] == (1 if t == 2 else 0)
    _manual_steps(reference, periodic, batches, lr=0.5, every=3, mean=reduce == "mean")
    for (n, p), q in zip(c.model.named_parameters(), reference.parameters()):
        assert_rel_close(p, q, 1e-12, n)


# ---------------------------------------------------------------------------------------------- §3.3


def _init_grad(grad: str, length: int) -> tuple[torch.Tensor, bool]:
    """d loss / d (the memory's initial weights), and whether it matches finite differences (float64)."""
    c = build_small(MEMORY.format(grad=grad), dtype=torch.float64)
    name = next(n for n, _ in c.model.named_parameters() if n.endswith("init_weights.0"))
    params = {n: p.detach() for n, p in c.model.named_parameters()}
    x = _tokens(1, length + 1)

    def loss(w: torch.Tensor) -> torch.Tensor:
        logits, _ = torch.func.functional_call(c.model, {**params, name: w}, (x[:, :-1],))
        return F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))

    w = params[name].clone().requires_grad_()
    ok = torch.autograd.gradcheck(loss, (w,), eps=1e-6, atol=1e-7, raise_exception=False)
    return torch.autograd.grad(loss(w), w)[0], ok


def test_meta_gradient_through_the_unrolled_writes_is_exact():
    _, ok = _init_grad("", 7)
    assert ok


def test_stopgrad_cuts_exactly_the_writes():
    one_chunk, ok = _init_grad("(grad = stopgrad)", 2)  # nothing read after a write: still the exact gradient
    assert ok and torch.allclose(one_chunk, _init_grad("", 2)[0], rtol=1e-10, atol=1e-14)
    stopped, ok_long = _init_grad("(grad = stopgrad)", 7)
    unrolled, _ = _init_grad("", 7)
    assert not ok_long  # later chunks read writes whose dependence on the initial state is not differentiated
    assert (unrolled - stopped).norm() > 1e-3 * unrolled.norm()


# ---------------------------------------------------------------------------------------------- baselines


class _Reference(nn.Module):
    """Embedding -> TransformerBlock x L -> RMSNorm -> head, straight from the runtime."""

    def __init__(self, vocab: int, dim: int, heads: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(TransformerBlock(dim=dim, n_heads=heads, mlp_hidden=hidden) for _ in range(layers))
        self.norm, self.head = RMSNorm(dim), nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h, _ = block(h)
        return self.head(self.norm(h))


def test_transformer_example_equals_the_runtime_transformer_block_stack():
    c = build_small("transformer")
    ref = _Reference(256, 96, 4, 256, 2)
    mine = dict(c.model.named_parameters())
    assert sum(p.numel() for p in mine.values()) == sum(p.numel() for p in ref.parameters())
    names = {"embed.weight": "embed.weight", "norm.weight": "norm.weight", "head.weight": "head.weight"}
    for i in range(2):
        pre = f"layers.{i}.sublayers"
        names.update({f"{pre}.attn.norm.weight": f"blocks.{i}.norm1.weight",
                      f"{pre}.attn.fn.qkv.weight": f"blocks.{i}.attn.qkv.weight",
                      f"{pre}.attn.fn.out.weight": f"blocks.{i}.attn.out.weight",
                      f"{pre}.ffn.norm.weight": f"blocks.{i}.norm2.weight"})
        names.update({f"{pre}.ffn.fn.{w}.weight": f"blocks.{i}.mlp.{w}.weight" for w in ("gate", "up", "down")})
    assert set(names) == set(mine)
    ref.load_state_dict({names[n]: p.detach() for n, p in mine.items()})
    x = _tokens(2, 12)
    with torch.no_grad():
        assert torch.equal(c.model(x)[0], ref(x))


def _text_batches(n: int, batch: int, length: int) -> list[torch.Tensor]:
    data = torch.tensor(list(builtin_path("shakespeare").read_bytes()[:100_000]), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(0, len(data) - length - 1, (n, batch), generator=g)
    return [torch.stack([data[s:s + length + 1] for s in row]) for row in starts]


def _losses(c, batches) -> list[float]:
    return [c.train_step(b)["loss"] for b in batches]


def test_titans_example_learns_the_shipped_text():
    c = build_small("titans", **{"schedule.warmup": 0, "optimizer.lr": 3e-3, "train.steps": 30})
    losses = _losses(c, _text_batches(30, 4, 32))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5


def test_tiny_example_learns_the_shipped_text():
    c = build_small("tiny", **{"schedule.warmup": 2, "train.steps": 8, "train.batch": 2})
    batches = _text_batches(8, 2, 128)
    losses = _losses(c, batches)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
