"""The math of one CMS level (NL arXiv Eq. 70-71): MLP reads, closed-form l2 errors, inner learning rates.

Shared by :mod:`nldsl.nn.cms` (the chunked fast form); the float64 reference
(:mod:`nldsl.nn.cms_reference`) shares none of it. Weights are ``(out, in)`` like ``nn.Linear``; a
weight is shared ``(O, I)`` or per sequence ``(B, O, I)``. Sampling parameters: B batch, T tokens,
D dim, H hidden.

Inner learning rates (``LevelRate``; the ``lr`` of ``optimizer gd(lr = ...)``):

* ``constant``: ``eta``, a float.
* ``learned``: a learned scalar ``eta = softplus(rho)`` (``rho`` is the parameter, starting at
  ``softplus^-1(lr)``): positive, and an Adam step moves it multiplicatively, not by +-lr.
* ``data``: ``eta_t = scale * act(<w, z_t> + b)`` per token, ``z_t`` the level's normalised input, ``act``
  softplus (``b`` starts at ``softplus^-1(1)``: ``eta`` starts at ``scale``) or sigmoid (``b`` starts at 0:
  ``eta`` starts at ``scale / 2``, stays in ``(0, scale)``); ``w`` starts at N(0, 0.02^2). The token's
  contribution to the accumulated error is weighted by its own ``eta_t``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("swiglu", "mlp")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
LR_MODES = ("constant", "learned", "data")
LR_ACTIVATIONS = ("softplus", "sigmoid")


def act_fn(name: str, a: Tensor) -> Tensor:
    if name == "silu":
        return F.silu(a)
    if name == "relu":
        return F.relu(a)
    return F.gelu(a, approximate="tanh" if name == "gelu_tanh" else "none")


def act_grad(name: str, a: Tensor) -> Tensor:
    """Derivative of :func:`act_fn`, for the closed-form l2 gradients."""
    if name == "silu":
        s = torch.sigmoid(a)
        return s * (1 + a * (1 - s))
    if name == "relu":
        return (a > 0).to(a.dtype)
    if name == "gelu":
        return 0.5 * (1 + torch.erf(a / math.sqrt(2))) + a * torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    c = math.sqrt(2 / math.pi)
    th = torch.tanh(c * (a + 0.044715 * a**3))
    return 0.5 * (1 + th) + 0.5 * a * (1 - th * th) * c * (1 + 3 * 0.044715 * a * a)


def param_shapes(kind: str, dim: int, hidden: int, bias: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of one level's weights (``(out, in)`` like ``nn.Linear``)."""
    if kind == "swiglu":
        return {"gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}
    shapes = {"w1": (hidden, dim), "w2": (dim, hidden)}
    if bias:
        shapes.update(b1=(hidden,), b2=(dim,))
    return shapes


def init_weight(shape: tuple[int, ...]) -> Tensor:
    """``nn.Linear``-like uniform init with bound 1/sqrt(fan_in); biases start at zero."""
    if len(shape) == 1:
        return torch.zeros(shape)
    bound = 1.0 / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound)


# ---------------------------------------------------------------------------------------- reads
class EtaWeighted:
    """A per-sequence weight read as ``base + delta`` whose gradient w.r.t. ``delta`` weights each token by
    its rate: ``d/d delta = sum_t eta_t dL/dW|_t`` (the task surprise of a data-rate level), while the base
    and the input get the plain gradient. ``read`` = ``(base + delta.detach())`` in the activation dtype."""

    def __init__(self, read: Tensor, delta: Tensor, eta: Tensor):
        self.read, self.delta, self.eta = read, delta, eta


class _EtaRead(torch.autograd.Function):
    """``u @ w.T`` (u (B, T, I), w (B, O, I)); backward also returns the eta-weighted gradient of delta."""

    @staticmethod
    def forward(ctx, u: Tensor, w: Tensor, delta: Tensor, eta: Tensor) -> Tensor:
        ctx.save_for_backward(u, w, eta)
        ctx.delta_dtype = delta.dtype
        return torch.bmm(u, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g: Tensor):
        u, w, eta = ctx.saved_tensors
        gu = torch.bmm(g, w) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), u) if ctx.needs_input_grad[1] else None
        gd = None
        if ctx.needs_input_grad[2]:
            ge = g * eta[..., None].to(g.dtype)  # (B, T, O): token t's error times eta_t
            gd = torch.bmm(ge.transpose(1, 2), u).to(ctx.delta_dtype)
        return gu, gw, gd, None


def _lin(x: Tensor, w) -> Tensor:
    """``x @ w.T`` with shared ``w`` (O, I), per-sequence ``w`` (B, O, I) or an ``EtaWeighted``; -> (B, T, O)."""
    if isinstance(w, EtaWeighted):
        return _EtaRead.apply(x, w.read, w.delta, w.eta)
    return F.linear(x, w) if w.dim() == 2 else torch.bmm(x, w.transpose(1, 2))


