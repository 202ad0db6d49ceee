"""`nldsl codegen FILE -o train_x.py`: the compiled Plan as a standalone, readable training script.

The script builds the very modules and optimizers ``nldsl.lower`` builds (the runtime's classes from
``nldsl.nn``, ``nldsl.model``, ``nldsl.optim``, each from a literal ``Config``), in the same order, so one
seed gives the same initial weights; its step and loop (``nldsl.codegen_script``) mirror ``nldsl train``, so
both log the same losses. It never reads the `.nl` file: everything the spec said is written out.

How it is made, and why no spec content can become code:

* the model is lowered once on the ``meta`` device; every top-level ``Config.build()`` call is recorded,
  so each component is rendered as the exact config the compiler built (``_Recorder``);
* every value is an AST node: ``ast.Constant`` (strings, numbers; ``ast.unparse`` quotes them), lists,
  tuples, dicts, calls of runtime classes; nothing is pasted into source text;
* spec names become Python identifiers only when ``str.isidentifier()`` and not a keyword, a builtin or a
  name the script uses (else ``component_N``);
* comments quote the spec lines each part came from, cut to one line with every non-printable
  character (line breaks included) escaped, so a comment cannot end early;
* the result is parsed back (``ast.parse``) before it is written.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from nldsl.codegen_ast import (CodegenError, Comments, Names, _function, assign, attr, call,  # noqa: F401
                               safe_comment, stmt, value_ast)
from nldsl.codegen_script import IMPORTS, TEMPLATE
from nldsl.runs import data_source, prepare_run


# --------------------------------------------------------------------------- recording configs
def _config_classes() -> list[type]:
    """Every runtime ``X.Config`` dataclass with a ``build()`` (what the registry instantiates)."""
    import importlib

    found = []
    for name in ("nldsl.nn.layers", "nldsl.nn.transformer", "nldsl.nn.neural_memory", "nldsl.nn.self_modifying",
                 "nldsl.nn.cms", "nldsl.nn.hope", "nldsl.nn.hope_attention", "nldsl.nn.titans", "nldsl.model"):
        module = importlib.import_module(name)
        for obj in vars(module).values():
            cfg = getattr(obj, "Config", None)
            if isinstance(obj, type) and isinstance(cfg, type) and dataclasses.is_dataclass(cfg) \
                    and hasattr(cfg, "build"):
                found.append(cfg)
    return list(dict.fromkeys(found))


class _Recorder:
    """While active, remembers each outermost ``Config.build()`` and the module it returned."""

    def __init__(self) -> None:
        self.built: list[tuple[Any, nn.Module]] = []
        self.depth = 0

    @contextlib.contextmanager
    def active(self) -> Iterator["_Recorder"]:
        originals = {cls: cls.build for cls in _config_classes()}

        def wrap(original):
            def build(cfg):
                self.depth += 1
                try:
                    module = original(cfg)
                finally:
                    self.depth -= 1
                if self.depth == 0:
                    self.built.append((cfg, module))
                return module
            return build

        try:
            for cls, original in originals.items():
                cls.build = wrap(original)
            yield self
        finally:
            for cls, original in originals.items():
                cls.build = original


# --------------------------------------------------------------------------- modules -> AST
class ModelWriter:
    """Renders ``build_model()`` the way ``nldsl.lower.build_model`` assembles the network."""

    def __init__(self, plan: Any, comments: Comments):
        from nldsl.lower_errors import Notes
        from nldsl.registry import Ctx

        self.plan, self.c = plan, comments
        self.ctx = Ctx(plan, Notes())
        self.imports: set[tuple[str, str]] = set()

    def module_expr(self, module: nn.Module, built: list[tuple[Any, nn.Module]]) -> ast.expr:
        """The expression that builds ``module`` (a recorded config, or a torch layer from its sizes)."""
        from nldsl.model import StatefulConv

        for cfg, made in built:
            if made is module:
                return self._config_build(cfg)
            if isinstance(module, StatefulConv) and made is module.conv:
                self.imports.add(("nldsl.model", "StatefulConv"))
                return call("StatefulConv", self._config_build(cfg))
        if isinstance(module, nn.Linear):
            return call("nn.Linear", ast.Constant(module.in_features), ast.Constant(module.out_features),
                        bias=ast.Constant(module.bias is not None))
        if isinstance(module, nn.LayerNorm):
            return call("nn.LayerNorm", ast.Constant(module.normalized_shape[0]), eps=ast.Constant(module.eps))
        raise CodegenError(f"codegen cannot write a {type(module).__name__} module into a script")

    def _config_build(self, cfg: Any) -> ast.expr:
        self._import_config(cfg)
        return call(ast.Attribute(value_ast(cfg), "build", ast.Load()))

    def _import_config(self, value: Any) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            outer = type(value).__qualname__.split(".")[0]
            self.imports.add((type(value).__module__, outer))
            for f in dataclasses.fields(value):
                self._import_config(getattr(value, f.name))
        elif isinstance(value, (list, tuple)):
            for v in value:
                self._import_config(v)

    def component(self, path: str) -> tuple[nn.Module, ast.expr]:
        """Build one component as ``lower`` does (on the meta device) and render it."""
        from nldsl.lower import _build

        rec = _Recorder()
        with rec.active(), torch.device("meta"):
            module = _build(self.plan.component(path), self.ctx)
        return module, self.module_expr(module, rec.built)

    def sublayer(self, path: str, names: Names, copy: ast.expr | None) -> tuple[list[ast.stmt], str]:
        """``name = Sublayer(fn, pre_norm, residual, stateful, where)`` for one component of a flow."""
        from nldsl.registry import lowering

        c = self.plan.component(path)
        entry = lowering(c)
        _, fn = self.component(path)
        pre = (call("nn.LayerNorm", ast.Constant(self.plan.model.dim)) if self.plan.model.norm == "layernorm" else
               call("RMSNorm", ast.Constant(self.plan.model.dim))) if entry.residual else ast.Constant(None)
        if entry.residual and self.plan.model.norm != "layernorm":
            self.imports.add(("nldsl.nn.layers", "RMSNorm"))
        head = f"{Path(c.span.path).name}:{c.span.line}:{c.span.col}: in '{path}' ({c.kind}, copy "
        tail = f" of {c.repeat})"
        where = (ast.BinOp(ast.BinOp(ast.Constant(head), ast.Add(), call("str", copy)), ast.Add(), ast.Constant(tail))
                 if copy is not None else ast.Constant(f"{head}1{tail}"))
        var = names(c.name)
        value = call("Sublayer", fn, pre, ast.Constant(entry.residual), ast.Constant(entry.stateful), where)
        note = f"{c.kind}: level {c.level}, updated {c.period.render()}"
        return [*self.c.quote(c.span, note), assign(var, value)], var

    def flow_block(self, flow: Sequence[str], copy: ast.expr | None) -> list[ast.stmt]:
        """The sublayers of one block copy and ``layers.append(FlowBlock({...}))``."""
        names, body, keys = Names(), [], []
        for path in flow:
            stmts, var = self.sublayer(path, names, copy)
            body += stmts
            keys.append((self.plan.component(path).name, var))
        block = call("FlowBlock", ast.Dict([ast.Constant(k) for k, _ in keys],
                                           [ast.Name(v, ast.Load()) for _, v in keys]))
        return body + [stmt(call("layers.append", block))]

    def build_model(self) -> ast.FunctionDef:
        mp = self.plan.model
        if mp.task != "lm":
            raise CodegenError(f"codegen writes language-model scripts; model {mp.name} has task = {mp.task}")
        body: list[ast.stmt] = self.c.quote(mp.span, f"vocab {mp.vocab}, dim {mp.dim}")
        body.append(assign("embed", call("nn.Embedding", ast.Constant(mp.vocab), ast.Constant(mp.dim))))
        body.append(stmt(call("nn.init.normal_", attr("embed", "weight"), std=ast.Constant(0.02))))
        body.append(assign("layers", ast.List([], ast.Load())))
        for item in mp.trunk:
            block = mp.block(item)
            if block is None:
                body += self.flow_block((item,), None)
                continue
            copies = f"{block.repeat} cop{'y' if block.repeat == 1 else 'ies'}"
            body += self.c.quote(block.span, f"block {block.name}, {copies}")
            loop = self.flow_block(block.flow, ast.BinOp(ast.Name("copy", ast.Load()), ast.Add(), ast.Constant(1)))
            body.append(ast.For(ast.Name("copy", ast.Store()), call("range", ast.Constant(block.repeat)), loop, [],
                                lineno=0))
        body += self._ends()
        doc = f"embed -> {' -> '.join(f'{b.name} x{b.repeat}' for b in mp.blocks) or 'components'} -> norm -> head"
        return _function("build_model", [], f"The network of model {mp.name}: {doc}.", body, returns="NLModel")

    def _ends(self) -> list[ast.stmt]:
        mp = self.plan.model
        if mp.final_norm:
            _, norm = self.component(mp.final_norm)
        else:
            self.imports.add(("nldsl.nn.layers", "RMSNorm"))
            norm = call("RMSNorm", ast.Constant(mp.dim))
        tied = bool(self.plan.component(mp.head).get("tied")) if mp.head else False
        out = self.plan.component(mp.head).get("out") if mp.head else mp.vocab
        head = ast.Constant(None) if tied else call("nn.Linear", ast.Constant(mp.dim), ast.Constant(out),
                                                    bias=ast.Constant(False))
        model = call("NLModel", ast.Name("embed", ast.Load()), ast.Name("layers", ast.Load()),
                     ast.Name("norm", ast.Load()), ast.Name("head", ast.Load()), task=ast.Constant(mp.task),
                     tied=ast.Constant(tied))
        return [assign("norm", norm), self.c("tied: the head reads the embedding table") if tied else
                self.c("the output head"), assign("head", head), ast.Return(model)]


# --------------------------------------------------------------------------- optimizers -> AST
_OPTIMIZER_CLASSES = {"adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD", "muon": "Muon", "m3": "M3",
                      "deep_momentum": "DeepMomentum", "delta_momentum": "DeltaMomentum"}


def optimizer_kwargs(kind: str, c: dict[str, Any]) -> dict[str, ast.expr]:
    """The constructor arguments ``nldsl.outer.OPTIMIZERS`` passes for each outer optimizer kind."""
    v = lambda x: value_ast(x)  # noqa: E731
    if kind == "adamw":
        return {"lr": v(c["lr"]), "betas": v((c["beta1"], c["beta2"])), "eps": v(c["eps"]),
                "weight_decay": v(c["weight_decay"])}
    if kind == "sgd":
        return {"lr": v(c["lr"]), "momentum": v(c["momentum"]), "weight_decay": v(c["weight_decay"])}
    if kind == "muon":
        return {k: v(c[k]) for k in ("lr", "momentum", "ns_steps", "weight_decay")}
    if kind == "m3":
        return {"lr": v(c["lr"]), "betas": v((c["beta1"], c["beta2"], c["beta3"])), "alpha": v(c["alpha"]),
                "slow_every": v(c["slow_every"]), "ns_steps": v(c["ns_steps"]), "eps": v(c["eps"]),
                "weight_decay": v(c["weight_decay"])}
    if kind == "deep_momentum":
        return {k: v(c[k]) for k in ("lr", "beta", "hidden", "weight_decay")}
    if kind == "delta_momentum":
        return {k: v(c[k]) for k in ("lr", "beta", "weight_decay")}
    raise CodegenError(f"codegen has no runtime optimizer for '{kind}'")


def group_params(names: list[str], layers: int) -> ast.expr:
    """``[params[...] ...]`` for one param group; names repeated in every layer are written once, in a loop."""
    pattern = re.compile(r"^layers\.(\d+)\.(.+)$")
    param = lambda key: ast.Subscript(ast.Name("params", ast.Load()), key, ast.Load())  # noqa: E731
    inner = [n for n in names if pattern.match(n)]
    rel = [pattern.match(n).group(2) for n in inner if pattern.match(n).group(1) == "0"]
    first = names.index(inner[0]) if inner else 0
    if not (layers > 1 and inner and inner == [f"layers.{i}.{r}" for i in range(layers) for r in rel]
            and names[first:first + len(inner)] == inner):
        return ast.ListComp(param(ast.Name("name", ast.Load())),
                            [ast.comprehension(ast.Name("name", ast.Store()), value_ast(tuple(names)), [], 0)])
    key = ast.JoinedStr([ast.Constant("layers."), ast.FormattedValue(ast.Name("i", ast.Load()), -1),
                         ast.Constant("."), ast.FormattedValue(ast.Name("name", ast.Load()), -1)])
    loop = ast.ListComp(param(key), [
        ast.comprehension(ast.Name("i", ast.Store()), call("range", ast.Constant(layers)), [], 0),
        ast.comprehension(ast.Name("name", ast.Store()), value_ast(tuple(rel)), [], 0)])
    parts = [ast.List([param(ast.Constant(n)) for n in names[:first]], ast.Load()), loop,
             ast.List([param(ast.Constant(n)) for n in names[first + len(inner):]], ast.Load())]
    parts = [p for p in parts if not (isinstance(p, ast.List) and not p.elts)]
    expr = parts[0]
    for p in parts[1:]:
        expr = ast.BinOp(expr, ast.Add(), p)
    return expr


def build_optimizers(plan: Any, comments: Comments, imports: set[tuple[str, str]]) -> ast.FunctionDef:
    """``build_optimizers(model, steps, device)``: param groups by name, optimizers, schedules, OuterLoop."""
    from nldsl.lower import lower

    with torch.device("meta"):
        low = lower(plan, "meta")
    names = {id(p): n for n, p in low.model.named_parameters()}
    frozen = [n for n, p in low.model.named_parameters() if not p.requires_grad]
    layers = len(low.model.layers)
    body: list[ast.stmt] = [assign("params", call("dict", call("model.named_parameters")))]
    if frozen:
        freeze = call(ast.Attribute(ast.Subscript(ast.Name("params", ast.Load()), ast.Name("name", ast.Load()),
                                                  ast.Load()), "requires_grad_", ast.Load()), ast.Constant(False))
        body += [comments("frozen (update never): no optimizer steps these"),
                 ast.For(ast.Name("name", ast.Store()), value_ast(tuple(frozen)), [stmt(freeze)], [], lineno=0)]
    opt_names = []
    for i, (opt, o) in enumerate(zip(low.optimizers, low.optimizer_plans)):
        groups = []
        for g in opt.param_groups:
            picked = group_params([names[id(p)] for p in g["params"]], layers)
            groups.append(ast.Dict([ast.Constant("params"), ast.Constant("nl_every"), ast.Constant("nl_reduce")],
                                   [picked, ast.Constant(g["nl_every"]), ast.Constant(g["nl_reduce"])]))
        cls = _OPTIMIZER_CLASSES.get(o.kind)
        if cls is None:
            raise CodegenError(f"codegen has no runtime optimizer for '{o.kind}'")
        if "." not in cls:
            imports.add(("nldsl.optim", cls))
        kwargs = optimizer_kwargs(o.kind, dict(o.config))
        args = [ast.List(groups, ast.Load())]
        extra = []
        if o.kind == "adamw":
            fused = ast.IfExp(ast.Compare(attr("device", "type"), [ast.Eq()], [ast.Constant("cuda")]),
                              ast.Dict([ast.Constant("fused")], [ast.Constant(True)]), ast.Dict([], []))
            extra = [ast.keyword(None, fused)]
        var = f"optimizer_{i}"
        node = call(cls, *args, **kwargs)
        node.keywords += extra
        sel = ", ".join(o.selectors) or "all"
        body += [*comments.quote(o.span, f"{o.kind} for {sel}: {len(opt.param_groups)} period group(s)"),
                 assign(var, node)]
        opt_names.append(var)
    sched = dict(plan.train.schedule_args)
    schedule = call("LRSchedule", ast.Constant(plan.train.schedule), warmup=ast.Constant(int(sched.get("warmup", 0))),
                    total=ast.Name("steps", ast.Load()), min=ast.Constant(float(sched.get("min", 0.0))),
                    decay=ast.Constant(float(sched.get("decay", 0.2))))
    opts = ast.List([ast.Name(n, ast.Load()) for n in opt_names], ast.Load())
    body += [*comments.quote(plan.train.span, f"schedule {plan.train.schedule}, grad_clip {plan.train.grad_clip}"),
             assign("optimizers", opts),
             assign("schedulers", ast.ListComp(call("torch.optim.lr_scheduler.LambdaLR", ast.Name("o", ast.Load()),
                                                     schedule),
                                                [ast.comprehension(ast.Name("o", ast.Store()),
                                                                   ast.Name("optimizers", ast.Load()), [], 0)])),
             assign("outer", call("OuterLoop", ast.Name("optimizers", ast.Load()), ast.Name("schedulers", ast.Load()),
                                  ast.Name("params", ast.Load()), ast.Constant(float(plan.train.grad_clip)))),
             ast.Return(ast.Tuple([ast.Name(n, ast.Load()) for n in ("optimizers", "schedulers", "outer")],
                                  ast.Load()))]
    doc = ("The outer optimizers over disjoint parameter groups; a group with nl_every = N accumulates N "
           "steps of gradients (nl_reduce) before its optimizer steps it (nldsl.outer.OuterLoop).")
    return _function("build_optimizers", ["model", "steps", "device"], doc, body)


# --------------------------------------------------------------------------- the script
def _settings(run: Any, plan: Any, comments: Comments) -> list[ast.stmt]:
    """Module constants: the train block (and the data it points at), all as literals."""
    from nldsl.build import _compile_options

    t, s = plan.train, run.settings
    compile_opts = _compile_options(plan) if t.compile.enabled else None
    values = [
        ("MODEL", plan.model.name), ("SEED", t.seed), ("STEPS", t.steps), ("BATCH", t.batch), ("SEQ", t.seq),
        ("ACCUMULATE", t.accumulate), ("PRECISION", t.precision), ("DEVICE", s.device),
        ("COMPILE", compile_opts), ("COMPILE_SCOPE", t.compile.scope), ("DATA", data_source(s, run.source.path)), ("DATA_FIELD", s.data_field),
        ("VAL_FRACTION", 0.1), ("TOKENIZER", s.tokenizer), ("BPE_VOCAB", s.bpe_vocab),
        ("EVAL_EVERY", s.eval_every), ("EVAL_BATCHES", s.eval_batches),
        ("TASK_LEVELS", plan.task_segment is not None and plan.model.task == "lm"),
        ("OUT", f"runs/{Path(run.source.path).stem}-script"),
    ]
    body: list[ast.stmt] = comments.quote(t.span, "the outer loop: settings") if t.span is not None else []
    body += [assign(name, value_ast(value)) for name, value in values]
    return body


def _imports(extra: set[tuple[str, str]]) -> list[ast.stmt]:
    base = ast.parse(IMPORTS).body
    froms: dict[str, set[str]] = {}
    plain = []
    for node in base:
        if isinstance(node, ast.ImportFrom):
            froms.setdefault(node.module, set()).update(a.name for a in node.names)
        else:
            plain.append(node)
    for module, name in extra:
        froms.setdefault(module, set()).add(name)
    nodes = plain + [ast.ImportFrom(m, [ast.alias(n) for n in sorted(froms[m])], 0) for m in sorted(froms)]
    return sorted(nodes, key=lambda n: (_import_rank(n.module if isinstance(n, ast.ImportFrom) else n.names[0].name),
                                        isinstance(n, ast.ImportFrom)))


def _import_rank(module: str) -> int:
    root = module.split(".")[0]
    return 3 if root == "nldsl" else 2 if root in ("torch", "numpy", "safetensors") else 1


def _docstring(run: Any, plan: Any, output: str) -> str:
    sets = " ".join(f"--set {o}" for o in run.overrides) or "none"
    body = (f"Run it with `python {Path(output).name} [--steps N] [--out DIR] [--device cpu|cuda]`. It builds the "
            "runtime's modules and optimizers from the literal configurations below (the .nl file is not read "
            "again) and trains with the same seed, batches and step as `nldsl train`, so both log the same losses.")
    return (f"Train model {plan.model.name} of {Path(run.source.path).name}: a script written by `nldsl codegen`.\n\n"
            f"{textwrap.fill(body, 100)}\n\nSpec: {run.source.path}\nOverrides: {sets}\nSpec hash: {run.spec_hash}\n")


def generate(path: str | Path, overrides: Sequence[str] = (), output: str = "train.py") -> str:
    """The script's source text for the model of ``path`` (with ``--set`` items applied)."""
    from nldsl.codegen_format import format_module
    from nldsl.plan import plan as make_plan

    run = prepare_run(path, overrides, out=None, load_data=False)
    plan = make_plan(run.spec)
    comments = Comments()
    writer = ModelWriter(plan, comments)
    model_fn = writer.build_model()
    opt_fn = build_optimizers(plan, comments, writer.imports)
    template = comments.template(ast.parse(TEMPLATE)).body
    body = [stmt(ast.Constant(_docstring(run, plan, output))), *_imports(writer.imports),
            *_settings(run, plan, comments), model_fn, opt_fn, *template]
    return format_module(body, comments.texts)


def write_script(path: str | Path, output: str | Path, overrides: Sequence[str] = ()) -> Path:
    """``nldsl codegen FILE -o OUTPUT``: write the script (parent folders created)."""
    text = generate(path, overrides, str(output))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
