"""Float64 sequential reference for the CMS (NL arXiv Eq. 70-74), token by token, sequence by sequence.

Written straight from the equations, sharing no code with the fast path: plain matrix-vector MLPs,
per-token gradients by autograd (no closed forms), one Python loop over tokens and one over the batch.
For every level with period C, before token p is read (p = absolute position), sources of
``init_from`` first:

    init_from = s and p % C(s) == 0:  W <- W_s;  A <- 0    (transfer init, Eq. 72)
    else if p % C == 0:  W <- W - lr * A;  A <- 0          (Eq. 71: sum of the chunk's error terms)

then the token is read with the current weights and its error term, times the token's rate when the
rate is data-dependent (``eta_t = scale * act(<w, z_t> + b)``, then ``lr = 1`` in the update), is added
to A: for "l2" the gradient of 1/2||MLP(z) - z||^2 (z = normalised level input), for "task" the gradient
of the per-token task loss ``loss(head(y_t), target_t)`` (only when ``task`` is given). A learned lr is
``softplus(rho)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cms_reference", "mlp_reference_grad"]


def _act(name: str, a: Tensor) -> Tensor:
    if name == "silu":
        return a * torch.sigmoid(a)
    if name == "relu":
        return torch.clamp(a, min=0)
    if name == "gelu":
        return 0.5 * a * (1 + torch.erf(a / math.sqrt(2)))
    return 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))


def _mlp(level, w: dict[str, Tensor], z: Tensor) -> Tensor:
    """The level's MLP on one vector z (D,)."""
    if level.kind == "swiglu":
        return w["down"] @ (_act("silu", w["gate"] @ z) * (w["up"] @ z))
    a = w["w1"] @ z + (w["b1"] if "b1" in w else 0)
    return w["w2"] @ _act(level.activation, a) + (w["b2"] if "b2" in w else 0)


