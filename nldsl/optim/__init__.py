"""Optimizers as associative memories (NL paper section 4): Muon, M3, Delta/Deep Momentum, AdamMemory, schedules."""
from __future__ import annotations

import importlib

# Imported eagerly: the function shares its submodule's name, and importing the submodule (which every
# optimizer does) would otherwise bind `nldsl.optim.newton_schulz` to the module, not the function.
from nldsl.optim.newton_schulz import newton_schulz

_EXPORTS = {
    "Muon": "nldsl.optim.muon",
    "M3": "nldsl.optim.m3",
    "DeltaMomentum": "nldsl.optim.delta_momentum",
    "DeepMomentum": "nldsl.optim.deep_momentum",
    "AdamMemory": "nldsl.optim.adam_memory",
    "Schedule": "nldsl.optim.schedule",
    "warmup_cosine": "nldsl.optim.schedule",
    "warmup_linear": "nldsl.optim.schedule",
    "warmup_constant": "nldsl.optim.schedule",
}

__all__ = sorted([*_EXPORTS, "newton_schulz"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nldsl.optim' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
