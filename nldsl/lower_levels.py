"""Optimizer levels (NL §4.2-4.4, §7.2, App. B): ``buffer`` components that generate a weight's updates.

A ``buffer(like = w)`` with ``context = gradients(w)``, updated ``every 1 steps``, is a key-less memory of
w's gradient stream; ``transfer generate m -> w (what = updates)`` makes its read-out w's update, and
``transfer parametric v -> m`` divides m's read-out by ``v``'s (``output = rsqrt``). Each such group of
buffers is recognised as the optimizer it spells out and lowered to that runtime optimizer over the
tensors of ``w`` (one outer optimizer per target component, stepping every outer step):

============================================================  ================================================
buffers (``gd(lr = η, retain = β)``, ``init zeros``)          runtime optimizer
============================================================  ================================================
m: dot, identity                                              ``torch.optim.SGD(lr=η, momentum=β)``
m: dot, ``output = newton_schulz``                            ``Muon(lr=η, momentum=β, nesterov=False)``
m: ``l2(target = gradient)``, ``elementwise = false``         ``DeltaMomentum(lr=η, beta=β, delta=η)``
m: dot, ``depth = 2`` (identity or newton_schulz)             ``DeepMomentum(lr=η, beta=β, nonlinearity)``
m: dot, identity + v: ``l2(target = gradient_scale)``, rsqrt  ``AdamMemory(form="ema", lr=η_m, betas=(β_m, β_v))``
fast (every step) + slow (every f steps): dot, NS + v         ``M3(lr=η_fast, betas=(β_fast, β_v, β_slow),
                                                              alpha=η_slow/η_fast, slow_every=f)``
============================================================  ================================================

Semantics. A buffer's memory holds w's gradients summed with retention, ``B <- β B + g`` (the momentum in
gradient units; ``m = -η B`` is the dot-objective GD of NL Eq. 7-10, ``m <- β m - η g``), and its ``lr`` is the
step it writes into w: ``w <- w - η σ(B)`` with σ its ``output``. For ``identity`` that is the literal
``w <- w + m``; for ``newton_schulz`` (scale-free) it makes η the step size, as in Muon (times Muon's
``max(1, rows/cols)^0.5``). The l2 objective ``1/2 ||m K + G||²`` (``target = gradient``, a matrix memory
keyed by the normalised gradient ``K``) takes one GD step of size η: it erases η of the memory along ``K``
and writes the gradient, ``B <- B (β I - η KᵀK) + G`` (DeltaMomentum with ``delta = η``). A deep buffer
(``depth = 2``) is DMGD as ``nldsl.optim.DeepMomentum`` defines it: its MLP memory learns to predict the
next normalised gradient (a dot objective is unbounded below for a nonlinear memory). The second moment v
(``rsqrt``) is Adam's bias-corrected EMA of g², so its ``lr`` must be ``1 - retain`` (the EMA's weight).
Anything else is a located NL501 at the buffer.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from nldsl.lower_errors import LowerError
from nldsl.plan import ComponentPlan, OptimizerPlan, Plan

SUPPORTED = ("momentum (dot, identity), Muon (dot, newton_schulz), delta momentum (l2(target = gradient), "
             "elementwise = false), deep momentum (depth = 2), Adam (m + v with rsqrt), M3 (fast + slow + v)")


class LevelRecipe(NamedTuple):
    """The runtime optimizer of one group of optimizer levels: ``module.name(**kwargs)``."""

    module: str
    name: str
    kwargs: dict


def level_recipe(o: OptimizerPlan, plan: Plan) -> LevelRecipe:
    """Recognise the optimizer the buffers of ``o`` spell out (module docstring)."""
    gens = [plan.component(p) for p in dict(o.config)["buffers"]]
    dens = sorted({t.source for t in plan.transfers if t.kind == "parametric" and t.target in {g.path for g in gens}})
    dens = [plan.component(p) for p in dens]
    target = plan.component(o.level)
    for b in gens + dens:
        _check_buffer(b, target)
    if len(dens) > 1 or any(d.get("output") != "rsqrt" or _objective(d) != "l2(gradient_scale)" for d in dens):
        raise LowerError(dens[-1].span, "an optimizer level's update is divided by one second-moment buffer: "
                         "objective l2(target = gradient_scale), output = rsqrt", f"supported: {SUPPORTED}")
    if len(gens) == 2:
        return _m3(gens, dens)
    if len(gens) != 1:
        raise LowerError(gens[0].span, f"{len(gens)} buffers generate the updates of '{target.path}'",
                         f"supported: {SUPPORTED}")
    return _adam(gens[0], dens[0]) if dens else _single(gens[0])


def level_optimizer(o: OptimizerPlan, plan: Plan, groups: list[dict]) -> torch.optim.Optimizer:
    """The runtime optimizer of ``o`` over ``groups`` (the tensors of the component the levels update)."""
    import importlib

    recipe = level_recipe(o, plan)
    cls = getattr(importlib.import_module(recipe.module), recipe.name)
    try:
        return cls(groups, **recipe.kwargs)
    except ValueError as err:
        raise LowerError(o.span, str(err), "the runtime rejected this value", code="NL504") from err


def _objective(b: ComponentPlan) -> str:
    target = dict(b.rule.objective_args).get("target", "value")
    return b.rule.objective if target == "value" else f"{b.rule.objective}({target})"


def _hyper(b: ComponentPlan, name: str, default: float | None = None) -> float:
    h = b.rule.hyper(name)
    if h is None and default is not None:
        return default
    if h is None or h.form != "const":
        raise LowerError((h.span if h else None) or b.rule.span or b.span, f"an optimizer level takes {name} as "
                         f"a number, not {h.render() if h else 'nothing'}", f"write gd({name} = 0.9)")
    return float(h.value)


def _check_buffer(b: ComponentPlan, target: ComponentPlan) -> None:
    if b.kind != "buffer":
        raise LowerError(b.span, f"only buffer components are lowered as optimizer levels, not {b.kind}")
    like = b.get("like")
    if like != target.name or b.rule.context != f"gradients({target.name})":
        raise LowerError(b.span, f"an optimizer level of '{target.name}' must be like = {target.name} with "
                         f"context = gradients({target.name}), not like = {like}, context = {b.rule.context}")
    if b.rule.optimizer != "gd" or b.rule.init != "zeros":
        raise LowerError(b.rule.span or b.span, f"the runtime's optimizer levels learn with gd from init zeros, "
                         f"not {b.rule.optimizer} / init {b.rule.init}", "write optimizer gd(lr = ..., retain = ...)")
    if b.period.kind != "steps":
        raise LowerError(b.span, "an optimizer level is updated every N outer steps", "write update every 1 steps")


def _step(b: ComponentPlan) -> tuple[float, float]:
    """(lr, retain) of a buffer updated every step."""
    if b.period.every != 1:
        raise LowerError(b.span, f"this optimizer level is updated every step, not {b.period.render()}",
                         "write update every 1 steps (only M3's slow momentum has its own period)")
    return _hyper(b, "lr"), _hyper(b, "retain", 1.0)


def _single(m: ComponentPlan) -> LevelRecipe:
    lr, beta = _step(m)
    objective, output, depth = _objective(m), m.get("output"), m.get("depth")
    if depth:
        if depth != 2 or objective != "dot" or output not in ("identity", "newton_schulz"):
            raise LowerError(m.span, "the runtime's deep momentum is a 2-layer MLP memory on a dot objective, "
                             f"read as identity or newton_schulz (got depth = {depth}, {objective}, {output})")
        return LevelRecipe("nldsl.optim", "DeepMomentum", dict(
            lr=lr, beta=beta, nonlinearity="none" if output == "identity" else output))
    if objective == "l2(gradient)" and not m.get("elementwise") and output == "identity":
        return LevelRecipe("nldsl.optim", "DeltaMomentum", dict(lr=lr, beta=beta, delta=lr))
    if objective == "dot" and m.get("elementwise") and output == "identity":
        return LevelRecipe("torch.optim", "SGD", dict(lr=lr, momentum=beta))
    if objective == "dot" and m.get("elementwise") and output == "newton_schulz":
        return LevelRecipe("nldsl.optim", "Muon", dict(lr=lr, momentum=beta, nesterov=False))
    raise LowerError(m.span, f"no runtime optimizer reads a buffer with objective {objective}, elementwise = "
                     f"{str(m.get('elementwise')).lower()}, output = {output}", f"supported: {SUPPORTED}")


def _second_moment(v: ComponentPlan) -> float:
    lr, beta = _step(v)
    if abs(lr - (1.0 - beta)) > 1e-9 * max(1.0, lr):
        raise LowerError(v.rule.span or v.span, f"the runtime's second moment is an exponential moving average of "
                         f"g²: its lr must be 1 - retain = {1.0 - beta:g}, got {lr:g}",
                         f"write gd(lr = {1.0 - beta:g}, retain = {beta:g})")
    return beta


def _adam(m: ComponentPlan, v: ComponentPlan) -> LevelRecipe:
    lr, beta1 = _step(m)
    if _objective(m) != "dot" or m.get("output") != "identity" or not m.get("elementwise") or m.get("depth"):
        raise LowerError(m.span, "the first moment of Adam is an element-wise dot-objective buffer read as "
                         "identity", f"supported: {SUPPORTED}")
    return LevelRecipe("nldsl.optim", "AdamMemory", dict(lr=lr, betas=(beta1, _second_moment(v)), form="ema"))


def _m3(gens: list[ComponentPlan], dens: list[ComponentPlan]) -> LevelRecipe:
    fast, slow = sorted(gens, key=lambda b: b.period.every)
    for b in gens:
        if _objective(b) != "dot" or b.get("output") != "newton_schulz" or not b.get("elementwise") or b.get("depth"):
            raise LowerError(b.span, "M3's momenta are element-wise dot-objective buffers read through "
                             "newton_schulz", f"supported: {SUPPORTED}")
    if not dens or slow.period.every < 2:
        raise LowerError(slow.span, "two buffers generating one weight's updates are M3: a fast momentum every "
                         "step, a slow one every f > 1 steps, and a second moment v (transfer parametric v -> "
                         "both)", f"supported: {SUPPORTED}")
    lr, beta1 = _step(fast)
    slow_lr, beta3 = _hyper(slow, "lr"), _hyper(slow, "retain", 1.0)
    return LevelRecipe("nldsl.optim", "M3", dict(lr=lr, betas=(beta1, _second_moment(dens[0]), beta3),
                                                 alpha=slow_lr / lr if lr else 0.0, slow_every=slow.period.every,
                                                 form="ema"))
