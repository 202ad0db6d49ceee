"""Quintic Newton-Schulz orthogonalisation (NL paper arXiv Eq. 42-44, section 4.2 "Muon").

The NL paper reads Newton-Schulz as an inner optimisation level: a few GD-like steps on an
orthogonality objective ‖XᵀX − I‖² that start from the (momentum) matrix itself. Each step applies
the odd matrix polynomial

    X ← a·X + b·(X Xᵀ) X + c·(X Xᵀ)² X,    (a, b, c) = (3.4445, −4.7750, 2.0315)

whose scalar form p(σ) = aσ + bσ³ + cσ⁵ pushes every singular value of a Frobenius-normalised input
towards an oscillating band around 1 (roughly [0.7, 1.2]) while keeping the singular vectors: the
result approximates U Vᵀ of the SVD G = U S Vᵀ.

Numerics: the Frobenius norm is taken in at least float32. float64 inputs run in float64 (used by the
reference tests); float32 runs in float32; bfloat16/float16 inputs run in bfloat16 on CUDA (tensor
cores accumulate each matmul in float32, the standard Muon trade-off) and in float32 on CPU, where
bf16 matmuls are slow and no faster than fp32. The result has the input's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

NS_COEFFS = (3.4445, -4.7750, 2.0315)
"""(a, b, c) of the quintic iteration; chosen (Muon) to maximise the slope at 0, not to converge to 1."""


def ns_compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the iteration runs in for an input of ``dtype`` on ``device`` (see module docstring)."""
    if dtype == torch.float64:
        return torch.float64
    if dtype in (torch.bfloat16, torch.float16) and device.type == "cuda":
        return torch.bfloat16
    return torch.float32


def unit_norm(x: Tensor, eps: float, dims: tuple[int, ...], rms: bool = False) -> Tensor:
    """``x / (n + eps·min(1, n))`` with ``n`` the ℓ2 norm (or RMS) over ``dims``; zero stays zero.

    The norm is taken on ``x / max|x|``, so it neither overflows (fp32 entries above ~1e19 square to inf)
    nor underflows. For ``n >= 1`` this is the classic ``x / (n + eps)``; below 1 the guard shrinks with
    ``n``, so the result has norm ``1/(1 + eps)`` for every non-zero input, however small (scale-free).
    """
    scale = x.abs().amax(dim=dims, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # (..., 1, 1); 1 for an all-zero x
    y = x / scale  # entries in [-1, 1]
    n = y.square().sum(dim=dims, keepdim=True)
    if rms:
        n = n / math.prod(x.shape[d] for d in dims)
    n = n.sqrt()  # ‖x‖ / scale
    denom = n + eps * torch.minimum(n, scale.reciprocal())  # (‖x‖ + eps·min(1, ‖x‖)) / scale
    return y / torch.where(n > 0, denom, torch.ones_like(denom))


def newton_schulz(G: Tensor, steps: int = 5, *, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalise ``G`` (≈ U Vᵀ of its SVD) with ``steps`` quintic Newton-Schulz steps.

    Args:
        G: a matrix (m, n) or a batch (..., m, n); each matrix is treated on its own. Any aspect ratio.
        steps: number of iterations (Muon and M3 use 5).
        eps: guards the Frobenius normalisation: ``G / (‖G‖ + eps·min(1, ‖G‖))`` (see :func:`unit_norm`),
            so a zero matrix maps to zero and any non-zero one, however small or large, is orthogonalised.
        dtype: force the compute dtype; by default see :func:`ns_compute_dtype`.
    Returns:
        A tensor of ``G``'s shape and dtype with singular values in roughly [0.7, 1.2].
    """
    if not isinstance(G, Tensor) or G.ndim < 2:
        shape = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {shape}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"newton_schulz steps must be a positive int, got {steps!r}")
    if G.numel() == 0:
        return G.clone()
    compute = dtype or ns_compute_dtype(G.dtype, G.device)
    norm_dtype = torch.float64 if compute == torch.float64 else torch.float32
    X = unit_norm(G.to(norm_dtype), eps, (-2, -1)).to(compute)
    # Iterate on the wide orientation so the Gram matrix X Xᵀ is the smaller one (min(m, n) squared).
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # (..., n, m)
    a, b, c = NS_COEFFS
    for _ in range(steps):
        A = X @ X.mT  # (..., k, k), k = min(m, n)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if tall:
        X = X.mT  # back to (..., m, n)
    return X.to(G.dtype)
