"""Titans (LMM) block: the memory-only Titans layer of the NL paper's tables (NL_REFERENCE 2, 5.2).

``h = x + NeuralMemory(RMSNorm(x))``, ``y = h + SwiGLU(RMSNorm(h))``. The memory is Titans' long-term
memory: a residual MLP (depth 2) updated in context by GD with momentum (surprise) and a forget gate,
all three rates data-dependent; ℓ2 inner loss ``½‖M(k) − v‖²``; q/k/v through a causal depthwise conv
(width 4) and SiLU, q and k ℓ2-normalised; read-out RMSNorm per head, SiLU gate, output projection.
``forward(x, state=None) -> (y, state)`` with ``state = {"memory": NeuralMemory state}``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from nldsl.nn.layers import RMSNorm, SwiGLU, check_positive_int
from nldsl.nn.neural_memory import NeuralMemory, resolve_config
from nldsl.nn.transformer import swiglu_hidden

__all__ = ["TitansBlock"]


class TitansBlock(nn.Module):
    """Pre-norm Titans memory sublayer and SwiGLU MLP sublayer, each with a residual."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D."""
        n_heads: int = 4
        """Memory heads (one memory per head, width D / n_heads)."""
        memory_depth: int = 2
        """Depth of each memory MLP (Titans finds L ≥ 2 better on long contexts)."""
        chunk_size: int = 16
        """Tokens per memory snapshot (Titans' mini-batch size)."""
        lr: float = 0.01
        """Initial inner learning rate θ (data-dependent, softplus): chunk · lr / (1 − momentum) = 1.6 < 2 at the
        defaults (docs/runtime.md, Stability)."""
        retention: float = 0.99
        """Initial retention 1 − forget gate (data-dependent, sigmoid)."""
        momentum: float = 0.9
        """Initial surprise decay (data-dependent, sigmoid)."""
        stopgrad: bool = False
        """Detach the memory writes from the outer graph."""
        mlp_hidden: int | None = None
        """SwiGLU width; default 8/3·D rounded up to a multiple of 32."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon."""
        memory: dict[str, Any] = field(default_factory=dict)
        """Any other :class:`NeuralMemory.Config` field (e.g. ``dgd``, ``objective``), overriding Titans'."""

        def memory_config(self) -> NeuralMemory.Config:
            """The Titans LMM as a :class:`NeuralMemory.Config`."""
            fields = dict(
                dim=self.dim, n_heads=self.n_heads, depth=self.memory_depth, chunk_size=self.chunk_size,
                objective="l2", dgd=False, lr=self.lr, lr_mode="data", retention=self.retention,
                retention_mode="data", momentum=self.momentum, momentum_mode="data", stopgrad=self.stopgrad,
                qk_norm=True, conv_size=4, qkv_activation="silu", output_norm=True, output_gate=True,
            )
            fields.update(self.memory)
            return NeuralMemory.Config(**fields)

        def build(self) -> "TitansBlock":
            return TitansBlock(self)

    def __init__(self, config: "TitansBlock.Config | int | None" = None, **kwargs):
        super().__init__()
        cfg = resolve_config(TitansBlock.Config, config, kwargs, "TitansBlock")
        hidden = swiglu_hidden(cfg.dim)
        if cfg.mlp_hidden is not None:
            hidden = check_positive_int("TitansBlock mlp_hidden", cfg.mlp_hidden)
        self.config = cfg
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.memory = NeuralMemory(cfg.memory_config())
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, hidden)

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        m, mem_state = self.memory(self.norm1(x), None if state is None else state["memory"])
        h = x + m
        return h + self.mlp(self.norm2(h)), {"memory": mem_state}

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return {"memory": self.memory.init_state(batch_size, device, dtype)}
