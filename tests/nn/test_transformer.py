"""Transformer++ and HOPE-Attention blocks: float64 reference, KV cache pieces/decoding, config, compile."""
import math

import pytest
import torch
import torch.nn.functional as F

from nldsl.nn import HopeAttentionBlock, TransformerBlock
from nldsl.nn.state import detach_state
from nldsl.nn.transformer import CausalSelfAttention, swiglu_hidden
from nldsl.testing import assert_rel_close

DIM, HEADS = 8, 2


def _block(seed=0) -> TransformerBlock:
    torch.manual_seed(seed)
    block = TransformerBlock(dim=DIM, n_heads=HEADS, mlp_hidden=12).double()
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm2.weight.uniform_(0.5, 1.5)
    return block


def _hope(seed=0) -> HopeAttentionBlock:
    torch.manual_seed(seed)
    levels = [dict(hidden=8, period=3, lr=0.1, objective="l2"), dict(hidden=6, period=None),
              dict(hidden=8, period=4, lr=0.1)]
    return HopeAttentionBlock(dim=DIM, n_heads=HEADS, cms_levels=levels).double()


def _rotate(u):
    """RoPE from the formula: (B, H, T, Dh), pairs (i, i + Dh/2) rotated by angle t * base^(-2i/Dh)."""
    T, Dh = u.shape[-2], u.shape[-1]
    out = u.clone()
    for t in range(T):
        for i in range(Dh // 2):
            ang = t * 10000.0 ** (-2 * i / Dh)
            c, s = math.cos(ang), math.sin(ang)
            a, b = u[:, :, t, i], u[:, :, t, i + Dh // 2]
            out[:, :, t, i], out[:, :, t, i + Dh // 2] = a * c - b * s, b * c + a * s
    return out


def _reference_block(block: TransformerBlock, x: torch.Tensor) -> torch.Tensor:
    """Pre-norm attention + SwiGLU from the formulas, float64, explicit rotation matrices and mask."""
    B, T, D = x.shape
    Dh, eps = D // HEADS, block.config.norm_eps

    def norm(u, w):
        return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + eps) * w

    h = norm(x, block.norm1.weight)
    q, k, v = (h @ w.T for w in block.attn.qkv.weight.chunk(3, 0))
    q, k, v = (u.view(B, T, HEADS, Dh).transpose(1, 2) for u in (q, k, v))
    scores = _rotate(q) @ _rotate(k).transpose(-1, -2) / math.sqrt(Dh)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    a = (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, D) @ block.attn.out.weight.T
    h = x + a
    m = block.mlp
    u = norm(h, block.norm2.weight)
    return h + (F.silu(u @ m.gate.weight.T) * (u @ m.up.weight.T)) @ m.down.weight.T


def test_transformer_block_matches_float64_reference():
    block = _block()
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    y, state = block(x)
    assert_rel_close(y, _reference_block(block, x), 1e-12, "block")
    assert state["k"].shape == (2, HEADS, 7, DIM // HEADS) and state["pos"] == 7


@pytest.mark.parametrize("make", [_block, _hope], ids=["transformer", "hope-attention"])
def test_pieces_and_token_by_token_decoding_equal_whole(make):
    block = make()
    x = torch.randn(2, 13, DIM, dtype=torch.float64)
    y, whole = block(x)
    for splits in ([5, 8], [1] * 13, [3, 1, 9]):
        ys, st, t = [], None, 0
        for n in splits:
            yt, st = block(x[:, t:t + n], st)
            ys.append(yt)
            t += n
        assert_rel_close(torch.cat(ys, 1), y, 1e-12, f"pieces {splits}")
    if "cms" in whole:
        assert_rel_close(st["cms"]["level0"]["delta"]["up"], whole["cms"]["level0"]["delta"]["up"], 1e-12, "cms")


def test_empty_sequence_gives_an_empty_output_and_a_usable_state():
    for block in (_block(), _hope()):
        x = torch.randn(2, 5, DIM, dtype=torch.float64)
        y0, st = block(x[:, :0])
        assert y0.shape == (2, 0, DIM)
        assert_rel_close(block(x, st)[0], block(x)[0], 1e-13, "after an empty piece")
        assert_rel_close(block(x, block.init_state(2))[0], block(x)[0], 1e-13, "from init_state")


def test_hope_attention_with_one_frozen_level_is_the_transformer_block():
    block = _block()
    hope = HopeAttentionBlock(dim=DIM, n_heads=HEADS, cms_levels=[dict(hidden=12, period=None)]).double()
    with torch.no_grad():
        hope.norm.weight.copy_(block.norm1.weight)
        hope.attn.load_state_dict(block.attn.state_dict())
        hope.cms.norms[0].weight.copy_(block.norm2.weight)
        for name, lin in (("gate", block.mlp.gate), ("up", block.mlp.up), ("down", block.mlp.down)):
            hope.cms.bases[0][name].copy_(lin.weight)
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    assert_rel_close(hope(x)[0], block(x)[0], 1e-14, "frozen CMS == SwiGLU MLP")


def test_hope_attention_sequences_are_independent():
    hope = _hope()
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    y, st = hope(x)
    y0, st0 = hope(x[1:])
    assert_rel_close(y0[0], y[1], 1e-13, "sequence 1 alone")
    assert_rel_close(st0["cms"]["level0"]["delta"]["gate"][0], st["cms"]["level0"]["delta"]["gate"][1], 1e-12, "state")


def test_configs_build_from_plain_data():
    block = TransformerBlock.Config(dim=64, n_heads=4).build()
    assert block.mlp.hidden == swiglu_hidden(64) and swiglu_hidden(768) == 2048
    hope = HopeAttentionBlock.Config(dim=16, n_heads=2).build()
    assert [lv.period for lv in hope.cms.levels] == [128, 512, 2048]
    assert hope.cms.task_periods() == [128, 512, 2048]


@pytest.mark.parametrize("cls,kwargs,match", [
    (TransformerBlock, dict(dim=0, n_heads=2), "dim"),
    (TransformerBlock, dict(dim=10, n_heads=4), "divisible"),
    (TransformerBlock, dict(dim=6, n_heads=2), "even"),
    (TransformerBlock, dict(dim=8, n_heads=0), "n_heads"),
    (TransformerBlock, dict(dim=8, n_heads=2, mlp_hidden=0), "mlp_hidden"),
    (TransformerBlock, dict(dim=8, n_heads=2, rope_base=math.nan), "base"),
    (HopeAttentionBlock, dict(dim=10, n_heads=4), "divisible"),
    (HopeAttentionBlock, dict(dim=8, n_heads=2, cms_levels=[dict(hidden=4, period=-1)]), "period"),
], ids=["zero-dim", "heads", "odd-head", "zero-heads", "hidden", "rope-nan", "hope-heads", "hope-period"])
def test_bad_values_raise_clear_errors(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_bfloat16_forward_keeps_dtype():
    block = TransformerBlock(dim=DIM, n_heads=HEADS).to(torch.bfloat16)
    hope = HopeAttentionBlock(dim=DIM, n_heads=HEADS, cms_levels=[dict(hidden=8, period=2, objective="l2")]).to(torch.bfloat16)
    x = torch.randn(2, 6, DIM, dtype=torch.bfloat16)
    assert block(x)[0].dtype == torch.bfloat16
    y, st = hope(x)
    assert y.dtype == torch.bfloat16 and st["cms"]["level0"]["delta"]["up"].dtype == torch.float32


@pytest.mark.parametrize("make", [_block, _hope], ids=["transformer", "hope-attention"])
def test_compiles_without_graph_breaks(make):
    torch._dynamo.reset()
    block = make().float()
    x = torch.randn(2, 7, DIM)
    compiled = torch.compile(block, fullgraph=True, backend="eager")  # dynamo: no graph breaks
    y, st = compiled(x)
    assert_rel_close(y, block(x)[0], 1e-5, "fresh")
    st = detach_state(st)
    y2, _ = compiled(x[:, :3], st)
    assert_rel_close(y2, block(x[:, :3], st)[0], 1e-5, "with a cache")
    y2.sum().backward()


# ---------------------------------------------------------------------------- attention options
ATTN = {"gqa": dict(n_heads=4, kv_heads=2), "mqa": dict(n_heads=4, kv_heads=1), "window": dict(window=3),
        "qk-norm": dict(q_norm=True, k_norm=True), "k-norm": dict(k_norm=True), "no-rope": dict(rope=False),
        "all": dict(n_heads=4, kv_heads=2, window=4, q_norm=True, k_norm=True)}


def _attn(opts: dict) -> CausalSelfAttention:
    torch.manual_seed(0)
    attn = CausalSelfAttention.Config(**{"dim": DIM, "n_heads": HEADS, **opts}).build().double()
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return attn


def _reference_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """GQA, window, qk-norm, RoPE from the formulas (float64, explicit mask and repeated kv heads)."""
    B, T, D = x.shape
    H, G, Dh = attn.n_heads, attn.kv_heads, D // attn.n_heads
    q, k, v = (x @ w.T for w in attn.qkv.weight.split([D, G * Dh, G * Dh], 0))
    q = q.view(B, T, H, Dh).transpose(1, 2)
    k, v = (u.view(B, T, G, Dh).transpose(1, 2).repeat_interleave(H // G, 1) for u in (k, v))
    for u, norm in ((q, attn.q_norm), (k, attn.k_norm)):
        if norm is not None:  # l2-normalise, times sqrt(Dh) and the learned gain (RMSNorm, its eps)
            u.copy_(u / torch.sqrt(u.pow(2).sum(-1, keepdim=True) / Dh + norm.eps) * norm.weight)
    if attn.rope is not None:
        q, k = _rotate(q), _rotate(k)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (j <= i) & ((j > i - attn.window) if attn.window else True)
    scores = (q @ k.transpose(-1, -2) / math.sqrt(Dh)).masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(B, T, D) @ attn.out.weight.T


@pytest.mark.parametrize("name", list(ATTN))
def test_attention_options_match_the_reference_and_pieces_equal_whole(name):
    attn = _attn(ATTN[name])
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    y, whole = attn(x)
    assert_rel_close(y, _reference_attention(attn, x), 1e-12, name)
    for splits in ([4, 7], [1] * 11, [2, 0, 5, 4]):  # with a KV cache, decoding, an empty piece
        ys, st, t = [], attn.init_state(2), 0
        for n in splits:
            yt, st = attn(x[:, t:t + n], st)
            ys.append(yt)
            t += n
        assert_rel_close(torch.cat(ys, 1), y, 1e-12, f"pieces {splits}")
    cached = whole["k"].shape[2]
    assert whole["k"].shape[1] == attn.kv_heads and whole["pos"] == 11
    assert cached == (min(11, attn.window - 1) if attn.window else 11), "a window keeps window - 1 positions"


def test_gqa_equals_multi_head_attention_with_repeated_kv_weights():
    gqa = _attn(ATTN["gqa"])
    mha = CausalSelfAttention(DIM, 4).double()
    q, k, v = gqa.qkv.weight.split([DIM, DIM // 2, DIM // 2], 0)
    Dh = DIM // 4
    rep = lambda w: w.view(2, Dh, DIM).repeat_interleave(2, 0).reshape(DIM, DIM)  # noqa: E731
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        mha.out.weight.copy_(gqa.out.weight)
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    assert_rel_close(gqa(x)[0], mha(x)[0], 1e-13, "gqa == mha with shared kv heads")


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_heads=4, kv_heads=3), "multiple of kv_heads"), (dict(kv_heads=0), "kv_heads"),
    (dict(window=-1), "window"), (dict(dim=6, n_heads=2), "even")], ids=["gqa", "zero-kv", "window", "odd-rope"])
def test_bad_attention_options_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalSelfAttention.Config(**{"dim": DIM, "n_heads": HEADS, **kwargs}).build()
    if "dim" in kwargs:  # without RoPE an odd head width is fine
        CausalSelfAttention.Config(**{"dim": DIM, "n_heads": HEADS, **kwargs, "rope": False}).build()
