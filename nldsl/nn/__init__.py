"""Nested Learning building blocks (torch). Names resolve lazily so importing is cheap."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "NeuralMemory": "nldsl.nn.neural_memory",
    "SelfModifyingTitans": "nldsl.nn.self_modifying",
    "CMS": "nldsl.nn.cms",
    "HopeBlock": "nldsl.nn.hope",
    "HopeAttentionBlock": "nldsl.nn.hope_attention",
    "TitansBlock": "nldsl.nn.titans",
    "TransformerBlock": "nldsl.nn.transformer",
    "functional": "nldsl.nn.functional",
    "state": "nldsl.nn.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nldsl.nn' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return module if module.__name__.endswith("." + name) else getattr(module, name)
