"""Plain float64 references for every optimizer here, written straight from the equations.

Each ``*_ref(w, grads, ...)`` takes an initial parameter and a list of gradients (one per step) and
returns the parameter after every step. They loop over steps (and, for Newton-Schulz, over matrices),
never batch, never reuse the fast code, and spell the update the way the docstrings of the fast
modules write it. Tests compare the optimizers to them (nldsl.testing.assert_rel_close).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

NS_A, NS_B, NS_C = 3.4445, -4.7750, 2.0315


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64).clone()


def _mat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)  # (rows, cols)


def newton_schulz_ref(G: Tensor, steps: int = 5, eps: float = 1e-7) -> Tensor:
    """X ← aX + b(XXᵀ)X + c(XXᵀ)²X on each matrix of G, in float64, without the transpose trick."""
    G = _f64(G)
    if G.ndim > 2:
        return torch.stack([newton_schulz_ref(g, steps, eps) for g in G])
    norm = math.sqrt(float((G * G).sum()))
    X = G / (norm + eps * min(1.0, norm)) if norm > 0 else G
    for _ in range(steps):
        A = X @ X.T
        X = NS_A * X + NS_B * (A @ X) + NS_C * (A @ A @ X)
    return X


def adamw_ref(w, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0) -> list[Tensor]:
    """AdamW: m, v EMAs with bias correction; w ← w(1 − ηλ) − η m̂ / (√v̂ + ε)."""
    w, m, v, out = _f64(w), 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        g = _f64(g)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w * (1 - lr * weight_decay) - lr * m_hat / (v_hat.sqrt() + eps)
        out.append(w)
    return out


def muon_ref(w, grads, lr, momentum=0.95, nesterov=True, weight_decay=0.0, ns_steps=5) -> list[Tensor]:
    """B ← μB + G; U = G + μB or B; W ← W(1 − ηλ) − η·max(1, r/c)^½·NS(U)."""
    w, buf, out = _f64(w), torch.zeros(_mat(w).shape, dtype=torch.float64), []
    for g in grads:
        g = _mat(_f64(g))
        buf = momentum * buf + g
        u = g + momentum * buf if nesterov else buf
        scale = max(1.0, g.shape[0] / g.shape[1]) ** 0.5
        w = w * (1 - lr * weight_decay) - lr * scale * newton_schulz_ref(u, ns_steps).reshape(w.shape)
        out.append(w)
    return out


def m3_ref(w, grads, lr, betas=(0.9, 0.999, 0.9), alpha=0.5, slow_every=10, ns_steps=5, eps=1e-8,
           weight_decay=0.0, form="ema", v_floor=None) -> list[Tensor]:
    """Algorithm 1 with its two loops: block k refreshes M2 from block k−1's gradients, then f fast steps.

    The denominator is max(√V̂, floor·RMS(√V̂)) + ε, floor = v_floor or 0.1 (EMA) / 0 (paper, as printed).
    """
    b1, b2, b3 = betas
    floor = v_floor if v_floor is not None else (0.1 if form == "ema" else 0.0)
    shape, f = w.shape, slow_every
    w = _mat(_f64(w))
    m1, m2, v = torch.zeros_like(w), torch.zeros_like(w), torch.zeros_like(w)
    grads = [_mat(_f64(g)) for g in grads]
    out, t = [], 0
    for k in range(math.ceil(len(grads) / f)):
        previous = grads[(k - 1) * f: k * f] if k > 0 else []  # the last f gradients
        if form == "paper":
            m2 = m2 + b3 * sum(previous, torch.zeros_like(w))
        elif previous:
            m2 = b3 * m2 + (1 - b3) * sum(previous) / f
        o2 = newton_schulz_ref(m2, ns_steps)
        for g in grads[k * f: (k + 1) * f]:
            t += 1
            if form == "paper":
                m1, v = m1 + b1 * g, v + b2 * g * g
                v_hat = v
            else:
                m1, v = b1 * m1 + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                v_hat = v / (1 - b2**t)
            rms = math.sqrt(float(v_hat.mean()))
            denom = v_hat.sqrt().clamp(min=floor * rms) + eps
            o1 = newton_schulz_ref(m1, ns_steps)
            w = w * (1 - lr * weight_decay) - lr * (o1 + alpha * o2) / denom
            out.append(w.reshape(shape))
    return out


def delta_momentum_ref(w, grads, lr, beta=0.9, delta=0.5, normalize=True, eps=1e-8,
                       weight_decay=0.0) -> list[Tensor]:
    """K = G/(‖G‖+ε·min(1, ‖G‖)); B ← B(βI − δKᵀK) + G; W ← W(1 − ηλ) − ηB, with the (cols, cols) matrix formed."""
    w, out = _f64(w), []
    rows, cols = _mat(w).shape
    buf = torch.zeros(rows, cols, dtype=torch.float64)
    for g in grads:
        g = _mat(_f64(g))
        norm = math.sqrt(float((g * g).sum()))
        k = (g / (norm + eps * min(1.0, norm)) if norm > 0 else g) if normalize else g
        buf = buf @ (beta * torch.eye(cols, dtype=torch.float64) - delta * k.T @ k) + g
        w = w * (1 - lr * weight_decay) - lr * buf.reshape(w.shape)
        out.append(w)
    return out


def _memory(phi: Tensor, z: Tensor, hidden: int) -> Tensor:
    """f_φ(z) = w_linᵀz + w_2ᵀ tanh(W_1 z + b_1) for each row of z (N, 2)."""
    w_lin, w1 = phi[:2], phi[2:2 + 2 * hidden].reshape(hidden, 2)
    b1, w2 = phi[2 + 2 * hidden:2 + 3 * hidden], phi[2 + 3 * hidden:]
    return z @ w_lin + torch.tanh(z @ w1.T + b1) @ w2


def deep_momentum_ref(w, grads, lr, phi0, beta=0.9, hidden=8, inner_lr=0.05, inner_decay=0.0,
                      nonlinearity="none", ns_steps=5, eps=1e-8, weight_decay=0.0) -> list[Tensor]:
    """DMGD with the memory's inner gradient taken by autograd (the fast code uses a closed form)."""
    w, out = _f64(w), []
    phi0 = _f64(phi0)
    phi, m, z_prev = phi0.clone(), torch.zeros(w.numel(), dtype=torch.float64), None
    for t, g in enumerate(grads, start=1):
        g = _f64(g).flatten()
        rms = math.sqrt(float((g * g).mean()))
        g_hat = g / (rms + eps * min(1.0, rms)) if rms > 0 else g
        if z_prev is not None:
            phi_var = phi.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = 0.5 * ((_memory(phi_var, z_prev, hidden) + g_hat) ** 2).mean()
                (grad,) = torch.autograd.grad(loss, phi_var)
            phi = phi - inner_lr * grad - inner_decay * (phi - phi0)
        m = beta * m + (1 - beta) * g_hat
        z = torch.stack([g_hat, m / (1 - beta**t)], dim=1)  # (N, 2)
        o = _memory(phi, z, hidden).reshape(w.shape)
        if nonlinearity == "newton_schulz":
            rows, cols = _mat(w).shape
            o = max(1.0, rows / cols) ** 0.5 * newton_schulz_ref(_mat(o), ns_steps).reshape(w.shape)
        w = w * (1 - lr * weight_decay) + lr * o
        z_prev = z
        out.append(w)
    return out


