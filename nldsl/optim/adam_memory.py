"""Adam as an associative memory (NL paper arXiv App. B, Eq. 101-105).

The paper takes an element-wise memory m that maps each gradient onto a global property P_t by ridge
regression,

    L̃_t(m) = Σ_{i=1..t} ‖m ⊙ g_i − P_t‖² + λ‖m‖²                                   (Eq. 101)

whose per-coordinate optimum is m* = P_t·Σ g_i / (Σ g_i² + λ). It is built from two accumulators
(Eq. 102) M̃ ← M̃ + β1·g and H ← H + β2·g². With P_t = √(Σ g_i²) and λ → 0, m* = Σ g_i / √(Σ g_i²),
and the printed update (Eq. 105) is

    W ← W·(1 − η·λ_wd) − (η / √β2) · M̃ / (√H + ε)                       form="sum" (default)

Since M̃ = β1·Σg and H = β2·Σg², this equals W − η·(β1/β2)·m* (for ε = 0): the printed constants only
rescale η, and the memory's optimum is the AdaGrad-with-summed-momentum direction. That is the
paper's sense of "Adam (with a small modification) is the optimal associative memory for an ℓ2
objective that predicts gradient variance".

Relation to Adam: replace the sums by exponential moving averages, M̃ ← β1·M̃ + (1 − β1)·g and
H ← β2·H + (1 − β2)·g², drop the 1/√β2, and divide each by its bias correction 1 − β^t: that is
Adam (AdamW with decoupled weight decay), offered as form="ema" and identical to torch.optim.AdamW.
The EMA is the same ridge regression with exponentially down-weighted old terms (a forgetting
memory); the sum form never forgets: its step is O(1) for zero-mean gradient noise but grows like √t
for a constant gradient (M̃ ∝ t, √H ∝ √t), like heavy-ball momentum with β = 1.

The rule is element-wise, so it applies to parameters of every shape; only groups with
``adamw=True`` are handed to the shared AdamW fallback. Cost: two buffers per parameter.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor

from nldsl.optim.common import NLOptimizer, adamw_update, check_betas, check_choice, check_nonneg

FORMS = ("sum", "ema")


class AdamMemory(NLOptimizer):
    """Eq. 105's Adam-like associative memory (sums) or, with form="ema", exactly AdamW.

    Args:
        params: parameters or param groups (groups may override every keyword below).
        lr: learning rate η.
        betas: (β1, β2) in [0, 1); β2 > 0 in the sum form (it divides η).
        eps: ε added to √H.
        weight_decay: decoupled weight decay λ_wd.
        form: "sum" (Eq. 101-105 as printed) or "ema" (Adam).
        adamw_lr_ratio, adamw_betas, adamw_eps: the AdamW fallback for ``adamw=True`` groups.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        form: str = "sum",
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, form=form,
            adamw_lr_ratio=adamw_lr_ratio, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas("betas", group["betas"], 2)
        check_nonneg("eps", group["eps"])
        check_choice("form", group["form"], FORMS)
        if group["form"] == "sum" and group["betas"][1] == 0:
            raise ValueError("betas[1] must be > 0 in the sum form (the update divides by √β2), got 0")

    def uses_fallback(self, p: Tensor, group: dict[str, Any]) -> bool:
        """Element-wise rule: every shape is fine, only ``adamw=True`` groups are handed off."""
        return group["adamw"]

    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        if group["form"] == "ema":
            ema = {**group, "adamw_betas": group["betas"], "adamw_eps": group["eps"], "adamw_lr_ratio": 1.0}
            for p in params:
                adamw_update(p, p.grad, self.state[p], ema)
            return
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            state["exp_avg"].add_(p.grad, alpha=beta1)  # M̃
            state["exp_avg_sq"].addcmul_(p.grad, p.grad, value=beta2)  # H
            p.mul_(1.0 - lr * group["weight_decay"])
            denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / math.sqrt(beta2))
