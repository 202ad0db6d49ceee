"""Plain float64 token-by-token references of the memory family, written straight from the equations.

Nothing here is fast: inner gradients come from ``torch.autograd.grad`` (not the closed-form backward of
:mod:`nldsl.nn.memory_ops`), every write is an explicit per-token outer product, and every token is its
own Python step. Two recurrences (DESIGN.md 3.1):

* :func:`token_recurrence`: the true recurrence, gradients at the current state ``W_{t−1}``:
  ``y_t = M_{t−1}(q_t)``; per layer ``U_t = −η'_t (∇_W ℓ(W_{t−1}) + [dgd] W_{t−1} a_t a_tᵀ)``,
  ``S_t = β_t S_{t−1} + U_t``, ``W_t = α_t W_{t−1} + S_t`` (NL arXiv Eq. 88 with momentum and the exact
  DGD step ``η' = η/(1 + η‖a‖²)``, Eq. 57).
* :func:`snapshot_recurrence`: the same but every read and gradient of a chunk uses the chunk-start
  snapshot (NL arXiv Eq. 90, with the snapshot index read as "previous chunk's final state").

With ``stopgrad`` each ``U_t`` is detached (decays stay differentiable), exactly as in the fast form; with
``detached_heads`` only those heads' ``U_t``. With ``normalized_rate`` layer ℓ uses ``η / max(1, ‖a_ℓ‖²)``
before the DGD factor.
Module-level references (NeuralMemory, SelfModifyingTitans) reuse the modules' static maps (projections,
rate read-outs, output) and redo the conv and every memory recurrence token by token; the gated delta rule
has its own sequential reference. Tensors are batch and head first: weights ``(B, H, o, i)``, per-token
vectors ``(B, H, d)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl.nn.functional import activation
from nldsl.nn.memory_ops import MemoryRule, init_memory_state, pack_state, unpack_state

__all__ = [
    "ref_mlp",
    "ref_inner_grads",
    "ref_write",
    "token_recurrence",
    "snapshot_recurrence",
    "ref_short_conv",
    "ref_l2_normalize",
    "ref_gated_delta_rule",
    "ref_neural_memory",
    "ref_self_modifying",
]


def ref_mlp(rule: MemoryRule, weights: list[Tensor], z: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``M(z)`` for one token ``z`` ``(B, H, i)`` and the input of every layer (Eq. 89 residual MLP)."""
    sigma, _ = activation(rule.activation)
    acts, a = [], z
    for ell, W in enumerate(weights):
        acts.append(a)
        h = torch.einsum("bhoi,bhi->bho", W, a)
        a = sigma(h) if ell + 1 < len(weights) else h
    return (a + z if len(weights) > 1 else a), acts


def ref_inner_grads(rule: MemoryRule, at: list[Tensor], k: Tensor, v: Tensor) -> list[Tensor]:
    """``∇_W ℓ(M_W(k), target)`` at weights ``at`` by autograd (target held constant).

    ``dot``: ℓ = −⟨M(k), v⟩; ``l2``: ℓ = ½‖M(k) − v‖²; ``self``: ℓ = ½‖M(k) − v̂‖², v̂ = M_at(v); ``huber``:
    ``F.huber_loss`` (sum); ``lp``: (1/p) Σ |M(k) − v|^p. The graph
    is kept (``create_graph``) so outer gradients flow through the inner gradient, unless ``stopgrad``.
    """
    keep = not rule.stopgrad and torch.is_grad_enabled()
    with torch.enable_grad():
        probes = [w.clone() if w.requires_grad else w.clone().requires_grad_() for w in at]
        pred, _ = ref_mlp(rule, probes, k)
        if rule.objective == "dot":
            loss = -(pred * v).sum()
        elif rule.objective == "huber":
            loss = F.huber_loss(pred, v, reduction="sum", delta=rule.objective_param)
        elif rule.objective == "lp":
            loss = (pred - v).abs().pow(rule.objective_param).sum() / rule.objective_param
        else:
            target = v if rule.objective == "l2" else ref_mlp(rule, at, v)[0]
            loss = 0.5 * ((pred - target) ** 2).sum()
        return list(torch.autograd.grad(loss, probes, create_graph=keep))


