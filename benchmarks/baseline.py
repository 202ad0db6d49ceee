"""Hand-written Transformer++ baseline (RMSNorm, RoPE, SDPA causal attention, SwiGLU, fused AdamW).

Deliberately independent of nldsl: it is the yardstick the compiled models are measured against in the
same process (docs/results.md). Nothing here imports nldsl.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(kw_only=True)
class BaselineConfig:
    vocab: int = 32000
    dim: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 8 / 3
    rope_base: float = 10000.0
    max_seq: int = 32768
    tie_embeddings: bool = True


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def _rope(x, cos, sin):
    # x: (B, H, T, Dh); rotate pairs (first half, second half)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class _Block(nn.Module):
    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        d, h = cfg.dim, cfg.heads
        hidden = int(cfg.mlp_ratio * d)
        hidden = 64 * math.ceil(hidden / 64)
        self.heads = h
        self.attn_norm = _RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp_norm = _RMSNorm(d)
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.heads, D // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, Dh)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class BaselineLM(nn.Module):
    """Embedding -> N pre-norm blocks -> RMSNorm -> (tied) head."""

    def __init__(self, cfg: BaselineConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.norm = _RMSNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        # RoPE tables computed once: computed inside the compiled graph, Inductor fuses cos/sin into every
        # rotation and evaluates them per element of q and k (measured 22 of 80 ms of a step on an H200)
        dh = cfg.dim // cfg.heads
        inv = 1.0 / (cfg.rope_base ** (torch.arange(0, dh, 2).double() / dh))
        ang = torch.outer(torch.arange(cfg.max_seq).double(), inv)  # (max_seq, Dh/2)
        self.register_buffer("rope_cos", ang.cos().float(), persistent=False)
        self.register_buffer("rope_sin", ang.sin().float(), persistent=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.normal_(p, std=0.02)

    def rope(self, start: int, T: int, dtype: torch.dtype):
        """cos, sin ``(1, 1, T, Dh/2)`` of positions ``start .. start + T - 1`` from the tables built once."""
        if start + T > self.rope_cos.shape[0]:
            raise ValueError(f"position {start + T} is past max_seq = {self.rope_cos.shape[0]}")
        span = slice(start, start + T)
        return self.rope_cos[None, None, span].to(dtype), self.rope_sin[None, None, span].to(dtype)

    def forward(self, tokens):
        x = self.embed(tokens)
        cos, sin = self.rope(0, tokens.shape[1], x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


def make_train_step(model: BaselineLM, lr: float = 3e-4, compile: bool = True):
    """A full training step (forward, loss, backward, fused AdamW) under bf16 autocast."""
    fused = next(model.parameters()).is_cuda
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=fused)

    def loss_fn(inputs, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=fused):
            logits = model(inputs)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))

    loss_c = torch.compile(loss_fn) if compile else loss_fn

    def step(batch):
        inputs, targets = batch[:, :-1], batch[:, 1:]
        loss = loss_c(inputs, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, opt
