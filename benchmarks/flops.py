"""Analytic FLOPs and minimal bytes of the benchmark models (METHOD.md: "two numbers first").

FLOPs count matrix products only (``2·m·k·n`` each; element-wise work is a few percent) exactly as the runtime
computes them (``nldsl/nn``), forward, per token. A training step costs 3x the forward (backward = 2x, also for
the unrolled inner updates, whose backward mirrors their forward). ``tests/bench`` checks every per-token
count against ``torch.utils.flop_counter.FlopCounterMode`` on the real blocks.

Bytes are the fewest the *design* must move through device memory in one training step (each tensor read or
written once, every intermediate that fits on chip left there):

* parameters: the optimizer reads p, g, m, v and writes p, m, v (28 B/param), each forward and backward reads
  the bf16 weights (2 + 2 B) and the backward writes the fp32 gradient (4 B); a model trained in S surprise
  segments reads the weights and read-modify-writes the gradient S times (12 B/param/segment);
* activations: every matmul input kept for the backward, written once (bf16) and read once;
* fast state (the term that decides the memory models): a per-sequence fast weight that is too large to stay on
  chip is read and written once per chunk in the forward (W, and S with momentum) and read, with its gradient
  read and written, once per chunk in the backward, in fp32 (``memory_state_bytes``); a task-objective CMS
  level reads its per-sequence weights in the forward and the backward (bf16) and accumulates its
  per-sequence gradient into the surprise (fp32 read + write) once per segment (``cms_state_bytes``).

The floor of a step is ``max(FLOPs / peak, bytes / bandwidth)`` (docs/performance.md has the table and the
plan). ``python benchmarks/flops.py`` prints it for the sizes of issue 5.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace

TRAIN_FACTOR = 3.0
"""Forward + backward = 3 forwards (two matmuls per forward matmul in the backward)."""


@dataclass(frozen=True)
class Hardware:
    name: str
    flops: float
    """Dense bf16 matmul rate, FLOP/s (measured: an 8192^3 product on random data)."""
    bandwidth: float
    """Device memory bandwidth, B/s (measured: a large device-to-device copy, read + write)."""


H100 = Hardware("H100 SXM (KINDS.md readings)", 790e12, 3.0e12)
H200 = Hardware("H200 (KINDS.md readings)", 788e12, 4.3e12)


# ----------------------------------------------------------------------------------- building bricks
def linear(n_in: int, n_out: int) -> float:
    """One token through a dense ``n_in -> n_out`` projection."""
    return 2.0 * n_in * n_out


def attention_core(dim: int, seq: int, causal: bool = True) -> float:
    """``QKᵀ`` and ``PV`` per token, averaged over the positions of a sequence (causal: half the keys)."""
    keys = (seq + 1) / 2 if causal else seq
    return 4.0 * dim * keys


def mlp_memory_read(width: int, hidden: int, depth: int) -> float:
    """One token through a depth-L memory ``z + W_L σ(… W_1 z)`` (depth 1: ``W z``)."""
    if depth == 1:
        return linear(width, width)
    return linear(width, hidden) + linear(hidden, hidden) * (depth - 2) + linear(hidden, width)


def memory_update(width: int, hidden: int, depth: int, objective: str, momentum: bool, query: bool,
                  chunk: int) -> float:
    """FLOPs per token and head of ``memory_ops.memory_segment`` (snapshot reads, closed-form errors, writes).

    Reads of the chunk at the snapshot: k (+ v for the ``self`` objective, + q when reading); local errors
    back through layers L..2; one write einsum per layer (two with momentum); the decay weights (``n²``).
    """
    reads = 1 + (objective == "self") + query
    read = mlp_memory_read(width, hidden, depth)
    errors = read - linear(width, hidden) if depth > 1 else 0.0  # every layer but the first, backwards
    writes = read * (2 if momentum else 1)
    decay = 2.0 * chunk if momentum else 0.0
    return reads * read + errors + writes + decay


def cms_level(dim: int, hidden: int, kind: str = "mlp") -> float:
    return linear(dim, hidden) * (3 if kind == "swiglu" else 2)


def swiglu(dim: int, hidden: int) -> float:
    return 3 * linear(dim, hidden)


def swiglu_hidden(dim: int) -> int:
    return 32 * math.ceil(8 * dim / 3 / 32)


# -------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Shape:
    """The sizes the counts depend on (defaults: issue 5's table, examples/*.nl)."""

    dim: int = 768
    layers: int = 12
    heads: int = 12
    vocab: int = 32000
    seq: int = 2048
    batch: int = 16
    titans_chunk: int = 64
    memory_depth: int = 2
    titans_hidden_mult: float = 1.0
    """Hidden width of the Titans memory MLP per head width (nldsl.build lowers titans.nl to 1)."""
    hope_chunk: int = 64
    hope_proj_chunk: int = 16
    hope_hidden_mult: float = 4.0
    """Hidden width of HOPE's main memory per head width (``mlp(depth = 2)``: 4)."""
    proj_heads: int = 12
    """Heads of each projection memory (per-head memories, as nldsl.build lowers hope.nl: = heads)."""
    proj_hidden_mult: float = 4.0
    """Hidden width of each projection memory per its width (``mlp(depth = 2)``: 4)."""
    n_proj_memories: int = 4
    """k, v, eta, alpha (5 with an adaptive q)."""
    cms_hidden: int | None = None
    cms_periods: tuple[int, ...] = field(default=(64, 512, 2048))

    @property
    def cms_width(self) -> int:
        return self.cms_hidden or self.dim  # hope.nl / hope_attention.nl: hidden = dim per level

    @property
    def tokens(self) -> int:
        return self.seq * self.batch

    @property
    def segments(self) -> int:
        """Surprise segments of a task-CMS step (train_segments: the gcd of the periods)."""
        return math.ceil(self.seq / math.gcd(*self.cms_periods))


# --------------------------------------------------------------------------------- layer FLOPs
def transformer_layer(s: Shape) -> float:
    return 4 * linear(s.dim, s.dim) + attention_core(s.dim, s.seq) + swiglu(s.dim, swiglu_hidden(s.dim))


def titans_layer(s: Shape) -> float:
    d = s.dim // s.heads
    hidden = round(d * s.titans_hidden_mult)
    static = 5 * linear(s.dim, s.dim) + 3 * linear(s.dim, s.heads)
    memory = s.heads * memory_update(d, hidden, s.memory_depth, "l2", True, True, s.titans_chunk)
    return static + memory + swiglu(s.dim, swiglu_hidden(s.dim))


def cms(s: Shape) -> float:
    return len(s.cms_periods) * cms_level(s.dim, s.cms_width)


def smt_parts(s: Shape) -> dict[str, float]:
    """Self-modifying Titans per token: static maps, projection-memory reads and writes, main memory."""
    P, m = s.proj_heads, s.n_proj_memories
    w = s.dim // P
    hp = max(1, round(w * s.proj_hidden_mult))
    d = s.dim // s.heads
    hm = max(1, round(d * s.hope_hidden_mult))
    return {
        "static": 3 * linear(s.dim, s.dim) + 2 * linear(s.dim, s.heads + P),
        "proj_read": m * P * mlp_memory_read(w, hp, s.memory_depth),
        "proj_update": m * P * memory_update(w, hp, s.memory_depth, "self", True, False, s.hope_proj_chunk),
        "main_memory": s.heads * memory_update(d, hm, s.memory_depth, "self", True, True, s.hope_chunk),
    }


def hope_layer(s: Shape) -> float:
    return sum(smt_parts(s).values()) + cms(s)


def hope_attention_layer(s: Shape) -> float:
    return 4 * linear(s.dim, s.dim) + attention_core(s.dim, s.seq) + cms(s)


LAYER_FLOPS = {"baseline": transformer_layer, "transformer": transformer_layer, "titans": titans_layer,
               "hope_attention": hope_attention_layer, "hope": hope_layer}


def forward_flops_per_token(model: str, s: Shape) -> float:
    return s.layers * LAYER_FLOPS[model](s) + linear(s.dim, s.vocab)


def train_flops_per_token(model: str, s: Shape) -> float:
    return TRAIN_FACTOR * forward_flops_per_token(model, s)


# ---------------------------------------------------------------------------------- parameters
def layer_params(model: str, s: Shape) -> int:
    D, hid = s.dim, swiglu_hidden(s.dim)
    mlp, attn = 3 * D * hid, 4 * D * D
    cms_p = len(s.cms_periods) * 2 * D * s.cms_width
    if model in ("baseline", "transformer"):
        return attn + mlp
    d = D // s.heads
    hm = round(d * (s.titans_hidden_mult if model == "titans" else s.hope_hidden_mult))
    if model == "titans":
        return 5 * D * D + 3 * (D * s.heads + s.heads) + 3 * D * 4 + s.heads * 2 * d * hm + mlp
    if model == "hope_attention":
        return attn + cms_p
    w = D // s.proj_heads
    hp = round(w * s.proj_hidden_mult)
    bank = s.n_proj_memories * s.proj_heads * 2 * w * hp
    smt = 3 * D * D + 2 * (D + 1) * (s.heads + s.proj_heads) + 3 * D * 4 + bank + s.heads * 2 * d * hm
    return smt + cms_p


def params(model: str, s: Shape) -> int:
    embed = s.vocab * s.dim * (1 if model == "baseline" else 2)  # the baseline ties its head
    return s.layers * layer_params(model, s) + embed


# -------------------------------------------------------------------------------------- bytes
def memory_state_bytes(width: int, hidden: int, depth: int, momentum: bool, chunk: int) -> float:
    """Fast-state traffic per token and head: per chunk, forward reads W (,S) and writes W' (,S');
    the backward reads W (,S), reads their incoming gradients and writes the outgoing ones. fp32."""
    state = 4.0 * (width * width if depth == 1 else 2 * width * hidden + hidden * hidden * (depth - 2))
    mats = 2 if momentum else 1
    return state * mats * (2 + 3) / chunk


def cms_state_bytes(s: Shape) -> float:
    """Per token: every task level reads its per-sequence weights twice (bf16) and accumulates its
    per-sequence gradient into the surprise (fp32 read + write) once per segment of gcd(periods) tokens."""
    seg = math.gcd(*s.cms_periods)
    per_level = 2 * s.dim * s.cms_width * (2 + 2 + 4 + 4)
    return len(s.cms_periods) * per_level / seg


def state_bytes_per_token(model: str, s: Shape) -> float:
    """Fast-state bytes per token of the whole model (all layers)."""
    d = s.dim // s.heads
    hm = round(d * (s.titans_hidden_mult if model == "titans" else s.hope_hidden_mult))
    if model == "titans":
        per_layer = s.heads * memory_state_bytes(d, hm, s.memory_depth, True, s.titans_chunk)
    elif model == "hope":
        w = s.dim // s.proj_heads
        hp = round(w * s.proj_hidden_mult)
        bank = s.n_proj_memories * s.proj_heads * memory_state_bytes(w, hp, s.memory_depth, True, s.hope_proj_chunk)
        main = s.heads * memory_state_bytes(d, hm, s.memory_depth, True, s.hope_chunk)
        per_layer = bank + main + cms_state_bytes(s)
    elif model == "hope_attention":
        per_layer = cms_state_bytes(s)
    else:
        per_layer = 0.0
    return s.layers * per_layer


def activation_bytes_per_token(model: str, s: Shape) -> float:
    """Matmul inputs kept for the backward (bf16, written once and read once), estimated as the layer's
    weight FLOPs over ``2·dim`` (attention scores stay on chip: flash attention)."""
    weight_flops = LAYER_FLOPS[model](replace(s, seq=1))
    return 2 * 2 * s.layers * weight_flops / (2 * s.dim) + 2 * 2 * s.dim


def step_bytes(model: str, s: Shape) -> dict[str, float]:
    """Minimal bytes of one training step, by kind."""
    n = params(model, s)
    passes = s.segments if model in ("hope", "hope_attention") else 1
    return {
        "params": n * (28 + 8 + 12 * (passes - 1)),
        "activations": activation_bytes_per_token(model, s) * s.tokens,
        "state": state_bytes_per_token(model, s) * s.tokens,
    }


# --------------------------------------------------------------------------------------- floors
@dataclass(frozen=True)
class Floor:
    model: str
    shape: Shape
    flops: float
    """Training FLOPs of one step."""
    bytes: dict
    t_compute: float
    t_memory: float

    @property
    def total_bytes(self) -> float:
        return sum(self.bytes.values())

    @property
    def t_floor(self) -> float:
        return max(self.t_compute, self.t_memory)

    @property
    def bound(self) -> str:
        return "compute" if self.t_compute >= self.t_memory else "memory"

    @property
    def tokens_per_s(self) -> float:
        return self.shape.tokens / self.t_floor


def floor(model: str, s: Shape, hw: Hardware = H100) -> Floor:
    flops = train_flops_per_token(model, s) * s.tokens
    b = step_bytes(model, s)
    return Floor(model, s, flops, b, flops / hw.flops, sum(b.values()) / hw.bandwidth)


def table(models, shapes, hw: Hardware = H100) -> list[dict]:
    rows = []
    for s in shapes:
        base = floor("baseline", s, hw)
        for model in models:
            f = floor(model, s, hw)
            rows.append({
                "model": model, "seq": s.seq, "batch": s.batch, "params_M": params(model, s) / 1e6,
                "GFLOP_per_token": train_flops_per_token(model, s) / 1e9,
                "GB_per_step": f.total_bytes / 1e9, "state_GB": f.bytes["state"] / 1e9,
                "t_compute_ms": f.t_compute * 1e3, "t_memory_ms": f.t_memory * 1e3, "bound": f.bound,
                "floor_tok_s": f.tokens_per_s, "floor_ratio": f.tokens_per_s / base.tokens_per_s,
            })
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Floors of the benchmark models (analytic FLOPs and minimal bytes).")
    p.add_argument("--tflops", type=float, default=H100.flops / 1e12, help="bf16 matmul ceiling, TFLOP/s")
    p.add_argument("--gbs", type=float, default=H100.bandwidth / 1e9, help="copy bandwidth, GB/s")
    p.add_argument("--proj-heads", type=int, default=12)
    p.add_argument("--proj-chunk", type=int, default=16)
    args = p.parse_args(argv)
    hw = Hardware("given", args.tflops * 1e12, args.gbs * 1e9)
    shapes = [Shape(seq=2048, batch=16, proj_heads=args.proj_heads, hope_proj_chunk=args.proj_chunk),
              Shape(seq=16384, batch=2, proj_heads=args.proj_heads, hope_proj_chunk=args.proj_chunk)]
    cols = ["model", "seq", "params_M", "GFLOP_per_token", "GB_per_step", "state_GB", "t_compute_ms",
            "t_memory_ms", "bound", "floor_tok_s", "floor_ratio"]
    print(f"floors at {args.tflops:.0f} TFLOP/s, {args.gbs:.0f} GB/s")
    print("  ".join(f"{c:>15}" for c in cols))
    for r in table(list(LAYER_FLOPS), shapes, hw):
        print("  ".join(f"{r[c]:>15.4g}" if isinstance(r[c], float) else f"{r[c]:>15}" for c in cols))


if __name__ == "__main__":
    main()
