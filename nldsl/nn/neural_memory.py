"""NeuralMemory: a multi-head in-context associative memory (Titans LMM; NL arXiv §3.1, §4.5, §8).

Static (outer-loop) projections give ``q, k, v`` (optionally through a causal short conv, an activation
and ℓ2 normalisation); per head, a linear ``W z`` or residual MLP ``z + W_L σ(… σ(W_1 z))`` memory
(Eq. 89) is read at the chunk-start snapshot and written with GD or DGD (Eq. 56-57, exact
Sherman-Morrison step per layer), momentum (Titans surprise) and retention (forget gate); see
:mod:`nldsl.nn.memory_ops` for the update and ``docs/runtime.md`` for the semantics.
Rates ``η`` (softplus), ``α`` and ``β`` (sigmoid) are each constant, a learned scalar per head, or
data-dependent (a linear projection of the input).

Axis legend: ``B`` batch, ``T`` tokens, ``D`` model width, ``H`` heads, ``d`` head width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nldsl.nn.delta_rule import chunk_gated_delta_rule
from nldsl.nn.functional import ACTIVATIONS, dgd_rate, l2_normalize, logit, softplus_inverse
from nldsl.nn.layers import RMSNorm, ShortConv, check_finite, check_positive_int, compute_dtype
from nldsl.nn.memory_ops import (
    OBJECTIVES, MemoryRule, active_compile_options, compiled, init_memory_state, init_memory_weights, memory_scan,
    pack_state,
)

__all__ = ["NeuralMemory", "Rate", "RATE_MODES", "short_conv", "resolve_config"]

RATE_MODES = ("constant", "learned", "data")
LOG_ALPHA_FLOOR = -20.0
"""Smallest log retention on the delta-rule route (which divides by α); the engine route has no floor."""


class Rate(nn.Module):
    """A per-head, per-token rate: ``η`` through softplus (or a bounded ``2·value·sigmoid``), ``α``/``β``
    through sigmoid.

    ``constant`` returns ``value``; ``learned`` is one scalar per head; ``data`` is ``act(W x + b)``.
    Learned and data-dependent rates start at ``value`` (the raw bias is its inverse image).
    """

    def __init__(self, kind: str, mode: str, value: float, dim: int, heads: int, activation: str = "softplus"):
        super().__init__()
        self.kind, self.mode, self.value, self.heads = kind, mode, float(value), heads
        self.bounded = kind == "eta" and activation == "sigmoid"  # η = 2·value·sigmoid(raw) < 2·value
        raw = softplus_inverse(value) if kind == "eta" else (logit(value) if mode != "constant" else 0.0)
        raw = 0.0 if self.bounded else raw
        if mode == "learned":
            self.raw = nn.Parameter(torch.full((heads,), raw))
        elif mode == "data":
            self.proj = nn.Linear(dim, heads)
            nn.init.normal_(self.proj.weight, std=0.02)
            nn.init.constant_(self.proj.bias, raw)

    def forward(self, x: Tensor, dtype: torch.dtype, log: bool = False) -> Tensor:
        """``x`` ``(B, T, D)`` -> ``(B, H, T)`` in ``dtype`` (computed in fp32 or wider).

        ``log=True`` returns the log of a sigmoid gate via ``logsigmoid`` (finite even for tiny gates).
        """
        B, T, _ = x.shape
        if self.mode == "constant":
            value = math.log(self.value) if log else self.value
            return torch.full((B, self.heads, T), value, dtype=dtype, device=x.device)
        if self.mode == "learned":
            raw = self.raw.to(dtype)[None, :, None].expand(B, self.heads, T)
        else:
            raw = self.proj(x).to(dtype).transpose(1, 2)  # (B, H, T)
        if self.bounded:
            return 2.0 * self.value * torch.sigmoid(raw)
        if self.kind == "eta":
            return F.softplus(raw)
        return F.logsigmoid(raw) if log else torch.sigmoid(raw)


def resolve_config(config_cls, config, kwargs: dict, name: str):
    """A module's Config from ``Module(config)``, ``Module(dim, **fields)`` or ``Module(**fields)``."""
    if config is None:
        return config_cls(**kwargs)
    if isinstance(config, config_cls) and not kwargs:
        return config
    if isinstance(config, int) and not isinstance(config, bool):
        return config_cls(dim=config, **kwargs)
    raise TypeError(f"{name} takes a {name}.Config, or the width dim and Config fields as keywords; got {config!r}"
                    + (f" with {sorted(kwargs)}" if kwargs else ""))


