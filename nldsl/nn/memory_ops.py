"""Chunk-parallel engine of the in-context associative memories (linear or residual MLP).

Semantics (docs/runtime.md, "Memory family"): inside a chunk every token reads the chunk-start
snapshot, ``y_t = M_snap(q_t)`` (with C = 1 this is HOPE's read-before-write ``o_t = M_{t−1}(q_t)``,
NL arXiv Eq. 94), and every inner gradient is taken at that snapshot. Each layer ℓ of the memory is an
associative memory from its own input ``a`` to its local error ``δ`` (NL arXiv §4.1, Eq. 29-31), so the
per-token write of layer ℓ is ``U_t = −η'_t (δ_t + [dgd]·W_snap a_t) a_tᵀ`` with the exact DGD step
``η' = η/(1 + η‖a‖²)`` (Eq. 56-57) or ``η' = η`` under GD, followed by momentum ``S_t = β_t S_{t−1} + U_t``
and retention ``W_t = α_t W_{t−1} + S_t`` (Titans' surprise and forget gate; Eq. 88 with C = 1).

Fast form: one batched snapshot forward of the chunk, closed-form local errors (no autograd inside),
then :func:`~nldsl.nn.functional.chunk_decay_weights` folds the chunk into ``Σ_t c_t δ_t a_tᵀ``: one
matmul per layer. Python loops run over chunks only; a piece of a sequence that starts or ends inside a
chunk is a shorter "segment" that keeps the snapshot (state key ``pos``).

Axis legend: ``B`` batch, ``H`` memory heads, ``n`` tokens of a segment, ``i``/``o`` layer in/out width.
State (per memory): ``{"w": {"0": W_0, ...}, "snap": {...}, "s": {...}, "pos": int}``, every tensor
``(B, H, d_out, d_in)``; ``"s"`` (momentum) only when the rule has momentum.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from nldsl.nn.functional import activation, chunk_decay_weights, dgd_rate
from nldsl.nn import fused_memory
from nldsl.nn.layers import split_spans

__all__ = [
    "MemoryRule",
    "OBJECTIVES",
    "memory_shapes",
    "init_memory_weights",
    "chunk_segments",
    "init_memory_state",
    "unpack_state",
    "pack_state",
    "mlp_forward",
    "memory_read",
    "memory_segment",
    "compiled_chunks",
    "active_compile_options",
    "compiled",
    "chunk_loop",
    "memory_scan",
]

OBJECTIVES = ("dot", "l2", "self", "huber", "lp")
"""``dot``: −⟨M(k), v⟩ (Hebbian); ``l2``: ½‖M(k) − v‖²; ``self``: ½‖M(k) − v̂‖² with v̂ = M_snap(v);
``huber``: Σ huber_δ(M(k) − v) (Miras' Yaad); ``lp``: (1/p)‖M(k) − v‖_p^p (Miras' Moneta)."""


@dataclass(frozen=True)
class MemoryRule:
    """The static description of one memory's inner learning problem (plain data, hashable)."""

    depth: int = 1
    """Number of weight matrices; 1 = linear ``W z``, L ≥ 2 = residual MLP ``z + W_L σ(… σ(W_1 z))``."""
    activation: str = "silu"
    """σ of the MLP memory."""
    objective: str = "l2"
    """One of :data:`OBJECTIVES`."""
    dgd: bool = False
    """Delta Gradient Descent (exact Sherman-Morrison step, per layer) instead of plain GD."""
    momentum: bool = False
    """Keep a momentum buffer ``S`` (Titans surprise); otherwise ``S_t = U_t``."""
    stopgrad: bool = False
    """Detach the writes ``Σ c_t U_t`` from the outer graph (reads and decays stay differentiable)."""
    chunk_size: int = 1
    """Tokens per snapshot."""
    normalized_rate: bool = False
    """Per layer ``η_ℓ = η / max(1, ‖a_ℓ‖²)``: a layer whose input is longer than a unit key takes the step of
    a unit key (normalised LMS), so the chunk step bound of a unit key holds for the hidden layers too."""
    detached_heads: tuple[bool, ...] = ()
    """Per-head stop-grad (length H, empty = none): those heads' writes are detached like ``stopgrad``."""
    objective_param: float = 1.0
    """δ of ``huber`` (the quadratic zone), p of ``lp``; unused otherwise."""

    def layer_rate(self, eta: Tensor, sqnorm: Tensor) -> Tensor:
        """The step ``η'`` a layer with input norm² ``sqnorm`` takes (rate normalisation, then DGD's
        Sherman-Morrison factor)."""
        if self.normalized_rate:
            eta = eta / sqnorm.clamp(min=1.0)
        return dgd_rate(eta, sqnorm) if self.dgd else eta


