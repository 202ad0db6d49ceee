"""Shared layers: RMSNorm, causal ShortConv (pieces == whole), SwiGLU, RoPE offsets, causal attention."""
import math

import pytest
import torch
import torch.nn.functional as F

from nldsl.nn.layers import RMSNorm, RotaryEmbedding, ShortConv, SwiGLU, apply_rope, causal_attention
from nldsl.testing import assert_rel_close


def test_rmsnorm_formula_and_dtypes():
    torch.manual_seed(0)
    norm = RMSNorm(6, eps=1e-5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    assert_rel_close(norm(x), expected, 1e-14, "rmsnorm")
    half = RMSNorm(6)(x.bfloat16())
    assert half.dtype == torch.bfloat16


def _conv_reference(conv: ShortConv, x: torch.Tensor) -> torch.Tensor:
    """y_t = sum_j w[:, j] * x_{t-K+1+j} (zeros before the start), written as a plain loop."""
    B, T, D = x.shape
    K = conv.kernel_size
    w = conv.weight[:, 0, :]  # (D, K)
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(K):
            src = t - K + 1 + j
            if src >= 0:
                y[:, t] += w[:, j] * x[:, src]
    return y + (conv.bias if conv.bias is not None else 0)


@pytest.mark.parametrize("kernel", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_short_conv_is_causal_and_pieces_equal_whole(kernel, bias):
    torch.manual_seed(0)
    conv = ShortConv(5, kernel_size=kernel, bias=bias).double()
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    y, state = conv(x)
    assert state.shape == (2, kernel - 1, 5)
    assert_rel_close(y, _conv_reference(conv, x), 1e-14, "conv")
    ys, st, t = [], None, 0
    for n in (1, 2, 0, 1, 5):  # pieces shorter than the window too, and an empty one
        yt, st = conv(x[:, t:t + n], st)
        assert yt.shape == (2, n, 5) and st.shape == (2, kernel - 1, 5)
        ys.append(yt)
        t += n
    assert_rel_close(torch.cat(ys, 1), y, 1e-14, "pieces")
    assert torch.equal(st, state)


def test_swiglu_formula_and_config():
    torch.manual_seed(0)
    mlp = SwiGLU.Config(dim=4, hidden=6).build().double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    expected = (F.silu(x @ mlp.gate.weight.T) * (x @ mlp.up.weight.T)) @ mlp.down.weight.T
    assert_rel_close(mlp(x), expected, 1e-14, "swiglu")


def test_rope_offsets_make_pieces_equal_whole_and_scores_relative():
    torch.manual_seed(0)
    rope = RotaryEmbedding.Config(head_dim=8).build()
    q = torch.randn(1, 2, 10, 8, dtype=torch.float64)
    whole = rope(q)
    assert_rel_close(torch.cat([rope(q[:, :, :3]), rope(q[:, :, 3:], offset=3)], 2), whole, 1e-14, "pieces")
    a, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    # <R_m a, R_n b> depends only on m - n
    rot = lambda v, p: rope(v.view(1, 1, 1, 8), offset=p).view(8)  # noqa: E731
    assert abs(float(rot(a, 5) @ rot(b, 2)) - float(rot(a, 13) @ rot(b, 10))) < 1e-12
    assert_rel_close(rot(a, 0), a, 1e-15, "position 0 is the identity")
    cos, sin = rope.cos_sin(4, 0, dtype=torch.float64)
    assert_rel_close(apply_rope(q[:, :, :4], cos, sin), whole[:, :, :4], 1e-15, "apply_rope")


def _attention_reference(q, k, v, window=0):
    Tq, Tk = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    rows = torch.arange(Tq)[:, None] + (Tk - Tq)
    allowed = torch.arange(Tk)[None, :] <= rows
    if window:
        allowed &= torch.arange(Tk)[None, :] > rows - window
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v


@pytest.mark.parametrize("tq", [7, 3, 1], ids=["full", "cached-piece", "decode"])
def test_causal_attention_with_and_without_cache(tq):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    out = causal_attention(q[:, :, 7 - tq:], k, v)
    assert_rel_close(out, _attention_reference(q, k, v)[:, :, 7 - tq:], 1e-12, "attention")
    with pytest.raises(ValueError, match="queries"):
        causal_attention(q, k[:, :, :3], v[:, :, :3])


@pytest.mark.parametrize("window", [1, 3, 7])
@pytest.mark.parametrize("tq", [7, 3, 1], ids=["full", "cached-piece", "decode"])
def test_sliding_window_equals_masked_full_attention(tq, window):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    out = causal_attention(q[:, :, 7 - tq:], k, v, window=window)
    assert_rel_close(out, _attention_reference(q, k, v, window)[:, :, 7 - tq:], 1e-12, f"window {window}")
    if window >= 7:
        assert_rel_close(out, causal_attention(q[:, :, 7 - tq:], k, v), 1e-12, "a window over everything")


@pytest.mark.parametrize("make,match", [
    (lambda: RMSNorm(0), "dim"), (lambda: RMSNorm(4, eps=0.0), "eps"), (lambda: RMSNorm(4, eps=math.nan), "eps"),
    (lambda: ShortConv(4, kernel_size=0), "kernel_size"), (lambda: ShortConv(True), "dim"),
    (lambda: SwiGLU(4, 0), "hidden"), (lambda: RotaryEmbedding(5), "even"),
    (lambda: RotaryEmbedding(4, base=math.inf), "base"),
], ids=["norm-dim", "eps-zero", "eps-nan", "kernel", "bool-dim", "hidden", "odd-head", "base"])
def test_bad_values_raise_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_rope_tables_match_float64_and_stay_one_op_when_compiled():
    """The tables equal a float64 evaluation, and torch.compile sees them as one opaque op (so Inductor
    cannot fuse cos/sin into each rotation and evaluate them per element of q and k)."""
    rope = RotaryEmbedding(16, base=500.0)
    cos, sin = rope.cos_sin(40, 7)
    inv = 500.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    ang = (torch.arange(40, dtype=torch.float64) + 7)[:, None] * inv[None, :]
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=2e-5)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=2e-5)
    graphs = []

    def record(gm, inputs):
        graphs.append(gm)
        return gm.forward

    x = torch.randn(2, 3, 40, 16)
    out = torch.compile(lambda t: rope(t, 7), backend=record, fullgraph=True)(x)
    torch.testing.assert_close(out, rope(x, 7))
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert sum("rope_tables" in t for t in targets) == 1
    assert not any(t.endswith(("cos", "sin")) for t in targets)
