"""Continuum Memory System (CMS): MLP levels that each update their weights every C(l) tokens.

Paper: NL arXiv Eq. 70-74 (NeurIPS Eq. 30-31), NL_REFERENCE 3.1 and 7 items 4-6. Level l is a residual
block ``u + MLP_l(norm_l(u))`` whose weights are ``W_l = W_l,base + dW_l``: the base is an ``nn.Parameter``
(outer loop), the fast delta ``dW_l`` lives in the state, one per sequence (batch first), so reads are
batched matmuls with per-sequence weights. Level l changes its weights only when the absolute position
p (tokens seen, carried across pieces) reaches a multiple of C(l), right before token p is read
(Eq. 71; a sum over the chunk, not a mean):

    dW_l <- dW_l - lr_l * sum_{t in [p - C(l), p)} f_l(W_l; x_t)

The accumulated error f_l comes from the level's objective: ``"l2"`` = gradient of 1/2||MLP(z_t) - z_t||^2
(self-supervised reconstruction of the normalised level input, closed form, so the CMS updates inside a
pure forward); ``"task"`` = the local surprise of the model's task loss, accumulated from outside by
:func:`nldsl.nn.surprise.train_segments` into ``state[...]["surprise"]`` and applied here at boundaries.
Writes are stop-grad by default; the base gets outer gradients through every read ("base + delta").

Variants: ``sequential`` (chained, HOPE's Eq. 73/97), ``independent`` (levels on the same input,
``u + sum_l softmax(a)_l MLP_l``, Eq. 74), ``nested`` (Eq. 72: one shared base; at each boundary of level
s the state of level s+1 is reset to level s's current weights and its accumulator cleared).
See docs/runtime-blocks.md. Sampling parameters (B batch, T tokens, D dim, H hidden).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nldsl.nn.layers import RMSNorm, check_finite, check_positive_int, compute_dtype

KINDS = ("swiglu", "mlp")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
OBJECTIVES = ("task", "l2")
VARIANTS = ("sequential", "independent", "nested")


# ------------------------------------------------------------------------------------ level math
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


def _lin(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w.T`` with shared ``w`` (O, I) or per-sequence ``w`` (B, O, I); x (B, T, I) -> (B, T, O)."""
    return F.linear(x, w) if w.dim() == 2 else torch.bmm(x, w.transpose(1, 2))


def _lin_t(x: Tensor, w: Tensor) -> Tensor:
    """``x @ w``: the transposed read used by backprop; x (B, T, O) -> (B, T, I)."""
    return x @ w if w.dim() == 2 else torch.bmm(x, w)


def _bias(b: Tensor) -> Tensor:
    return b if b.dim() == 1 else b[:, None, :]  # (B, 1, H) for per-sequence biases


def mlp_apply(kind: str, act: str, z: Tensor, w: dict[str, Tensor]) -> tuple[Tensor, tuple]:
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


def l2_grads(kind: str, act: str, z: Tensor, w: dict[str, Tensor], o: Tensor, cache: tuple) -> dict[str, Tensor]:
    """Per-sequence sum over tokens of d/dW 1/2||MLP(z_t) - z_t||^2 in closed form: {name: (B, *shape)}."""
    a, b, h = cache
    e = o - z  # (B, T, D) reconstruction error
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


