"""Delta Momentum: momentum trained by the delta rule (NL paper NeurIPS Eq. 21-22 = arXiv Eq. 48-49).

The paper replaces the momentum's dot-product objective ⟨m ∇Lᵀ, I⟩ (plain momentum) by an ℓ2
regression ½‖m ∇Lᵀ − P‖², which gives a gradient-dependent decay:
m_{i+1} = (α I − ∇Lᵀ∇L) m_i − η P ∇L, W ← W + m. It is printed for vectors; here is the type-correct
matrix form we implement. For W, G = ∇L and the memory m all (rows, cols), read m as a linear map whose
keys are the rows of G (vectors in R^cols) and whose values are the rows of −P (P: (rows, rows)). The
gradient of ½‖m Gᵀ + P‖²_F is m GᵀG + P G: a decay part that acts on m from the right (the erase of
what m stores along the current gradient's row space) and a write part. As in the printed equation
the two parts get their own rates (1 and η there, δ and η here):

    m ← m (β I_cols − δ KᵀK) − η P G

We keep P = I (the value written for key G is the gradient itself, so δ = 0 is exactly heavy-ball
momentum), take the erase key K normalised, and store the buffer in gradient units, B = −m/η, so an LR
schedule acts as it does on torch.optim.SGD:

    K = G / (‖G‖_F + eps·min(1, ‖G‖_F))   (normalize=True, default; K = G when normalize=False)
    B ← B (β I − δ KᵀK) + G
    W ← W·(1 − η·λ) − η·B

Why normalise the key: with ‖K‖_F = 1 every eigenvalue of KᵀK is in [0, 1], so the decay operator
β I − δ KᵀK has eigenvalues in [β − δ, β] ⊂ [−1, 1) for δ ∈ [0, 1]: the decay is never expansive,
whatever the gradient's scale (the same ‖x‖ = λ assumption the paper makes for DGD, NL_REFERENCE 7.9).
For a rank-1 gradient (one sample through a linear layer, G = e xᵀ) the erase is the DGD
projector: B loses δ of its component along x before the new gradient is written. With
normalize=False, δ multiplies the raw GᵀG as printed and stability is the caller's responsibility.

Conv-like parameters use the 2-D view (shape[0], prod(shape[1:])); parameters with < 2 dims or in
``adamw=True`` groups use the AdamW fallback (nldsl.optim.common).
Cost: one buffer; the erase costs 4·rows·cols·min(rows, cols) flops (the smaller Gram product is used).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from nldsl.optim.common import NLOptimizer, check_beta, check_bool, check_nonneg, check_unit, to_matrix
from nldsl.optim.newton_schulz import unit_norm


def delta_erase(B: Tensor, K: Tensor) -> Tensor:
    """B KᵀK for B, K of shape (rows, cols), multiplying in the cheaper order."""
    if B.shape[0] <= B.shape[1]:
        return (B @ K.mT) @ K  # (rows, rows) intermediate
    return B @ (K.mT @ K)  # (cols, cols) intermediate


class DeltaMomentum(NLOptimizer):
    """Momentum with a delta-rule, gradient-dependent decay; see the module docstring.

    Args:
        params: parameters or param groups (groups may override every keyword below).
        lr: learning rate η.
        beta: momentum retention β in [0, 1).
        delta: erase strength δ: in [0, 1] with normalize=True (δ <= β keeps the decay >= 0),
            any value >= 0 otherwise.
        normalize: normalise the key K = G / (‖G‖_F + eps·min(1, ‖G‖_F)) (unit norm at any gradient scale).
        eps: guard of that normalisation (nldsl.optim.newton_schulz.unit_norm).
        weight_decay: decoupled weight decay λ.
        adamw_lr_ratio, adamw_betas, adamw_eps: the AdamW fallback (nldsl.optim.common).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        beta: float = 0.9,
        delta: float = 0.5,
        normalize: bool = True,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, beta=beta, delta=delta, normalize=normalize, eps=eps, weight_decay=weight_decay,
            adamw_lr_ratio=adamw_lr_ratio, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_beta("beta", group["beta"])
        check_bool("normalize", group["normalize"])
        (check_unit if group["normalize"] else check_nonneg)("delta", group["delta"])
        check_nonneg("eps", group["eps"])

    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr = group["lr"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            G = to_matrix(p.grad)  # (rows, cols)
            K = unit_norm(G, group["eps"], (-2, -1)) if group["normalize"] else G
            B = to_matrix(state["momentum_buffer"])  # (rows, cols)
            new = B.mul(group["beta"]).sub_(delta_erase(B, K), alpha=group["delta"]).add_(G)
            state["momentum_buffer"].copy_(new.reshape(p.shape))
            p.mul_(1.0 - lr * group["weight_decay"])
            p.add_(state["momentum_buffer"], alpha=-lr)
