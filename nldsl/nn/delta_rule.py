"""Chunkwise gated delta rule in torch: the seam where flash-linear-attention (fla) plugs in on GPU.

Recurrence (Gated DeltaNet; NL arXiv Eq. 65 with a gate; NL_REFERENCE 1.5(h)), per batch and head:
``S_t = exp(g_t) S_{t−1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ`` and ``o_t = scale · S_t q_t``.

State layout (fla's): ``S`` is stored **key-major** as ``h = Sᵀ`` with shape ``(B, H, K, V)``, so
``o_t = scale · q_tᵀ h_t``. Activations are ``(B, T, H, D)`` like fla. ``g`` is the natural-log decay.

Fast form (the "WY / UT" transform, as in DeltaNet / Gated DeltaNet): inside a chunk of ``n`` tokens
with cumulative log decay ``G_t``, the pseudo-values ``u_t = β_t (v_t − Σ_{i<t} e^{G_t−G_i} (k_t·k_i) u_i
− e^{G_t} h_0ᵀ k_t)`` solve one unit-lower-triangular system, then
``o = e^{G} q h_0 + (mask ⊙ e^{G_t−G_i} q kᵀ) u`` and ``h_n = e^{G_n} h_0 + (e^{G_n−G} k)ᵀ u``.
A Python loop runs over chunks only. :func:`nldsl.nn.reference.ref_gated_delta_rule` is the float64
token-by-token reference.
"""
from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from nldsl.nn.layers import split_spans

__all__ = ["chunk_gated_delta_rule", "fla_available", "fla_refused", "FLA_INSTALLED"]

FLA_INSTALLED: bool = importlib.util.find_spec("fla") is not None
"""Whether flash-linear-attention can be imported (checked without importing it)."""


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def fla_refused(device: torch.device) -> str | None:
    """Why fla's gated delta rule must not run here, or ``None``: fla 0.6 raises on Hopper (sm 9.x) with
    Triton >= 3.4.0 and < 3.7.1, whose gated ``chunk_bwd_dqkwg`` is wrong (fla issue #640)."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return None
    try:
        import triton
    except ImportError:
        return "Triton is not installed"
    if (3, 4, 0) <= _version(triton.__version__) < (3, 7, 1):
        return f"Triton {triton.__version__} on Hopper: fla's gated delta rule needs Triton >= 3.7.1 there"
    return None


def fla_available(device: torch.device) -> bool:
    """The dispatch hook (the version guard): fla runs only when it is installed, the tensors live on
    CUDA and :func:`fla_refused` finds nothing; otherwise the torch chunked path (the reference) runs."""
    return FLA_INSTALLED and device.type == "cuda" and fla_refused(device) is None


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    initial_state: Tensor | None = None,
    output_final_state: bool = True,
    chunk_size: int = 64,
    scale: float = 1.0,
    use_fla: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over a sequence, with fla's argument order and shapes.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; g (log decay), beta: ``(B, T, H)``.
        initial_state: ``(B, H, K, V)`` or ``None`` (zeros).
        output_final_state: also return ``h_T``.
        chunk_size: tokens per WY block (the result does not depend on it).
        scale: output scale (fla's default is ``K**-0.5``; here it is 1, i.e. ``o_t = S_t q_t``).
        use_fla: force (True) or forbid (False) the fla kernel; ``None`` = :func:`fla_available`.
    Returns:
        ``(o, h_T)``: ``(B, T, H, V)`` in ``v``'s dtype and ``(B, H, K, V)`` in float32 or wider.
    """
    if use_fla is None:
        use_fla = fla_available(q.device)
    if use_fla:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_kernel

        return fla_kernel(
            q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state
        )
    return _torch_chunked(q, k, v, g, beta, initial_state, output_final_state, chunk_size, scale)


def _torch_chunked(q, k, v, g, beta, h0, output_final_state, chunk_size, scale):
    B, T, H, K = k.shape
    V = v.shape[-1]
    cd = torch.promote_types(v.dtype, torch.float32)
    q, k, v = (x.transpose(1, 2).to(cd) for x in (q, k, v))  # (B, H, T, ·)
    g, beta = (x.transpose(1, 2).to(cd) for x in (g, beta))  # (B, H, T)
    h = h0.to(cd) if h0 is not None else q.new_zeros(B, H, K, V)
    outs, lengths = [], [min(chunk_size, T - t0) for t0 in range(0, T, chunk_size)]
    pieces = zip(*(split_spans(x, lengths, -2) for x in (q, k, v)), *(split_spans(x, lengths, -1) for x in (g, beta)))
    for qc, kc, vc, gc, bc in pieces:
        o, h = _chunk(qc * scale, kc, vc, gc, bc, h)
        outs.append(o)
    o = torch.cat(outs, dim=-2) if outs else v.new_zeros(B, H, 0, V)
    return o.transpose(1, 2).to(v.dtype), (h if output_final_state else None)


def _chunk(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """One WY block: ``(B, H, n, ·)`` inputs, state ``h`` ``(B, H, K, V)`` -> outputs and ``h_n``."""
    n = k.shape[-2]
    G = torch.cumsum(g, dim=-1)  # (B, H, n)
    le = torch.ones(n, n, dtype=torch.bool, device=k.device).tril()
    diff = G.unsqueeze(-1) - G.unsqueeze(-2)  # (B, H, t, i) = G_t − G_i
    decay = torch.where(le, torch.exp(torch.where(le, diff, torch.zeros_like(diff))), torch.zeros_like(diff))
    kk = torch.matmul(k, k.transpose(-1, -2))  # (B, H, n, n)
    strict = beta.unsqueeze(-1) * decay * kk  # diagonal ignored by the unitriangular solve
    rhs = beta.unsqueeze(-1) * (v - torch.exp(G).unsqueeze(-1) * torch.matmul(k, h))  # (B, H, n, V)
    u = torch.linalg.solve_triangular(strict, rhs, upper=False, unitriangular=True)  # (B, H, n, V)
    qk = torch.matmul(q, k.transpose(-1, -2)) * decay  # (B, H, n, n)
    o = torch.exp(G).unsqueeze(-1) * torch.matmul(q, h) + torch.matmul(qk, u)
    tail = torch.exp(G[..., -1:] - G).unsqueeze(-1)  # (B, H, n, 1)  e^{G_n − G_i}
    h = torch.exp(G[..., -1])[..., None, None] * h + torch.matmul((k * tail).transpose(-1, -2), u)
    return o, h