def chunk_segments(T: int, chunk: int, pos: int) -> list[tuple[int, int]]:
    """Split ``T`` tokens that start at position ``pos`` of a chunk into ``(start, length)`` segments."""
    out, t0 = [], 0
    while t0 < T:
        n = min(chunk - pos, T - t0)
        out.append((t0, n))
        t0, pos = t0 + n, (pos + n) % chunk
    return out


def memory_shapes(depth: int, width: int, hidden: int) -> list[tuple[int, int]]:
    """``(out, in)`` of every layer: ``width -> width`` when linear, else ``width -> hidden … -> width``."""
    if depth == 1:
        return [(width, width)]
    return [(hidden, width)] + [(hidden, hidden)] * (depth - 2) + [(width, hidden)]


def init_memory_weights(heads: int, width: int, hidden: int, depth: int, zero_linear: bool) -> nn.ParameterList:
    """Meta-learned initial weights ``(heads, out, in)`` (outer-loop parameters).

    MLP layers start at ``N(0, 1/fan_in)``; a linear memory starts at zero when ``zero_linear`` (the
    linear-attention / DeltaNet convention ``S_0 = 0``), otherwise like an MLP layer.
    """
    return nn.ParameterList([
        nn.Parameter(torch.zeros(heads, o, i) if depth == 1 and zero_linear else torch.randn(heads, o, i) / i**0.5)
        for o, i in memory_shapes(depth, width, hidden)
    ])


def init_memory_state(rule: MemoryRule, weights: list[Tensor], batch: int, dtype: torch.dtype) -> dict:
    """Expand the meta-learned initial weights ``(H, o, i)`` over the batch (gradient flows to them)."""
    w = {str(i): p.to(dtype).unsqueeze(0).expand(batch, *p.shape) for i, p in enumerate(weights)}
    state = {"w": w, "snap": dict(w), "pos": 0}
    if rule.momentum:
        state["s"] = {k: torch.zeros_like(v) for k, v in w.items()}
    return state


def unpack_state(rule: MemoryRule, state: dict) -> tuple[list[Tensor], list[Tensor], list[Tensor] | None, int]:
    """``(w, snap, s, pos)`` from a memory state dict (per-layer lists; ``s`` is ``None`` without momentum)."""
    w = [state["w"][str(i)] for i in range(len(state["w"]))]
    snap = [state["snap"][str(i)] for i in range(len(state["snap"]))]
    s = [state["s"][str(i)] for i in range(len(state["s"]))] if rule.momentum else None
    return w, snap, s, state["pos"]


def pack_state(w: list[Tensor], snap: list[Tensor], s: list[Tensor] | None, pos: int) -> dict:
    """Inverse of :func:`unpack_state`. At a chunk boundary the snapshot is the running weights; it is stored
    as its own copy, so no two state entries share storage (safetensors refuses shared tensors)."""
    snap = [t.clone() if t is wt else t for t, wt in zip(snap, w)]
    state = {"w": {str(i): t for i, t in enumerate(w)}, "snap": {str(i): t for i, t in enumerate(snap)}, "pos": pos}
    if s is not None:
        state["s"] = {str(i): t for i, t in enumerate(s)}
    return state


