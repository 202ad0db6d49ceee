"""Lowering a ``cms`` component to ``nldsl.nn.cms.CMS`` (NL §7.1, Eq. 70-74; runtime in docs/runtime-blocks.md).

Each ``level`` becomes a ``CMSLevel``: ``mlp`` (depth 2, residual) -> kind ``mlp``, ``swiglu`` -> kind
``swiglu``; ``every N tokens`` -> ``period = N`` with the ``task`` or ``l2`` objective and the inner ``gd``
learning rate (a constant, ``learned(x)`` -> ``lr_mode = learned``, ``data(act, scale = s)`` ->
``lr_mode = data``), its ``init meta(grad = ...)`` -> the level's stop-grad switch; ``every N steps`` /
``never`` -> ``period = None`` (the outer loop trains it, on its own period, or nobody does). Level order
is the CMS's ``flow`` (the data path, fastest first for HOPE's chain). ``transfer init s -> t (grad = g)``
between levels -> ``init_from`` (t shares s's base and restarts from s's weights at s's boundaries, Eq. 72)
with ``init_stopgrad = (g == stopgrad)``; the nested variant chains every level this way (one shared base).
"""
from __future__ import annotations

from nldsl.lower_errors import LowerError
from nldsl.nn.cms import CMS, CMSLevel
from nldsl.plan import ComponentPlan, Plan, TransferPlan
from nldsl.registry import Ctx

CMS_ACTIVATIONS = ("gelu", "silu", "relu")


def level_order(c: ComponentPlan, plan: Plan) -> list[ComponentPlan]:
    """The levels in the order the runtime chains them: the flow; a nested CMS without init transfers
    chains them slowest first (each level initialises the next)."""
    flow = [plan.component(p) for p in c.flow]
    if c.get("variant") != "nested" or _inits(c, plan):
        return flow
    return sorted(flow, key=lambda lv: -lv.period.every if lv.period.kind == "tokens" else -10**12)


def _inits(c: ComponentPlan, plan: Plan) -> list[TransferPlan]:
    return [t for t in plan.transfers if t.kind == "init" and t.target in c.children and t.source in c.children]


def cms_config(c: ComponentPlan, ctx: Ctx) -> CMS.Config:
    levels = level_order(c, ctx.plan)
    variant = c.get("variant")
    if ctx.plan.model.norm != "rmsnorm":
        ctx.notes.warn(c.span, "the runtime's CMS levels use RMSNorm pre-norms")
    built = [_level(lv, ctx) for lv in levels]
    index = {lv.path: i for i, lv in enumerate(levels)}
    for t in _inits(c, ctx.plan):
        _wire_init(t, index, levels, built)
    return CMS.Config(dim=ctx.dim, levels=built, variant=variant, aggregate=c.get("aggregate") or "learned")


def _wire_init(t: TransferPlan, index: dict, levels: list[ComponentPlan], built: list[CMSLevel]) -> None:
    """``transfer init s -> t`` as ``init_from`` (checked here, so the error points at the transfer)."""
    s, d = index[t.source], index[t.target]
    src, dst = built[s], built[d]
    name = f"transfer init {levels[s].name} -> {levels[d].name}"
    if dst.init_from is not None:
        raise LowerError(t.span, f"'{levels[d].name}' is initialised by two levels", "keep one init transfer")
    if not dst.in_context:
        raise LowerError(t.span, f"{name}: '{levels[d].name}' is not updated in context, it has no state to "
                         "restart", "give it `update every N tokens`")
    if src.shape != dst.shape:
        raise LowerError(t.span, f"{name}: the levels have different MLPs ({_shape(src)} vs {_shape(dst)}), so "
                         f"'{levels[d].name}' cannot restart from the weights of '{levels[s].name}'",
                         "give both levels the same kind, hidden width and activation")
    if src.period and src.period % dst.period:
        raise LowerError(t.span, f"{name}: the period of '{levels[s].name}' ({src.period} tokens) is not a "
                         f"multiple of that of '{levels[d].name}' ({dst.period} tokens)",
                         "the slower level's chunk must end on a boundary of the faster one")
    dst.init_from = s
    dst.init_stopgrad = dict(t.args).get("grad", "unrolled") == "stopgrad"


def _shape(lv: CMSLevel) -> str:
    return f"{lv.kind}(hidden = {lv.hidden}" + (f", {lv.activation})" if lv.kind == "mlp" else ")")


def _level(lv: ComponentPlan, ctx: Ctx) -> CMSLevel:
    if lv.kind == "mlp" and (lv.get("depth") != 2 or not lv.get("residual")):
        raise LowerError(lv.span, "the runtime's CMS levels are residual 2-layer MLPs (or SwiGLU)",
                         "use mlp(depth = 2) or swiglu")
    if lv.kind not in ("mlp", "swiglu"):
        raise LowerError(lv.span, f"the runtime's CMS levels are mlp or swiglu, not {lv.kind}")
    act = lv.get("activation") if lv.kind == "mlp" else "gelu"
    if act not in CMS_ACTIVATIONS:
        raise LowerError(lv.span, f"the runtime's CMS levels use {', '.join(CMS_ACTIVATIONS)}, not {act}")
    kind, hidden = lv.kind, lv.get("hidden")
    if lv.period.kind != "tokens":
        return CMSLevel(hidden=hidden, period=None, lr=0.0, objective="task", kind=kind, activation=act)
    r = lv.rule
    target = dict(r.objective_args).get("target", "value")
    if r.objective not in ("task", "l2") or target != "value":
        raise LowerError(r.span or lv.span, f"the runtime's CMS levels learn from the task loss or l2 "
                         f"reconstruction, not {r.objective}(target = {target})", "use objective task")
    if r.optimizer != "gd" or r.init != "meta":
        raise LowerError(r.span or lv.span, f"the runtime's CMS levels learn with gd and init meta, not "
                         f"{r.optimizer} / init {r.init}", "use optimizer gd(lr = ...)")
    retain = r.hyper("retain")
    if retain is not None and (retain.form != "const" or retain.value != 1.0):
        raise LowerError(retain.span or r.span, "the runtime's CMS levels have no retention (weight decay)",
                         "leave retain out (1 = no decay)")
    return CMSLevel(hidden=hidden, period=lv.period.every, objective=r.objective, kind=kind, activation=act,
                    stopgrad=r.grad == "stopgrad", **_lr(r.hyper("lr"), r.span or lv.span))


def _lr(h, span) -> dict:
    """The level's inner learning rate: a constant, a learned scalar, or data-dependent per token."""
    if h is None:
        return {"lr": 1.0}
    if h.form == "memory":
        raise LowerError(h.span or span, "a CMS level cannot take its lr from a memory",
                         "use a number, learned(x) or data(softplus | sigmoid, scale = s)")
    if h.form == "data" and h.activation not in ("softplus", "sigmoid"):
        raise LowerError(h.span or span, f"a CMS level's data-dependent lr goes through softplus or sigmoid, "
                         f"not {h.activation}")
    if h.form in ("learned", "data") and not h.value > 0:
        raise LowerError(h.span or span, f"a {h.form} lr must start above 0, got {h.render()}")
    mode = {"const": "constant", "learned": "learned", "data": "data"}[h.form]
    return {"lr": h.value, "lr_mode": mode, "lr_activation": h.activation or "softplus"}
