"""Self-modifying ("deep self-referential") Titans: NL arXiv §8.1-8.2, Eq. 76-93 (NL_REFERENCE 3.2).

Every projection is an in-context memory: ``k_t``, ``v_t``, ``η_t`` and ``α_t`` (and ``q_t`` when
``adaptive_q``) are produced by their own 2-layer residual-MLP memories ``M_□(z) = z + W_2 σ(W_1 z)``
(Eq. 89/91) of the input; each memory trains on the shared key with its own self-generated target
``v̂_□ = M_□,snap(v_t)`` (Eq. 83-85) under ℓ2 (Eq. 86) with DGD + weight decay (Eq. 88) + momentum (our
documented choice, NL_REFERENCE 7.3). The main memory ``M_mem`` (multi-head) is read at ``q_t`` and
written the same way. Two chunk sizes (Eq. 90): the projection memories form a closed system (their
writes depend only on their own outputs), so they run first with ``proj_chunk_size``; ``M_mem`` then
runs with ``chunk_size`` on the keys, values and rates they produced; the sizes need not divide.

Every memory is per head (``(B, heads, d, ·)`` fast weights); head ``p`` of a projection memory reads the
``p``-th slice of ``x`` (or, with ``proj_in``, of a static projection ``W_□ x``: Fig. 3's q/k/v projections
placed before the memories, so a head sees every channel). Titans-style details (NL_REFERENCE 7.8):
causal depthwise conv (width 4) on the q/k/v paths, ℓ2-normalised q, k (and v, ``v_norm``) per head,
static per-head rate read-outs of ``M_η(x)`` and ``M_α(x)``, output RMSNorm per head, ``silu`` gate and
output projection.

Stability (docs/runtime.md §1): ``η = η_max · sigmoid(r_η(M_η(x)))`` with
``η_max = step_budget · (1 − β) / (2 · C)`` for each memory system (chunk ``C``, momentum ``β``): a chunk
sums ``C`` steps at one snapshot and momentum amplifies them by ``1/(1 − β)``, and DGD's erase doubles the
curvature on a unit key, so ``2 C η / (1 − β) ≤ step_budget`` keeps the chunk update a contraction even
for aligned keys. Hidden layers take normalised-LMS steps (``MemoryRule.normalized_rate``).

Axis legend: ``B`` batch, ``T`` tokens, ``D`` width, ``H`` heads of ``M_mem`` (width ``d``), ``P`` heads
of each projection memory (width ``D/P``), ``m`` number of projection memories.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nldsl.nn.functional import ACTIVATIONS, l2_normalize, logit
from nldsl.nn.layers import RMSNorm, ShortConv, check_finite, check_positive_int, compute_dtype, split_spans
from nldsl.nn.memory_ops import (
    MemoryRule, chunk_loop, chunk_segments, init_memory_state, init_memory_weights, memory_read, memory_scan,
    memory_segment, pack_state, unpack_state,
)
from nldsl.nn.neural_memory import resolve_config, short_conv

__all__ = ["SelfModifyingTitans", "MEMORY_NAMES"]

MEMORY_NAMES = ("k", "v", "eta", "alpha", "q", "mem")
"""The memories of a self-modifying Titans layer (``q`` only with ``adaptive_q``)."""


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans layer; ``forward(x (B, T, D), state=None) -> (y (B, T, D), state)``."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int = 4
        """Heads of the main memory M_mem (head width D / n_heads)."""
        proj_heads: int | None = None
        """Heads of each projection memory; ``None`` = ``n_heads`` (per-head memories); 1 = one full-width
        memory per projection (the paper's literal Eq. 76-82, ~``n_heads``× the state and FLOPs)."""
        depth: int = 2
        """Depth of every memory (2 = the paper's residual MLP ``z + W_2 σ(W_1 z)``; 1 = linear)."""
        proj_depth: int | None = None
        """Depth of the projection memories; ``None`` = ``depth`` (M_mem may differ from them)."""
        hidden_mult: float = 2.0
        """M_mem hidden width as a multiple of its head width."""
        proj_hidden_mult: float = 2.0
        """Projection-memory hidden width as a multiple of their head width D / proj_heads."""
        activation: str = "silu"
        """σ of all memories: silu, gelu, tanh or relu."""
        proj_activation: str | None = None
        """σ of the projection memories; ``None`` = ``activation``."""
        chunk_size: int = 16
        """Tokens per snapshot of M_mem."""
        proj_chunk_size: int = 32
        """Tokens per snapshot of the projection memories (need not divide ``chunk_size``)."""
        mem_objective: str = "self"
        """Inner objective of M_mem: ``self`` (v̂ = M_mem(v), the paper's) or ``l2`` (target v)."""
        dgd: bool = True
        """Delta Gradient Descent (exact, per layer); False = plain GD (the "w/o DGD" ablation)."""
        proj_dgd: bool | None = None
        """DGD for the projection memories; ``None`` = ``dgd``."""
        momentum: float = 0.5
        """Momentum β of every memory (Titans surprise); 0 = none (constant mode only)."""
        momentum_mode: str = "constant"
        """``constant``, ``learned`` (one scalar per memory head through a sigmoid) or ``data`` (per token and
        memory head, ``sigmoid(W_β x + b)``); learned and data start at ``momentum``."""
        eta_scale: float = 0.02
        """Initial η (the read-out bias starts there, capped at half of ``η_max``)."""
        step_budget: float = 1.0
        """Bound of the chunk-summed, momentum-amplified DGD step on a unit key, ``2·C·η/(1 − β)``: η is
        capped at ``η_max = step_budget·(1 − β)/(2·C)`` per memory system. Above ~2 aligned keys diverge."""
        alpha_init: float = 0.99
        """Initial retention α (the read-out bias is its logit)."""
        adaptive_q: bool = False
        """q from its own memory M_q; False = static projection (paper §8.1 and its ablation)."""
        conv_size: int = 4
        """Causal depthwise conv width on q/k/v; 0 = none."""
        qk_norm: bool = True
        """ℓ2-normalise q and k per head."""
        v_norm: bool = True
        """ℓ2-normalise v per head: bounded self-generated targets ``M(v)`` (v comes from M_v itself)."""
        proj_in: bool = False
        """Static linear input projection per projection memory (D → D), so per-head memories see every
        channel; False = the memories read x directly."""
        stopgrad: bool = False
        """Detach every memory's writes from the outer graph."""
        stopgrad_memories: tuple[str, ...] = ()
        """Memories (of ``MEMORY_NAMES``) whose writes alone are detached (``init meta(grad = stopgrad)``)."""
        checkpoint_chunks: int = 0
        """Recompute chunk states in the backward, keeping every N-th (``torch.utils.checkpoint``); 0 = off."""
        output_norm: bool = True
        """RMSNorm per head on the read-out."""
        output_gate: bool = True
        """``silu(W_g x)`` gate before the output projection."""

        def __post_init__(self) -> None:
            self.proj_heads = self.n_heads if self.proj_heads is None else self.proj_heads
            self.proj_depth = self.depth if self.proj_depth is None else self.proj_depth
            self.proj_activation = self.activation if self.proj_activation is None else self.proj_activation
            self.proj_dgd = self.dgd if self.proj_dgd is None else self.proj_dgd
            self.stopgrad_memories = tuple(self.stopgrad_memories)
            _check_config(self)

        def build(self) -> "SelfModifyingTitans":
            return SelfModifyingTitans(self)

    def __init__(self, config: "SelfModifyingTitans.Config | int | None" = None, **kwargs):
        super().__init__()
        cfg = resolve_config(self.Config, config, kwargs, "SelfModifyingTitans")
        self.config = cfg
        D, H, P = cfg.dim, cfg.n_heads, cfg.proj_heads
        self.names = ("k", "v", "eta", "alpha") + (("q",) if cfg.adaptive_q else ())
        m, cut = len(self.names), set(cfg.stopgrad_memories)
        rule = dict(normalized_rate=True, momentum=cfg.momentum_mode != "constant" or cfg.momentum > 0)
        bank_cut = tuple(n in cut for n in self.names for _ in range(P))  # bank heads are (m, P)
        self.bank_rule = MemoryRule(
            depth=cfg.proj_depth, activation=cfg.proj_activation, dgd=cfg.proj_dgd, objective="self",
            chunk_size=cfg.proj_chunk_size, stopgrad=cfg.stopgrad or all(bank_cut), detached_heads=_partial(bank_cut),
            **rule)
        self.mem_rule = MemoryRule(
            depth=cfg.depth, activation=cfg.activation, dgd=cfg.dgd, objective=cfg.mem_objective,
            chunk_size=cfg.chunk_size, stopgrad=cfg.stopgrad or "mem" in cut, **rule)
        bank_hidden, mem_hidden = _width(D // P, cfg.proj_hidden_mult), _width(D // H, cfg.hidden_mult)
        self.bank_init = init_memory_weights(m * P, D // P, bank_hidden, cfg.proj_depth, zero_linear=False)
        self.mem_init = init_memory_weights(H, D // H, mem_hidden, cfg.depth, zero_linear=False)
        self.proj_in = nn.Linear(D, m * D, bias=False) if cfg.proj_in else None
        if self.proj_in is not None:
            nn.init.normal_(self.proj_in.weight, std=D ** -0.5)
        self.q_proj = None if cfg.adaptive_q else nn.Linear(D, D, bias=False)
        self.conv_kv = ShortConv(2 * D, cfg.conv_size) if cfg.conv_size else None
        self.conv_q = ShortConv(D, cfg.conv_size) if cfg.conv_size else None
        self.momentum_raw = self.momentum_readout = None  # β: one per M_mem head, then per bank head (m, P)
        if cfg.momentum_mode == "learned":
            self.momentum_raw = nn.Parameter(torch.full((H + m * P,), logit(cfg.momentum)))
        elif cfg.momentum_mode == "data":
            self.momentum_readout = _readout(D, H + m * P, torch.full((H + m * P,), logit(cfg.momentum)))
        keep = 1.0 - cfg.momentum  # the read-out starts at η_0 = min(eta_scale, η_max / 2)
        start = [logit(min(cfg.eta_scale * 2 * c / (cfg.step_budget * keep), 0.5))
                 for c in (cfg.chunk_size, cfg.proj_chunk_size)]
        self.eta_readout = _readout(D, H + P, torch.tensor([start[0]] * H + [start[1]] * P))
        self.alpha_readout = _readout(D, H + P, torch.full((H + P,), logit(cfg.alpha_init)))
        self.out_norm = RMSNorm(D // H) if cfg.output_norm else None
        self.gate = nn.Linear(D, D, bias=False) if cfg.output_gate else None
        self.out = nn.Linear(D, D, bias=False)

    # ------------------------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> dict:
        """Meta-learned initial memories expanded over the batch, zero momentum and conv buffers.

        ``dtype`` is the activation dtype (default: the parameters'); fast weights use its compute dtype.
        """
        ref = self.out.weight
        dtype, device = dtype or ref.dtype, device or ref.device
        sd = compute_dtype(dtype)
        state = {
            "bank": init_memory_state(self.bank_rule, [w.to(device) for w in self.bank_init], batch_size, sd),
            "mem": init_memory_state(self.mem_rule, [w.to(device) for w in self.mem_init], batch_size, sd),
        }
        for name, conv in (("conv_kv", self.conv_kv), ("conv_q", self.conv_q)):
            if conv is not None:
                state[name] = torch.zeros(batch_size, conv.kernel_size - 1, conv.dim, dtype=dtype, device=device)
        return state

    # ------------------------------------------------------------------------------------ rates
    def log_momentum(self, x: Tensor) -> Tensor | None:
        """log β of every memory head: ``(H + m·P,)`` (M_mem heads first, then the bank's ``(m, P)``), or per
        token ``(B, T, H + m·P)`` with ``momentum_mode = "data"``; ``None`` without momentum."""
        cfg, sd = self.config, compute_dtype(x.dtype)
        if self.momentum_readout is not None:
            return F.logsigmoid(self.momentum_readout(x).to(sd))
        if self.momentum_raw is not None:
            return F.logsigmoid(self.momentum_raw.to(sd))
        if cfg.momentum == 0:
            return None
        n = cfg.n_heads + len(self.names) * cfg.proj_heads
        return torch.full((n,), math.log(cfg.momentum), dtype=sd, device=x.device)

    def eta_max(self, log_beta: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``η_max = step_budget·(1 − β)/(2·C)`` for M_mem heads ``(..., H)`` and bank heads ``(..., m·P)``."""
        cfg, H = self.config, self.config.n_heads
        n = H + len(self.names) * cfg.proj_heads
        if log_beta is None:
            keep = torch.ones(n, dtype=dtype, device=self.eta_readout.bias.device)
        else:
            keep = -torch.expm1(log_beta.to(dtype))
        return (cfg.step_budget * keep[..., :H] / (2 * cfg.chunk_size),
                cfg.step_budget * keep[..., H:] / (2 * cfg.proj_chunk_size))

    def rates(self, eta_out: Tensor, alpha_out: Tensor, log_beta: Tensor | None):
        """η and log α from the outputs of M_η and M_α ``(..., D)`` via the static per-head read-outs.

        Returns ``η`` of M_mem ``(..., H)`` and of every projection memory ``(..., m·P)``, and
        ``log α`` ``(..., H + P)`` (the bank's P retention gates are shared by its m memories).
        """
        H, P, m = self.config.n_heads, self.config.proj_heads, len(self.names)
        sd = compute_dtype(eta_out.dtype)
        cap_mem, cap_bank = self.eta_max(log_beta, sd)
        gate = torch.sigmoid(self.eta_readout(eta_out).to(sd))  # (..., H + P)
        lead = gate.shape[:-1]
        bank_gate = gate[..., H:].unsqueeze(-2).expand(*lead, m, P).reshape(*lead, m * P)
        log_alpha = F.logsigmoid(self.alpha_readout(alpha_out).to(sd))
        return cap_mem * gate[..., :H], cap_bank * bank_gate, log_alpha

    # ---------------------------------------------------------------------------------- helpers
    def _heads(self, z: Tensor, n_heads: int) -> Tensor:
        """``(B, T, D)`` -> ``(B, n_heads, T, D / n_heads)``."""
        B, T, D = z.shape
        return z.view(B, T, n_heads, D // n_heads).transpose(1, 2)

    def _normed(self, z: Tensor, on: bool) -> Tensor:
        """ℓ2 norm per M_mem head when ``on``, kept ``(B, T, D)``."""
        if not on:
            return z
        B, T, D = z.shape
        return l2_normalize(z.view(B, T, self.config.n_heads, -1)).view(B, T, D)

    def _bank(self, z: Tensor, normed: bool = False) -> Tensor:
        """Feed the same ``(B, T, D)`` to all m projection memories: ``(B, m·P, T, D/P)``; ``normed``: z is
        ℓ2-normalised per M_mem head and is re-normalised over the bank's own head width (unit keys and
        values for every memory)."""
        zh = self._heads(z, self.config.proj_heads)  # (B, P, T, D/P)
        if normed and self.config.proj_heads != self.config.n_heads:  # (with P = H, z is normalised already)
            zh = l2_normalize(zh)  # once, before the m copies
        B, P, T, dP = zh.shape
        m = len(self.names)
        return zh.unsqueeze(1).expand(B, m, P, T, dP).reshape(B, m * P, T, dP)

    def bank_input(self, x: Tensor) -> Tensor:
        """What the projection memories read: ``(B, n, D)`` -> ``(B, m·P, n, D/P)`` (each its own projection)."""
        if self.proj_in is None:
            return self._bank(x)
        B, n, D = x.shape
        m, P = len(self.names), self.config.proj_heads
        z = self.proj_in(x).view(B, n, m, P, D // P)  # (B, n, m, P, D/P)
        return z.permute(0, 2, 3, 1, 4).reshape(B, m * P, n, D // P)

    def project_chunk(self, x: Tensor, snap: list[Tensor], conv_kv: Tensor | None, log_beta: Tensor | None):
        """Outputs of the projection memories on one chunk ``(B, n, D)`` read at their snapshot.

        Returns k, v, raw q (or ``None``) ``(B, n, D)``, η of M_mem ``(B, n, H)`` and of the bank
        ``(B, n, m·P)``, log α ``(B, n, H + P)`` and the conv state.
        """
        B, n, D = x.shape
        cfg, m = self.config, len(self.names)
        out = memory_read(self.bank_rule, snap, self.bank_input(x))  # (B, m·P, n, D/P)
        outs = out.view(B, m, cfg.proj_heads, n, -1).transpose(2, 3).reshape(B, m, n, D)
        kv = torch.cat([outs[:, 0], outs[:, 1]], dim=-1)  # (B, n, 2D)
        if self.conv_kv is not None:
            kv, conv_kv = short_conv(self.conv_kv, kv, conv_kv)
        k, v = self._normed(kv[..., :D], cfg.qk_norm), self._normed(kv[..., D:], cfg.v_norm)
        eta_mem, eta_bank, log_alpha = self.rates(outs[:, 2], outs[:, 3], log_beta)
        q_raw = outs[:, 4] if cfg.adaptive_q else None
        return k, v, q_raw, eta_mem, eta_bank, log_alpha, conv_kv

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        B, T, D = x.shape
        cfg, H = self.config, self.config.n_heads
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        if T == 0:  # an empty piece (e.g. building the initial state): nothing is read or written
            return x.new_zeros(B, 0, D), state
        log_beta = self.log_momentum(x)
        k, v, q_raw, eta, log_alpha, new_state = self.run_projections(x, state, log_beta)
        q = q_raw if cfg.adaptive_q else self.q_proj(x)  # (B, T, D)
        if self.conv_q is not None:
            q, new_state["conv_q"] = short_conv(self.conv_q, q, state.get("conv_q"))
        q = self._normed(q, cfg.qk_norm)
        eta, log_alpha = eta.transpose(1, 2), log_alpha[..., :H].transpose(1, 2)  # (B, H, T)
        lb = None if log_beta is None else _per_token(log_beta, slice(0, H), B, T)
        y, new_state["mem"] = memory_scan(self.mem_rule, state["mem"], self._heads(k, H), self._heads(v, H), eta,
                                          log_alpha, lb, self._heads(q, H), cfg.checkpoint_chunks)
        return self.read_out(x, y), new_state

    def run_projections(self, x: Tensor, state: dict, log_beta: Tensor | None):
        """The projection memories over a piece, chunk by chunk (``proj_chunk_size``), reading then writing.

        Returns k, v, raw q (or ``None``) ``(B, T, D)``, η of M_mem ``(B, T, H)``, log α ``(B, T, H + P)``
        for every token, and the new state's ``bank`` / ``conv_kv`` entries.
        """
        B, T, _ = x.shape
        cfg, H, C = self.config, self.config.n_heads, self.config.proj_chunk_size

        w, snap, s, pos = unpack_state(self.bank_rule, state["bank"])
        lengths = [n for _, n in chunk_segments(T, C, pos)]
        xs = split_spans(x, lengths, 1)
        per_token_beta = log_beta is not None and log_beta.dim() == 3
        betas = split_spans(log_beta, lengths, 1) if per_token_beta else [log_beta] * len(lengths)

        def step(carry, i: int, n: int):
            w, snap, s, pos, conv = carry
            lb = betas[i]
            k, v, q_raw, eta_mem, eta_bank, log_alpha, conv = self.project_chunk(xs[i], snap, conv, lb)
            lb = None if lb is None else _per_token(lb, slice(H, None), B, n)
            _, w, s = memory_segment(self.bank_rule, snap, w, s, self._bank(k, cfg.qk_norm), self._bank(v, cfg.v_norm),
                                     eta_bank.transpose(1, 2), self._bank_rate(log_alpha[..., H:]), lb)
            pos = (pos + n) % C
            return (k, v, q_raw, eta_mem, log_alpha), (w, w if pos == 0 else snap, s, pos, conv)

        outs, (w, snap, s, pos, conv_kv) = chunk_loop(step, (w, snap, s, pos, state.get("conv_kv")),
                                                      lengths, cfg.checkpoint_chunks)
        k, v, q_raw, eta, log_alpha = (None if parts[0] is None else torch.cat(parts, 1) for parts in zip(*outs))
        new_state = {"bank": pack_state(w, snap, s, pos)}
        if conv_kv is not None:
            new_state["conv_kv"] = conv_kv
        return k, v, q_raw, eta, log_alpha, new_state

    def _bank_rate(self, r: Tensor) -> Tensor:
        """Per-token gate ``(B, T, P)`` -> ``(B, m·P, T)`` (every projection memory of a head shares it)."""
        B, T, P = r.shape
        m = len(self.names)
        return r.transpose(1, 2).unsqueeze(1).expand(B, m, P, T).reshape(B, m * P, T)

    def read_out(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-head RMSNorm, ``silu`` gate and output projection: ``(B, H, T, d)`` -> ``(B, T, D)``."""
        B, H, T, d = y.shape
        if self.out_norm is not None:
            y = self.out_norm(y)
        y = y.transpose(1, 2).reshape(B, T, H * d).to(x.dtype)  # (B, T, D)
        if self.gate is not None:
            y = y * F.silu(self.gate(x))
        return self.out(y)


def _check_config(cfg: "SelfModifyingTitans.Config") -> None:
    name = "SelfModifyingTitans"
    for field in ("dim", "n_heads", "proj_heads", "depth", "proj_depth", "chunk_size", "proj_chunk_size"):
        check_positive_int(f"{name} {field}", getattr(cfg, field))
    for field in ("conv_size", "checkpoint_chunks"):
        check_positive_int(f"{name} {field}", getattr(cfg, field), minimum=0)
    for field in ("n_heads", "proj_heads"):
        if cfg.dim % getattr(cfg, field):
            raise ValueError(f"{name} dim {cfg.dim} is not divisible by {field} {getattr(cfg, field)}")
    for field in ("hidden_mult", "proj_hidden_mult", "eta_scale", "step_budget"):
        if check_finite(f"{name} {field}", getattr(cfg, field)) <= 0:
            raise ValueError(f"{name} {field} must be > 0, got {getattr(cfg, field)!r}")
    if cfg.momentum_mode not in ("constant", "learned", "data"):
        raise ValueError(f"{name} momentum_mode must be 'constant', 'learned' or 'data', got {cfg.momentum_mode!r}")
    low = 0.0 if cfg.momentum_mode == "constant" else math.nextafter(0.0, 1.0)
    if not low <= check_finite(f"{name} momentum", cfg.momentum) < 1.0:
        raise ValueError(f"{name} momentum ({cfg.momentum_mode}) must lie in {'[' if low == 0 else '('}0, 1), "
                         f"got {cfg.momentum!r}")
    if not 0.0 < check_finite(f"{name} alpha_init", cfg.alpha_init) < 1.0:
        raise ValueError(f"{name} alpha_init must lie in (0, 1), got {cfg.alpha_init!r}")
    for field in ("activation", "proj_activation"):
        if getattr(cfg, field) not in ACTIVATIONS:
            raise ValueError(f"{name} {field} must be one of {sorted(ACTIVATIONS)}, got {getattr(cfg, field)!r}")
    if cfg.mem_objective not in ("self", "l2"):
        raise ValueError(f"{name} mem_objective must be 'self' or 'l2', got {cfg.mem_objective!r}")
    known = [n for n in MEMORY_NAMES if n != "q" or cfg.adaptive_q]
    unknown = [n for n in cfg.stopgrad_memories if n not in known]
    if unknown:
        raise ValueError(f"{name} stopgrad_memories names unknown memories {unknown}; known: {known}")


def _per_token(log_beta: Tensor, heads: slice, B: int, n: int) -> Tensor:
    """log β of some heads as the engine takes it, ``(B, heads, n)``, from ``(H',)`` or ``(B, n, H')``."""
    if log_beta.dim() == 3:
        return log_beta[..., heads].transpose(1, 2)
    lb = log_beta[heads]
    return lb[None, :, None].expand(B, lb.shape[0], n)


def _partial(cut: tuple[bool, ...]) -> tuple[bool, ...]:
    """Per-head stop-grad flags, or ``()`` when none or all heads are cut (the rule's ``stopgrad`` covers it)."""
    return cut if any(cut) and not all(cut) else ()


def _width(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))


def _readout(dim: int, out: int, bias: Tensor) -> nn.Linear:
    """Static per-head rate read-out: small weights, bias at the rate's initial raw value."""
    lin = nn.Linear(dim, out)
    nn.init.normal_(lin.weight, std=0.02)
    with torch.no_grad():
        lin.bias.copy_(bias)
    return lin