def adam_memory_ref(w, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, form="sum") -> list[Tensor]:
    """Eq. 102/105: M̃ ← M̃ + β1 g, H ← H + β2 g², W ← W(1 − ηλ) − (η/√β2) M̃/(√H + ε); "ema" is AdamW."""
    if form == "ema":
        return adamw_ref(w, grads, lr, betas, eps, weight_decay)
    w, m, h, out = _f64(w), 0.0, 0.0, []
    for g in grads:
        g = _f64(g)
        m, h = m + betas[0] * g, h + betas[1] * g * g
        w = w * (1 - lr * weight_decay) - lr / math.sqrt(betas[1]) * m / (h.sqrt() + eps)
        out.append(w)
    return out


def adam_memory_optimum(grads: list[Tensor], ridge: float = 0.0) -> Tensor:
    """argmin_m Σ_i ‖m ⊙ g_i − P‖² + λ‖m‖² with P = √(Σ g_i²) (Eq. 101), by per-coordinate least squares."""
    gs = torch.stack([_f64(g).flatten() for g in grads])  # (t, N)
    p = gs.pow(2).sum(0).sqrt()  # (N,)
    out = torch.empty(gs.shape[1], dtype=torch.float64)
    for j in range(gs.shape[1]):
        a = torch.cat([gs[:, j:j + 1], torch.full((1, 1), math.sqrt(ridge), dtype=torch.float64)])
        b = torch.cat([p[j].expand(gs.shape[0]), torch.zeros(1, dtype=torch.float64)])
        out[j] = torch.linalg.lstsq(a, b[:, None]).solution[0, 0]
    return out.reshape(grads[0].shape)
