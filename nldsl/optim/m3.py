"""M3, Multi-scale Momentum Muon (NL paper arXiv section 7.2, Eq. 75, Algorithm 1).

M3 is the Continuum Memory System (independent variant) applied to the gradient stream: a fast
momentum memory M1 updated every step, a slow momentum memory M2 updated every f = ``slow_every``
steps from the gradients seen since its last refresh, both orthogonalised by Newton-Schulz (NS_T),
plus an Adam-style second moment V. For a matrix parameter θ with gradient g_t (step t = 1, 2, ...):

``form="paper"`` (Algorithm 1 as printed: plain accumulations, no bias correction):

    M1 ← M1 + β1·g_t,     V ← V + β2·g_t²,     O1 = NS_T(M1)
    θ  ← θ·(1 − η·λ) − η·(O1 + α·O2) / (√V + ε)
    every f steps (t ≡ 0 mod f), after the update:  M2 ← M2 + β3·Σ_{s=t−f+1..t} g_s,  O2 = NS_T(M2)

``form="ema"`` (default; exponential moving averages):

    M1 ← β1·M1 + (1 − β1)·g_t,   V ← β2·V + (1 − β2)·g_t²,   V̂ = V / (1 − β2^t),   O1 = NS_T(M1)
    θ  ← θ·(1 − η·λ) − η·(O1 + α·O2) / (max(√V̂, 0.1·RMS(√V̂)) + ε)      (floor: see below)
    every f steps, after the update:  M2 ← β3·M2 + (1 − β3)·(1/f)·Σ_{s=t−f+1..t} g_s,  O2 = NS_T(M2)

O2 starts at 0 (NS of the zero matrix), so for steps 1..f only the fast term acts; the refresh at step
t is first used at step t + 1. This is the paper's slow loop: block k computes O2 once from the
gradients of block k − 1, then runs f fast steps with it. In the EMA form M2 averages its block's
gradients (mean, not sum) so that it has a gradient's scale like M1; the choice is otherwise immaterial:
M2 is linear in the gradients with constant coefficients and NS is scale-invariant (up to its eps), so
mean vs. sum only rescales M2 before NS. For the same reason, in the paper form β1 and β3 have no effect
(they scale sums that NS normalises) and β2 only rescales η: those sums weight every past gradient
equally and never forget, while the EMA form forgets geometrically with β1 and β3. M1 needs no bias
correction either. Conv-like parameters use the 2-D view (shape[0], prod(shape[1:])); parameters with
< 2 dims or in ``adamw=True`` groups use the AdamW fallback (nldsl.optim.common).

Note the update is not invariant to the gradient's scale (O has unit singular values, √V has the
gradient's units), exactly as printed; η has to be tuned to the typical gradient size.

Floor of √V̂ (``v_floor``, our addition). O is orthogonalised, so O_ij is not proportional to g_ij as
Adam's m_ij is: O_ij / √V_ij is unbounded where one coordinate's gradients are tiny next to the rest of
its matrix (measured: one entry at 1e-6 of the mean |g| moves 166 at η = 1e-3, 7e5x a typical entry;
the shipped tiny.nl diverged to NaN in 5 steps). The denominator is therefore max(√V̂, f·RMS(√V̂)) + ε,
with RMS over the parameter: coordinates at or above f times the matrix's typical gradient are untouched,
smaller ones get at most 1/f times the typical step. f = 0.1 by default in the EMA form; the paper form
keeps 0 (the printed update) unless ``v_floor`` is set.

Cost per matrix: 5 state tensors of the parameter's size (M1, M2, V, gradient sum, cached O2); one NS
per step plus one NS per f steps (equal shapes are batched into one call).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from nldsl.optim.common import (
    NLOptimizer,
    batched_newton_schulz,
    check_betas,
    check_bool,
    check_choice,
    check_nonneg,
    check_pos_int,
    to_matrix,
)

FORMS = ("ema", "paper")
V_FLOOR = 0.1
"""Default floor of √V̂ (EMA form) relative to its matrix RMS; the paper form defaults to 0 (as printed)."""


def floor_of(group: dict[str, Any]) -> float:
    """The group's relative floor of √V̂: ``v_floor`` if set, else 0.1 (EMA form) or 0 (paper form).

    ``get``: param groups restored from checkpoints written before the key existed get the default.
    """
    if group.get("v_floor") is not None:
        return float(group["v_floor"])
    return V_FLOOR if group["form"] == "ema" else 0.0


class M3(NLOptimizer):
    """Multi-scale Momentum Muon (Algorithm 1); see the module docstring for the exact update.

    Args:
        params: parameters or param groups (groups may override every keyword below).
        lr: learning rate η.
        betas: (β1, β2, β3): fast momentum, second moment, slow momentum; each in [0, 1).
        alpha: weight α >= 0 of the slow orthogonalised momentum O2.
        slow_every: f, the slow momentum's refresh period in steps.
        ns_steps: Newton-Schulz iterations T.
        eps: ε added to √V.
        weight_decay: decoupled weight decay λ.
        form: "ema" (default) or "paper" (the printed accumulations).
        v_floor: √V̂ is floored at v_floor·RMS(√V̂) of its matrix before dividing (module docstring);
            None = 0.1 in the EMA form, 0 (exactly as printed) in the paper form.
        ns_bf16: on CUDA run NS in bfloat16 (fp32 accumulation).
        adamw_lr_ratio, adamw_betas, adamw_eps: the AdamW fallback (nldsl.optim.common).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
        alpha: float = 0.5,
        slow_every: int = 10,
        ns_steps: int = 5,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        form: str = "ema",
        v_floor: float | None = None,
        ns_bf16: bool = False,
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, alpha=alpha, slow_every=slow_every, ns_steps=ns_steps, eps=eps,
            weight_decay=weight_decay, form=form, v_floor=v_floor, ns_bf16=ns_bf16, adamw_lr_ratio=adamw_lr_ratio,
            adamw_betas=adamw_betas, adamw_eps=adamw_eps,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_betas("betas", group["betas"], 3)
        check_nonneg("alpha", group["alpha"])
        check_pos_int("slow_every", group["slow_every"])
        check_pos_int("ns_steps", group["ns_steps"])
        check_nonneg("eps", group["eps"])
        check_choice("form", group["form"], FORMS)
        if group["v_floor"] is not None:
            check_nonneg("v_floor", group["v_floor"])
        check_bool("ns_bf16", group["ns_bf16"])

    def _init_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            for key in ("fast_momentum", "slow_momentum", "second_moment", "grad_sum", "slow_update"):
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _accumulate(self, group: dict[str, Any], p: Tensor) -> Tensor:
        """Fold g_t into M1, V and the slow block's gradient sum; return M1's 2-D view."""
        state = self._init_state(p)
        beta1, beta2, _ = group["betas"]
        g = p.grad
        state["step"] += 1
        state["grad_sum"].add_(g)
        if group["form"] == "paper":
            state["fast_momentum"].add_(g, alpha=beta1)
            state["second_moment"].addcmul_(g, g, value=beta2)
        else:
            state["fast_momentum"].lerp_(g, 1.0 - beta1)
            state["second_moment"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        return to_matrix(state["fast_momentum"])  # (rows, cols)

    def _denominator(self, group: dict[str, Any], state: dict) -> Tensor:
        """max(√V̂, floor·RMS(√V̂)) + ε with V̂ = V (paper form) or V / (1 − β2^t) (EMA form)."""
        v = state["second_moment"]
        if group["form"] == "ema":
            v = v / (1.0 - group["betas"][1] ** state["step"])
        root = v.sqrt()
        floor = floor_of(group)
        if floor > 0:  # cap the preconditioner's range: O is not proportional to g, so O/√V is unbounded
            root = torch.maximum(root, floor * v.mean().sqrt())  # RMS(√V̂) = √mean(V̂)
        return root.add_(group["eps"])

    def _refresh_slow(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """End of a slow block: fold the block's gradients into M2 and recompute O2 = NS_T(M2)."""
        beta3, f = group["betas"][2], group["slow_every"]
        for p in params:
            state = self.state[p]
            if group["form"] == "paper":
                state["slow_momentum"].add_(state["grad_sum"], alpha=beta3)
            else:
                state["slow_momentum"].mul_(beta3).add_(state["grad_sum"], alpha=(1.0 - beta3) / f)
            state["grad_sum"].zero_()
        slow = [to_matrix(self.state[p]["slow_momentum"]) for p in params]  # (rows, cols) each
        for p, o2 in zip(params, batched_newton_schulz(slow, group["ns_steps"], group["ns_bf16"])):
            self.state[p]["slow_update"].copy_(o2.reshape(p.shape))

    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr = group["lr"]
        fast = [self._accumulate(group, p) for p in params]
        due = []
        for p, o1 in zip(params, batched_newton_schulz(fast, group["ns_steps"], group["ns_bf16"])):
            state = self.state[p]
            update = o1.reshape(p.shape).add(state["slow_update"], alpha=group["alpha"])
            p.mul_(1.0 - lr * group["weight_decay"])
            p.addcdiv_(update, self._denominator(group, state), value=-lr)
            if state["step"] % group["slow_every"] == 0:
                due.append(p)
        if due:
            self._refresh_slow(group, due)