def ref_write(
    rule: MemoryRule,
    at: list[Tensor],
    w: list[Tensor],
    s: list[Tensor] | None,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    alpha: Tensor | None,
    beta: Tensor | None,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """One token's write: gradients and DGD erase at ``at``, then momentum and retention on ``(w, s)``."""
    grads = ref_inner_grads(rule, at, k, v)
    _, acts = ref_mlp(rule, at, k)
    new_w, new_s = [], []
    for ell, W in enumerate(w):
        a = acts[ell]  # (B, H, i)
        sqnorm = (a * a).sum(-1)
        lr = eta / torch.maximum(sqnorm, torch.ones_like(sqnorm)) if rule.normalized_rate else eta
        step = grads[ell]
        if rule.dgd:
            lr = lr / (1.0 + lr * sqnorm)
            erase = torch.einsum("bhoi,bhi->bho", at[ell], a)  # W_snap a_t
            step = step + torch.einsum("bho,bhi->bhoi", erase, a)
        U = -lr[..., None, None] * step
        if rule.stopgrad:
            U = U.detach()
        for h, cut in enumerate(rule.detached_heads):  # per-head stop-grad
            if cut:
                U = torch.cat([U[:, :h], U[:, h:h + 1].detach(), U[:, h + 1:]], dim=1)
        S = U if s is None else beta[..., None, None] * s[ell] + U
        new_s.append(S)
        keep = 1.0 if alpha is None else alpha[..., None, None]
        new_w.append(keep * W + S)
    return new_w, (new_s if s is not None else None)


def _rates_at(t: int, *rates: Tensor | None) -> list[Tensor | None]:
    return [None if r is None else r[..., t] for r in rates]


def token_recurrence(
    rule: MemoryRule,
    w0: list[Tensor],
    s0: list[Tensor] | None,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    alpha: Tensor | None = None,
    beta: Tensor | None = None,
) -> tuple[Tensor | None, list[Tensor], list[Tensor] | None]:
    """The true recurrence: read ``M_{t−1}(q_t)``, then write with gradients at ``W_{t−1}``.

    Shapes: q/k ``(B, H, T, i)``, v ``(B, H, T, o)``, rates ``(B, H, T)``. Returns ``(y, W_T, S_T)``.
    """
    w, s, ys = list(w0), (list(s0) if s0 is not None else None), []
    for t in range(k.shape[-2]):
        if q is not None:
            ys.append(ref_mlp(rule, w, q[..., t, :])[0])
        e, a, b = _rates_at(t, eta, alpha, beta)
        w, s = ref_write(rule, w, w, s, k[..., t, :], v[..., t, :], e, a, b)
    y = torch.stack(ys, dim=-2) if q is not None else None
    return y, w, s


def snapshot_recurrence(
    rule: MemoryRule,
    state: dict,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    eta: Tensor,
    alpha: Tensor | None = None,
    beta: Tensor | None = None,
) -> tuple[Tensor | None, dict]:
    """Token by token, but reads and gradients use the snapshot taken when a chunk starts.

    ``state`` is the engine's state dict (``w``, ``snap``, optional ``s``, ``pos``); the returned state
    has the same layout, so pieces chain exactly as in the fast form.
    """
    w, snap, s, pos = unpack_state(rule, state)
    ys = []
    for t in range(k.shape[-2]):
        if pos == 0:
            snap = list(w)
        if q is not None:
            ys.append(ref_mlp(rule, snap, q[..., t, :])[0])
        e, a, b = _rates_at(t, eta, alpha, beta)
        w, s = ref_write(rule, snap, w, s, k[..., t, :], v[..., t, :], e, a, b)
        pos = (pos + 1) % rule.chunk_size
    if pos == 0:
        snap = list(w)
    y = torch.stack(ys, dim=-2) if q is not None and ys else None
    return y, pack_state(w, snap, s, pos)


def ref_short_conv(weight: Tensor, bias: Tensor | None, x: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
    """Causal depthwise conv token by token: ``y_t = b + Σ_j w[:, j] x_{t−K+1+j}``.

    weight ``(D, 1, K)``, x ``(B, T, D)``, state ``(B, K−1, D)`` (the last inputs, zeros if ``None``).
    """
    K = weight.shape[-1]
    buf = x.new_zeros(x.shape[0], K - 1, x.shape[-1]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        window = torch.cat([buf, x[:, t : t + 1]], dim=1)  # (B, K, D)
        y = torch.einsum("bkd,dk->bd", window, weight[:, 0, :])
        ys.append(y if bias is None else y + bias)
        buf = window[:, 1:]
    return torch.stack(ys, dim=1), buf


def ref_l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(‖x‖² + eps²)`` along the last axis."""
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + eps * eps)


def ref_gated_delta_rule(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, h0: Tensor | None = None, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``S_t = e^{g_t} S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ``, ``o_t = scale·S_t q_t``, token by token.

    fla layout: q/k ``(B, T, H, K)``, v ``(B, T, H, V)``, g/beta ``(B, T, H)``; the state is kept as the
    matrix ``S`` ``(B, H, V, K)`` here and returned key-major, ``h = Sᵀ`` ``(B, H, K, V)``.
    """
    B, T, H, K = k.shape
    S = torch.zeros(B, H, v.shape[-1], K, dtype=v.dtype) if h0 is None else h0.transpose(-1, -2)
    eye = torch.eye(K, dtype=k.dtype)
    outs = []
    for t in range(T):
        kt, vt, bt = k[:, t], v[:, t], beta[:, t, :, None, None]
        erase = eye - bt * torch.einsum("bhi,bhj->bhij", kt, kt)
        S = torch.exp(g[:, t])[..., None, None] * torch.matmul(S, erase) + bt * torch.einsum("bho,bhi->bhoi", vt, kt)
        outs.append(scale * torch.einsum("bhoi,bhi->bho", S, q[:, t]))
    return torch.stack(outs, dim=1), S.transpose(-1, -2)


def ref_neural_memory(mem, x: Tensor, state: dict | None = None, recurrence: str = "snapshot") -> tuple[Tensor, dict]:
    """A :class:`~nldsl.nn.NeuralMemory` forward with the memory run token by token.

    The static maps (projections, rates, read-out) are the module's own; the conv and the memory
    recurrence are re-done here. ``recurrence``: ``"snapshot"`` (chunk-start snapshots, any chunk size)
    or ``"token"`` (the true recurrence; the module's chunk size is ignored and the state must be fresh).
    """
    cfg, rule = mem.config, mem.rule
    B, T, _ = x.shape
    qkv = F.linear(x, mem.qkv.weight)  # (B, T, 3·H·d)
    conv_state = None
    if mem.conv is not None:
        prev = None if state is None else state["conv"]
        qkv, conv_state = ref_short_conv(mem.conv.weight, mem.conv.bias, qkv, prev)
    if cfg.qkv_activation is not None:
        qkv = activation(cfg.qkv_activation)[0](qkv)
    q, k, v = qkv.view(B, T, 3, cfg.n_heads, cfg.d).permute(2, 0, 3, 1, 4)  # (B, H, T, d)
    if cfg.qk_norm:
        q, k = ref_l2_normalize(q), ref_l2_normalize(k)
    eta, log_alpha, log_beta = mem.rates(x, x.dtype)
    alpha = None if log_alpha is None else torch.exp(log_alpha)
    beta = None if log_beta is None else torch.exp(log_beta)
    fresh = init_memory_state(rule, list(mem.init_weights), B, x.dtype)  # W_0 expanded, S_0 = 0
    if recurrence == "token":
        w0, _, s0, _ = unpack_state(rule, fresh)
        y, w, s = token_recurrence(rule, w0, s0, q, k, v, eta, alpha, beta)
        mem_state = pack_state(w, w, s, 0)
    else:
        mem_state = fresh if state is None else state["memory"]
        y, mem_state = snapshot_recurrence(rule, mem_state, q, k, v, eta, alpha, beta)
    out_state = {"memory": mem_state}
    if conv_state is not None:
        out_state["conv"] = conv_state
    return mem.read_out(x, y), out_state


def ref_self_modifying(smt, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
    """:class:`~nldsl.nn.SelfModifyingTitans` token by token, composing the per-memory references.

    Per token: take snapshots at chunk starts (projection memories every ``proj_chunk_size`` tokens,
    ``M_mem`` every ``chunk_size``), produce k, v, η, α (, q) from the projection memories at their
    snapshot (Eq. 76-82), conv and normalise, read ``M_mem`` at q, then write every memory with its
    self-generated target (Eq. 83-88, :func:`ref_write`). Static maps (input projections, rate read-outs,
    output) are the module's own.
    """
    cfg = smt.config
    B, T, D = x.shape
    H, P, m = cfg.n_heads, cfg.proj_heads, len(smt.names)
    state = smt.init_state(B, x.device, x.dtype) if state is None else state
    bw, bsnap, bs, bpos = unpack_state(smt.bank_rule, state["bank"])
    mw, msnap, ms, mpos = unpack_state(smt.mem_rule, state["mem"])
    conv_kv, conv_q = state.get("conv_kv"), state.get("conv_q")
    log_betas = smt.log_momentum(x)  # (H + m·P,) or per token (B, T, H + m·P)

    def heads(z: Tensor, n: int) -> Tensor:  # (B, D) -> (B, n, D/n)
        return z.view(B, n, D // n)

    def bank(z: Tensor, normed: bool) -> Tensor:  # (B, D) -> (B, m·P, D/P): every projection memory sees z
        zb = heads(z, P).unsqueeze(1).expand(B, m, P, D // P).reshape(B, m * P, D // P)
        return ref_l2_normalize(zb) if normed and P != H else zb  # (with P = H, z is per-head unit already)

    def normed(z: Tensor, on: bool) -> Tensor:
        return ref_l2_normalize(heads(z, H)).reshape(B, D) if on else z

    ys = []
    for t in range(T):
        bsnap = list(bw) if bpos == 0 else bsnap
        msnap = list(mw) if mpos == 0 else msnap
        out = ref_mlp(smt.bank_rule, bsnap, smt.bank_input(x[:, t:t + 1])[:, :, 0])[0]  # (B, m·P, D/P)
        outs = out.view(B, m, P, D // P).reshape(B, m, D)
        kv = torch.cat([outs[:, 0], outs[:, 1]], dim=-1)[:, None]  # (B, 1, 2D)
        if smt.conv_kv is not None:
            kv, conv_kv = ref_short_conv(smt.conv_kv.weight, smt.conv_kv.bias, kv, conv_kv)
        k, v = normed(kv[:, 0, :D], cfg.qk_norm), normed(kv[:, 0, D:], cfg.v_norm)
        log_beta = None if log_betas is None else log_betas[:, t] if log_betas.dim() == 3 else log_betas
        beta = None if log_beta is None else torch.exp(log_beta).expand(B, H + m * P)
        eta_mem, eta_bank, log_alpha = smt.rates(outs[:, 2], outs[:, 3], log_beta)  # (B, H), (B, m·P), (B, H + P)
        alpha = torch.exp(log_alpha)
        q = (outs[:, 4] if cfg.adaptive_q else smt.q_proj(x[:, t]))[:, None]
        if smt.conv_q is not None:
            q, conv_q = ref_short_conv(smt.conv_q.weight, smt.conv_q.bias, q, conv_q)
        q = normed(q[:, 0], cfg.qk_norm)
        ys.append(ref_mlp(smt.mem_rule, msnap, heads(q, H))[0])  # y_t = M_mem,snap(q_t)
        alpha_b = alpha[:, H:].unsqueeze(1).expand(B, m, P).reshape(B, m * P)
        beta_b, beta_m = (None, None) if beta is None else (beta[:, H:], beta[:, :H])
        bw, bs = ref_write(smt.bank_rule, bsnap, bw, bs, bank(k, cfg.qk_norm), bank(v, cfg.v_norm), eta_bank,
                           alpha_b, beta_b)
        mw, ms = ref_write(smt.mem_rule, msnap, mw, ms, heads(k, H), heads(v, H), eta_mem, alpha[:, :H], beta_m)
        bpos, mpos = (bpos + 1) % cfg.proj_chunk_size, (mpos + 1) % cfg.chunk_size
    bsnap = list(bw) if bpos == 0 else bsnap
    msnap = list(mw) if mpos == 0 else msnap
    new_state = {"bank": pack_state(bw, bsnap, bs, bpos), "mem": pack_state(mw, msnap, ms, mpos)}
    if conv_kv is not None:
        new_state["conv_kv"], new_state["conv_q"] = conv_kv, conv_q
    return smt.read_out(x, torch.stack(ys, dim=2)), new_state
