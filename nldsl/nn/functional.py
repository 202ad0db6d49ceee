"""Stateless maths of the in-context memories: DGD, activations with closed-form derivatives, decays.

* :func:`dgd_step` is Delta Gradient Descent (NL arXiv §4.5, Eq. 56-57; NL_REFERENCE 4.2), solved
  exactly with Sherman-Morrison for any ``‖x‖`` (DESIGN.md 3.6).
* :func:`chunk_decay_weights` turns per-token retention ``α`` and momentum ``β`` of one chunk into the
  scalar coefficients that let the chunk-parallel form write ``Σ_t c_t U_t`` as one matmul (Titans'
  mini-batch form, NL_REFERENCE 2: ``M_t = β_t M_0 − Σ_i θ_i (β_t/β_i) ∇ℓ_i``, extended with momentum).
* :func:`activation` returns an activation and its derivative, so memory MLPs can be back-propagated
  in closed form (TTT-MLP style) without autograd inside the inner loop.

Axis legend: ``B`` batch, ``H`` heads, ``n`` tokens of one chunk (segment), ``d`` feature width.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dgd_step",
    "dgd_rate",
    "l2_normalize",
    "activation",
    "ACTIVATIONS",
    "softplus_inverse",
    "logit",
    "segsum",
    "chunk_decay_weights",
]


def dgd_rate(lr: Tensor | float, sqnorm: Tensor) -> Tensor:
    """The Sherman-Morrison step size ``η' = η / (1 + η‖x‖²)`` of an exact DGD step."""
    return lr / (1.0 + lr * sqnorm)


def dgd_step(W: Tensor, x: Tensor, u: Tensor, lr: Tensor | float) -> Tensor:
    """One Delta Gradient Descent step: ``argmin_W ½‖W x − u‖² + (1/(2·lr))‖W − W_t‖²``, exactly.

    The normal equations ``W (I + lr x xᵀ) = W_t + lr u xᵀ`` are solved with Sherman-Morrison, which
    holds for any ``‖x‖`` (the paper's printed form assumes ``‖x‖ = 1``):
    ``W = W_t (I − η' x xᵀ) + η' u xᵀ`` with ``η' = lr / (1 + lr‖x‖²)``.

    Args:
        W: ``(d_out, d_in)`` or ``(..., d_out, d_in)`` current weights ``W_t``.
        x: ``(d_in,)`` or ``(..., d_in)`` inputs (keys); every leading index is its own problem and
            broadcasts against ``W``'s leading dims.
        u: ``(..., d_out)`` regression targets (the paper's ``u = −∇_y L``).
        lr: float or tensor broadcastable to the leading dims.
    Returns:
        ``(..., d_out, d_in)`` the minimiser.
    """
    x_col = x.unsqueeze(-1)  # (..., d_in, 1)
    Wx = torch.matmul(W, x_col).squeeze(-1)  # (..., d_out)
    lr = torch.as_tensor(lr, dtype=W.dtype, device=W.device)  # a per-problem lr never promotes the result
    rate = dgd_rate(lr, (x * x).sum(-1))  # (...)
    residual = (u - Wx) * rate.unsqueeze(-1)  # (..., d_out)
    return W + residual.unsqueeze(-1) * x.unsqueeze(-2)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Unit ℓ2 norm along the last axis (Titans / HOPE normalise q and k), computed in fp32 or wider."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * torch.rsqrt((xf * xf).sum(-1, keepdim=True) + eps * eps)).to(x.dtype)


# ----------------------------------------------------------------------------------- activations
def _silu_grad(h: Tensor) -> Tensor:
    s = torch.sigmoid(h)
    return s * (1.0 + h * (1.0 - s))


