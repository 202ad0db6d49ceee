"""HOPE block: self-modifying Titans followed by a Continuum Memory System (NL arXiv §8.3, Eq. 94-97).

``h = x + SelfModifyingTitans(RMSNorm(x))`` (``o_t = M_mem,t−1(q_t)`` with every memory updated by
Eq. 88), then ``y = CMS(h)``: the sequential CMS chain (Eq. 70/97, fastest level first) whose levels are
each ``u + MLP_l(RMSNorm(u))``, so the CMS carries the block's second residual itself.
``forward(x, state=None) -> (y, state)`` with ``state = {"titans": ..., "cms": ...}``. Task-objective
CMS levels are driven by :func:`nldsl.nn.surprise.train_segments`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from nldsl.nn.cms import CMS, CMSLevel
from nldsl.nn.hope_attention import DEFAULT_PERIODS
from nldsl.nn.layers import RMSNorm
from nldsl.nn.neural_memory import resolve_config
from nldsl.nn.self_modifying import SelfModifyingTitans
from nldsl.nn.transformer import swiglu_hidden

__all__ = ["HopeBlock"]


class HopeBlock(nn.Module):
    """``h = x + SMT(norm(x)); y = CMS(h)``."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int = 4
        """Heads of the main memory M_mem."""
        chunk_size: int = 16
        """Tokens per snapshot of M_mem."""
        proj_chunk_size: int = 32
        """Tokens per snapshot of the projection memories (M_k, M_v, M_η, M_α)."""
        titans: dict[str, Any] = field(default_factory=dict)
        """Any other :class:`SelfModifyingTitans.Config` field (``momentum``, ``dgd``, ``adaptive_q``, ...)."""
        cms_levels: list[Any] = field(default_factory=list)
        """CMS levels (``CMSLevel`` or dicts). Empty = SwiGLU levels of width 8/3·D with periods
        128, 512, 2048 tokens (HopeAttentionBlock's default ladder)."""
        cms_variant: str = "sequential"
        """CMS wiring; HOPE uses the sequential chain."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon (block pre-norm and CMS level pre-norms)."""

        def titans_config(self) -> SelfModifyingTitans.Config:
            fields = dict(dim=self.dim, n_heads=self.n_heads, chunk_size=self.chunk_size,
                          proj_chunk_size=self.proj_chunk_size)
            fields.update(self.titans)
            return SelfModifyingTitans.Config(**fields)

        def build(self) -> "HopeBlock":
            return HopeBlock(self)

    def __init__(self, config: "HopeBlock.Config | int | None" = None, **kwargs):
        super().__init__()
        cfg = resolve_config(HopeBlock.Config, config, kwargs, "HopeBlock")
        self.config = cfg
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.titans = SelfModifyingTitans(cfg.titans_config())
        levels = cfg.cms_levels or [CMSLevel(hidden=swiglu_hidden(cfg.dim), period=p) for p in DEFAULT_PERIODS]
        self.cms = CMS(CMS.Config(dim=cfg.dim, levels=list(levels), variant=cfg.cms_variant, norm_eps=cfg.norm_eps))

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        o, titans_state = self.titans(self.norm(x), None if state is None else state["titans"])
        y, cms_state = self.cms(x + o, None if state is None else state["cms"])
        return y, {"titans": titans_state, "cms": cms_state}

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {"titans": self.titans.init_state(batch_size, device, dtype),
                "cms": self.cms.init_state(batch_size, device)}