def short_conv(conv: ShortConv, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """``conv(x, state)`` that also accepts an empty piece (``T = 0``: the state passes through)."""
    if x.shape[1] == 0:
        empty = x.new_zeros(x.shape[0], conv.kernel_size - 1, conv.dim)
        return x, (empty if state is None else state)
    return conv(x, state)


def _check_rate(name: str, mode: str, value: float, low: float, high: float, high_ok: bool) -> None:
    """``value`` must lie in ``(low, high)`` (``high`` allowed when constant and ``high_ok``)."""
    if mode not in RATE_MODES:
        raise ValueError(f"NeuralMemory {name}_mode must be one of {RATE_MODES}, got {mode!r}")
    check_finite(f"NeuralMemory {name}", value)
    low_ok = mode == "constant" and name == "momentum"  # β = 0 means no momentum
    high_ok = high_ok and mode == "constant"
    if value < low or value > high or (value == low and not low_ok) or (value == high and not high_ok):
        lo, hi = "[" if low_ok else "(", "]" if high_ok else ")"
        raise ValueError(f"NeuralMemory {name} ({mode}) must lie in {lo}{low}, {high}{hi}, got {value!r}")


class NeuralMemory(nn.Module):
    """Multi-head linear / residual-MLP memory updated in context; ``forward(x, state) -> (y, state)``."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D (input and output of the layer)."""
        n_heads: int = 4
        """Number of independent memories (one per head)."""
        head_dim: int | None = None
        """Key/value width per head; default ``dim // n_heads``."""
        depth: int = 2
        """Memory depth L: 1 = linear matrix memory, L ≥ 2 = residual MLP (Eq. 89)."""
        hidden_mult: float = 2.0
        """Hidden width of an MLP memory as a multiple of ``head_dim``."""
        activation: str = "silu"
        """σ inside an MLP memory: silu, gelu, tanh or relu."""
        objective: str = "l2"
        """Inner objective: ``dot`` (−⟨M(k), v⟩), ``l2`` (½‖M(k) − v‖²), ``self`` (½‖M(k) − v̂‖² with the
        self-generated target v̂ = M_snap(v), held constant in the inner gradient), ``huber`` (Σ huber_δ(M(k) − v),
        Miras' Yaad) or ``lp`` ((1/p)‖M(k) − v‖_p^p, Miras' Moneta)."""
        huber_delta: float = 1.0
        """δ of the ``huber`` objective (quadratic zone)."""
        lp_power: float = 3.0
        """p ≥ 1 of the ``lp`` objective."""
        dgd: bool = False
        """Delta Gradient Descent (exact, per layer) instead of plain GD."""
        lr: float = 0.1
        """Inner learning rate η (initial value when learned or data-dependent)."""
        lr_mode: str = "constant"
        """``constant``, ``learned`` (scalar per head, softplus) or ``data`` (softplus(W x + b))."""
        lr_activation: str = "softplus"
        """Learned / data η through ``softplus`` (unbounded) or ``sigmoid`` (``η = 2·lr·sigmoid(·)``, bounded by
        ``2·lr``: keep ``2·lr·chunk/(1 − momentum)`` below 2 and no η can destabilise the chunk update)."""
        retention: float = 1.0
        """Retention / forget gate α in (0, 1]; 1 keeps everything (initial value unless constant)."""
        retention_mode: str = "constant"
        """As ``lr_mode``, through a sigmoid."""
        momentum: float = 0.0
        """Momentum β in [0, 1) (Titans surprise decay); 0 = none."""
        momentum_mode: str = "constant"
        """As ``lr_mode``, through a sigmoid."""
        chunk_size: int = 16
        """Tokens per snapshot (1 = exact token recurrence)."""
        stopgrad: bool = False
        """Detach the writes from the outer graph (no meta-gradient through the inner updates)."""
        qk_norm: bool = True
        """ℓ2-normalise q and k per head."""
        conv_size: int = 0
        """Causal depthwise conv width on the q/k/v paths (Titans uses 4); 0 = none."""
        qkv_activation: str | None = None
        """Activation on q/k/v after the conv (Titans: ``silu``); ``None`` = identity."""
        output_norm: bool = False
        """RMSNorm per head on the read-out."""
        output_gate: bool = False
        """Multiply the read-out by ``silu(W_g x)`` before the output projection."""
        use_delta_rule: bool = True
        """Route a linear, chunk-1, momentum-free delta-shaped rule through the chunkwise delta rule."""
        checkpoint_chunks: int = 0
        """Recompute chunk states in the backward, keeping every N-th (``torch.utils.checkpoint``); 0 = off."""

        def __post_init__(self) -> None:
            check_positive_int("NeuralMemory dim", self.dim)
            check_positive_int("NeuralMemory n_heads", self.n_heads)
            if self.head_dim is None and self.dim % self.n_heads:
                raise ValueError(f"NeuralMemory dim {self.dim} is not divisible by n_heads {self.n_heads}")
            check_positive_int("NeuralMemory head_dim", self.d)
            check_positive_int("NeuralMemory depth", self.depth)
            check_positive_int("NeuralMemory chunk_size", self.chunk_size)
            check_positive_int("NeuralMemory conv_size", self.conv_size, minimum=0)
            check_positive_int("NeuralMemory checkpoint_chunks", self.checkpoint_chunks, minimum=0)
            if check_finite("NeuralMemory hidden_mult", self.hidden_mult) <= 0 or self.hidden < 1:
                raise ValueError(f"NeuralMemory hidden_mult must give a hidden width >= 1, got {self.hidden_mult!r}")
            if self.qkv_activation is not None and self.qkv_activation not in ACTIVATIONS:
                raise ValueError(f"NeuralMemory qkv_activation must be one of {sorted(ACTIVATIONS)} or None, "
                                 f"got {self.qkv_activation!r}")
            for name, value, known in (
                ("activation", self.activation, ACTIVATIONS),
                ("objective", self.objective, OBJECTIVES),
            ):
                if value not in known:
                    raise ValueError(f"NeuralMemory {name} must be one of {sorted(known)}, got {value!r}")
            _check_rate("lr", self.lr_mode, self.lr, 0.0, float("inf"), False)
            if self.lr_activation not in ("softplus", "sigmoid"):
                raise ValueError(f"NeuralMemory lr_activation must be 'softplus' or 'sigmoid', "
                                 f"got {self.lr_activation!r}")
            if check_finite("NeuralMemory huber_delta", self.huber_delta) <= 0:
                raise ValueError(f"NeuralMemory huber_delta must be > 0, got {self.huber_delta!r}")
            if check_finite("NeuralMemory lp_power", self.lp_power) < 1:
                raise ValueError(f"NeuralMemory lp_power must be >= 1, got {self.lp_power!r}")
            _check_rate("retention", self.retention_mode, self.retention, 0.0, 1.0, True)
            _check_rate("momentum", self.momentum_mode, self.momentum, 0.0, 1.0, False)

        @property
        def d(self) -> int:
            return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

        @property
        def hidden(self) -> int:
            return max(int(round(self.d * self.hidden_mult)), 0)

        def rule(self) -> MemoryRule:
            """The inner learning problem as plain data."""
            has_momentum = self.momentum_mode != "constant" or self.momentum > 0
            param = {"huber": self.huber_delta, "lp": self.lp_power}.get(self.objective, 1.0)
            return MemoryRule(depth=self.depth, activation=self.activation, objective=self.objective, dgd=self.dgd,
                              momentum=has_momentum, stopgrad=self.stopgrad, chunk_size=self.chunk_size,
                              objective_param=param)

        def build(self) -> "NeuralMemory":
            return NeuralMemory(self)

    def __init__(self, config: "NeuralMemory.Config | int | None" = None, **kwargs):
        super().__init__()
        cfg = resolve_config(self.Config, config, kwargs, "NeuralMemory")
        self.config, self.rule = cfg, cfg.rule()
        H, d, D = cfg.n_heads, cfg.d, cfg.dim
        self.qkv = nn.Linear(D, 3 * H * d, bias=False)
        self.conv = ShortConv(3 * H * d, cfg.conv_size) if cfg.conv_size else None
        self.init_weights = init_memory_weights(H, d, cfg.hidden, cfg.depth, zero_linear=True)
        self.lr_rate = Rate("eta", cfg.lr_mode, cfg.lr, D, H, cfg.lr_activation)
        self.retention_rate = Rate("gate", cfg.retention_mode, cfg.retention, D, H)
        self.momentum_rate = Rate("gate", cfg.momentum_mode, cfg.momentum, D, H)
        self.out_norm = RMSNorm(d) if cfg.output_norm else None
        self.gate = nn.Linear(D, H * d, bias=False) if cfg.output_gate else None
        self.out = nn.Linear(H * d, D, bias=False)

    # ------------------------------------------------------------------------------------ state
    def init_state(self, batch_size: int, device=None, dtype: torch.dtype | None = None) -> dict:
        """Fresh per-sequence state: the meta-learned initial weights expanded over the batch.

        ``dtype`` is the activation dtype (default: the parameters'); fast weights use its compute dtype.
        """
        ref = self.init_weights[0]
        dtype = dtype or ref.dtype
        weights = [w.to(device) for w in self.init_weights] if device is not None else list(self.init_weights)
        state = {"memory": init_memory_state(self.rule, weights, batch_size, compute_dtype(dtype))}
        if self.conv is not None:
            conv_shape = (batch_size, self.conv.kernel_size - 1, self.conv.dim)
            state["conv"] = torch.zeros(conv_shape, dtype=dtype, device=device or ref.device)
        return state

    # ---------------------------------------------------------------------------------- forward
    def project(self, x: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``x`` ``(B, T, D)`` -> q, k, v ``(B, H, T, d)`` (conv, activation, ℓ2 norm) and the conv state."""
        B, T, _ = x.shape
        cfg = self.config
        qkv = self.qkv(x)  # (B, T, 3·H·d)
        if self.conv is not None:
            qkv, conv_state = short_conv(self.conv, qkv, conv_state)
        if cfg.qkv_activation is not None:
            qkv = ACTIVATIONS[cfg.qkv_activation][0](qkv)
        q, k, v = qkv.view(B, T, 3, cfg.n_heads, cfg.d).permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
        if cfg.qk_norm:
            q, k = l2_normalize(q), l2_normalize(k)
        return q, k, v, conv_state

    def rates(self, x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """η, log α, log β ``(B, H, T)``; log α is ``None`` for the constant α = 1, log β without momentum."""
        cfg = self.config
        eta = self.lr_rate(x, dtype)
        keep_all = cfg.retention_mode == "constant" and cfg.retention == 1.0
        log_alpha = None if keep_all else self.retention_rate(x, dtype, log=True)
        log_beta = self.momentum_rate(x, dtype, log=True) if self.rule.momentum else None
        return eta, log_alpha, log_beta

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        """``x`` ``(B, T, D)`` -> ``(y (B, T, D), state)``; pass the state back to continue the sequence."""
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        options = active_compile_options()
        project, rates, read_out = (self._static(name, options) for name in ("project", "rates", "read_out"))
        q, k, v, conv_state = project(x, state.get("conv"))
        sd = compute_dtype(x.dtype)
        eta, log_alpha, log_beta = rates(x, sd)
        y, mem = self.scan(state["memory"], q, k, v, eta, log_alpha, log_beta)
        new_state = {"memory": mem}
        if conv_state is not None:
            new_state["conv"] = conv_state
        return read_out(x, y), new_state

    def _static(self, name: str, options: dict | None):
        """The method ``name``, compiled with ``options`` inside a chunk-compile block (scope chunk): the
        projections, rates and read-out are static maps, so they fuse like any static sublayer."""
        if options is None:  # eager, or traced whole by an outer compile: no cache to touch (Dynamo breaks on it)
            return getattr(self, name)
        cache = self.__dict__.setdefault("_compiled_static", {})
        return compiled(getattr(self, name), options, cache, name)

    def read_out(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-head norm, gate and output projection: ``(B, H, T, d)`` -> ``(B, T, D)``."""
        B, H, T, d = y.shape
        if self.out_norm is not None:
            y = self.out_norm(y)
        y = y.transpose(1, 2).reshape(B, T, H * d).to(x.dtype)  # (B, T, H·d)
        if self.gate is not None:
            y = y * F.silu(self.gate(x))
        return self.out(y)

    def scan(self, mem_state: dict, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
             log_alpha: Tensor | None = None, log_beta: Tensor | None = None) -> tuple[Tensor, dict]:
        """The lower-level entry: read ``q`` and write ``(k, v)`` with given rates.

        q/k/v ``(B, H, T, d)``; eta, log_alpha, log_beta ``(B, H, T)`` (see :func:`memory_scan`).
        """
        if self._delta_shaped():
            return self._delta_scan(mem_state, q, k, v, eta, log_alpha)
        return memory_scan(self.rule, mem_state, k, v, eta, log_alpha, log_beta, q, self.config.checkpoint_chunks)

    # ------------------------------------------------------------------------- delta-rule route
    def _delta_shaped(self) -> bool:
        r, cfg = self.rule, self.config
        shaped = r.objective == "l2" or (r.objective == "dot" and r.dgd)
        plain = r.depth == 1 and r.chunk_size == 1 and not r.momentum and not r.stopgrad
        return cfg.use_delta_rule and shaped and plain

    def _delta_scan(self, mem_state, q, k, v, eta, log_alpha):
        """Chunk-1 linear memory as a gated delta rule: ``W(αI − f·η' kkᵀ) + η' v kᵀ`` (read before write).

        Mapping to ``S_t = γ S(I − β kkᵀ) + β v kᵀ``: γ = α, β = f·η'/α, v ← α v / f, where f = 2 for
        ℓ2 + DGD (error and erase both contain W k) and 1 otherwise. Reads use q shifted by one token.
        """
        sd = mem_state["w"]["0"].dtype
        k32, v32 = k.to(sd), v.to(sd)
        lr = dgd_rate(eta, (k32 * k32).sum(-1)) if self.rule.dgd else eta  # (B, H, T)
        f = 2.0 if (self.rule.objective == "l2" and self.rule.dgd) else 1.0
        # β = f·η'/α divides by α: floor log α (e^-20 ≈ 2e-9, a gate that forgets everything either way)
        log_alpha = torch.zeros_like(lr) if log_alpha is None else log_alpha.to(sd).clamp(min=LOG_ALPHA_FLOOR)
        alpha = torch.exp(log_alpha)
        h0 = mem_state["w"]["0"].transpose(-1, -2)  # (B, H, K, V), fla's key-major layout
        q_next = torch.cat([q[..., 1:, :], torch.zeros_like(q[..., :1, :])], dim=-2)
        o, hT = chunk_gated_delta_rule(
            q_next.transpose(1, 2).to(sd), k32.transpose(1, 2), (v32 * (alpha / f).unsqueeze(-1)).transpose(1, 2),
            log_alpha.transpose(1, 2), (f * lr / alpha).transpose(1, 2), initial_state=h0,
        )
        first = torch.matmul(q[..., :1, :].to(sd), h0)  # (B, H, 1, V): y_1 = W_0 q_1
        y = torch.cat([first, o.transpose(1, 2)[..., :-1, :]], dim=-2)
        W = hT.transpose(-1, -2)
        return y.to(q.dtype), pack_state([W], [W], None, 0)
