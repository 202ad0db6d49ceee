"""How a compiled spec is handed to ``torch.compile``: the whole model, or one chunk update at a time.

``scope = model`` compiles the forward and the loss as whole graphs: right for models whose forward is a
fixed stack of static layers (Transformer++). A model with in-context memories loops over chunks in Python;
one whole-model graph would unroll every chunk update of the sequence (T / C per memory and layer), take
minutes to compile and recompile on every carried position. ``scope = chunk`` compiles instead each static
sublayer (attention, SwiGLU, MLP with its pre-norm and residual add) and the chunk update of every memory
(:func:`nldsl.nn.memory_ops.compiled_chunks`): small graphs with fixed shapes, compiled once. ``auto``
picks chunk exactly when the model has such memories, unless every one of them runs in the fused Triton scan
(``nldsl.nn.fused_memory``, a custom op that Dynamo keeps whole): then the model compiles as one graph. ``nldsl train`` and the scripts of ``nldsl codegen``
both go through :func:`compile_model`.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from nldsl.model import Sublayer
from nldsl.nn import fused_memory
from nldsl.nn.cms import CMS
from nldsl.nn.memory_ops import compiled_chunks
from nldsl.nn.neural_memory import NeuralMemory
from nldsl.nn.self_modifying import SelfModifyingTitans

__all__ = ["CHUNK_LOOP_MODULES", "resolve_scope", "fused_memories", "compile_model", "chunk_context"]

CHUNK_LOOP_MODULES = (NeuralMemory, SelfModifyingTitans, CMS)
"""Runtime modules that loop over chunks in Python (in-context memories): never compiled whole."""


def resolve_scope(scope: str, model: nn.Module) -> str:
    """``model`` or ``chunk`` for the spec's ``scope``. ``auto``: chunk iff the model has in-context memories
    that loop over chunks in Python here; a model whose memories all run in the fused scan on its device
    (:func:`fused_memories`) compiles whole, the scan being one opaque op in the graph."""
    if scope not in ("auto", "model", "chunk"):
        raise ValueError(f"compile scope must be auto, model or chunk, not {scope!r}")
    if scope != "auto":
        return scope
    loops = any(isinstance(m, CHUNK_LOOP_MODULES) for m in model.modules())
    return "chunk" if loops and not fused_memories(model) else "model"


def fused_memories(model: nn.Module) -> bool:
    """Whether ``model`` has in-context memories and every one runs its whole chunks in the fused scan on the
    device of its parameters: then nothing loops over chunks in Python, and one graph holds the whole model
    (the scan's partial chunks, at most one at each end of a piece, are traced inline)."""
    loops = [m for m in model.modules() if isinstance(m, CHUNK_LOOP_MODULES)]
    if not loops:
        return False
    for m in loops:
        if not isinstance(m, NeuralMemory) or m._delta_shaped():
            return False
        device = next(m.parameters()).device
        if fused_memory.why_not(m.rule, m.config.d, m.config.hidden, device, torch.float32) is not None:
            return False
    return True


def compile_model(model: nn.Module, loss: Callable, options: dict, scope: str = "auto"):
    """``(forward, loss, chunk_options, scope)``: what to call instead of ``model`` and ``loss``.

    ``chunk_options`` (``None`` under scope model) go to :func:`chunk_context` around every run.
    """
    scope = resolve_scope(scope, model)
    if scope == "model":
        return torch.compile(model, **options), torch.compile(loss, **options), None, scope
    for module in list(model.modules()):
        if not isinstance(module, Sublayer):
            continue
        if not isinstance(module.fn, CHUNK_LOOP_MODULES):
            # the static map; its pre-norm and residual add stay eager: compiling those too (separately or
            # in one graph with the map) cut GPU time but cost more host time (docs/performance.md)
            module.fn.compile(**options)
        elif module.norm is not None:
            module.norm.compile(**options)  # a memory's pre-norm (its static maps compile in the chunk context)
    return model, loss, {k: v for k, v in options.items() if k != "dynamic"}, scope


def chunk_context(chunk_options: dict | None):
    """Compiled chunk updates inside the block (``None``: nothing changes)."""
    return contextlib.nullcontext() if chunk_options is None else compiled_chunks(**chunk_options)
