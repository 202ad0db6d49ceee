"""Stage 6: Plan -> torch modules, optimizers and schedules (STYLE.md: ``lower`` maps plan entries to configs).

``lower(plan)`` builds the network of ``nldsl.model`` from the registry (``nldsl.registry.COMPONENTS``),
gives every trainable tensor to exactly one outer optimizer param group (the Plan's ``ParamGroup`` for its
component and category, with that group's ``every N steps`` period), builds the optimizers
(``nldsl.outer.OPTIMIZERS``; optimizer levels, ``buffer``s generating a weight's updates, through
``nldsl.lower_levels``) and their schedules. Anything the runtime cannot run raises ``NLError`` with a
diagnostic located at the ``.nl`` line of the plan entry; approximations are collected as warning notes.

>>> from nldsl.plan import plan
>>> low = lower(plan("model m { vocab = 256  dim = 8  component f : mlp }\\ntrain { optimizer adamw  data = text(\\"x\\") }"))
>>> type(low.model).__name__, [type(o).__name__ for o in low.optimizers]
('NLModel', ['AdamW'])
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from nldsl.lower_errors import LowerError, Notes, located
from nldsl.lower_levels import level_optimizer
from nldsl.model import FlowBlock, NLModel, Sublayer, module_key
from nldsl.nn.layers import RMSNorm, ShortConv
from nldsl.outer import OPTIMIZERS, OuterLoop, schedule
from nldsl.plan import ComponentPlan, OptimizerPlan, Plan
from nldsl.registry import Ctx, lowering

Owner = tuple[tuple[str, ...], str]
"""(owning component paths, parameter category) of one tensor."""


class Lowered(NamedTuple):
    """What ``lower`` returns: unpack as ``model, optimizers, schedulers, outer, notes, owners = lower(p)``."""

    model: NLModel
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[torch.optim.lr_scheduler.LambdaLR]
    outer: OuterLoop
    notes: Notes
    owners: dict[str, Owner]
    """Parameter name -> (component paths, category)."""
    optimizer_plans: list[OptimizerPlan]
    """The plan entry of each optimizer (same order as ``optimizers``)."""


def lower(plan: Plan, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Lowered:
    """Build the model and the outer loop of a plan (see the module docstring)."""
    ctx = Ctx(plan, Notes())
    model, paths = build_model(plan, ctx)
    model.to(device=device, dtype=dtype)
    owners = categorize(model, paths, plan)
    params = dict(model.named_parameters())
    slots = assign(plan, params, owners)
    cuda = torch.device(device).type == "cuda"
    optimizers, opt_plans = [], []
    for o in plan.optimizers:
        groups = _param_groups(o, params, slots)
        if groups:
            optimizers.append(_optimizer(o, groups, cuda, plan))
            opt_plans.append(o)
        elif o.level is None:
            ctx.notes.warn(o.span, f"{o.kind} owns no trainable tensor: it is not built")
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule(plan.train)) for o in optimizers]
    outer = OuterLoop(optimizers, schedulers, params, plan.train.grad_clip)
    return Lowered(model, optimizers, schedulers, outer, ctx.notes, owners, opt_plans)


# ---------------------------------------------------------------------------------------------- model


def build_model(plan: Plan, ctx: Ctx) -> tuple[NLModel, dict[str, tuple[str, ...]]]:
    """The network, and the owning component paths of every parameter name."""
    mp, paths = plan.model, {}
    embed = _embed(plan)
    paths.update({f"embed.{n}": (mp.embed,) for n, _ in embed.named_parameters()})
    layers: list[FlowBlock] = []
    for item in mp.trunk:
        block = mp.block(item)
        flow = block.flow if block is not None else (item,)
        for r in range(block.repeat if block is not None else 1):
            layers.append(_flow_block(plan, ctx, flow, r, f"layers.{len(layers)}", paths))
    final = _build(plan.component(mp.final_norm), ctx) if mp.final_norm else RMSNorm(mp.dim)
    paths.update({f"norm.{n}": (mp.final_norm,) for n, _ in final.named_parameters()})
    tied = bool(plan.component(mp.head).get("tied")) if mp.head else False
    out = plan.component(mp.head).get("out") if mp.head else mp.vocab
    head = None if tied else nn.Linear(mp.dim, out, bias=False)
    if head is not None:
        paths["head.weight"] = (mp.head,)
    return NLModel(embed, layers, final, head, task=mp.task, tied=tied), paths


def _embed(plan: Plan) -> nn.Module:
    mp = plan.model
    if mp.task == "classify":
        return nn.Linear(mp.inputs, mp.dim)
    embed = nn.Embedding(mp.vocab, mp.dim)
    nn.init.normal_(embed.weight, std=0.02)
    return embed


def _build(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    try:
        return lowering(c).build(c, ctx)
    except ValueError as err:
        if isinstance(err, LowerError):
            raise
        raise located(c.span, err) from err


def _flow_block(plan: Plan, ctx: Ctx, flow: tuple[str, ...], rep: int, prefix: str, paths: dict) -> FlowBlock:
    subs: dict[str, Sublayer] = {}
    for path in flow:
        c = plan.component(path)
        entry = lowering(c)
        fn = _build(c, ctx)
        pre = _pre_norm(plan) if entry.residual else None
        where = f"{c.span}: in '{path}' ({c.kind}, copy {rep + 1} of {c.repeat})"
        subs[c.name] = Sublayer(fn, pre, entry.residual, entry.stateful, where)
        rel = entry.owners(fn, c, plan) if entry.owners else {n: (path,) for n, _ in fn.named_parameters()}
        base = f"{prefix}.sublayers.{module_key(c.name)}"
        paths.update({f"{base}.fn.{n}": owners for n, owners in rel.items()})
        if pre is not None:
            paths.update({f"{base}.norm.{n}": (path,) for n, _ in pre.named_parameters()})
    return FlowBlock(subs)


def _pre_norm(plan: Plan) -> nn.Module:
    dim = plan.model.dim
    return nn.LayerNorm(dim) if plan.model.norm == "layernorm" else RMSNorm(dim)


# ---------------------------------------------------------------------------------------------- groups


def categorize(model: nn.Module, paths: dict[str, tuple[str, ...]], plan: Plan) -> dict[str, Owner]:
    """Each tensor's category: embedding tables, conv kernels and 1-D tensors, other matrices; a component
    that owns a single category takes all its tensors there (a classifier's input layer is ``embeddings``)."""
    out: dict[str, Owner] = {}
    for mod_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{name}" if mod_name else name
            if full not in paths:
                continue
            natural = "embeddings" if isinstance(module, nn.Embedding) else \
                "vectors" if isinstance(module, ShortConv) or p.dim() < 2 else "matrices"
            groups = plan.component(paths[full][0]).groups
            out[full] = (paths[full], groups[0] if len(groups) == 1 and natural not in groups else natural)
    return out


def assign(plan: Plan, params: dict[str, nn.Parameter], owners: dict[str, Owner]) -> dict[str, tuple]:
    """Parameter name -> (optimizer index, every, reduce); frozen components' tensors stop requiring grad."""
    claims = {(g.component, g.category): (o.index, g.period.every, g.period.reduce or "sum")
              for o in plan.optimizers for g in o.groups}
    out: dict[str, tuple] = {}
    for name, p in params.items():
        comps, category = owners[name]
        found = {claims.get((c, category)) for c in comps}
        first = plan.component(comps[0])
        if found == {None} and (first.period.kind == "never" or not first.groups):
            if first.period.kind != "never" and first.kind not in ("head", "embedding"):
                raise LowerError(first.span, f"the runtime learns the initial state of '{first.path}' "
                                 f"(init {first.rule.init} is not supported for a {first.kind} here)",
                                 "use init meta")
            p.requires_grad_(False)
            continue
        if None in found or len(found) > 1:
            _unowned(plan, name, comps, category, found)
        out[name] = found.pop()
    return out


def _unowned(plan: Plan, name: str, comps: tuple[str, ...], category: str, found: set) -> None:
    c = plan.component(comps[0])
    if len(found) > 1:
        raise LowerError(c.span, f"the runtime stores {', '.join(comps)} in one tensor ({name}), but the spec "
                         "trains them with different optimizers or periods",
                         "give these components the same optimizer and period")
    raise LowerError(c.span, f"no optimizer trains the {category} of '{c.path}' (tensor {name})",
                     f"add `{category}` (or `component {c.name}`) to an optimizer's `for` list in train")


def _param_groups(o: OptimizerPlan, params: dict, slots: dict) -> list[dict]:
    buckets: dict[tuple, list] = {}
    for name, p in params.items():
        slot = slots.get(name)
        if slot is not None and slot[0] == o.index:
            buckets.setdefault(slot[1:], []).append(p)
    return [{"params": ps, "nl_every": every, "nl_reduce": reduce} for (every, reduce), ps in buckets.items()]


def _optimizer(o: OptimizerPlan, groups: list[dict], cuda: bool, plan: Plan) -> torch.optim.Optimizer:
    if o.level is not None:
        return level_optimizer(o, plan, groups)
    if o.kind not in OPTIMIZERS:
        raise LowerError(o.span, f"no runtime optimizer for '{o.kind}'", f"known: {', '.join(sorted(OPTIMIZERS))}")
    try:
        return OPTIMIZERS[o.kind](o, groups, cuda)
    except ValueError as err:
        raise located(o.span, err) from err
