"""Transformer++ block: pre-RMSNorm, rotary causal softmax attention (SDPA), SwiGLU MLP, residuals.

The baseline of the NL paper's tables (NL_REFERENCE 5.2). In NL terms attention is a non-parametric
level of infinite frequency (arXiv Eq. 62: the Nadaraya-Watson solution recomputed per token) and the
MLP is a frequency-0 level (updated only by the outer loop), NL_REFERENCE 1.3.
``forward(x, state=None) -> (y, state)``; the state is the KV cache ``{"k", "v": (B, H, T, Dh), "pos"}``
so a sequence processed in pieces, or decoded token by token, equals the whole. With ``state=None`` the
attention is the plain ``is_causal`` SDPA fast path; the returned cache is just the k, v it computed.
``CausalSelfAttention`` also runs grouped-query attention, a sliding window, qk-norm and no-RoPE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nldsl.nn.layers import RMSNorm, RotaryEmbedding, SwiGLU, apply_rope, causal_attention, check_finite, check_positive_int

__all__ = ["CausalSelfAttention", "TransformerBlock", "swiglu_hidden"]


def swiglu_hidden(dim: int) -> int:
    """Llama's default SwiGLU width: 8/3 * dim rounded up to a multiple of 32 (2048 for dim 768)."""
    return 32 * math.ceil(8 * dim / 3 / 32)


def _check_heads(owner: str, dim: int, n_heads: int, rope: bool = True) -> None:
    check_positive_int(f"{owner} dim", dim)
    check_positive_int(f"{owner} n_heads", n_heads)
    if dim % n_heads:
        raise ValueError(f"{owner}: dim {dim} is not divisible by n_heads {n_heads}")
    if rope and (dim // n_heads) % 2:
        raise ValueError(f"{owner}: head dim {dim // n_heads} must be even for rotary embeddings")


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE and a KV cache; ``(B, T, D) -> (B, T, D)``.

    Options: grouped-query attention (``kv_heads`` key/value heads, each shared by ``n_heads / kv_heads``
    query heads; the cache keeps only the ``kv_heads``), a sliding window (each query sees the last
    ``window`` positions, itself included; the cache keeps only the last ``window - 1`` positions), qk-norm
    (q and/or k l2-normalised per head, times ``sqrt(Dh)`` and a learned per-channel gain: an RMSNorm
    over the head dimension) and no RoPE.
    """

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int
        """Number of query heads H; D must be divisible by H and D/H even (with RoPE)."""
        rope_base: float = 10000.0
        """Rotary wavelength base."""
        kv_heads: int | None = None
        """Key/value heads G (grouped-query attention); H must be a multiple of G. None = H."""
        window: int = 0
        """Sliding window in tokens (the current one included); 0 = global causal attention."""
        rope: bool = True
        """Rotary position embeddings on q and k."""
        q_norm: bool = False
        """qk-norm on the queries."""
        k_norm: bool = False
        """qk-norm on the keys."""

        def build(self) -> "CausalSelfAttention":
            return CausalSelfAttention(self.dim, self.n_heads, self.rope_base, kv_heads=self.kv_heads,
                                       window=self.window, rope=self.rope, q_norm=self.q_norm, k_norm=self.k_norm)

    def __init__(self, dim: int, n_heads: int, rope_base: float = 10000.0, *, kv_heads: int | None = None,
                 window: int = 0, rope: bool = True, q_norm: bool = False, k_norm: bool = False):
        super().__init__()
        _check_heads("CausalSelfAttention", dim, n_heads, rope)
        check_finite("rope_base", rope_base)
        kv_heads = n_heads if kv_heads is None else check_positive_int("CausalSelfAttention kv_heads", kv_heads)
        if n_heads % kv_heads:
            raise ValueError(f"CausalSelfAttention: n_heads {n_heads} is not a multiple of kv_heads {kv_heads}")
        self.window = check_positive_int("CausalSelfAttention window", window, minimum=0)
        self.dim, self.n_heads, self.kv_heads, self.head_dim = dim, n_heads, kv_heads, dim // n_heads
        self.qkv = nn.Linear(dim, dim + 2 * kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rope = RotaryEmbedding(self.head_dim, rope_base) if rope else None
        self.q_norm = RMSNorm(self.head_dim) if q_norm else None
        self.k_norm = RMSNorm(self.head_dim) if k_norm else None

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        B, T, D = x.shape
        H, G, Dh = self.n_heads, self.kv_heads, self.head_dim
        pos = 0 if state is None else int(state["pos"])
        q, k, v = self.qkv(x).split([H * Dh, G * Dh, G * Dh], dim=-1)
        q = q.view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k, v = k.view(B, T, G, Dh).transpose(1, 2), v.view(B, T, G, Dh).transpose(1, 2)  # (B, G, T, Dh)
        q = q if self.q_norm is None else self.q_norm(q)
        k = k if self.k_norm is None else self.k_norm(k)
        if self.rope is not None:
            cos, sin = self.rope.cos_sin(T, pos, x.device, x.dtype)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)  # (B, G, cached + T, Dh)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        if T:
            kr, vr = (k, v) if G == H else (k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1))
            o = causal_attention(q, kr, vr, window=self.window)
        else:
            o = q
        o = o.transpose(1, 2).reshape(B, T, D)  # (B, T, H * Dh)
        if self.window:  # only the last window - 1 positions can still be seen
            k, v = k[:, :, max(0, k.shape[2] - self.window + 1):], v[:, :, max(0, v.shape[2] - self.window + 1):]
        return self.out(o), {"k": k, "v": v, "pos": pos + T}

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """An empty cache (position 0)."""
        w = self.qkv.weight
        empty = torch.zeros(batch_size, self.kv_heads, 0, self.head_dim, device=device or w.device,
                            dtype=dtype or w.dtype)
        return {"k": empty, "v": empty.clone(), "pos": 0}


class TransformerBlock(nn.Module):
    """``h = x + Attn(norm1(x)); y = h + SwiGLU(norm2(h))`` with a KV cache as state."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int
        """Attention heads; D must be divisible by it and D/H even (RoPE)."""
        mlp_hidden: int | None = None
        """SwiGLU inner width; None = 8/3 * dim rounded up to a multiple of 32."""
        rope_base: float = 10000.0
        """Rotary wavelength base."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon."""

        def build(self) -> "TransformerBlock":
            return TransformerBlock(self)

    def __init__(self, config: "TransformerBlock.Config | None" = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"TransformerBlock: pass either a Config or keyword fields, not both (got {sorted(kwargs)})")
        if config is not None and not isinstance(config, TransformerBlock.Config):
            raise TypeError(f"TransformerBlock takes a TransformerBlock.Config or keyword fields (dim=...), "
                            f"got {config!r}")
        cfg = config if config is not None else TransformerBlock.Config(**kwargs)
        _check_heads("TransformerBlock", cfg.dim, cfg.n_heads)
        hidden = swiglu_hidden(cfg.dim) if cfg.mlp_hidden is None else check_positive_int("mlp_hidden", cfg.mlp_hidden)
        self.config = cfg
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.dim, cfg.n_heads, cfg.rope_base)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, hidden)

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        a, state = self.attn(self.norm1(x), state)
        h = x + a
        return h + self.mlp(self.norm2(h)), state

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return self.attn.init_state(batch_size, device, dtype)