def _lin_t(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w``: the transposed read used by backprop; x (B, T, O) -> (B, T, I)."""
    return x @ w if w.dim() == 2 else torch.bmm(x, w)


def _bias(b) -> Tensor:
    if isinstance(b, EtaWeighted):  # value: the read; gradient to delta: sum_t eta_t * error_t
        tap = (b.delta - b.delta.detach()).to(b.read.dtype)[:, None, :] * b.eta[..., None].to(b.read.dtype)
        return b.read[:, None, :] + tap  # (B, T, H)
    return b if b.dim() == 1 else b[:, None, :]  # (B, 1, H) for per-sequence biases


def mlp_apply(kind: str, act: str, z: Tensor, w: dict) -> tuple[Tensor, tuple]:
    """The level's MLP branch on ``z`` (B, T, D); returns the output and what the l2 gradient needs."""
    if kind == "swiglu":
        a, b = _lin(z, w["gate"]), _lin(z, w["up"])  # (B, T, H)
        h = F.silu(a) * b
        return _lin(h, w["down"]), (a, b, h)
    a = _lin(z, w["w1"])
    if "b1" in w:
        a = a + _bias(w["b1"])
    h = act_fn(act, a)
    o = _lin(h, w["w2"])
    return (o + _bias(w["b2"]) if "b2" in w else o), (a, None, h)


def l2_grads(kind: str, act: str, z: Tensor, w: dict[str, Tensor], o: Tensor, cache: tuple,
             eta: Tensor | None = None) -> dict[str, Tensor]:
    """Per-sequence sum over tokens of d/dW 1/2||MLP(z_t) - z_t||^2 in closed form: {name: (B, *shape)}.

    With ``eta`` (B, T) each token's term is weighted by its rate (a data-dependent lr).
    """
    a, b, h = cache
    e = o - z  # (B, T, D) reconstruction error
    if eta is not None:
        e = e * eta[..., None].to(e.dtype)  # every term below is linear in the token's error
    dh = _lin_t(e, w["down"] if kind == "swiglu" else w["w2"])  # (B, T, H)
    g_out = e.transpose(1, 2) @ h  # (B, D, H)
    if kind == "swiglu":
        da = dh * b * act_grad("silu", a)
        db = dh * F.silu(a)
        return {"gate": da.transpose(1, 2) @ z, "up": db.transpose(1, 2) @ z, "down": g_out}  # (B, H, D)
    da = dh * act_grad(act, a)
    grads = {"w1": da.transpose(1, 2) @ z, "w2": g_out}
    if "b1" in w:
        grads.update(b1=da.sum(1), b2=e.sum(1))
    return grads


# ---------------------------------------------------------------------------------------- rates
def softplus_inverse(y: float) -> float:
    """``x`` with ``softplus(x) = y`` (y > 0)."""
    return y + math.log(-math.expm1(-y))


class LevelRate(nn.Module):
    """The inner learning rate of one level (module docstring): no parameters when constant."""

    def __init__(self, mode: str, value: float, activation: str, dim: int):
        super().__init__()
        self.mode, self.value, self.activation = mode, float(value), activation
        if mode == "learned":
            self.raw = nn.Parameter(torch.tensor(softplus_inverse(value)))
        elif mode == "data":
            self.weight = nn.Parameter(torch.randn(dim) * 0.02)
            self.bias = nn.Parameter(torch.tensor(softplus_inverse(1.0) if activation == "softplus" else 0.0))

    def scalar(self, dtype: torch.dtype):
        """The level's lr (constant or learned; a float or a 0-d tensor in ``dtype``)."""
        return self.value if self.mode == "constant" else F.softplus(self.raw.to(dtype))

    def per_token(self, z: Tensor, dtype: torch.dtype) -> Tensor:
        """``eta_t`` of a data-dependent rate for every token of ``z`` (B, T, D): (B, T) in ``dtype``."""
        pre = z.to(dtype) @ self.weight.to(dtype) + self.bias.to(dtype)  # (B, T)
        act = F.softplus(pre) if self.activation == "softplus" else torch.sigmoid(pre)
        return self.value * act


# ---------------------------------------------------------------------------------------- from_mlps
def mlp_weights(mlp: nn.Module) -> tuple[dict, dict[str, Tensor]]:
    """``(CMSLevel fields, weights)`` read from a pre-trained MLP, for ``CMS.from_mlps``."""
    for g, u, d in (("gate", "up", "down"), ("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")):
        lins = [getattr(mlp, n, None) for n in (g, u, d)]
        if all(isinstance(lin, nn.Linear) for lin in lins):
            if any(lin.bias is not None for lin in lins):
                raise ValueError("from_mlps: SwiGLU MLPs with biases are not supported")
            ws = [lin.weight.detach().clone() for lin in lins]
            return {"kind": "swiglu", "hidden": ws[0].shape[0]}, dict(zip(("gate", "up", "down"), ws))
    if isinstance(mlp, nn.Sequential) and len(mlp) == 3 and isinstance(mlp[0], nn.Linear) and isinstance(mlp[2], nn.Linear):
        act = mlp[1]
        names = {nn.SiLU: "silu", nn.ReLU: "relu"}
        if isinstance(act, nn.GELU):
            name = "gelu_tanh" if act.approximate == "tanh" else "gelu"
        elif type(act) in names:
            name = names[type(act)]
        else:
            raise ValueError(f"from_mlps: unsupported activation {type(act).__name__}; known: {ACTIVATIONS}")
        bias = mlp[0].bias is not None
        if (mlp[2].bias is not None) != bias:
            raise ValueError("from_mlps: both Linear layers must have biases, or neither")
        weights = {"w1": mlp[0].weight, "w2": mlp[2].weight}
        if bias:
            weights.update(b1=mlp[0].bias, b2=mlp[2].bias)
        meta = {"kind": "mlp", "hidden": mlp[0].out_features, "activation": name, "bias": bias}
        return meta, {k: v.detach().clone() for k, v in weights.items()}
    raise ValueError(f"from_mlps: cannot read the weights of {type(mlp).__name__}: expected a SwiGLU "
                     "(gate/up/down, gate_proj/up_proj/down_proj or w1/w3/w2) or Sequential(Linear, act, Linear)")
