"""Lowering a ``cms`` component to ``nldsl.nn.cms.CMS`` (NL §7.1, Eq. 70-74; runtime in docs/runtime-blocks.md).

Each ``level`` becomes a ``CMSLevel``: ``mlp`` (depth 2, residual) -> kind ``mlp``, ``swiglu`` -> kind
``swiglu``; ``every N tokens`` -> ``period = N`` with the inner ``gd`` learning rate and the ``task`` or
``l2`` objective; ``every N steps`` / ``never`` -> ``period = None`` (the outer loop trains it, on its own
period, or nobody does). Level order is the CMS's ``flow`` (fastest first for HOPE's sequential chain); the
nested variant follows its ``transfer init`` chain instead (the runtime re-initialises level s+1 from level s,
slowest first).
"""
from __future__ import annotations

from nldsl.lower_errors import LowerError
from nldsl.nn.cms import CMS, CMSLevel
from nldsl.plan import ComponentPlan, Plan
from nldsl.registry import Ctx, constant

CMS_ACTIVATIONS = ("gelu", "silu", "relu")


def level_order(c: ComponentPlan, plan: Plan) -> list[ComponentPlan]:
    """The levels in the order the runtime chains them."""
    flow = [plan.component(p) for p in c.flow]
    if c.get("variant") != "nested":
        return flow
    edges = {t.source: t.target for t in plan.transfers if t.kind == "init" and t.source in c.children}
    roots = [p for p in edges if p not in edges.values()]
    chain = [roots[0]] if len(roots) == 1 else []
    while chain and chain[-1] in edges and len(chain) <= len(flow):
        chain.append(edges[chain[-1]])
    if sorted(chain) == sorted(c.children):
        return [plan.component(p) for p in chain]
    return sorted(flow, key=lambda lv: -lv.period.every if lv.period.kind == "tokens" else -10**12)


def cms_config(c: ComponentPlan, ctx: Ctx) -> CMS.Config:
    levels = level_order(c, ctx.plan)
    variant = c.get("variant")
    if variant == "nested" and [lv.path for lv in levels] != list(c.flow):
        ctx.notes.warn(c.span, "the runtime's nested CMS chains its levels along the init transfers ("
                       + " -> ".join(lv.name for lv in levels) + "), not in the order of the flow")
    inits = [t for t in ctx.plan.transfers if t.kind == "init" and t.target in c.children]
    if variant != "nested" and inits:
        ctx.notes.warn(inits[0].span, f"transfer init between levels of a {variant} CMS is not run by the "
                       "runtime (only the nested variant re-initialises levels)")
    if variant == "independent" and c.get("aggregate") != "learned":
        ctx.notes.warn(c.span, f"the runtime's independent CMS aggregates with learned weights (starting "
                       f"equal), not aggregate = {c.get('aggregate')}")
    if ctx.plan.model.norm != "rmsnorm":
        ctx.notes.warn(c.span, "the runtime's CMS levels use RMSNorm pre-norms")
    grads = {lv.rule.grad for lv in levels if lv.period.kind == "tokens" and lv.rule.objective == "l2"}
    if len(grads) > 1:
        ctx.notes.warn(c.span, "the runtime has one stop-grad switch for all l2 levels: writes are stop-grad")
    return CMS.Config(dim=ctx.dim, levels=[_level(lv, ctx) for lv in levels], variant=variant,
                      stopgrad=grads != {"unrolled"})


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
    lr = constant(r.hyper("lr"), ctx, r.span, 1.0, "a CMS level")
    return CMSLevel(hidden=hidden, period=lv.period.every, lr=lr, objective=r.objective, kind=kind, activation=act)
