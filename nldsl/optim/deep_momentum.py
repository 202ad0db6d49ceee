"""Deep Momentum Gradient Descent, DMGD (NL paper NeurIPS Eq. 23-24 = arXiv Eq. 50-52).

The paper makes the momentum a deep memory: W_{i+1} = W_i + m_{i+1}(u_i), where m is an MLP updated by
GD on its own inner objective L⁽²⁾ each step, optionally read through a nonlinearity σ (σ = Newton-Schulz
gives Muon-like outputs, Eq. 24/52). It leaves the memory's inputs and objective open; our choice:

Memory. One tiny MLP per parameter tensor, shared by all its coordinates and applied to each
coordinate's feature vector z_j = [ĝ_j, m̂_j] ∈ R² (a feature map of the gradient stream, Eq. 51):

    ĝ = g / (r + eps·min(1, r)), r = rms(g)   per-tensor normalised gradient (scale-free at any size)
    m ← β·m + (1 − β)·ĝ,   m̂ = m / (1 − β^t)   the classic EMA momentum of ĝ, bias-corrected
    f_φ(z) = w_linᵀ z + w_2ᵀ tanh(W_1 z + b_1)    φ = (w_lin ∈ R², W_1 ∈ R^{h×2}, b_1 ∈ R^h, w_2 ∈ R^h)

Inner objective. The memory predicts the next descent direction: at step t it is scored on the
features of step t − 1 against the gradient that actually arrived,

    L⁽²⁾(φ) = ½ · mean_j ( f_φ(z_{t−1, j}) + ĝ_{t, j} )²
    φ ← φ − η_in · ∇_φ L⁽²⁾ − γ · (φ − φ_0)         (one GD step, then retention γ toward the init)

Why this objective: EMA momentum is the least-squares predictor of the next gradient when gradients
are a slowly drifting mean plus noise, so this is "momentum = a memory that compresses the gradient
stream" with a learnable, nonlinear read-out. It is bounded and well-posed: a squared error ≥ 0
with unit-RMS targets, and its inputs are bounded in RMS (‖ĝ‖_rms = 1 and m̂ is an average of
unit-RMS vectors), so the loss is smooth in the read-out weights (curvature ≤ 2 + h) and a GD step
with η_in < 2/(2 + h) cannot diverge. The paper's dot-product objective ⟨m(u), 1⟩ is linear and
unbounded below for a nonlinear m, so it is not used. The init φ_0 has w_lin = (0, −1) and w_2 = 0,
so with η_in = 0 DMGD is exactly normalised EMA momentum: W ← W − η·m̂.

Update. o = f_φ(z_t) for every coordinate (φ just updated), then

    W ← W·(1 − η·λ) + η·o                                   nonlinearity="none"
    W ← W·(1 − η·λ) + η·s·NS_T(o),  s = max(1, rows/cols)^0.5   nonlinearity="newton_schulz"

(o has entries of RMS about 1, so η is Adam-scale with "none" and Muon-scale with "newton_schulz".)
Parameters with < 2 dims or in ``adamw=True`` groups use the AdamW fallback (nldsl.optim.common).

Cost per parameter tensor of N entries: two buffers (m, ĝ_{t−1}) and 2 + 4h MLP weights; per step two
MLP forwards and one backward over N coordinates, about 16·h·N flops and two (h, N) temporaries
(on one CPU core about 10x the time of an AdamW step; the Muon variants add one NS per step).
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from nldsl.optim.common import (
    NLOptimizer,
    batched_newton_schulz,
    check_beta,
    check_choice,
    check_nonneg,
    check_pos_int,
    check_unit,
    muon_scale,
    to_matrix,
)
from nldsl.optim.newton_schulz import unit_norm

NONLINEARITIES = ("none", "newton_schulz")


def unpack_phi(phi: Tensor, hidden: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split the flat memory weights into (w_lin (2,), W_1 (h, 2), b_1 (h,), w_2 (h,))."""
    w_lin, w1, b1, w2 = phi.split([2, 2 * hidden, hidden, hidden])
    return w_lin, w1.view(hidden, 2), b1, w2


def init_phi(hidden: int, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """φ_0: read-out = −m̂ (momentum), hidden weights N(0, 1/2) so pre-activations have unit scale."""
    gen = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, 2, generator=gen, dtype=torch.float64) * 0.5**0.5
    w_lin = torch.tensor([0.0, -1.0], dtype=torch.float64)
    phi = torch.cat([w_lin, w1.flatten(), torch.zeros(2 * hidden, dtype=torch.float64)])
    return phi.to(dtype=dtype, device=device)


