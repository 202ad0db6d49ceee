"""Continuum Memory System (CMS): MLP levels that each update their weights every C(l) tokens.

Paper: NL arXiv Eq. 70-74 (NeurIPS Eq. 30-31), NL_REFERENCE 3.1 and 7 items 4-6. Level l is a residual
block ``u + MLP_l(norm_l(u))`` whose weights are ``W_l = W_l,base + dW_l``: the base is an ``nn.Parameter``
(outer loop), the fast delta ``dW_l`` lives in the state, one per sequence (batch first), so reads are
batched matmuls with per-sequence weights. Level l changes its weights only when the absolute position
p (tokens seen, carried across pieces) reaches a multiple of C(l), right before token p is read
(Eq. 71; a sum over the chunk, not a mean):

    dW_l <- dW_l - lr_l * sum_{t in [p - C(l), p)} f_l(W_l; x_t)

``lr_l`` is a constant, a learned scalar, or data-dependent per token (then ``lr_t`` weights each token's
term inside the sum; ``nldsl.nn.cms_ops``). The accumulated error f_l comes from the level's objective:
``"l2"`` = gradient of 1/2||MLP(z_t) - z_t||^2 (self-supervised reconstruction of the normalised level
input, closed form, so the CMS updates inside a pure forward); ``"task"`` = the local surprise of the
model's task loss, accumulated from outside by :func:`nldsl.nn.surprise.train_segments` into
``state[...]["surprise"]`` and applied here at boundaries. Writes are stop-grad by default; the base
gets outer gradients through every read ("base + delta").

Variants: ``sequential`` (chained, HOPE's Eq. 73/97), ``independent`` (levels on the same input,
``u + sum_l softmax(a)_l MLP_l``, or a plain sum / mean, Eq. 74), ``nested`` (Eq. 72). Knowledge transfer by
initialisation (``CMSLevel.init_from``, a spec's ``transfer init``; the nested variant chains every level so):
level t shares the base of its source s, and at each boundary of s its state is reset to s's current
weights. See docs/runtime-blocks.md. Sampling parameters (B batch, T tokens, D dim, H hidden).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nldsl.nn.cms_ops import (  # noqa: F401  (act_fn, act_grad: re-exported)
    ACTIVATIONS, KINDS, LR_ACTIVATIONS, LR_MODES, EtaWeighted, LevelRate, act_fn, act_grad, init_weight, l2_grads,
    mlp_apply, mlp_weights, param_shapes)
from nldsl.nn.layers import RMSNorm, check_finite, check_positive_int, compute_dtype, split_spans

OBJECTIVES = ("task", "l2")
VARIANTS = ("sequential", "independent", "nested")
AGGREGATES = ("learned", "sum", "mean")


@dataclass(kw_only=True)
class CMSLevel:
    """One CMS level (plain data; ``CMS.Config.levels`` also accepts dicts with these keys)."""

    hidden: int
    """Inner width of this level's MLP."""
    period: int | None = None
    """C(l) in tokens: the weights change at every multiple of it. ``None`` or 0 = frozen (outer loop only)."""
    lr: float = 1e-3
    """Inner learning rate eta_l (>= 0; 0 recovers the frozen level); the initial value when learned, the
    ``scale`` when data-dependent."""
    lr_mode: str = "constant"
    """``constant``, ``learned`` (softplus of a learned scalar) or ``data`` (``lr * act(<w, z_t> + b)``)."""
    lr_activation: str = "softplus"
    """``data`` rates: ``softplus`` or ``sigmoid``."""
    objective: str = "task"
    """``"task"`` (local surprise of the task loss, via surprise.train_segments) or ``"l2"`` (reconstruction)."""
    kind: str = "swiglu"
    """``"swiglu"`` (gate/up/down) or ``"mlp"`` (w1, activation, w2)."""
    activation: str = "gelu"
    """Activation of the ``"mlp"`` kind: gelu, gelu_tanh, silu, relu."""
    bias: bool = False
    """Biases (``"mlp"`` kind only); they are fast weights too."""
    stopgrad: bool | None = None
    """Stop-grad writes for this level (None = ``CMS.Config.stopgrad``)."""
    init_from: int | None = None
    """Index of the level whose state re-initialises this one at each of its boundaries (``transfer init``);
    both then share that level's base. The nested variant defaults to the previous level."""
    init_stopgrad: bool | None = None
    """The re-initialisation copies the source's delta as a constant (None = this level's ``stopgrad``)."""

    def validate(self, i: int) -> "CMSLevel":
        check_positive_int(f"CMS level {i} hidden", self.hidden)
        if self.period is not None:
            check_positive_int(f"CMS level {i} period", self.period, minimum=0)
        check_finite(f"CMS level {i} lr", self.lr, minimum=0.0)
        for name, value, allowed in (("objective", self.objective, OBJECTIVES), ("kind", self.kind, KINDS),
                                     ("activation", self.activation, ACTIVATIONS), ("lr_mode", self.lr_mode, LR_MODES),
                                     ("lr_activation", self.lr_activation, LR_ACTIVATIONS)):
            if value not in allowed:
                raise ValueError(f"CMS level {i} {name} must be one of {allowed}, got {value!r}")
        if self.lr_mode != "constant" and self.lr <= 0:
            raise ValueError(f"CMS level {i}: a {self.lr_mode} lr must start > 0, got {self.lr!r}")
        if self.bias and self.kind != "mlp":
            raise ValueError(f"CMS level {i}: bias is only supported for kind 'mlp'")
        if self.init_from is not None:
            check_positive_int(f"CMS level {i} init_from", self.init_from, minimum=0)
        return self

    @property
    def in_context(self) -> bool:
        return bool(self.period)

    @property
    def shape(self) -> tuple:
        return self.kind, self.hidden, self.bias, self.activation if self.kind == "mlp" else None


