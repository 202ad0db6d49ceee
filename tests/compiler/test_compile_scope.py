"""Compile scope (nldsl.compiling): whole model for static stacks, one chunk update at a time for memories."""
from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SHRINK, example

from nldsl.build import build
from nldsl.compiling import compile_model, resolve_scope
from nldsl.model import Sublayer
from nldsl.nn import NeuralMemory, memory_ops
from nldsl.plan import plan


def _small(name: str, **extra):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(example(name), compile=False, overrides={**SHRINK[name], **extra})


@pytest.mark.parametrize("name, scope", [("transformer", "model"), ("titans", "chunk"), ("tiny", "chunk"),
                                         ("hope_attention", "chunk")])
def test_auto_scope_is_chunk_exactly_for_models_with_memories(name, scope):
    assert resolve_scope("auto", _small(name).model) == scope


def test_written_scope_wins_and_is_in_the_plan():
    text = example("titans").read_text().replace("compile = on", "compile = compile(scope = model)")
    assert "scope = model" in text
    p = plan(text)
    assert p.train.compile.scope == "model" and "scope = model" in p.render()
    assert resolve_scope("model", _small("titans").model) == "model"
    with pytest.raises(ValueError, match="auto, model or chunk"):
        resolve_scope("layer", _small("titans").model)


def test_chunk_scope_compiles_chunk_updates_and_static_sublayers(monkeypatch):
    """Under scope chunk, memory_segment goes through the compiled wrapper and the SwiGLU is compiled;
    the losses equal eager ones (the 'eager' backend keeps this a CPU test of the wiring, not of inductor)."""
    eager = _small("titans")
    batch = torch.randint(0, 256, (2, 33))
    ref = eager.train_step(batch)["loss"]
    c = _small("titans")
    calls = []
    original = memory_ops._memory_segment
    monkeypatch.setattr(memory_ops, "_memory_segment", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(memory_ops, "_COMPILED_SEGMENTS", {})  # a fresh wrapper (another test may have made one)
    forward, _, chunk_options, scope = compile_model(c.model, c._forward_loss, {"backend": "eager"}, "auto")
    assert scope == "chunk" and forward is c.model and chunk_options == {"backend": "eager"}
    compiled = [m for m in c.model.modules() if hasattr(m, "_compiled_call_impl") and m._compiled_call_impl]
    assert compiled, "static sublayers are compiled in place"
    c._chunk_options = chunk_options
    assert memory_ops._ACTIVE_SEGMENT == []
    got = c.train_step(batch)["loss"]
    assert calls and memory_ops._ACTIVE_SEGMENT == []  # the context closed again
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or torch._dynamo.config.cache_size_limit
    assert limit >= 64  # the few variants of a chunk update never fall back to eager silently
    assert got == pytest.approx(ref, rel=1e-5)
    # the memories' static maps compiled in the chunk context, their pre-norms in place
    memories = [m for m in c.model.modules() if isinstance(m, NeuralMemory)]
    assert memories and all({key[0] for key in m.__dict__.get("_compiled_static", {})} == {"project", "rates", "read_out"}
                            for m in memories)
    norms = [m.norm for m in c.model.modules() if isinstance(m, Sublayer) and isinstance(m.fn, NeuralMemory)]
    assert norms and all(n._compiled_call_impl for n in norms)


def test_chunk_scope_compiles_the_loss_and_eager_keeps_it_plain():
    """The cross-entropy of the head is static: compiled under scope chunk (lazily), plain without compile."""
    from nldsl.build import logits_loss

    compiled = build(example("titans"), compile=True, overrides={**SHRINK["titans"]})
    assert compiled.compile_scope == "chunk" and compiled._cross_entropy is not logits_loss
    plain = _small("titans")
    assert plain.compile_scope is None and plain._cross_entropy is logits_loss


FUSED_TITANS = {"D": 96, "HEADS": 6, "CHUNK": 16}
"""titans.nl at sizes the fused scan takes (head and hidden width 16, chunk 16)."""


def test_auto_scope_is_model_when_every_memory_runs_fused():
    """With the fused scan (here Triton's interpreter), nothing loops over chunks in Python: the whole model
    is one graph; with the route off, or at a chunk the kernels lack, the chunk scope stays."""
    from nldsl.compiling import fused_memories
    from nldsl.nn.fused_memory import fused_scan_mode

    with fused_scan_mode("interpret"):
        assert fused_memories(_small("titans", **FUSED_TITANS).model)
        assert resolve_scope("auto", _small("titans", **FUSED_TITANS).model) == "model"
        assert resolve_scope("auto", _small("titans").model) == "chunk"  # chunk 8: torch path
        assert resolve_scope("auto", _small("hope_attention").model) == "chunk"  # CMS loops
    with fused_scan_mode("off"):
        assert resolve_scope("auto", _small("titans", **FUSED_TITANS).model) == "chunk"


def test_fused_titans_traces_as_one_graph_and_matches_eager():
    """The scan is a custom op Dynamo keeps whole: forward and loss trace without a graph break, and the
    traced step (Dynamo's eager backend: the wiring, not Inductor, on CPU) gives the eager losses."""
    from nldsl.nn.fused_memory import fused_scan_mode

    batch = torch.randint(0, 256, (2, 65))
    with fused_scan_mode("interpret"):
        c = _small("titans", **FUSED_TITANS)
        x, y = c._split(batch)
        explained = torch._dynamo.explain(c._forward_loss)(x, y)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        ref = _small("titans", **FUSED_TITANS).train_step(batch)["loss"]
        c = _small("titans", **FUSED_TITANS)
        forward, loss, chunk_options, scope = compile_model(c.model, c._forward_loss, {"backend": "eager"}, "auto")
        assert scope == "model" and chunk_options is None
        c._loss = loss
        assert c.train_step(batch)["loss"] == pytest.approx(ref, rel=1e-6)