# ---------------------------------------------------------------------------------------- config
@dataclass(kw_only=True)
class CMSLevel:
    """One CMS level (plain data; ``CMS.Config.levels`` also accepts dicts with these keys)."""

    hidden: int
    """Inner width of this level's MLP."""
    period: int | None = None
    """C(l) in tokens: the weights change at every multiple of it. ``None`` or 0 = frozen (outer loop only)."""
    lr: float = 1e-3
    """Inner learning rate eta_l (>= 0; 0 recovers the frozen level)."""
    objective: str = "task"
    """``"task"`` (local surprise of the task loss, via surprise.train_segments) or ``"l2"`` (reconstruction)."""
    kind: str = "swiglu"
    """``"swiglu"`` (gate/up/down) or ``"mlp"`` (w1, activation, w2)."""
    activation: str = "gelu"
    """Activation of the ``"mlp"`` kind: gelu, gelu_tanh, silu, relu."""
    bias: bool = False
    """Biases (``"mlp"`` kind only); they are fast weights too."""

    def validate(self, i: int) -> "CMSLevel":
        check_positive_int(f"CMS level {i} hidden", self.hidden)
        if self.period is not None:
            check_positive_int(f"CMS level {i} period", self.period, minimum=0)
        check_finite(f"CMS level {i} lr", self.lr, minimum=0.0)
        for name, value, allowed in (("objective", self.objective, OBJECTIVES), ("kind", self.kind, KINDS),
                                     ("activation", self.activation, ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"CMS level {i} {name} must be one of {allowed}, got {value!r}")
        if self.bias and self.kind != "mlp":
            raise ValueError(f"CMS level {i}: bias is only supported for kind 'mlp'")
        return self

    @property
    def in_context(self) -> bool:
        return bool(self.period)


class CMS(nn.Module):
    """Continuum Memory System; ``forward(x (B, T, D), state=None) -> (y (B, T, D), state)``."""

    Level = CMSLevel

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D (input and output of every level)."""
        levels: list[Any] = field(default_factory=list)
        """``CMSLevel`` entries or dicts, in chain order (input side first)."""
        variant: str = "sequential"
        """``sequential`` | ``independent`` | ``nested`` (see the module docstring)."""
        pre_norm: bool = True
        """RMSNorm on each level's input (the residual skips it)."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon."""
        stopgrad: bool = True
        """Stop-grad writes. False: outer gradients also flow through "l2" writes (meta-gradient)."""

        def build(self) -> "CMS":
            return CMS(self)

    def __init__(self, config: "CMS.Config | None" = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"CMS: pass either a Config or keyword fields, not both (got {sorted(kwargs)})")
        cfg = config if config is not None else CMS.Config(**kwargs)
        check_positive_int("CMS dim", cfg.dim)
        if cfg.variant not in VARIANTS:
            raise ValueError(f"CMS variant must be one of {VARIANTS}, got {cfg.variant!r}")
        if not cfg.levels:
            raise ValueError("CMS needs at least one level")
        levels = [(lv if isinstance(lv, CMSLevel) else CMSLevel(**lv)).validate(i) for i, lv in enumerate(cfg.levels)]
        if cfg.variant == "nested":
            _check_nested(levels)
        self.config, self.dim, self.levels, self.variant = cfg, cfg.dim, levels, cfg.variant
        n_bases = 1 if cfg.variant == "nested" else len(levels)
        self.bases = nn.ModuleList(nn.ParameterDict({
            name: nn.Parameter(_init(shape)) for name, shape in
            param_shapes(lv.kind, cfg.dim, lv.hidden, lv.bias).items()}) for lv in levels[:n_bases])
        self.norms = nn.ModuleList(RMSNorm(cfg.dim, cfg.norm_eps) if cfg.pre_norm else nn.Identity() for _ in levels)
        if cfg.variant == "independent":
            self.agg_logits = nn.Parameter(torch.zeros(len(levels)))

    # ------------------------------------------------------------------------------- construction
    @classmethod
    def from_mlps(cls, mlps, periods, lrs=1e-3, objective: str = "task", variant: str = "sequential",
                  pre_norm: bool = False, **config) -> "CMS":
        """Ad-hoc level stacking (NL 7.3): level l starts from the pre-trained ``mlps[l]`` (copied).

        Accepts ``nldsl.nn.layers.SwiGLU``, Llama-style MLPs (``gate_proj/up_proj/down_proj`` or
        ``w1/w3/w2``) and ``nn.Sequential(Linear, activation, Linear)``. With ``lrs = 0`` the CMS
        computes ``u + mlp(u)`` level after level, i.e. the frozen model.
        """
        mlps = list(mlps) if isinstance(mlps, (list, tuple)) else [mlps]
        periods = list(periods) if isinstance(periods, (list, tuple)) else [periods]
        lrs = list(lrs) if isinstance(lrs, (list, tuple)) else [lrs] * len(periods)
        if variant == "nested" and len(mlps) == 1:
            mlps = mlps * len(periods)
        if not (len(mlps) == len(periods) == len(lrs)):
            raise ValueError(f"from_mlps: {len(mlps)} mlps, {len(periods)} periods, {len(lrs)} lrs must match")
        specs = [mlp_weights(m) for m in mlps]
        dim = specs[0][1]["gate" if specs[0][0]["kind"] == "swiglu" else "w1"].shape[1]
        levels = [CMSLevel(period=p, lr=lr, objective=objective, **meta) for (meta, _), p, lr in zip(specs, periods, lrs)]
        cms = cls(CMS.Config(dim=dim, levels=levels, variant=variant, pre_norm=pre_norm, **config))
        with torch.no_grad():
            for base, (_, weights) in zip(cms.bases, specs):
                for name, value in weights.items():
                    base[name].copy_(value)
        return cms

    # ------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        B, T, D = x.shape
        pos0 = 0 if state is None else int(state["pos"])
        st = [None if state is None else state.get(f"level{s}") for s in range(len(self.levels))]
        if self.variant == "nested":
            y, st = self._forward_nested(x, st, pos0)
        elif self.variant == "sequential":
            y = x
            for s in range(len(self.levels)):
                branch, st[s] = self._run_level(s, y, st[s], pos0)
                y = y + branch
        else:
            weights = torch.softmax(self.agg_logits.to(compute_dtype(self.agg_logits.dtype)), 0).to(x.dtype)
            y = x
            for s in range(len(self.levels)):
                branch, st[s] = self._run_level(s, x, st[s], pos0)
                y = y + weights[s] * branch
        new_state: dict = {"pos": pos0 + T}
        for s, lv in enumerate(self.levels):
            if lv.in_context:
                new_state[f"level{s}"] = self._materialise(s, st[s], B, x.device)
        return y, new_state

    def _run_level(self, s: int, u: Tensor, lst, pos0: int) -> tuple[Tensor, Any]:
        """All tokens of one level, split only where this level's weights change (a loop over chunks)."""
        lv, T = self.levels[s], u.shape[1]
        if not lv.in_context:
            return self._span(s, u, None), None
        C = lv.period
        starts = [0] + [p - pos0 for p in range((pos0 // C + 1) * C, pos0 + T, C)]
        if lv.objective == "task":  # no writes inside a pure forward: only a pending update can apply
            starts = starts[:2] if lst is not None and pos0 % C else [0]
        outs = []
        for a, b in zip(starts, starts[1:] + [T]):
            if lst is not None and (pos0 + a) % C == 0:
                lst = self._apply_pending(s, lst)
            o = self._span(s, u[:, a:b], lst)
            if isinstance(o, tuple):
                o, lst = o
            outs.append(o)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 1)), lst

    def _span(self, s: int, u: Tensor, lst):
        """One stretch of constant weights: the branch output (and the new level state for l2 levels)."""
        lv = self.levels[s]
        z = self.norms[s](u)
        w = self._weights(s, lst, u.dtype)
        o, cache = mlp_apply(lv.kind, lv.activation, z, w)
        if not (lv.in_context and lv.objective == "l2"):
            return o
        cdt = compute_dtype(self._base(s)["up" if lv.kind == "swiglu" else "w1"].dtype)
        stop = self.config.stopgrad
        acc_t = lambda t: None if t is None else (t.detach() if stop else t).to(cdt)  # noqa: E731
        grads = l2_grads(lv.kind, lv.activation, acc_t(z), {k: acc_t(v) for k, v in w.items()}, acc_t(o),
                         tuple(acc_t(c) for c in cache))
        acc = grads if lst is None or lst.get("acc") is None else {k: lst["acc"][k] + g for k, g in grads.items()}
        return o, {"delta": None if lst is None else lst.get("delta"), "acc": acc}

    def _base(self, s: int) -> nn.ParameterDict:
        return self.bases[0 if self.variant == "nested" else s]

    def _weights(self, s: int, lst, dtype: torch.dtype) -> dict[str, Tensor]:
        """Shared base weights, or per-sequence ``base + delta`` summed in fp32 then cast (bf16-safe)."""
        base = self._base(s)
        delta = None if lst is None else lst.get("delta")
        if delta is None:
            return {k: v.to(dtype) for k, v in base.items()}
        return {k: (base[k].to(delta[k].dtype) + delta[k]).to(dtype) for k in base}

    def _apply_pending(self, s: int, lst: dict) -> dict:
        """dW <- dW - lr * accumulated error; the accumulator restarts (a boundary of level s)."""
        key = "surprise" if self.levels[s].objective == "task" else "acc"
        acc, delta, lr = lst.get(key), lst.get("delta"), self.levels[s].lr
        if acc is None:
            return lst
        new_delta = {k: (-lr * g if delta is None else delta[k] - lr * g) for k, g in acc.items()}
        return {"delta": new_delta, key: None}

    def _materialise(self, s: int, lst, B: int, device) -> dict:
        """The level's returned state; zeros where nothing was written yet are stride-0 views (no memory)."""
        key = "surprise" if self.levels[s].objective == "task" else "acc"
        base = self._base(s)
        zeros = lambda: {k: torch.zeros((), device=device, dtype=compute_dtype(v.dtype)).expand(B, *v.shape)  # noqa: E731
                         for k, v in base.items()}
        lst = lst or {}
        return {"delta": lst.get("delta") or zeros(), key: lst.get(key) or zeros()}

    def _forward_nested(self, x: Tensor, st: list, pos0: int) -> tuple[Tensor, list]:
        """Chained levels over spans between any level's boundaries; re-initialise level s+1 from level s."""
        T, periods = x.shape[1], [lv.period for lv in self.levels]
        cuts = sorted({p - pos0 for C in periods if C for p in range((pos0 // C + 1) * C, pos0 + T, C)})
        outs = []
        for a, b in zip([0] + cuts, cuts + [T]):
            p = pos0 + a
            for s, C in enumerate(periods):
                if C and p % C == 0 and st[s] is not None:
                    st[s] = self._apply_pending(s, st[s])
                if s and periods[s - 1] and p % periods[s - 1] == 0:
                    st[s] = self._reinit(s, st[s], st[s - 1])
            y = x[:, a:b]
            for s in range(len(self.levels)):
                o = self._span(s, y, st[s])
                if isinstance(o, tuple):
                    o, st[s] = o
                y = y + o
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 1)), st

    def _reinit(self, s: int, lst, src) -> dict | None:
        """Level s takes level s-1's current delta (same shared base); its accumulator is cleared.

        With stop-grad writes the value is copied but gradients keep flowing to level s's own delta, so
        the task surprise of level s stays its own (straight-through assignment).
        """
        src_delta = None if src is None else src.get("delta")
        own = None if lst is None else lst.get("delta")
        if src_delta is None and own is None:
            return None
        if src_delta is None:
            new = {k: own[k] - own[k].detach() for k in own} if self.config.stopgrad else None
        elif own is None or not self.config.stopgrad:
            new = {k: v.detach() if self.config.stopgrad else v for k, v in src_delta.items()}
        else:
            new = {k: own[k] + (src_delta[k] - own[k]).detach() for k in own}
        return {"delta": new}

    # ------------------------------------------------------------------------------------- helpers
    def init_state(self, batch_size: int, device=None) -> dict:
        """The state before any token: zero deltas and accumulators for every in-context level."""
        device = device or self._base(0)[next(iter(self._base(0).keys()))].device
        state: dict = {"pos": 0}
        for s, lv in enumerate(self.levels):
            if lv.in_context:
                state[f"level{s}"] = self._materialise(s, None, batch_size, device)
        return state

    def task_periods(self) -> list[int]:
        """Periods of the levels driven by the task loss (surprise.train_segments aligns to their gcd)."""
        return [lv.period for lv in self.levels if lv.in_context and lv.objective == "task"]


def _init(shape: tuple[int, ...]) -> Tensor:
    """``nn.Linear``-like uniform init with bound 1/sqrt(fan_in); biases start at zero."""
    if len(shape) == 1:
        return torch.zeros(shape)
    bound = 1.0 / math.sqrt(shape[1])
    return torch.empty(shape).uniform_(-bound, bound)


def _check_nested(levels: list[CMSLevel]) -> None:
    first = levels[0]
    for i, lv in enumerate(levels[1:], 1):
        if (lv.kind, lv.hidden, lv.bias, lv.activation) != (first.kind, first.hidden, first.bias, first.activation):
            raise ValueError(f"nested CMS: level {i} must have the same MLP shape as level 0 (one shared base)")
        if not lv.in_context:
            raise ValueError(f"nested CMS: level {i} must have a period (only level 0 may be frozen)")
        prev = levels[i - 1].period
        if prev and prev % lv.period:
            raise ValueError(f"nested CMS: level {i - 1} period {prev} must be a multiple of level {i} period {lv.period}")


def mlp_weights(mlp: nn.Module) -> tuple[dict, dict[str, Tensor]]:
    """``(CMSLevel fields, weights)`` read from a pre-trained MLP, for :meth:`CMS.from_mlps`."""
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
