"""Optimizers as associative memories (NL paper section 4): Muon, M3, Delta and Deep Momentum."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "newton_schulz": "nldsl.optim.newton_schulz",
    "Muon": "nldsl.optim.muon",
    "M3": "nldsl.optim.m3",
    "DeltaMomentum": "nldsl.optim.delta_momentum",
    "DeepMomentum": "nldsl.optim.deep_momentum",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nldsl.optim' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