class CMS(nn.Module):
    """Continuum Memory System; ``forward(x (B, T, D), state=None) -> (y (B, T, D), state)``."""

    Level = CMSLevel

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Model width D (input and output of every level)."""
        levels: list[Any] = field(default_factory=list)
        """``CMSLevel`` entries or dicts, in data order (input side first)."""
        variant: str = "sequential"
        """``sequential`` | ``independent`` | ``nested`` (see the module docstring)."""
        aggregate: str = "learned"
        """Independent variant: ``learned`` (softmax of learned logits, starting equal), ``sum`` or ``mean``."""
        pre_norm: bool = True
        """RMSNorm on each level's input (the residual skips it)."""
        norm_eps: float = 1e-6
        """RMSNorm epsilon."""
        stopgrad: bool = True
        """Stop-grad writes (each level may override). False: outer gradients also flow through "l2"
        writes (meta-gradient) and through learned/data rates."""

        def build(self) -> "CMS":
            return CMS(self)

    def __init__(self, config: "CMS.Config | None" = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise ValueError(f"CMS: pass either a Config or keyword fields, not both (got {sorted(kwargs)})")
        if config is not None and not isinstance(config, CMS.Config):
            raise TypeError(f"CMS takes a CMS.Config or keyword fields (dim=...), got {config!r}")
        cfg = config if config is not None else CMS.Config(**kwargs)
        check_positive_int("CMS dim", cfg.dim)
        if cfg.variant not in VARIANTS:
            raise ValueError(f"CMS variant must be one of {VARIANTS}, got {cfg.variant!r}")
        if cfg.aggregate not in AGGREGATES:
            raise ValueError(f"CMS aggregate must be one of {AGGREGATES}, got {cfg.aggregate!r}")
        if not cfg.levels:
            raise ValueError("CMS needs at least one level")
        levels = [(lv if isinstance(lv, CMSLevel) else CMSLevel(**lv)).validate(i) for i, lv in enumerate(cfg.levels)]
        if cfg.variant == "nested" and all(lv.init_from is None for lv in levels):
            levels = [lv if i == 0 else CMSLevel(**{**lv.__dict__, "init_from": i - 1}) for i, lv in enumerate(levels)]
        self._root, self._topo = _init_tree(levels)
        if cfg.variant == "nested" and len(set(self._root)) > 1:
            raise ValueError("nested CMS: every level must be initialised, directly or not, from one level "
                             "(one shared base)")
        self.config, self.dim, self.levels, self.variant = cfg, cfg.dim, levels, cfg.variant
        self.chained = any(lv.init_from is not None for lv in levels)
        self.bases = nn.ModuleList(nn.ParameterDict({
            name: nn.Parameter(init_weight(shape)) for name, shape in
            param_shapes(lv.kind, cfg.dim, lv.hidden, lv.bias).items()} if self._root[i] == i else {})
            for i, lv in enumerate(levels))
        self.norms = nn.ModuleList(RMSNorm(cfg.dim, cfg.norm_eps) if cfg.pre_norm else nn.Identity() for _ in levels)
        self.rates = nn.ModuleList(LevelRate(lv.lr_mode, lv.lr, lv.lr_activation, cfg.dim) for lv in levels)
        if cfg.variant == "independent" and cfg.aggregate == "learned":
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
                for name, value in weights.items() if len(base) else ():
                    base[name].copy_(value)
        return cms

    # ------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        B, T, D = x.shape
        pos0 = 0 if state is None else int(state["pos"])
        st = [None if state is None else state.get(f"level{s}") for s in range(len(self.levels))]
        if self.chained:
            y, st = self._forward_spans(x, st, pos0)
        elif self.variant == "independent":
            y, agg = x, self._agg_weights(x.dtype)
            for s in range(len(self.levels)):
                branch, st[s] = self._run_level(s, x, st[s], pos0)
                y = y + agg[s] * branch
        else:  # sequential (and a nested CMS of one level)
            y = x
            for s in range(len(self.levels)):
                branch, st[s] = self._run_level(s, y, st[s], pos0)
                y = y + branch
        new_state: dict = {"pos": pos0 + T}
        for s, lv in enumerate(self.levels):
            if lv.in_context:
                new_state[f"level{s}"] = self._materialise(s, st[s], B, x.device)
        return y, new_state

    def _agg_weights(self, dtype: torch.dtype):
        """Independent variant: each level's weight in the sum (Eq. 74's Agg)."""
        if self.config.aggregate != "learned":
            return [1.0 / len(self.levels) if self.config.aggregate == "mean" else 1.0] * len(self.levels)
        return torch.softmax(self.agg_logits.to(compute_dtype(self.agg_logits.dtype)), 0).to(dtype)

    def _run_level(self, s: int, u: Tensor, lst, pos0: int) -> tuple[Tensor, Any]:
        """All tokens of one level, split only where this level's weights change (a loop over chunks)."""
        lv, T = self.levels[s], u.shape[1]
        if not lv.in_context:
            return self._span(s, u, None), None
        C = lv.period
        starts = [0] + [p - pos0 for p in range((pos0 // C + 1) * C, pos0 + T, C)]
        if lv.objective == "task":  # no writes inside a pure forward: only a pending update can apply
            starts = starts[:2] if lst is not None and pos0 % C else [0]
        outs, bounds = [], list(zip(starts, starts[1:] + [T]))
        for (a, b), piece in zip(bounds, split_spans(u, [b - a for a, b in bounds], 1)):
            if lst is not None and (pos0 + a) % C == 0:
                lst = self._apply_pending(s, lst)
            o = self._span(s, piece, lst)
            if isinstance(o, tuple):
                o, lst = o
            outs.append(o)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 1)), lst

    def _span(self, s: int, u: Tensor, lst):
        """One stretch of constant weights: the branch output (and the new level state for l2 levels)."""
        lv = self.levels[s]
        z = self.norms[s](u)
        cdt = compute_dtype(self._base(s)["up" if lv.kind == "swiglu" else "w1"].dtype)
        eta = self.rates[s].per_token(z, cdt) if lv.in_context and lv.lr_mode == "data" else None
        w = self._weights(s, lst, u.dtype, eta if lv.objective == "task" else None)
        o, cache = mlp_apply(lv.kind, lv.activation, z, w)
        if not (lv.in_context and lv.objective == "l2"):
            return o
        stop = self._stop(s)
        acc_t = lambda t: None if t is None else (t.detach() if stop else t).to(cdt)  # noqa: E731
        grads = l2_grads(lv.kind, lv.activation, acc_t(z), {k: acc_t(v) for k, v in w.items()}, acc_t(o),
                         tuple(acc_t(c) for c in cache), acc_t(eta))
        acc = grads if lst is None or lst.get("acc") is None else {k: lst["acc"][k] + g for k, g in grads.items()}
        return o, {"delta": None if lst is None else lst.get("delta"), "acc": acc}

    def _stop(self, s: int) -> bool:
        lv = self.levels[s]
        return self.config.stopgrad if lv.stopgrad is None else lv.stopgrad

    def _base(self, s: int) -> nn.ParameterDict:
        return self.bases[self._root[s]]

    def _weights(self, s: int, lst, dtype: torch.dtype, eta: Tensor | None = None) -> dict:
        """Shared base weights, or per-sequence ``base + delta`` summed in fp32 then cast (bf16-safe).

        With ``eta`` (a task level with a data-dependent rate) the delta's gradient is rate-weighted.
        """
        base = self._base(s)
        delta = None if lst is None else lst.get("delta")
        if delta is None:
            return {k: v.to(dtype) for k, v in base.items()}
        if eta is None:
            return {k: (base[k].to(delta[k].dtype) + delta[k]).to(dtype) for k in base}
        return {k: EtaWeighted((base[k].to(delta[k].dtype) + delta[k].detach()).to(dtype), delta[k], eta)
                for k in base}

    def _apply_pending(self, s: int, lst: dict) -> dict:
        """dW <- dW - lr * accumulated error; the accumulator restarts (a boundary of level s).

        A data-dependent rate is already inside the accumulator. Under stop-grad a learned lr is detached
        (it is part of the write, as the rates of ``nldsl.nn.memory_ops``).
        """
        lv = self.levels[s]
        key = "surprise" if lv.objective == "task" else "acc"
        acc, delta = lst.get(key), lst.get("delta")
        if acc is None:
            return lst
        if lv.lr_mode == "data":
            step = acc
        else:
            lr = self.rates[s].scalar(next(iter(acc.values())).dtype)
            lr = lr.detach() if isinstance(lr, Tensor) and self._stop(s) else lr
            step = {k: lr * g for k, g in acc.items()}
        new_delta = {k: (-g if delta is None else delta[k] - g) for k, g in step.items()}
        return {"delta": new_delta, key: None}

    def _materialise(self, s: int, lst, B: int, device) -> dict:
        """The level's returned state; zeros where nothing was written yet are stride-0 views (no memory)."""
        key = "surprise" if self.levels[s].objective == "task" else "acc"
        base = self._base(s)
        zeros = lambda: {k: torch.zeros((), device=device, dtype=compute_dtype(v.dtype)).expand(B, *v.shape)  # noqa: E731
                         for k, v in base.items()}
        lst = lst or {}
        return {"delta": lst.get("delta") or zeros(), key: lst.get(key) or zeros()}

    # ------------------------------------------------------------------------------ init transfers
    def _forward_spans(self, x: Tensor, st: list, pos0: int) -> tuple[Tensor, list]:
        """Every level over spans between any level's boundaries (needed when levels re-initialise each
        other): at each span start, in init order (sources first), a level re-initialises from its source
        when the source's chunk ends there, else applies its own pending update; then the span is read."""
        T, periods = x.shape[1], [lv.period for lv in self.levels]
        cuts = sorted({p - pos0 for C in periods if C for p in range((pos0 // C + 1) * C, pos0 + T, C)})
        d_in = [None if lst is None else lst.get("delta") for lst in st]
        agg = self._agg_weights(x.dtype) if self.variant == "independent" else None
        outs, bounds = [], list(zip([0] + cuts, cuts + [T]))
        for (a, b), piece in zip(bounds, split_spans(x, [b - a for a, b in bounds], 1)):
            p = pos0 + a
            for s in self._topo:
                src, C = self.levels[s].init_from, periods[s]
                if src is not None and periods[src] and p % periods[src] == 0:
                    st[s] = self._reinit(s, st[src], d_in)
                elif C and p % C == 0 and st[s] is not None:
                    st[s] = self._apply_pending(s, st[s])
            xs, y = piece, piece
            for s in range(len(self.levels)):
                o = self._span(s, y if agg is None else xs, st[s])
                if isinstance(o, tuple):
                    o, st[s] = o
                y = y + (o if agg is None else agg[s] * o)
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, 1)), st

    def _reinit(self, s: int, src_lst, d_in: list) -> dict | None:
        """Level s takes its source's current delta (same base) and drops its accumulator and pending update.

        Gradients: ``init_stopgrad`` copies the source's delta as a constant; otherwise the copy is
        differentiable, into whatever produced the source's delta in this call (its l2 writes, its rate),
        but never into a task source's incoming delta (that gradient is the source's own surprise). A task
        target keeps a straight-through gradient into its own incoming delta, so its surprise stays its own.
        """
        lv = self.levels[s]
        src_i = lv.init_from
        src = None if src_lst is None else src_lst.get("delta")
        stop = self._stop(s) if lv.init_stopgrad is None else lv.init_stopgrad
        if src is not None and stop:  # a copy: a state never holds one tensor twice (safetensors)
            src = {k: v.detach().clone() for k, v in src.items()}
        elif src is not None and self.levels[src_i].objective == "task" and d_in[src_i] is not None:
            src = {k: v - d_in[src_i][k] + d_in[src_i][k].detach() for k, v in src.items()}
        elif src is not None:
            src = {k: v.clone() for k, v in src.items()}
        own = d_in[s] if lv.objective == "task" else None
        if own is not None:
            src = {k: (own[k] - own[k].detach()) + (0 if src is None else src[k]) for k in own}
        return None if src is None else {"delta": src}

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

    def sharing(self, s: int) -> list[int]:
        """The levels that read level s's base (itself and every level initialised from it)."""
        return [t for t in range(len(self.levels)) if self._root[t] == self._root[s]]


def _init_tree(levels: list[CMSLevel]) -> tuple[list[int], list[int]]:
    """Each level's root (the level whose base it reads) and an order with every source before its targets.

    A target must be in context, share its source's MLP shape, and (for an in-context source) have a
    period dividing the source's, so a re-initialisation always lands on one of its own boundaries.
    """
    n = len(levels)
    for t, lv in enumerate(levels):
        s = lv.init_from
        if s is None:
            continue
        if s >= n or s == t:
            raise ValueError(f"CMS level {t}: init_from must be another level's index (0..{n - 1}), got {s}")
        if not lv.in_context:
            raise ValueError(f"CMS level {t} must have a period to be initialised from level {s}")
        if lv.shape != levels[s].shape:
            raise ValueError(f"CMS level {t} must have the same MLP shape as level {s} to be initialised from "
                             f"it (one shared base): {lv.shape} vs {levels[s].shape}")
        if levels[s].period and levels[s].period % lv.period:
            raise ValueError(f"CMS level {s} period {levels[s].period} must be a multiple of level {t} period "
                             f"{lv.period} (level {t} is initialised from it)")
    root, order = [], []
    for t in range(n):
        seen, r = [t], t
        while levels[r].init_from is not None:
            r = levels[r].init_from
            if r in seen:
                raise ValueError(f"CMS levels {seen} initialise each other in a cycle")
            seen.append(r)
        root.append(r)
    depth = [0] * n
    for t in range(n):
        r = t
        while levels[r].init_from is not None:
            r, depth[t] = levels[r].init_from, depth[t] + 1
    order = sorted(range(n), key=lambda t: depth[t])
    return root, order
