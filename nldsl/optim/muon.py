"""Muon: momentum whose output passes through Newton-Schulz (NL paper arXiv Eq. 42-44 and Eq. 24/52).

In the NL reading, the momentum buffer is a key-less associative memory of past gradients (section
4.2) and Newton-Schulz is a nonlinear output map σ applied to that memory, W ← W + σ(m) (Eq. 24/52
with a linear memory): "Muon = momentum + an inner level of k Newton-Schulz steps".

Update for a matrix parameter W (rows, cols) with gradient G, at learning rate η:

    B ← μ·B + G                                  (heavy-ball buffer, torch.optim.SGD convention)
    U ← G + μ·B   if nesterov else   B
    W ← W·(1 − η·λ) − η · s · NS_T(U),     s = max(1, rows/cols)^0.5

Conv-like parameters (> 2 dims) use the 2-D view (shape[0], prod(shape[1:])). The scale s is Keller
Jordan's: NS output has unit singular values, so its RMS entry is 1/sqrt(max(rows, cols)); s makes
tall matrices (rows > cols) move as much per entry as wide ones. Because NS normalises its input,
the buffer's overall scale (sum vs. EMA convention) does not matter. Parameters with fewer than 2
dims, or in a group with ``adamw=True``, use the AdamW fallback (nldsl.optim.common).

Cost per matrix step: one (rows, cols) buffer; NS_T costs about T·(2·k²·n + k³)·2 flops with
k = min(rows, cols), n = max(rows, cols); equal shapes are stacked into one batched NS call.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from nldsl.optim.common import (
    NLOptimizer,
    batched_newton_schulz,
    check_beta,
    check_bool,
    check_pos_int,
    muon_scale,
    to_matrix,
)


class Muon(NLOptimizer):
    """Momentum + Newton-Schulz for matrices, AdamW for 1-D parameters and ``adamw=True`` groups.

    Args:
        params: parameters or param groups (groups may override every keyword below).
        lr: learning rate η (the same η also drives the AdamW fallback, times ``adamw_lr_ratio``).
        momentum: μ in [0, 1).
        nesterov: use G + μ·B instead of B.
        ns_steps: Newton-Schulz iterations T.
        weight_decay: decoupled weight decay λ (W ← W·(1 − η·λ)).
        ns_bf16: on CUDA run NS in bfloat16 (fp32 accumulation); otherwise NS runs in fp32 (fp64 for
            fp64 parameters).
        adamw_lr_ratio, adamw_betas, adamw_eps: the AdamW fallback (nldsl.optim.common).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        ns_bf16: bool = False,
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay,
            ns_bf16=ns_bf16, adamw_lr_ratio=adamw_lr_ratio, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_beta("momentum", group["momentum"])
        check_bool("nesterov", group["nesterov"])
        check_pos_int("ns_steps", group["ns_steps"])
        check_bool("ns_bf16", group["ns_bf16"])

    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        mu, lr = group["momentum"], group["lr"]
        updates = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            buf = state["momentum_buffer"]
            buf.mul_(mu).add_(p.grad)
            u = p.grad.add(buf, alpha=mu) if group["nesterov"] else buf
            updates.append(to_matrix(u))  # (rows, cols)
        for p, o in zip(params, batched_newton_schulz(updates, group["ns_steps"], group["ns_bf16"])):
            p.mul_(1.0 - lr * group["weight_decay"])
            p.add_(o.reshape(p.shape), alpha=-lr * muon_scale(p.shape))