def mlp_forward(rule: MemoryRule, weights: list[Tensor], z: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """``M(z)``, every layer's input ``a_ℓ`` and pre-activation ``h_ℓ = W_ℓ a_ℓ`` (Eq. 89).

    ``weights[ℓ]``: ``(B, H, o, i)``; ``z``: ``(B, H, N, i)`` -> ``(B, H, N, o)``.
    """
    sigma, _ = activation(rule.activation)
    acts, pres, a = [], [], z
    for ell, W in enumerate(weights):
        h = torch.matmul(a, W.to(z.dtype).transpose(-1, -2))  # (B, H, N, o)
        acts.append(a)
        pres.append(h)
        a = sigma(h) if ell + 1 < len(weights) else h
    out = a + z if len(weights) > 1 else a
    return out, acts, pres


def memory_read(rule: MemoryRule, weights: list[Tensor], z: Tensor) -> Tensor:
    """A pure read ``M(z)`` (no write)."""
    return mlp_forward(rule, weights, z)[0]


def _local_errors(rule: MemoryRule, weights: list[Tensor], pres: list[Tensor], e: Tensor) -> list[Tensor]:
    """Closed-form backward of the inner loss: ``δ_L = ∂ℓ/∂out``, ``δ_ℓ = σ'(h_ℓ) ⊙ (W_{ℓ+1}ᵀ δ_{ℓ+1})``."""
    _, dsigma = activation(rule.activation)
    deltas = [e]
    for ell in range(len(weights) - 1, 0, -1):
        back = torch.matmul(deltas[0], weights[ell].to(e.dtype))  # (B, H, n, i_ℓ)
        deltas.insert(0, back * dsigma(pres[ell - 1]))
    return deltas


def _output_error(rule: MemoryRule, pred: Tensor, v: Tensor, vhat: Tensor | None) -> Tensor:
    """``∂ℓ/∂M(k)`` for the rule's objective."""
    if rule.objective == "dot":
        return -v
    if rule.objective == "l2":
        return pred - v
    if rule.objective == "huber":
        return (pred - v).clamp(-rule.objective_param, rule.objective_param)
    if rule.objective == "lp":
        e = pred - v
        return torch.sign(e) * e.abs().pow(rule.objective_param - 1.0)
    return pred - vhat


def _snapshot_pass(
    rule: MemoryRule, snap: list[Tensor], k: Tensor, v: Tensor, q: Tensor | None
) -> tuple[Tensor | None, list[Tensor], list[Tensor], list[Tensor]]:
    """One batched forward of the chunk at the snapshot: reads, and per layer ``a_t``, ``h_t``, ``δ_t`` of the keys.

    Under ``stopgrad`` the write-side tensors are detached, so no graph is built for them.
    """
    n = k.shape[-2]
    parts = [k] + ([v] if rule.objective == "self" else []) + ([q] if q is not None else [])
    out, acts, pres = mlp_forward(rule, snap, torch.cat(parts, dim=-2))  # (B, H, len(parts)·n, ·)
    y = out[..., out.shape[-2] - n:, :] if q is not None else None
    if rule.stopgrad:
        out, acts, pres = out.detach(), [a.detach() for a in acts], [h.detach() for h in pres]
        snap, v = [x.detach() for x in snap], v.detach()
    vhat = out[..., n:2 * n, :] if rule.objective == "self" else None
    pres = [h[..., :n, :] for h in pres]
    deltas = _local_errors(rule, snap, pres, _output_error(rule, out[..., :n, :], v, vhat))
    return y, [a[..., :n, :] for a in acts], pres, deltas


def _fold_chunk(
    rule: MemoryRule, w: list[Tensor], s: list[Tensor] | None, acts: list[Tensor], pres: list[Tensor],
    deltas: list[Tensor], eta: Tensor, log_alpha: Tensor | None, log_beta: Tensor | None,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """``W_n = A W_0 + s0 S_0 + Σ c_t U_t`` and ``S_n = Bn S_0 + Σ b_t U_t``: one fused matmul per sum, in the
    state dtype (fp32 or wider) with autocast off, so bf16 activations never round the fast weights."""
    sd = w[0].dtype
    with torch.autocast(w[0].device.type, enabled=False):
        log_alpha = log_alpha.to(sd) if log_alpha is not None else torch.zeros_like(eta, dtype=sd)
        A, c, s0, b, Bn = chunk_decay_weights(log_alpha, None if log_beta is None else log_beta.to(sd))
        new_w, new_s = [], []
        for ell, W in enumerate(w):
            a, g = acts[ell].to(sd), deltas[ell].to(sd)  # (B, H, n, i), (B, H, n, o)
            lr = rule.layer_rate(eta.to(sd), (a * a).sum(-1))  # (B, H, n)
            if rule.dgd:
                g = g + pres[ell].to(sd)  # W_snap a_t: the DGD erase term
            g, a = _detach_heads(rule, g * lr.unsqueeze(-1)), _detach_heads(rule, a)  # U_t = −η'_t g_t a_tᵀ
            S = None if s is None else s[ell]
            new_w.append(_decay_and_write(A, W, s0, S, g * c.unsqueeze(-1), a))  # decays stay live
            if S is not None:
                new_s.append(_decay_and_write(Bn, S, None, None, g * b.unsqueeze(-1), a))
    return new_w, (new_s if s is not None else None)


def _decay_and_write(A: Tensor, W: Tensor, s0: Tensor | None, S: Tensor | None, gc: Tensor, a: Tensor) -> Tensor:
    """``A·W (+ s0·S) − Σ_t gc_t a_tᵀ`` ``(B, H, o, i)``: the sum is a ``baddbmm`` epilogue (one pass fewer)."""
    B, H, o, i = W.shape
    base = A[..., None, None] * W
    if S is not None:
        base = base.addcmul_(s0[..., None, None], S)
    gct = gc.transpose(-1, -2).reshape(B * H, o, gc.shape[-2])  # (B·H, o, n)
    out = torch.baddbmm(base.view(B * H, o, i), gct, a.reshape(B * H, a.shape[-2], i), alpha=-1.0)
    return out.view(B, H, o, i)


def _detach_heads(rule: MemoryRule, x: Tensor) -> Tensor:
    """``x`` ``(B, H, n, ·)`` with the heads of ``rule.detached_heads`` cut from the outer graph."""
    if not any(rule.detached_heads):
        return x
    mask = torch.tensor(rule.detached_heads, device=x.device)[:, None, None]  # (H, 1, 1)
    return torch.where(mask, x.detach(), x)


_COMPILED_SEGMENTS: dict = {}
_ACTIVE_SEGMENT: list = []
_ACTIVE_OPTIONS: list[dict] = []


@contextlib.contextmanager
def compiled_chunks(**options):
    """Within the block, every chunk update (:func:`memory_segment`) runs through ``torch.compile(**options)``.

    Why this scope: a whole unrolled sequence (T / C chunk updates per memory and layer) makes one huge
    graph that takes minutes to compile and recompiles on every carried position; one chunk update has
    the same shapes everywhere, compiles once (per rule and chunk length) and fuses its elementwise work.
    The chunk loop stays in Python. One compiled wrapper per option set, so dynamo's cache is kept.
    """
    options = {"dynamic": False, **options}
    _raise_recompile_limit(64)
    _ACTIVE_SEGMENT.append(compiled(_memory_segment, options, _COMPILED_SEGMENTS, "segment"))
    _ACTIVE_OPTIONS.append(options)
    try:
        yield
    finally:
        _ACTIVE_SEGMENT.pop()
        _ACTIVE_OPTIONS.pop()


def active_compile_options() -> dict | None:
    """The ``torch.compile`` options of the innermost :func:`compiled_chunks` block (``None`` outside one, or
    while a graph is being traced): memory modules compile their static pieces (projections, rates,
    read-out, the fused scan's write coefficients) with them, so ``scope = chunk`` covers those too."""
    if not _ACTIVE_OPTIONS or torch.compiler.is_compiling():
        return None
    return _ACTIVE_OPTIONS[-1]


def compiled(fn, options: dict | None, cache: dict, key):
    """``fn`` itself without options, else ``torch.compile(fn, **options)``, made once per ``key`` and
    option set and kept in ``cache``."""
    if options is None:
        return fn
    full = (key, tuple(sorted(options.items())))
    if full not in cache:
        cache[full] = torch.compile(fn, **options)
    return cache[full]


def _raise_recompile_limit(at_least: int) -> None:
    """One chunk update has a few legitimate variants (each memory rule, the tail chunk, training vs
    no-grad evaluation, the first chunk's leaf state): more than dynamo's default of 8 graphs per function,
    past which it silently runs eager. ``recompile_limit`` (torch >= 2.6) or ``cache_size_limit``."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < at_least:
            setattr(config, name, at_least)
            return


def memory_segment(*args, **kwargs):
    """Read and write ``n`` tokens that share one snapshot (see :func:`_memory_segment`), compiled inside
    :func:`compiled_chunks` (and never re-entered from a graph that is being compiled already)."""
    if _ACTIVE_SEGMENT and not torch.compiler.is_compiling():
        return _ACTIVE_SEGMENT[-1](*args, **kwargs)
    return _memory_segment(*args, **kwargs)


def _memory_segment(
    rule: MemoryRule,
    snap: list[Tensor],
    w: list[Tensor],
    s: list[Tensor] | None,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    log_alpha: Tensor | None = None,
    log_beta: Tensor | None = None,
    q: Tensor | None = None,
) -> tuple[Tensor | None, list[Tensor], list[Tensor] | None]:
    """Read and write ``n`` tokens that all share the snapshot ``snap`` (at most one chunk).

    Args:
        snap, w, s: snapshot, running weights and running momentum, each ``(B, H, o, i)`` per layer.
        k: ``(B, H, n, i)`` keys; v: ``(B, H, n, o)`` values; q: ``(B, H, n, i)`` queries or ``None``.
        eta: ``(B, H, n)`` learning rate; log_alpha, log_beta: ``(B, H, n)`` log retention (``None``: α = 1)
            and log momentum (needed iff the rule has momentum). Logs keep tiny gates finite
            (``logsigmoid`` of a raw gate never underflows to −inf).
    Returns:
        ``(y, w, s)``: reads ``M_snap(q)`` ``(B, H, n, o)`` (or ``None``) and the advanced weights/momentum.
    """
    if rule.momentum != (log_beta is not None and s is not None):
        raise ValueError("log_beta and the momentum state must be given exactly when the rule has momentum")
    y, acts, pres, deltas = _snapshot_pass(rule, snap, k, v, q)
    eta = eta.detach() if rule.stopgrad else eta  # η' is part of the detached write; decays stay live
    w, s = _fold_chunk(rule, w, s, acts, pres, deltas, eta, log_alpha, log_beta)
    return y, w, s


def chunk_loop(step, carry, lengths: list[int], checkpoint_every: int = 0):
    """Run ``out, carry = step(carry, i, n)`` for segment ``i`` of ``n`` tokens, over ``lengths``; returns the
    list of outs and the last carry. (Callers cut their inputs once with ``split_spans(x, lengths)`` and
    pick piece ``i``.)

    With ``checkpoint_every = G > 0`` (and grad enabled) every group of ``G`` segments runs under
    ``torch.utils.checkpoint``: autograd keeps only the carries at group starts and recomputes a group's
    chunk states in the backward (activation memory ``(T/(C·G) + G)`` chunk states instead of ``T/C``;
    the gradients are identical).
    """
    def run(carry, first: int, part: list[int]):
        res = []
        for i, n in enumerate(part, start=first):
            out, carry = step(carry, i, n)
            res.append(out)
        return res, carry

    if checkpoint_every <= 0 or not torch.is_grad_enabled():
        return run(carry, 0, lengths)
    outs = []
    for g0 in range(0, len(lengths), checkpoint_every):
        res, carry = torch.utils.checkpoint.checkpoint(
            run, carry, g0, lengths[g0:g0 + checkpoint_every], use_reentrant=False)
        outs.extend(res)
    return outs, carry


def memory_scan(
    rule: MemoryRule,
    state: dict,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    log_alpha: Tensor | None = None,
    log_beta: Tensor | None = None,
    q: Tensor | None = None,
    checkpoint_every: int = 0,
) -> tuple[Tensor | None, dict]:
    """Run a whole piece ``(B, H, T, ·)`` chunk by chunk, continuing from ``state``.

    The first segment completes the chunk the state stopped in; a full chunk refreshes the snapshot.
    ``checkpoint_every``: see :func:`chunk_loop`. Returns the reads ``(B, H, T, o)`` (``None`` without
    ``q``) and the new state. Where :func:`nldsl.nn.fused_memory.usable` says so, the whole chunks run in
    one fused kernel (the same maths; ``checkpoint_every`` is moot there: it keeps only chunk-start states).
    """
    T, C, pos = k.shape[-2], rule.chunk_size, state["pos"]
    head = min((C - pos) % C, T)
    body = (T - head) // C * C
    w0 = state["w"]["0"]
    if body and fused_memory.usable(rule, k, q, w0.dtype, w0.shape[-2]):
        spans = [head, body, T - head - body]
        if body == T:  # whole chunks only: no split (its backward would copy every gradient once more)
            piece = [None, [k, v, q, eta, log_alpha, log_beta], None]
        else:
            parts = [split_spans(x, spans, -2) for x in (k, v, q)] + [
                split_spans(x, spans, -1) for x in (eta, log_alpha, log_beta)]
            piece = [[p[i] for p in parts] for i in range(3)]  # (k, v, q, eta, log_alpha, log_beta) per span
        ys = []
        if head:
            y, state = _torch_scan(rule, state, *piece[0], checkpoint_every)
            ys.append(y)
        w, _, s, _ = unpack_state(rule, state)
        pk, pv, pq, peta, pla, plb = piece[1]
        y, w, s = fused_memory.scan_full_chunks(rule, w, s, pk, pv, pq, peta, pla, plb, active_compile_options())
        ys.append(y)
        state = pack_state(w, w, s, 0)
        if spans[2]:
            y, state = _torch_scan(rule, state, *piece[2], checkpoint_every)
            ys.append(y)
        return torch.cat(ys, dim=-2) if len(ys) > 1 else ys[0], state
    return _torch_scan(rule, state, k, v, q, eta, log_alpha, log_beta, checkpoint_every)


def _torch_scan(rule: MemoryRule, state: dict, k: Tensor, v: Tensor, q: Tensor | None, eta: Tensor,
                log_alpha: Tensor | None, log_beta: Tensor | None, checkpoint_every: int) -> tuple[Tensor | None, dict]:
    """:func:`memory_scan` on the torch path: one :func:`memory_segment` per chunk (the CPU path, the reference)."""
    T, C = k.shape[-2], rule.chunk_size
    w, snap, s, pos = unpack_state(rule, state)
    lengths = [n for _, n in chunk_segments(T, C, pos)]
    ks, vs, qs = (split_spans(x, lengths, -2) for x in (k, v, q))
    etas, alphas, betas = (split_spans(x, lengths, -1) for x in (eta, log_alpha, log_beta))

    def step(carry, i: int, n: int):
        w, snap, s, pos = carry
        y, w, s = memory_segment(rule, snap, w, s, ks[i], vs[i], etas[i], alphas[i], betas[i], qs[i])
        pos = (pos + n) % C
        return y, (w, w if pos == 0 else snap, s, pos)

    ys, (w, snap, s, pos) = chunk_loop(step, (w, snap, s, pos), lengths, checkpoint_every)
    y = None
    if q is not None:
        y = torch.cat(ys, dim=-2) if ys else q.new_zeros(*q.shape[:-1], w[-1].shape[-2])
    return y, pack_state(w, snap, s, pos)