def _gelu_grad(h: Tensor) -> Tensor:
    cdf = 0.5 * (1.0 + torch.erf(h * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + h * pdf


def _tanh_grad(h: Tensor) -> Tensor:
    t = torch.tanh(h)
    return 1.0 - t * t


def _relu_grad(h: Tensor) -> Tensor:
    return (h > 0).to(h.dtype)


ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "silu": (F.silu, _silu_grad),
    "gelu": (F.gelu, _gelu_grad),
    "tanh": (torch.tanh, _tanh_grad),
    "relu": (F.relu, _relu_grad),
}
"""Memory-MLP activations with their closed-form derivatives (exact erf GELU)."""


def activation(name: str) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(σ, σ')`` for a known activation name; a clear ``ValueError`` lists the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (y > 0): initialises raw rates so they start at ``y``."""
    return y + math.log(-math.expm1(-y))


def logit(p: float) -> float:
    """``x`` with ``sigmoid(x) = p`` (0 < p < 1)."""
    return math.log(p) - math.log1p(-p)


# --------------------------------------------------------------------------------- decay weights
def segsum(x: Tensor) -> Tensor:
    """``out[..., j, i] = Σ_{i < l ≤ j} x[..., l]`` for ``j ≥ i``, 0 above the diagonal.

    Computed as a masked cumulative sum (no subtraction of large prefix sums), so products of many
    decays stay accurate. ``x``: ``(..., n)`` -> ``(..., n, n)``.
    """
    n = x.shape[-1]
    strict = torch.ones(n, n, dtype=torch.bool, device=x.device).tril(-1)  # l > i
    xx = x.unsqueeze(-1).expand(*x.shape, n)  # (..., l, i) = x_l
    return torch.cumsum(xx.masked_fill(~strict, 0.0), dim=-2)  # (..., j, i)


def _suffix_exclusive(x: Tensor) -> Tensor:
    """``out[..., i] = Σ_{l > i} x[..., l]``."""
    incl = torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1])  # Σ_{l ≥ i}
    return torch.cat([incl[..., 1:], torch.zeros_like(incl[..., :1])], dim=-1)


def chunk_decay_weights(
    log_alpha: Tensor, log_beta: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """Coefficients that fold one chunk of ``S_t = β_t S_{t−1} + U_t``, ``W_t = α_t W_{t−1} + S_t``.

    For ``n`` tokens starting from ``(W_0, S_0)``:
    ``W_n = A·W_0 + s0·S_0 + Σ_i c_i U_i`` and ``S_n = Bn·S_0 + Σ_i b_i U_i`` with
    ``A = Π α``, ``c_i = Σ_{j ≥ i} (Π_{i<l≤j} β_l)(Π_{l>j} α_l)``, ``s0 = Σ_j (Π_{l≤j} β_l)(Π_{l>j} α_l)``,
    ``b_i = Π_{l>i} β_l``, ``Bn = Π β``. Without momentum (``log_beta is None``) ``S_t = U_t`` and
    ``c_i = Π_{l>i} α_l``; the momentum outputs are ``None``.

    Args:
        log_alpha: ``(..., n)`` log retention (0 means keep everything).
        log_beta: ``(..., n)`` log momentum decay, or ``None`` for no momentum.
    Returns:
        ``(A, c, s0, b, Bn)`` with shapes ``(...)``, ``(..., n)``, ``(...)``, ``(..., n)``, ``(...)``.
    """
    A = torch.exp(log_alpha.sum(-1))
    a_tail = torch.exp(_suffix_exclusive(log_alpha))  # (..., n)  Π_{l>j} α_l
    if log_beta is None:
        return A, a_tail, None, None, None
    seg = torch.exp(segsum(log_beta))  # (..., j, i)  Π_{i<l≤j} β_l
    mask = torch.ones_like(seg, dtype=torch.bool).tril()
    seg = torch.where(mask, seg, torch.zeros_like(seg))
    c = torch.einsum("...ji,...j->...i", seg, a_tail)
    s0 = (torch.exp(torch.cumsum(log_beta, -1)) * a_tail).sum(-1)
    b = torch.exp(_suffix_exclusive(log_beta))
    Bn = torch.exp(log_beta.sum(-1))
    return A, c, s0, b, Bn
