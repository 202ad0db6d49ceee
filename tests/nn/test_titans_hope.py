"""TitansBlock and HopeBlock: composition vs references, pieces, batch isolation, configs, torch.compile."""
import copy

import pytest
import torch

from nldsl.nn import HopeBlock, NeuralMemory, SelfModifyingTitans, TitansBlock
from nldsl.nn.reference import ref_neural_memory, ref_self_modifying
from nldsl.testing import assert_rel_close

F64 = torch.float64
CMS_LEVELS = [dict(hidden=16, period=4, objective="l2", lr=0.05), dict(hidden=16, period=8)]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def perturbed(module, seed=0):
    torch.manual_seed(seed)
    module = module.double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module


def titans(**kw):
    torch.manual_seed(0)
    return perturbed(TitansBlock(dim=8, n_heads=2, chunk_size=4, **kw))


def hope(**kw):
    torch.manual_seed(0)
    return perturbed(HopeBlock(dim=8, n_heads=2, chunk_size=3, proj_chunk_size=4, cms_levels=CMS_LEVELS,
                               titans=dict(eta_scale=0.1), **kw))


def inputs(B=2, T=13, D=8, seed=1, dtype=F64):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


def test_titans_block_is_norm_memory_residual_mlp():
    block, x = titans(), inputs()
    y, state = block(x)
    m_ref, _ = ref_neural_memory(block.memory, block.norm1(x))
    h = x + m_ref
    assert_rel_close(y, h + block.mlp(block.norm2(h)), 1e-10, "TitansBlock vs reference")
    cfg = block.memory.config
    modes = (cfg.lr_mode, cfg.momentum_mode, cfg.retention_mode)
    assert (cfg.depth, cfg.conv_size) == (2, 4) and modes == ("data", "data", "data")


def test_hope_block_is_norm_selfmod_residual_cms():
    block, x = hope(), inputs()
    y, state = block(x)
    o_ref, _ = ref_self_modifying(block.titans, block.norm(x))
    y_ref, _ = block.cms(x + o_ref)
    assert_rel_close(y, y_ref, 1e-10, "HopeBlock vs reference")
    assert set(state) == {"titans", "cms"}


@pytest.mark.parametrize("make", [titans, hope], ids=["titans", "hope"])
def test_pieces_with_state_equal_whole(make):
    block, x = make(), inputs()
    y_whole, _ = block(x)
    state, ys = None, []
    for a, b in [(0, 1), (1, 6), (6, 7), (7, 13)]:
        y, state = block(x[:, a:b], state)
        ys.append(y)
    assert_rel_close(torch.cat(ys, 1), y_whole, 1e-12, "pieces")


@pytest.mark.parametrize("make", [titans, hope], ids=["titans", "hope"])
def test_sequences_in_a_batch_never_see_each_others_writes(make):
    block, x = make(), inputs(B=3)
    y, _ = block(x)
    x_other = x.clone()
    x_other[1:] = torch.randn_like(x_other[1:])
    assert_rel_close(block(x_other)[0][0], y[0], 1e-13, "neighbours changed")
    assert_rel_close(block(x[:1])[0][0], y[0], 1e-13, "alone")


@pytest.mark.parametrize("make", [titans, hope], ids=["titans", "hope"])
def test_backward_reaches_every_parameter(make):
    block, x = make(), inputs()
    block(x)[0].square().sum().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_configs_build_from_plain_data():
    t = TitansBlock.Config(dim=8, n_heads=2, memory=dict(dgd=True, objective="self")).build()
    assert t.memory.rule.dgd and t.memory.rule.objective == "self"
    h = HopeBlock.Config(dim=8, n_heads=2, titans=dict(adaptive_q=True, momentum=0.0),
                         cms_levels=[dict(hidden=16, period=4)]).build()
    assert h.titans.config.adaptive_q and not h.titans.bank_rule.momentum and len(h.cms.levels) == 1
    assert len(HopeBlock(dim=8, n_heads=2).cms.levels) == 3  # the default CMS ladder
    with pytest.raises(ValueError, match="n_heads"):
        HopeBlock.Config(dim=8, n_heads=3).build()
    with pytest.raises(ValueError, match="chunk_size"):
        TitansBlock.Config(dim=8, n_heads=2, chunk_size=0).build()


def _stream(kind: str, T: int = 2048, D: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "random":
        return torch.randn(2, T, D, generator=g)
    motif = torch.randn(2, 8, D, generator=g)  # a short motif over and over: nearly aligned keys
    return motif.repeat(1, T // 8, 1) + 0.05 * torch.randn(2, T, D, generator=g)


def _fast_weights(state: dict) -> list[torch.Tensor]:
    mems = [state["memory"]["memory"]] if "memory" in state else [state["titans"]["bank"], state["titans"]["mem"]]
    return [w for mem in mems for w in mem["w"].values()]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stream", ["random", "repetitive"])
@pytest.mark.parametrize("block", ["titans", "hope"])
def test_default_blocks_stay_bounded_over_2048_tokens(block, stream, precision):
    """Default rates keep a chunk's summed steps at one snapshot a contraction (docs/runtime.md, Stability)."""
    torch.manual_seed(0)
    module = TitansBlock(dim=16, n_heads=2) if block == "titans" else HopeBlock(dim=16, n_heads=2)
    x = _stream(stream)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        y, state = module(x)
    y = y.float()
    assert torch.isfinite(y).all() and y[:, -256:].abs().max() < 4 * y[:, :256].abs().max()
    assert max(float(w.abs().max()) for w in _fast_weights(state)) < 10


@pytest.mark.parametrize("make", [titans, hope], ids=["titans", "hope"])
def test_bf16_forward_backward(make):
    block = make().to(torch.bfloat16)
    y, state = block(inputs(dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    y.float().sum().backward()


COMPILED = {
    "neural_memory": lambda: NeuralMemory(dim=8, n_heads=2, chunk_size=4, conv_size=4, momentum=0.5,
                                          retention=0.9, retention_mode="data"),
    "neural_memory_delta_rule": lambda: NeuralMemory(dim=8, n_heads=2, depth=1, chunk_size=1, dgd=True),
    "self_modifying": lambda: SelfModifyingTitans(dim=8, n_heads=2, chunk_size=3, proj_chunk_size=4),
    "titans_block": lambda: TitansBlock(dim=8, n_heads=2, chunk_size=4),
    "hope_block": lambda: HopeBlock(dim=8, n_heads=2, chunk_size=3, proj_chunk_size=4, cms_levels=CMS_LEVELS),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMPILED))
def test_compiles_fullgraph_and_matches_eager(name):
    """fullgraph=True raises on any graph break; a fresh call and a call with state are both compiled."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = COMPILED[name]()
    x = inputs(T=9, dtype=torch.float32)
    y_eager, _ = module(x)
    compiled = torch.compile(copy.deepcopy(module), fullgraph=True, dynamic=False, backend="eager")
    y1, state = compiled(x[:, :5])
    y2, _ = compiled(x[:, 5:], state)
    assert_rel_close(torch.cat([y1, y2], 1), y_eager, 1e-5, f"compiled {name}")
