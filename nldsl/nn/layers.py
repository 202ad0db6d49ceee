"""Small shared layers: RMSNorm, causal short convolution, SwiGLU, rotary embeddings, causal attention.

These are the static (outer-loop, frequency 0) pieces every NL block is built from (NL_REFERENCE 1.3:
projections and MLPs are level-1 components; attention is non-parametric, frequency infinite).
Conventions: activations are batch first, ``(B, T, D)``; attention heads are ``(B, H, T, Dh)``.
Everything is bf16-safe (norms, rotary angles and softmax statistics are computed in float32) and
traceable by ``torch.compile(fullgraph=True)`` (Python branches only on shapes and ints).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RMSNorm",
    "ShortConv",
    "SwiGLU",
    "RotaryEmbedding",
    "apply_rope",
    "causal_attention",
    "check_positive_int",
    "check_finite",
    "compute_dtype",
    "split_spans",
]


# --------------------------------------------------------------------------------------------- checks
def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """Raise a clear ``ValueError`` unless ``value`` is an int >= ``minimum`` (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_finite(name: str, value, minimum: float | None = None) -> float:
    """Raise a clear ``ValueError`` unless ``value`` is a finite real number (>= ``minimum`` if given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate in: float32 for half types, the dtype itself otherwise (float64 stays)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def split_spans(x: Tensor | None, lengths: list[int], dim: int) -> list[Tensor | None]:
    """``x`` cut into consecutive pieces of ``lengths`` along ``dim`` (``None`` stays ``None`` per piece).

    Why not ``x[..., a:b]`` in the chunk loop: the backward of each slice writes a zero tensor of the
    whole sequence and adds it into ``x.grad`` (O(T) per chunk, O(T²/C) per sequence); ``torch.split``'s
    backward concatenates the piece gradients once.
    """
    if x is None:
        return [None] * len(lengths)
    return list(torch.split(x, lengths, dim=dim))


# -------------------------------------------------------------------------------------------- RMSNorm
class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no mean subtraction, no bias), computed in fp32."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Width of the normalised (last) axis."""
        eps: float = 1e-6
        """Added to the mean square before the reciprocal square root."""

        def build(self) -> "RMSNorm":
            return RMSNorm(**asdict(self))

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        check_positive_int("RMSNorm dim", dim)
        if check_finite("RMSNorm eps", eps) <= 0:
            raise ValueError(f"RMSNorm eps must be > 0, got {eps!r}")
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.to(compute_dtype(x.dtype))
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


# ----------------------------------------------------------------------------------------- ShortConv
class ShortConv(nn.Module):
    """Causal depthwise 1-D convolution over time (the Titans / Mamba2 "short conv", window 4).

    ``forward(x, state) -> (y, state)``; ``state`` is the last ``kernel_size - 1`` inputs,
    a tensor ``(B, K-1, D)`` (zeros when ``None``), so a sequence processed in pieces equals the
    whole: ``y_t = b + sum_j w[:, j] * x_{t-K+1+j}``.
    """

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Number of channels (each gets its own filter)."""
        kernel_size: int = 4
        """Window length K, the current token included."""
        bias: bool = False
        """Learned per-channel offset."""

        def build(self) -> "ShortConv":
            return ShortConv(**asdict(self))

    def __init__(self, dim: int, kernel_size: int = 4, bias: bool = False):
        super().__init__()
        check_positive_int("ShortConv dim", dim)
        check_positive_int("ShortConv kernel_size", kernel_size)
        self.dim, self.kernel_size = dim, kernel_size
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel_size))  # depthwise filters (D, 1, K)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.uniform_(self.weight, -1.0 / math.sqrt(kernel_size), 1.0 / math.sqrt(kernel_size))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        K = self.kernel_size
        if state is None:
            state = x.new_zeros(B, K - 1, D)
        if T == 0:  # an empty piece: nothing to read, the window is unchanged
            return x, state
        xx = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+T, D)
        # K shifted multiply-adds rather than F.conv1d: channels-last needs no transposes, and under
        # torch.compile the window fuses into one elementwise kernel (cuDNN's depthwise conv and its
        # weight-gradient reduction were ms per layer on an H200)
        w = self.weight.to(x.dtype)[:, 0, :]  # (D, K)
        y = xx[:, :T] * w[:, 0]
        for j in range(1, K):
            y = y + xx[:, j:j + T] * w[:, j]
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y, xx[:, xx.shape[1] - (K - 1):]


# -------------------------------------------------------------------------------------------- SwiGLU
class SwiGLU(nn.Module):
    """The gated MLP of Transformer++ / Llama: ``down(silu(gate(x)) * up(x))`` (no residual here)."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Input and output width."""
        hidden: int
        """Inner width (Llama uses about 8/3 * dim)."""
        bias: bool = False
        """Biases on the three projections."""

        def build(self) -> "SwiGLU":
            return SwiGLU(**asdict(self))

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        check_positive_int("SwiGLU dim", dim)
        check_positive_int("SwiGLU hidden", hidden)
        self.dim, self.hidden = dim, hidden
        self.gate = nn.Linear(dim, hidden, bias=bias)
        self.up = nn.Linear(dim, hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# ------------------------------------------------------------------------------------------- RoPE
def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the last axis of ``x`` (B, H, T, Dh) by angles with ``cos``/``sin`` (T, Dh/2).

    Half-split (GPT-NeoX) layout; computed in fp32 and cast back.
    """
    xf = x.to(compute_dtype(x.dtype))
    cos, sin = cos.to(xf.dtype), sin.to(xf.dtype)
    x1, x2 = xf.chunk(2, dim=-1)  # (B, H, T, Dh/2) each
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def _rope_tables(seq_len: int, offset: int, head_dim: int, base: float, device: torch.device,
                 dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    pos = torch.arange(seq_len, device=device, dtype=dtype) + offset
    angles = pos[:, None] * inv_freq[None, :]  # (T, Dh/2)
    return angles.cos(), angles.sin()


rope_tables = torch.library.custom_op(
    "nldsl::rope_tables", _rope_tables, mutates_args=(),
    schema="(SymInt seq_len, SymInt offset, int head_dim, float base, Device device, ScalarType dtype) "
           "-> (Tensor, Tensor)")
"""``(cos, sin)``, each ``(seq_len, head_dim / 2)``, of positions ``offset ..``: an op opaque to the compiler.
Traced as plain ops, Inductor fuses the table into every rotation and evaluates cos/sin per element of q and
k (B·H times too often; 22 of 80 ms of a Transformer++ step on an H200); as an op the table is built once."""


@rope_tables.register_fake
def _(seq_len, offset, head_dim, base, device, dtype):
    shape = (seq_len, head_dim // 2)
    return torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with absolute positions ``offset + arange(T)``.

    The offset makes it work in pieces and at generation: a piece starting at position ``p``
    gets exactly the angles it would have had inside the whole sequence.
    """

    @dataclass(kw_only=True)
    class Config:
        head_dim: int
        """Per-head width; must be even (pairs of coordinates are rotated)."""
        base: float = 10000.0
        """Wavelength base theta."""

        def build(self) -> "RotaryEmbedding":
            return RotaryEmbedding(**asdict(self))

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        check_positive_int("RotaryEmbedding head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding head_dim must be even, got {head_dim}")
        if check_finite("RotaryEmbedding base", base) <= 1:
            raise ValueError(f"RotaryEmbedding base must be > 1, got {base!r}")
        self.head_dim, self.base = head_dim, float(base)

    def cos_sin(self, seq_len: int, offset: int = 0, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
        """Angles for positions ``offset .. offset + seq_len - 1``: two ``(T, Dh/2)`` tensors (fp32 or fp64)."""
        dtype = compute_dtype(dtype)  # never a buffer: module.to(bfloat16) must not coarsen the angles
        device = torch.device("cpu") if device is None else torch.device(device)
        return rope_tables(seq_len, offset, self.head_dim, self.base, device, dtype)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate ``x`` (B, H, T, Dh) whose first token sits at absolute position ``offset``."""
        cos, sin = self.cos_sin(x.shape[-2], offset, x.device, x.dtype)
        return apply_rope(x, cos, sin)


# --------------------------------------------------------------------------------------- attention
def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, window: int = 0) -> Tensor:
    """Causal softmax attention via ``F.scaled_dot_product_attention``: ``(B, H, Tq, Dh) -> (B, H, Tq, Dh)``.

    When ``k``/``v`` hold more positions than ``q`` (a KV cache: the queries are the last ``Tq``
    positions), query ``i`` sees keys ``0 .. Tk - Tq + i``. ``Tq == Tk`` is the fast ``is_causal`` path.
    ``window > 0``: sliding-window attention, query ``i`` sees only the last ``window`` keys up to itself
    (``Tk - Tq + i - window < j``), through a boolean mask.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    if window > 0:
        if Tq > Tk:
            raise ValueError(f"causal_attention: {Tq} queries but only {Tk} keys")
        rows = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
        cols = torch.arange(Tk, device=q.device)[None, :]
        mask = (cols <= rows) & (cols > rows - window)  # (Tq, Tk), True = attend
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if Tq > Tk:
        raise ValueError(f"causal_attention: {Tq} queries but only {Tk} keys")
    if Tq == 1:  # one new token sees the whole cache
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    rows = torch.arange(Tq, device=q.device)[:, None] + (Tk - Tq)
    mask = torch.arange(Tk, device=q.device)[None, :] <= rows  # (Tq, Tk), True = attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
