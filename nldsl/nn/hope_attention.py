"""HOPE-Attention block: causal softmax attention followed by a Continuum Memory System.

NL arXiv §9 (Table 1 "Hope-Attention"; NL_REFERENCE 5.3 and 8): the Transformer++ block with its MLP
replaced by a CMS chain (Eq. 70), so the MLP knowledge is spread over levels with their own update
periods. Attention is the infinite-frequency level; each CMS level l updates every C(l) tokens.
``forward(x, state=None) -> (y, state)`` with ``state = {"attn": KV cache, "cms": CMS state}``.
Task-objective levels are driven by :func:`nldsl.nn.surprise.train_segments`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from nldsl.nn.cms import CMS, CMSLevel
from nldsl.nn.layers import RMSNorm
from nldsl.nn.transformer import CausalSelfAttention, _check_heads, swiglu_hidden

__all__ = ["HopeAttentionBlock"]

DEFAULT_PERIODS = (128, 512, 2048)
"""Default CMS ladder: the lowest frequency at 2K tokens, the paper's efficiency sweet spot (Fig. 7)."""


class HopeAttentionBlock(nn.Module):
    """``h = x + Attn(norm(x)); y = CMS(h)``; every CMS level is itself ``u + MLP(norm(u))``."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int
        """Attention heads; D must be divisible by it and D/H even (RoPE)."""
        cms_levels: list[Any] = field(default_factory=list)
        """CMS levels (``CMSLevel`` or dicts). Empty = SwiGLU levels of width 8/3*D with periods
        128, 512, 2048 tokens, task objective, lr 1e-3."""
        cms_variant: str = "sequential"
        """CMS wiring: sequential (HOPE), independent or nested."""
        rope_base: float = 10000.0
        """Rotary wavelength base."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon (attention pre-norm and CMS level pre-norms)."""

        def build(self) -> "HopeAttentionBlock":
            return HopeAttentionBlock(self)

    def __init__(self, config: "HopeAttentionBlock.Config | None" = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"HopeAttentionBlock: pass either a Config or keyword fields, not both (got {sorted(kwargs)})")
        if config is not None and not isinstance(config, HopeAttentionBlock.Config):
            raise TypeError(f"HopeAttentionBlock takes a HopeAttentionBlock.Config or keyword fields (dim=...), "
                            f"got {config!r}")
        cfg = config if config is not None else HopeAttentionBlock.Config(**kwargs)
        _check_heads("HopeAttentionBlock", cfg.dim, cfg.n_heads)
        levels = cfg.cms_levels or [CMSLevel(hidden=swiglu_hidden(cfg.dim), period=p) for p in DEFAULT_PERIODS]
        self.config = cfg
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg.dim, cfg.n_heads, cfg.rope_base)
        self.cms = CMS(CMS.Config(dim=cfg.dim, levels=list(levels), variant=cfg.cms_variant, norm_eps=cfg.norm_eps))

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        a, attn_state = self.attn(self.norm(x), None if state is None else state["attn"])
        y, cms_state = self.cms(x + a, None if state is None else state["cms"])
        return y, {"attn": attn_state, "cms": cms_state}

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {"attn": self.attn.init_state(batch_size, device, dtype), "cms": self.cms.init_state(batch_size, device)}
