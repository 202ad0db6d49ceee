"""Fixtures of the compiler tests: examples shrunk by overrides, one CPU thread (tiny tensors)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.nl"))

SHRINK: dict[str, dict] = {
    "tiny": {"D": 32},
    "transformer": {"D": 96, "HEADS": 4, "model.layers": 2, "model.vocab": 256, "train.tokenizer": "bytes"},
    "titans": {"D": 48, "HEADS": 4, "CHUNK": 8, "model.layers": 2, "model.vocab": 256, "train.tokenizer": "bytes"},
    "hope": {"D": 32, "HEADS": 2, "LAYERS": 1, "SEQ": 2048, "model.vocab": 256, "train.tokenizer": "bytes"},
    "hope_attention": {"model.dim": 96, "model.layers": 1, "model.vocab": 256, "train.tokenizer": "bytes"},
    "cms_variants": {"D": 32, "model.layers": 1},
    "continual": {"WIDTH": 16},
    "optimizers": {"D": 16},
}
"""Overrides that make each example small enough for a CPU test (same structure, smaller widths)."""


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and steady on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def example(name: str) -> Path:
    return ROOT / "examples" / f"{name}.nl"


def build_small(name_or_text: str, dtype=None, seed: int = 0, **extra):
    """``nldsl.build`` of a shrunk example (or of .nl text), lowering notes silenced."""
    from nldsl.build import build

    torch.manual_seed(seed)
    src = example(name_or_text) if name_or_text in SHRINK else name_or_text
    overrides = {**SHRINK.get(name_or_text, {}), **extra}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(src, dtype=dtype, compile=False, overrides=overrides or None)
