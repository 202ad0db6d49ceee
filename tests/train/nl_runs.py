"""Shared settings of the training-tool tests: tiny sizes that train on a CPU in a second or two."""
from __future__ import annotations

from pathlib import Path

import torch

torch.set_num_threads(1)
"""These models are tiny: one intra-op thread per test process is fastest, and with pytest-xdist's two
workers on two cores more threads only fight over the cores (a 30 ms step took 0.1-2 s that way)."""
SUBPROCESS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TINY = EXAMPLES / "tiny.nl"

TINY_SET = ["D=32", "layers=1", "batch=2", "eval.batches=1", "schedule=cosine(warmup = 2)"]
"""examples/tiny.nl (every mechanism on) shrunk: dim 32 (2 heads), one layer, 2 x 128-token sequences."""

SMALL_NL = """\
# a two-layer Transformer++ small enough for unit tests
const D = 32
block blk(dim) {
  component attn : attention(heads = 2)
  component ffn : swiglu(hidden = 64)
  flow input -> attn -> ffn -> output
}
model small {
  vocab = 256  dim = D  layers = 1
  stack blk(dim = D)
}
train {
  optimizer adamw(lr = 3e-3, weight_decay = 0.0) for all
  steps = 4  batch = 2  seq = 32  precision = fp32  compile = off
  data = DATA  tokenizer = bytes
  eval every 2 steps (batches = 1)
  device = cpu
  seed = 0
}
"""


def small_spec(tmp_path: Path, data: str = 'text("builtin:shakespeare")', name: str = "small.nl",
               text: str = SMALL_NL) -> Path:
    """Write the small spec with a data statement into ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(text.replace("DATA", data), encoding="utf-8")
    return path


def train_losses(rows: list[dict], split: str = "train") -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in rows if r.get("split") == split]

MEM_NL = """\
# a Titans-style neural memory written every 8 tokens, a task-objective CMS with a level stepped every 2 outer
# steps, M3 on the matrices and AdamW on the rest: most of what tiny.nl has, at a tenth of its cost
const D = 32
block blk(dim) {
  component lmm : neural_memory(heads = 2, depth = 2) {
    update every 8 tokens
    objective l2
    optimizer momentum(lr = 0.1, beta = 0.9, retain = 0.99)
    init meta
  }
  component ffn : cms(variant = sequential) {
    objective task
    level fast : mlp(hidden = 64) { update every 8 tokens  optimizer gd(lr = 0.01) }
    level slow : mlp(hidden = 64) { update every 16 tokens  optimizer gd(lr = 0.01) }
    level outer : mlp(hidden = 64) { update every 2 steps (reduce = mean) }
    flow input -> fast -> slow -> outer -> output
  }
  flow input -> lmm -> ffn -> output
}
model mem {
  vocab = 256  dim = D  layers = 1
  stack blk(dim = D)
}
train {
  optimizer m3(lr = 0.003, slow_every = 3) for matrices
  optimizer adamw(lr = 3e-3, weight_decay = 0.1) for vectors, embeddings
  schedule cosine(warmup = 2)
  steps = 4  batch = 2  seq = 32  precision = fp32  compile = off
  data = text("builtin:shakespeare")  tokenizer = bytes
  eval every 2 steps (batches = 1)
  device = cpu
  seed = 0
}
"""


def mem_spec(tmp_path: Path) -> Path:
    """The memory spec (in-context levels that keep writing while generating, every kind of outer state)."""
    path = tmp_path / "mem.nl"
    path.write_text(MEM_NL, encoding="utf-8")
    return path