def memory_forward(phi: Tensor, z: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """f_φ on every column of z (2, N); returns (outputs (N,), hidden activations (h, N)).

    Coordinates run along the last, contiguous axis so every reduction is a contiguous matvec.
    """
    w_lin, w1, b1, w2 = unpack_phi(phi, hidden)
    h = torch.addmm(b1[:, None], w1, z).tanh_()  # (h, N)
    return w_lin @ z + w2 @ h, h


def memory_grad(phi: Tensor, z: Tensor, target: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """Closed-form ∇_φ of ½·mean((f_φ(z) − target)²) and the loss (0-d); no autograd inside step()."""
    _, _, _, w2 = unpack_phi(phi, hidden)
    y, h = memory_forward(phi, z, hidden)
    n = z.shape[1]
    r = (y - target) / n  # (N,) residual, mean folded in
    d_pre = h.square().neg_().add_(1.0).mul_(w2[:, None]).mul_(r)  # (h, N): ∂/∂pre = w2·r·(1 − tanh²)
    grad = torch.cat([z @ r, (d_pre @ z.T).flatten(), d_pre.sum(1), h @ r])
    return grad, 0.5 * n * (r @ r)


class DeepMomentum(NLOptimizer):
    """Momentum as a per-tensor MLP memory trained online to predict the descent direction.

    Args:
        params: parameters or param groups (groups may override every keyword below).
        lr: learning rate η.
        beta: decay β of the EMA momentum feature (and the memory's init is exactly that momentum).
        hidden: width h of the memory's tanh layer.
        inner_lr: η_in, the memory's own GD step size (stable below 2/(2 + h)).
        inner_decay: γ in [0, 1], retention pull of φ toward its init each step.
        nonlinearity: "none" or "newton_schulz" (Muon-like output, Eq. 24/52).
        ns_steps: Newton-Schulz iterations when nonlinearity="newton_schulz".
        eps: guard of the gradient normalisation g / (rms + eps·min(1, rms)) (newton_schulz.unit_norm).
        weight_decay: decoupled weight decay λ.
        seed: seeds each tensor's memory init (tensor k gets seed + k), so runs are reproducible.
        adamw_lr_ratio, adamw_betas, adamw_eps: the AdamW fallback (nldsl.optim.common).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        beta: float = 0.9,
        hidden: int = 8,
        inner_lr: float = 0.05,
        inner_decay: float = 0.0,
        nonlinearity: str = "none",
        ns_steps: int = 5,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        seed: int = 0,
        adamw_lr_ratio: float = 1.0,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        adamw_eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, beta=beta, hidden=hidden, inner_lr=inner_lr, inner_decay=inner_decay,
            nonlinearity=nonlinearity, ns_steps=ns_steps, eps=eps, weight_decay=weight_decay, seed=seed,
            adamw_lr_ratio=adamw_lr_ratio, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_beta("beta", group["beta"])
        check_pos_int("hidden", group["hidden"])
        check_nonneg("inner_lr", group["inner_lr"])
        check_unit("inner_decay", group["inner_decay"])
        check_choice("nonlinearity", group["nonlinearity"], NONLINEARITIES)
        check_pos_int("ns_steps", group["ns_steps"])
        check_nonneg("eps", group["eps"])
        if isinstance(group["seed"], bool) or not isinstance(group["seed"], int) or group["seed"] < 0:
            raise ValueError(f"seed must be an int >= 0, got {group['seed']!r}")

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict:
        state = self.state[p]
        if not state:
            index = next(i for i, q in enumerate(self._all_params()) if q is p)
            phi = init_phi(group["hidden"], group["seed"] + index, p.dtype, p.device)
            state.update(step=0, phi=phi, phi_init=phi.clone(), inner_loss=phi.new_zeros(()))
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["prev_grad"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _all_params(self) -> list[Tensor]:
        return [q for g in self.param_groups for q in g["params"]]

    def _features(self, g_hat: Tensor, momentum: Tensor, step: int, beta: float) -> Tensor:
        """z = [ĝ, m̂] for every coordinate, coordinates last."""
        m_hat = momentum.flatten() / (1.0 - beta**step)
        return torch.stack([g_hat.flatten(), m_hat])  # (2, N)

    def _memory_output(self, group: dict[str, Any], p: Tensor) -> Tensor:
        """Train the memory on the gradient that just arrived, then read the update o = f_φ(z_t)."""
        state = self._init_state(p, group)
        beta, hidden = group["beta"], group["hidden"]
        cdt = torch.float64 if p.dtype == torch.float64 else torch.float32
        g = p.grad.to(cdt)
        g_hat = unit_norm(g, group["eps"], tuple(range(g.ndim)), rms=True)
        phi = state["phi"].to(cdt)
        t = state["step"]
        if t > 0:
            z_prev = self._features(state["prev_grad"].to(cdt), state["momentum"].to(cdt), t, beta)
            grad, loss = memory_grad(phi, z_prev, -g_hat.flatten(), hidden)
            phi = phi - group["inner_lr"] * grad - group["inner_decay"] * (phi - state["phi_init"].to(cdt))
            state["phi"].copy_(phi)
            state["inner_loss"].copy_(loss)
            phi = state["phi"].to(cdt)  # read back what a resumed run would see
        state["step"] = t + 1
        state["momentum"].lerp_(g_hat.to(p.dtype), 1.0 - beta)
        state["prev_grad"].copy_(g_hat)
        z = self._features(g_hat, state["momentum"].to(cdt), t + 1, beta)
        out, _ = memory_forward(phi, z, hidden)
        return out.view(p.shape)

    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        lr = group["lr"]
        outs = [self._memory_output(group, p) for p in params]
        if group["nonlinearity"] == "newton_schulz":
            mats = batched_newton_schulz([to_matrix(o) for o in outs], group["ns_steps"])
            outs = [m.reshape(p.shape) * muon_scale(p.shape) for p, m in zip(params, mats)]
        for p, o in zip(params, outs):
            p.mul_(1.0 - lr * group["weight_decay"])
            p.add_(o.to(p.dtype), alpha=lr)