def _norm(u: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    if weight is None:
        return u
    return u / torch.sqrt(u.pow(2).mean() + eps) * weight


def _lr(cms, s: int) -> float:
    """The lr multiplying the accumulator at a boundary (1 for data-dependent rates: eta is inside A)."""
    lv, rate = cms.levels[s], cms.rates[s]
    if lv.lr_mode == "learned":
        return float(torch.log1p(torch.exp(rate.raw.detach().double())))
    return 1.0 if lv.lr_mode == "data" else lv.lr


def _eta(cms, s: int, z: Tensor) -> Tensor | float:
    """The token's rate: data-dependent ``scale * act(<w, z> + b)``, else 1."""
    lv, rate = cms.levels[s], cms.rates[s]
    if lv.lr_mode != "data":
        return 1.0
    pre = rate.weight.detach().double() @ z + rate.bias.detach().double()
    return lv.lr * (torch.log1p(torch.exp(pre)) if lv.lr_activation == "softplus" else 1 / (1 + torch.exp(-pre)))


def _sources_first(levels) -> list[int]:
    def depth(s):
        return 0 if levels[s].init_from is None else 1 + depth(levels[s].init_from)
    return sorted(range(len(levels)), key=depth)


def cms_reference(cms, x: Tensor, state: dict | None = None, task=None) -> tuple[Tensor, dict]:
    """Run ``cms`` (its parameters, read in float64) over ``x`` (B, T, D) one token at a time.

    ``task = (head, loss, targets)`` drives the "task" levels: the per-token loss is
    ``loss(head(y[b, t]), targets[b, t])``. Returns ``y`` (float64) and a state in the CMS format.
    """
    levels, k = cms.levels, len(cms.levels)
    x = x.detach().double()
    B, T, _ = x.shape
    pos0 = 0 if state is None else int(state["pos"])
    bases = [{n: p.detach().double() for n, p in cms._base(s).items()} for s in range(k)]
    norm_w = [getattr(n, "weight", None) for n in cms.norms]
    norm_w = [None if w is None else w.detach().double() for w in norm_w]
    eps = cms.config.norm_eps
    key = ["surprise" if lv.objective == "task" else "acc" for lv in levels]

    def level_state(s, name):  # per-sequence list of dicts, from the given state or zeros
        node = None if state is None else state.get(f"level{s}")
        return [{n: (node[name][n][b].double() if node is not None else torch.zeros_like(v))
                 for n, v in bases[s].items()} for b in range(B)]

    W = [[{n: bases[s][n] + d[n] for n in d} for d in level_state(s, "delta")] for s in range(k)]
    A = [level_state(s, key[s]) for s in range(k)]
    y = torch.zeros_like(x)
    for t in range(T):
        p = pos0 + t
        for s in _sources_first(levels):
            lv, src = levels[s], levels[s].init_from
            if src is not None and levels[src].period and p % levels[src].period == 0:
                for b in range(B):
                    W[s][b] = {n: v.clone() for n, v in W[src][b].items()}
                    A[s][b] = {n: torch.zeros_like(v) for n, v in A[s][b].items()}
            elif lv.period and p % lv.period == 0:
                for b in range(B):
                    W[s][b] = {n: W[s][b][n] - _lr(cms, s) * A[s][b][n] for n in W[s][b]}
                    A[s][b] = {n: torch.zeros_like(v) for n, v in A[s][b].items()}
        for b in range(B):
            y[b, t] = _token(cms, W, A, b, x[b, t], norm_w, eps, task, t)
    new_state: dict = {"pos": pos0 + T}
    for s, lv in enumerate(levels):
        if lv.period:
            new_state[f"level{s}"] = {
                "delta": {n: torch.stack([W[s][b][n] - bases[s][n] for b in range(B)]) for n in bases[s]},
                key[s]: {n: torch.stack([A[s][b][n] for b in range(B)]) for n in bases[s]},
            }
    return y, new_state


def _token(cms, W, A, b: int, u: Tensor, norm_w, eps: float, task, t: int) -> Tensor:
    """One token of sequence b through every level; adds its error terms into ``A``."""
    levels = cms.levels
    use_task = task is not None
    weights = []
    for s, lv in enumerate(levels):
        is_task = use_task and lv.period and lv.objective == "task"
        weights.append({n: v.clone().requires_grad_(bool(is_task)) for n, v in W[s][b].items()})
    with torch.enable_grad():
        if cms.variant == "independent":
            k = len(levels)
            agg = torch.softmax(cms.agg_logits.detach().double(), 0) if cms.config.aggregate == "learned" \
                else torch.full((k,), 1.0 / k if cms.config.aggregate == "mean" else 1.0, dtype=torch.float64)
            y = u + sum(agg[s] * _mlp(lv, weights[s], _norm(u, norm_w[s], eps)) for s, lv in enumerate(levels))
            inputs = [u] * len(levels)
        else:
            y, inputs = u, []
            for s, lv in enumerate(levels):
                inputs.append(y.detach())
                y = y + _mlp(lv, weights[s], _norm(y, norm_w[s], eps))
        for s, lv in enumerate(levels):  # local objective: reconstruct the normalised input
            if lv.period and lv.objective == "l2":
                z = _norm(inputs[s], norm_w[s], eps).detach()
                w = {n: v.detach().requires_grad_() for n, v in W[s][b].items()}
                loss = 0.5 * (_mlp(lv, w, z) - z).pow(2).sum()
                grads = torch.autograd.grad(loss, list(w.values()))
                A[s][b] = {n: A[s][b][n] + _eta(cms, s, z) * g for n, g in zip(w, grads)}
        if use_task:
            head, loss_fn, targets = task
            task_levels = [s for s, lv in enumerate(levels) if lv.period and lv.objective == "task"]
            leaves = [v for s in task_levels for v in weights[s].values()]
            if leaves:
                grads = iter(torch.autograd.grad(loss_fn(head(y), targets[b, t]), leaves))
                for s in task_levels:
                    eta = _eta(cms, s, _norm(inputs[s], norm_w[s], eps).detach())
                    A[s][b] = {n: A[s][b][n] + eta * next(grads) for n in weights[s]}
    return y.detach()


def mlp_reference_grad(level, w: dict[str, Tensor], z: Tensor) -> dict[str, Tensor]:
    """Autograd gradient of 1/2||MLP(z) - z||^2 for one token (used to test the closed form directly)."""
    w = {n: v.detach().double().requires_grad_() for n, v in w.items()}
    z = z.detach().double()
    loss = 0.5 * (_mlp(level, w, z) - z).pow(2).sum()
    return dict(zip(w, torch.autograd.grad(loss, list(w.values()))))
