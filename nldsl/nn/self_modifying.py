"""Self-modifying ("deep self-referential") Titans: NL arXiv §8.1-8.2, Eq. 76-93 (NL_REFERENCE 3.2).

Every projection is an in-context memory: ``k_t``, ``v_t``, ``η_t`` and ``α_t`` (and ``q_t`` when
``adaptive_q``) are produced by their own 2-layer residual-MLP memories ``M_□(z) = z + W_2 σ(W_1 z)``
(Eq. 89/91) of the input; each memory trains on the shared key with its own self-generated target
``v̂_□ = M_□,snap(v_t)`` (Eq. 83-85) under ℓ2 (Eq. 86) with DGD + weight decay (Eq. 88) + momentum (our
documented choice, NL_REFERENCE 7.3). The main memory ``M_mem`` (multi-head) is read at ``q_t`` and
written the same way. Two chunk sizes (Eq. 90): the projection memories form a closed system (their
writes depend only on their own outputs), so they run first with ``proj_chunk_size``; ``M_mem`` then
runs with ``chunk_size`` on the keys, values and rates they produced; the sizes need not divide.

Titans-style details (NL_REFERENCE 7.8): causal depthwise conv (width 4) on the q/k/v paths, ℓ2-normalised
q and k per head, ``η_t = eta_scale·softplus(r_η(M_η(x_t)))`` and ``α_t = sigmoid(r_α(M_α(x_t)))`` with
static per-head read-outs ``r`` (a residual memory's output is D-wide; the read-out turns it into one
rate per head), output RMSNorm per head, ``silu`` gate and output projection.

Axis legend: ``B`` batch, ``T`` tokens, ``D`` width, ``H`` heads of ``M_mem`` (width ``d``), ``P`` heads
of each projection memory (width ``D/P``), ``m`` number of projection memories.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nldsl.nn.functional import ACTIVATIONS, l2_normalize, logit, softplus_inverse
from nldsl.nn.layers import RMSNorm, ShortConv, check_finite, check_positive_int, compute_dtype
from nldsl.nn.memory_ops import (
    MemoryRule, chunk_segments, init_memory_state, init_memory_weights, memory_read, memory_scan, memory_segment,
    pack_state, unpack_state,
)
from nldsl.nn.neural_memory import short_conv

__all__ = ["SelfModifyingTitans"]


class SelfModifyingTitans(nn.Module):
    """Self-modifying Titans layer; ``forward(x (B, T, D), state=None) -> (y (B, T, D), state)``."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int = 4
        """Heads of the main memory M_mem (head width D / n_heads)."""
        proj_heads: int = 1
        """Heads of each projection memory; 1 = one full-width memory per projection (the paper's)."""
        depth: int = 2
        """Depth of every memory (2 = the paper's residual MLP ``z + W_2 σ(W_1 z)``)."""
        hidden_mult: float = 2.0
        """M_mem hidden width as a multiple of its head width."""
        proj_hidden_mult: float = 1.0
        """Projection-memory hidden width as a multiple of D / proj_heads."""
        activation: str = "silu"
        """σ of all memories: silu, gelu, tanh or relu."""
        chunk_size: int = 16
        """Tokens per snapshot of M_mem."""
        proj_chunk_size: int = 32
        """Tokens per snapshot of the projection memories (need not divide ``chunk_size``)."""
        mem_objective: str = "self"
        """Inner objective of M_mem: ``self`` (v̂ = M_mem(v), the paper's) or ``l2`` (target v)."""
        dgd: bool = True
        """Delta Gradient Descent (exact, per layer); False = plain GD (the "w/o DGD" ablation)."""
        momentum: float = 0.5
        """Constant momentum β of every memory (Titans surprise); 0 = none."""
        eta_scale: float = 0.02
        """η_t = eta_scale · softplus(r_η(M_η(x_t))); the read-out starts at softplus = 1, so η ≈ eta_scale.
        A chunk sums its tokens' steps at one snapshot: keep ``chunk · η / (1 − momentum)`` well below 2."""
        alpha_init: float = 0.99
        """Initial retention α (the read-out bias is its logit)."""
        adaptive_q: bool = False
        """q from its own memory M_q; False = static projection (paper §8.1 and its ablation)."""
        conv_size: int = 4
        """Causal depthwise conv width on q/k/v; 0 = none."""
        qk_norm: bool = True
        """ℓ2-normalise q and k per head."""
        stopgrad: bool = False
        """Detach every memory's writes from the outer graph."""
        output_norm: bool = True
        """RMSNorm per head on the read-out."""
        output_gate: bool = True
        """``silu(W_g x)`` gate before the output projection."""

        def __post_init__(self) -> None:
            name = "SelfModifyingTitans"
            for field in ("dim", "n_heads", "proj_heads", "depth", "chunk_size", "proj_chunk_size"):
                check_positive_int(f"{name} {field}", getattr(self, field))
            check_positive_int(f"{name} conv_size", self.conv_size, minimum=0)
            for field in ("n_heads", "proj_heads"):
                if self.dim % getattr(self, field):
                    raise ValueError(f"{name} dim {self.dim} is not divisible by {field} {getattr(self, field)}")
            for field in ("hidden_mult", "proj_hidden_mult", "eta_scale"):
                if check_finite(f"{name} {field}", getattr(self, field)) <= 0:
                    raise ValueError(f"{name} {field} must be > 0, got {getattr(self, field)!r}")
            if not 0.0 <= check_finite(f"{name} momentum", self.momentum) < 1.0:
                raise ValueError(f"{name} momentum must lie in [0, 1), got {self.momentum!r}")
            if not 0.0 < check_finite(f"{name} alpha_init", self.alpha_init) < 1.0:
                raise ValueError(f"{name} alpha_init must lie in (0, 1), got {self.alpha_init!r}")
            if self.activation not in ACTIVATIONS:
                raise ValueError(f"{name} activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
            if self.mem_objective not in ("self", "l2"):
                raise ValueError(f"{name} mem_objective must be 'self' or 'l2', got {self.mem_objective!r}")

        def build(self) -> "SelfModifyingTitans":
            return SelfModifyingTitans(self)

    def __init__(self, config: "SelfModifyingTitans.Config | None" = None, **kwargs):
        super().__init__()
        cfg = config if config is not None else self.Config(**kwargs)
        self.config = cfg
        D, H, P = cfg.dim, cfg.n_heads, cfg.proj_heads
        self.names = ("k", "v", "eta", "alpha") + (("q",) if cfg.adaptive_q else ())
        rule = dict(depth=cfg.depth, activation=cfg.activation, dgd=cfg.dgd, momentum=cfg.momentum > 0,
                    stopgrad=cfg.stopgrad)
        self.bank_rule = MemoryRule(objective="self", chunk_size=cfg.proj_chunk_size, **rule)
        self.mem_rule = MemoryRule(objective=cfg.mem_objective, chunk_size=cfg.chunk_size, **rule)
        bank_hidden, mem_hidden = _width(D // P, cfg.proj_hidden_mult), _width(D // H, cfg.hidden_mult)
        self.bank_init = init_memory_weights(len(self.names) * P, D // P, bank_hidden, cfg.depth, zero_linear=False)
        self.mem_init = init_memory_weights(H, D // H, mem_hidden, cfg.depth, zero_linear=False)
        self.q_proj = None if cfg.adaptive_q else nn.Linear(D, D, bias=False)
        self.conv_kv = ShortConv(2 * D, cfg.conv_size) if cfg.conv_size else None
        self.conv_q = ShortConv(D, cfg.conv_size) if cfg.conv_size else None
        self.eta_readout = _readout(D, H + P, softplus_inverse(1.0))
        self.alpha_readout = _readout(D, H + P, logit(cfg.alpha_init))
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

    # ---------------------------------------------------------------------------------- helpers
    def _heads(self, z: Tensor, n_heads: int) -> Tensor:
        """``(B, T, D)`` -> ``(B, n_heads, T, D / n_heads)``."""
        B, T, D = z.shape
        return z.view(B, T, n_heads, D // n_heads).transpose(1, 2)

    def _normed_key(self, k: Tensor) -> Tensor:
        """ℓ2 norm per M_mem head, kept ``(B, T, D)``."""
        if not self.config.qk_norm:
            return k
        B, T, D = k.shape
        return l2_normalize(k.view(B, T, self.config.n_heads, -1)).view(B, T, D)

    def _bank(self, z: Tensor, m: int) -> Tensor:
        """Feed the same ``(B, T, D)`` to all ``m`` projection memories: ``(B, m·P, T, D/P)``."""
        zh = self._heads(z, self.config.proj_heads)  # (B, P, T, D/P)
        B, P, T, dP = zh.shape
        return zh.unsqueeze(1).expand(B, m, P, T, dP).reshape(B, m * P, T, dP)

    def _bank_key(self, k: Tensor, m: int) -> Tensor:
        """The shared key as the projection memories see it: ℓ2-normalised over their own head width."""
        kb = self._bank(k, m)  # (B, m·P, T, D/P)
        return l2_normalize(kb) if self.config.qk_norm else kb

    def _bank_rate(self, r: Tensor) -> Tensor:
        """Per-token rate ``(B, T, P)`` -> ``(B, m·P, T)`` (every projection memory of a head shares it)."""
        B, T, P = r.shape
        m = len(self.names)
        return r.transpose(1, 2).unsqueeze(1).expand(B, m, P, T).reshape(B, m * P, T)

    def project_chunk(self, x: Tensor, snap: list[Tensor], conv_kv: Tensor | None, sd: torch.dtype):
        """Outputs of the projection memories on one chunk ``(B, n, D)`` read at their snapshot.

        Returns the keys, values, raw q (or ``None``), rates ``η, log α`` ``(B, n, H + P)`` and the conv state.
        """
        B, n, D = x.shape
        m = len(self.names)
        out = memory_read(self.bank_rule, snap, self._bank(x, m))  # (B, m·P, n, D/P)
        outs = out.view(B, m, self.config.proj_heads, n, -1).transpose(2, 3).reshape(B, m, n, D)
        kv = torch.cat([outs[:, 0], outs[:, 1]], dim=-1)  # (B, n, 2D)
        if self.conv_kv is not None:
            kv, conv_kv = short_conv(self.conv_kv, kv, conv_kv)
        k, v = self._normed_key(kv[..., :D]), kv[..., D:]
        eta = self.config.eta_scale * F.softplus(self.eta_readout(outs[:, 2]).to(sd))
        log_alpha = F.logsigmoid(self.alpha_readout(outs[:, 3]).to(sd))
        q_raw = outs[:, 4] if self.config.adaptive_q else None
        return k, v, q_raw, eta, log_alpha, conv_kv

    # ---------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        B, T, D = x.shape
        cfg = self.config
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        if T == 0:  # an empty piece (e.g. building the initial state): nothing is read or written
            return x.new_zeros(B, 0, D), state
        k, v, q_raw, eta, log_alpha, new_state = self.run_projections(x, state)
        q = q_raw if cfg.adaptive_q else self.q_proj(x)  # (B, T, D)
        if self.conv_q is not None:
            q, new_state["conv_q"] = short_conv(self.conv_q, q, state.get("conv_q"))
        q = self._normed_key(q)
        H = cfg.n_heads
        eta, log_alpha = eta[..., :H].transpose(1, 2), log_alpha[..., :H].transpose(1, 2)  # (B, H, T)
        log_beta = torch.full_like(eta, math.log(cfg.momentum)) if self.mem_rule.momentum else None
        y, new_state["mem"] = memory_scan(self.mem_rule, state["mem"], self._heads(k, H), self._heads(v, H),
                                          eta, log_alpha, log_beta, self._heads(q, H))
        return self.read_out(x, y), new_state

    def run_projections(self, x: Tensor, state: dict):
        """The projection memories over a piece, chunk by chunk (``proj_chunk_size``), reading then writing.

        Returns k, v, raw q (or ``None``) ``(B, T, D)``, η and log α ``(B, T, H + P)`` for every token, and
        the new state's ``bank`` / ``conv_kv`` entries.
        """
        B, T, _ = x.shape
        cfg, m, sd = self.config, len(self.names), compute_dtype(x.dtype)
        w, snap, s, pos = unpack_state(self.bank_rule, state["bank"])
        conv_kv, outs = state.get("conv_kv"), []
        for t0, n in chunk_segments(T, cfg.proj_chunk_size, pos):
            k, v, q_raw, eta, log_alpha, conv_kv = self.project_chunk(x[:, t0:t0 + n], snap, conv_kv, sd)
            log_beta = None
            if self.bank_rule.momentum:
                log_beta = torch.full((B, m * cfg.proj_heads, n), math.log(cfg.momentum), dtype=sd, device=x.device)
            H = cfg.n_heads
            _, w, s = memory_segment(self.bank_rule, snap, w, s, self._bank_key(k, m), self._bank(v, m),
                                     self._bank_rate(eta[..., H:]), self._bank_rate(log_alpha[..., H:]), log_beta)
            pos = (pos + n) % cfg.proj_chunk_size
            snap = w if pos == 0 else snap
            outs.append((k, v, q_raw, eta, log_alpha))
        k, v, q_raw, eta, log_alpha = (None if parts[0] is None else torch.cat(parts, 1) for parts in zip(*outs))
        new_state = {"bank": pack_state(w, snap, s, pos)}
        if conv_kv is not None:
            new_state["conv_kv"] = conv_kv
        return k, v, q_raw, eta, log_alpha, new_state

    def read_out(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-head RMSNorm, ``silu`` gate and output projection: ``(B, H, T, d)`` -> ``(B, T, D)``."""
        B, H, T, d = y.shape
        if self.out_norm is not None:
            y = self.out_norm(y)
        y = y.transpose(1, 2).reshape(B, T, H * d).to(x.dtype)  # (B, T, D)
        if self.gate is not None:
            y = y * F.silu(self.gate(x))
        return self.out(y)


def _width(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))


def _readout(dim: int, out: int, bias: float) -> nn.Linear:
    """Static per-head rate read-out: small weights, bias at the rate's initial raw value."""
    lin = nn.Linear(dim, out)
    nn.init.normal_(lin.weight, std=0.02)
    nn.init.constant_(lin.bias, bias)
    return lin
