"""The lowering table: catalog component kind -> runtime ``Config`` -> ``build()`` (STYLE.md "do it like they do" 3).

``COMPONENTS`` maps every component kind the runtime can run to a ``Lowering``: a function from the plan
entry to the built module, whether it carries in-context state, whether it runs as a pre-norm residual
sub-layer (``x + f(norm(x))``), and, for modules whose tensors belong to several components (a CMS and its
levels, a self-modifying Titans and its memories), which component owns each parameter. What the runtime
cannot run raises a located ``LowerError``; what it runs approximately is recorded as a warning note.

=========================  =========================================================  ================
catalog kind               runtime                                                    module wrapper
=========================  =========================================================  ================
``attention``              ``nldsl.nn.transformer.CausalSelfAttention``               pre-norm residual
``swiglu``                 ``nldsl.nn.layers.SwiGLU``                                 pre-norm residual
``mlp`` (component)        ``nldsl.model.MLP``                                        pre-norm residual
``linear`` (component)     ``torch.nn.Linear``                                        pre-norm residual
``conv``                   ``nldsl.nn.layers.ShortConv`` (state adapter)              pre-norm residual
``norm``                   ``nldsl.nn.layers.RMSNorm`` / ``torch.nn.LayerNorm``       plain
``neural_memory``          ``nldsl.nn.neural_memory.NeuralMemory``                    pre-norm residual
``self_modifying_titans``  ``nldsl.nn.self_modifying.SelfModifyingTitans``            pre-norm residual
``cms``                    ``nldsl.nn.cms.CMS`` (levels: ``CMSLevel``)                own residual
``embedding`` / ``head``   ``torch.nn.Embedding`` (``Linear`` for classify) / ``Linear``  model ends
=========================  =========================================================  ================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from nldsl.lower_errors import LowerError, Notes
from nldsl.nn.cms import CMS, CMSLevel
from nldsl.nn.layers import RMSNorm, ShortConv, SwiGLU
from nldsl.nn.neural_memory import NeuralMemory
from nldsl.nn.self_modifying import SelfModifyingTitans
from nldsl.nn.transformer import CausalSelfAttention
from nldsl.plan import ComponentPlan, Hyper, Plan


@dataclass
class Ctx:
    """What a lowering function sees besides its plan entry."""

    plan: Plan
    notes: Notes

    @property
    def dim(self) -> int:
        return self.plan.model.dim


Owners = Callable[[nn.Module, ComponentPlan, Plan], dict[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Lowering:
    build: Callable[[ComponentPlan, Ctx], nn.Module]
    stateful: bool = False
    residual: bool = True
    """Pre-norm residual sub-layer ``x + f(norm(x))``; False: ``f(x)`` (a CMS carries its own residuals)."""
    owners: Owners | None = None
    """Relative parameter name -> owning component paths (None: every tensor belongs to the entry)."""


# ---------------------------------------------------------------------------------------------- static


def attention(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    norm_ = set(c.get("normalize") or ())
    return CausalSelfAttention.Config(dim=ctx.dim, n_heads=c.get("heads"), rope_base=c.get("rope_base"),
                                      kv_heads=c.get("kv_heads"), window=c.get("window"), rope=bool(c.get("rope")),
                                      q_norm="q" in norm_, k_norm="k" in norm_).build()


def swiglu(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    return SwiGLU.Config(dim=ctx.dim, hidden=c.get("hidden")).build()


def mlp(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    from nldsl.model import MLP

    if c.period.kind == "tokens":
        raise LowerError(c.span, f"an in-context {c.kind} component is not in the runtime",
                         "write it as a neural_memory, or as a level of a cms")
    return MLP.Config(dim=ctx.dim, hidden=c.get("hidden"), depth=c.get("depth"),
                      activation=c.get("activation")).build()


def linear(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    if c.period.kind == "tokens":
        raise LowerError(c.span, "an in-context linear component is not in the runtime",
                         "write it as a neural_memory(depth = 1)")
    if c.get("out") != ctx.dim:
        raise LowerError(c.span, f"a linear sub-layer must keep the width: out = {c.get('out')}, dim = {ctx.dim}",
                         "each component of a flow is a residual sub-layer x + f(norm(x))")
    return nn.Linear(ctx.dim, ctx.dim, bias=bool(c.get("bias")))


def conv(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    from nldsl.model import StatefulConv

    return StatefulConv(ShortConv.Config(dim=ctx.dim, kernel_size=c.get("window")).build())


def norm(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    if c.get("type") == "layernorm":
        return nn.LayerNorm(ctx.dim, eps=c.get("eps"))
    return RMSNorm.Config(dim=ctx.dim, eps=c.get("eps")).build()


# ---------------------------------------------------------------------------------------------- hypers

RATE_BASE = {"lr": 1.0, "retain": 0.99, "beta": 0.9, "momentum": 0.9}
"""``data(act, scale = s)`` starts at ``s ×`` this value, then follows ``act(W x + b)``."""
RUNTIME_ACT = {"lr": "softplus", "retain": "sigmoid", "beta": "sigmoid", "momentum": "sigmoid"}
"""The activation the runtime applies to each data-dependent rate."""


def rate(h: Hyper, ctx: Ctx, span) -> tuple[float, str]:
    """A hyperparameter as a NeuralMemory rate: (initial value, constant | learned | data)."""
    if h.form == "memory":
        raise LowerError(span, f"{h.name} = memory({h.source}) needs a self-modifying component",
                         "use a number, learned(x) or data(...)")
    if h.form == "data":
        if h.name == "lr" and h.activation == "sigmoid":  # bounded: scale * sigmoid(W x + b)
            return h.value, "data"
        if h.activation != RUNTIME_ACT[h.name]:
            ctx.notes.warn(h.span or span, f"the runtime's data-dependent {h.name} uses {RUNTIME_ACT[h.name]}, "
                           f"not {h.activation}")
        return h.value * RATE_BASE[h.name], "data"
    return h.value, "constant" if h.form == "const" else "learned"


def normalized_qk(c: ComponentPlan) -> bool:
    norm_ = set(c.get("normalize") or ())
    if norm_ not in (set(), {"q", "k"}):
        raise LowerError(c.span, f"the runtime normalises q and k together, not {sorted(norm_)}",
                         "write normalize = [q, k] or leave it out")
    return bool(norm_)


# ---------------------------------------------------------------------------------------------- memories


def neural_memory(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    r = c.rule
    if c.get("persistent"):
        raise LowerError(c.span, "persistent memory tokens are not in the runtime yet", "use persistent = 0")
    if r.context != "tokens" or r.init != "meta":
        raise LowerError(r.span or c.span, f"the runtime's neural memory runs on tokens with init meta "
                         f"(got context {r.context}, init {r.init})", "remove the context / init statement")
    objective, args = r.objective, dict(r.objective_args)
    if objective not in ("l2", "dot", "huber", "lp") or args.get("target") != "value":
        raise LowerError(r.span or c.span, f"the runtime's neural memory optimizes l2, dot, huber or lp with "
                         f"target = value, not {r.render().split('  ')[0]}", "use objective l2")
    if r.optimizer not in ("gd", "momentum", "dgd"):
        raise LowerError(r.span or c.span, f"the runtime's neural memory has no {r.optimizer} inner optimizer",
                         "use gd, momentum or dgd")
    heads = c.get("heads")
    lr, lr_mode = rate(r.hyper("lr"), ctx, c.span)
    ret, ret_mode = rate(r.hyper("retain"), ctx, c.span)
    beta = r.hyper("beta") or r.hyper("momentum")
    mom, mom_mode = rate(beta, ctx, c.span) if beta is not None else (0.0, "constant")
    sigmoid_lr = r.hyper("lr").form == "data" and r.hyper("lr").activation == "sigmoid"
    return NeuralMemory.Config(
        dim=ctx.dim, n_heads=heads, depth=c.get("depth"), hidden_mult=c.get("hidden") / (ctx.dim // heads),
        lr_activation="sigmoid" if sigmoid_lr else "softplus", objective=objective,
        huber_delta=args.get("delta", 1.0), lp_power=args.get("p", 3.0), dgd=r.optimizer == "dgd",
        lr=lr / 2 if sigmoid_lr else lr, lr_mode=lr_mode, retention=ret, retention_mode=ret_mode, momentum=mom,
        momentum_mode=mom_mode,
        chunk_size=c.period.every, stopgrad=r.grad == "stopgrad", qk_norm=normalized_qk(c), conv_size=c.get("conv"),
        qkv_activation="silu", output_norm=bool(c.get("gate")), output_gate=bool(c.get("gate"))).build()


BANK = ("k", "v", "eta", "alpha")


def _same(values: dict[str, object], what: str, span, hint: str):
    if len(set(map(repr, values.values()))) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in values.items())
        raise LowerError(span, f"the runtime gives these memories one {what} ({listed})", hint)
    return next(iter(values.values()))


def self_modifying(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    kids = _memories(c, ctx)
    mems, mem = list(kids.values()), kids["mem"]
    bank = [kids[n] for n in kids if n != "mem"]
    rule = c.rule
    hint = "k, v, eta and alpha share one (mem may have its own)"
    inner = _same({k.name: k.rule.optimizer for k in bank}, "inner optimizer", c.span, hint)
    for opt in (inner, mem.rule.optimizer):
        if opt not in ("dgd", "gd", "momentum"):
            raise LowerError(rule.span or c.span, f"the runtime's memories learn with dgd, gd or momentum, not {opt}")
    _check_rates(c)
    beta = rule.hyper("momentum") or rule.hyper("beta")
    if beta is not None and beta.form == "memory":
        raise LowerError(beta.span or rule.span or c.span, f"the self-modifying Titans takes {beta.name} as a "
                         "number, learned(x) or data(sigmoid, ...), not from a memory")
    momentum, momentum_mode = rate(beta, ctx, rule.span or c.span) if beta is not None else (0.0, "constant")
    cut = tuple(k.name for k in mems if k.rule.grad == "stopgrad")
    head = ctx.dim // c.get("heads")
    return SelfModifyingTitans.Config(
        dim=ctx.dim, n_heads=c.get("heads"),  # per-head memories: hidden widths are per head
        depth=_depth(mem), proj_depth=_same({k.name: _depth(k) for k in bank}, "depth", c.span, hint),
        activation=mem.get("activation") or "silu",  # a linear memory has no activation
        proj_activation=_same({k.name: k.get("activation") for k in bank}, "activation", c.span, hint) or "silu",
        hidden_mult=(mem.get("hidden") or head) / head,  # a linear memory (depth 1) has no hidden layer
        proj_hidden_mult=(_same({k.name: k.get("hidden") for k in bank}, "hidden width", c.span, hint) or head) / head,
        chunk_size=mem.period.every,
        proj_chunk_size=_same({k.name: k.period.every for k in bank}, "chunk", c.span, hint),
        mem_objective="self" if dict(mem.rule.objective_args).get("target") == "self" else "l2",
        dgd=mem.rule.optimizer == "dgd", proj_dgd=inner == "dgd", momentum=momentum, momentum_mode=momentum_mode,
        adaptive_q=c.get("q") == "adaptive", conv_size=c.get("conv"), qk_norm=normalized_qk(c),
        stopgrad=len(cut) == len(mems), stopgrad_memories=() if len(cut) == len(mems) else cut,
        output_norm=bool(c.get("gate")), output_gate=bool(c.get("gate"))).build()


def _memories(c: ComponentPlan, ctx: Ctx) -> dict[str, ComponentPlan]:
    """The memories the runtime needs (k, v, eta, alpha [, q], mem), each checked."""
    kids = {k.name: k for k in ctx.plan.children(c.path)}
    bank = BANK + (("q",) if c.get("q") == "adaptive" else ())
    missing = [n for n in bank + ("mem",) if n not in kids]
    if missing:
        raise LowerError(c.span, f"the runtime's self-modifying Titans needs memories {', '.join(bank + ('mem',))}",
                         f"add {', '.join(f'memory {n} : mlp(depth = 2)' for n in missing)}")
    for name in sorted(set(kids) - set(bank) - {"mem"}):
        ctx.notes.warn(kids[name].span, f"memory {name} is not used by the runtime (q = {c.get('q')})")
    for name in bank + ("mem",):
        _check_memory(kids[name], name == "mem")
    return {n: kids[n] for n in bank + ("mem",)}


def _check_rates(c: ComponentPlan) -> None:
    lr, retain = c.rule.hyper("lr"), c.rule.hyper("retain")
    if lr is None or lr.form != "memory" or lr.source != "eta" or retain is None or retain.form != "memory" \
            or retain.source != "alpha":
        raise LowerError(c.rule.span or c.span, "the runtime's self-modifying Titans takes η from memory eta and "
                         "α from memory alpha", "write lr = memory(eta), retain = memory(alpha)")


def _depth(k: ComponentPlan) -> int:
    return 1 if k.kind == "linear" else k.get("depth")


def _check_memory(k: ComponentPlan, main: bool) -> None:
    if k.kind not in ("mlp", "linear") or (k.kind == "mlp" and not k.get("residual")):
        raise LowerError(k.span, f"the runtime's memories are residual MLPs (or linear), not {k.kind}"
                         + (" without residual" if k.kind == "mlp" else ""), "use mlp(depth = 2)")
    if k.period.kind != "tokens" or k.rule.init != "meta":
        raise LowerError(k.span, "the runtime's memories are written in context with init meta",
                         "give it `update every N tokens` and init meta")
    target = dict(k.rule.objective_args).get("target")
    if k.rule.objective != "l2" or (not main and target != "self") or target not in ("self", "value"):
        raise LowerError(k.span, "the runtime trains k, v, eta and alpha with l2(target = self) and mem with "
                         f"l2(target = self | value), not {k.rule.objective}(target = {target})")


def smt_owners(module: nn.Module, c: ComponentPlan, plan: Plan) -> dict[str, tuple[str, ...]]:
    kids = {k.name: k.path for k in plan.children(c.path)}
    bank = tuple(kids[n] for n in BANK + (("q",) if c.get("q") == "adaptive" else ()))
    return {n: bank if n.startswith("bank_init.") else (kids["mem"],) if n.startswith("mem_init.") else (c.path,)
            for n, _ in module.named_parameters()}


def cms(c: ComponentPlan, ctx: Ctx) -> nn.Module:
    from nldsl.lower_cms import cms_config

    return cms_config(c, ctx).build()


def cms_owners(module: nn.Module, c: ComponentPlan, plan: Plan) -> dict[str, tuple[str, ...]]:
    """A level's norm and rate belong to it; a base to every level that reads it (init transfers, nested)."""
    from nldsl.lower_cms import level_order

    levels = level_order(c, plan)
    out = {}
    for name, _ in module.named_parameters():
        parts = name.split(".")
        if parts[0] == "bases":
            out[name] = tuple(levels[t].path for t in module.sharing(int(parts[1])))
        elif parts[0] in ("norms", "rates"):
            out[name] = (levels[int(parts[1])].path,)
        else:
            out[name] = (c.path,)
    return out


COMPONENTS: dict[str, Lowering] = {
    "attention": Lowering(attention, stateful=True),
    "swiglu": Lowering(swiglu),
    "mlp": Lowering(mlp),
    "linear": Lowering(linear),
    "conv": Lowering(conv, stateful=True),
    "norm": Lowering(norm, residual=False),
    "neural_memory": Lowering(neural_memory, stateful=True),
    "self_modifying_titans": Lowering(self_modifying, stateful=True, owners=smt_owners),
    "cms": Lowering(cms, stateful=True, residual=False, owners=cms_owners),
}
"""Catalog kind -> how the runtime runs it (``embedding`` and ``head`` are the model's ends, see model.py)."""


def lowering(c: ComponentPlan) -> Lowering:
    """The registry entry of a component (a miss is a located error listing the known kinds)."""
    if c.kind not in COMPONENTS:
        known = ", ".join(sorted(COMPONENTS))
        raise LowerError(c.span, f"the runtime cannot run a '{c.kind}' on the data path",
                         f"kinds the compiler lowers: {known}")
    return COMPONENTS[c.kind]
