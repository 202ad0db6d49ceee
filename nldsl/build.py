"""``nldsl.build(path)``: a `.nl` spec -> a ``Compiled`` model with its optimizers and training step.

The whole pipeline (DESIGN.md §4): load (+ ``--set``-style overrides) -> checks -> ``plan`` -> ``lower``
-> ``torch.compile`` (as the spec's ``compile`` says, switchable with ``compile=False``). ``Compiled``
carries the outer loop of NL §1.3:

* ``train_step(batch)``: forward, task loss, backward, gradient clipping, optimizer steps, schedules. In-context
  levels update inside the sequence (chunk-parallel runtime); ``task``-objective CMS levels learn from the
  surprise of the task loss through ``nldsl.nn.surprise.train_segments`` (DESIGN.md §3.4); ``every N steps``
  levels accumulate N outer gradients (sum or mean) and step on their own period (§3.5, ``nldsl.outer``).
* ``eval_loss(batch)``: the same in-context updates (task levels adapt from their surprise), no outer step.
* ``generate(prompt, max_new, ...)``: the prompt, then one token at a time, carrying every in-context state.
* ``state_dict()`` / ``load_state_dict()``: model, optimizers, schedules, step and accumulators (bit-identical
  resume).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nldsl.lower import Lowered, lower
from nldsl.lower_errors import LowerError
from nldsl.compiling import chunk_context, compile_model
from nldsl.nn.layers import compute_dtype
from nldsl.nn.surprise import train_segments
from nldsl.plan import Plan, plan as make_plan
from nldsl.source import Span
from nldsl.spec import model as m


def build(path_or_spec: str | Path | m.Spec, device: str | torch.device | None = "cpu",
          dtype: torch.dtype | None = None, compile: bool | None = None,
          overrides: dict[str, Any] | None = None) -> "Compiled":
    """Compile a spec into a model, its optimizers and a training step.

    Args:
        path_or_spec: a `.nl` path, `.nl` text, or a loaded ``Spec``.
        device: ``cpu``, ``cuda[:i]``, ``auto`` (CUDA when present) or None (the spec's ``device``).
        dtype: parameter dtype (default float32; float64 for gradchecks).
        compile: None = as the spec says, False = eager, True = torch.compile (spec options or defaults).
        overrides: ``{"D": 32, "train.steps": 10, "optimizer.lr": 1e-3}``, the keys of ``nldsl.overrides``.

    Raises:
        NLError: the spec does not pass the checks, uses what the runtime cannot run, or asks for a device
            that is not there (located diagnostics, never a traceback); OverrideError for bad overrides.
    """
    spec = load_spec(path_or_spec, overrides)
    p = make_plan(spec)
    dev = resolve_device(device, p)
    low = lower(p, dev, dtype)
    low.notes.emit()
    return Compiled(spec, p, low, dev, compile)


def load_spec(path_or_spec, overrides: dict[str, Any] | None) -> m.Spec:
    """The spec, with overrides applied through ``nldsl.overrides`` (source edits, then checks)."""
    from nldsl.overrides import load_with_overrides
    from nldsl.source import Source
    from nldsl.spec import load

    items = [f"{k}={_text(v)}" for k, v in (overrides or {}).items()]
    if isinstance(path_or_spec, m.Spec):
        if not items:
            return path_or_spec
        if not Path(path_or_spec.path).is_file():
            raise LowerError(path_or_spec.span, "overrides edit the .nl source, and this spec has no file",
                             "pass the path (or the text) to build() instead of a loaded Spec", code="NL501")
        path_or_spec = path_or_spec.path
    if not items:
        return load(path_or_spec)
    text = str(path_or_spec)
    source = Source(path="<string>", text=text) if "\n" in text or not text.endswith(".nl") else Path(text)
    return load_with_overrides(source, items)[0]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def resolve_device(device: str | torch.device | None, p: Plan) -> torch.device:
    """``auto`` -> CUDA when present; asking for CUDA without a GPU is a located error (NL503)."""
    name = str(device if device is not None else p.train.device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LowerError(p.train.span, f"unknown device '{name}'", "use cpu, cuda or auto", code="NL503") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LowerError(p.train.span or Span(path=p.path), f"device '{name}' requested but no CUDA GPU is "
                         "available here", "use device = cpu (or auto)", code="NL503")
    return dev


class Compiled:
    """A compiled spec: ``model``, ``optimizers``, ``schedulers``, ``train_step``, ``eval_loss``, ``generate``."""

    def __init__(self, spec: m.Spec, plan: Plan, low: Lowered, device: torch.device, compile: bool | None):
        self.spec, self.plan, self.device = spec, plan, device
        self.model, self.optimizers, self.schedulers = low.model, low.optimizers, low.schedulers
        self.optimizer_plans, self.notes, self.step = low.optimizer_plans, list(low.notes.items), 0
        self._outer, self._owners = low.outer, low.owners
        self.task_levels = plan.task_segment is not None and plan.model.task == "lm"
        self.autocast = _autocast_dtype(plan, device)
        self.compiled = plan.train.compile.enabled if compile is None else bool(compile)
        self._fwd, self._loss, self._cross_entropy = self.model, self._forward_loss, logits_loss
        self.compile_scope, self._chunk_options = None, None
        if self.compiled:
            self._fwd, self._loss, self._chunk_options, self.compile_scope = compile_model(
                self.model, self._forward_loss, _compile_options(plan), plan.train.compile.scope)
            if self.compile_scope == "chunk":  # the head's loss is static: one fused graph (fp32 logits never stored)
                self._cross_entropy = torch.compile(logits_loss, **_compile_options(plan))

    # ------------------------------------------------------------------------------------------ steps

    def train_step(self, batch: Tensor | tuple[Tensor, Tensor]) -> dict[str, float]:
        """One outer step on ``batch`` ((B, T+1) int64 tokens for lm; (features, labels) for classify)."""
        self.model.train()
        x, y = self._split(batch)
        parts = list(zip(x.chunk(self.plan.train.accumulate), y.chunk(self.plan.train.accumulate)))
        losses = [self._backward(xs, ys) for xs, ys in parts]
        if len(parts) > 1:
            for p in self._outer.trainable:
                if p.grad is not None:
                    p.grad.div_(len(parts))
        lr = self.lr
        # one device sync per step: the loss and the gradient norm are read together; a non-finite loss makes
        # no update, and its gradients stay so the caller's diagnosis can name the first non-finite one
        info = self._outer.step(self.step, torch.stack(losses).mean())
        if not info["skipped"]:  # a skipped step (non-finite loss) made no update
            self.step += 1
        return {"loss": info["loss"], "grad_norm": info["grad_norm"], "lr": lr, "step": self.step,
                "tokens": int(y.numel()), "level_steps": info["level_steps"]}

    def _backward(self, x: Tensor, y: Tensor) -> Tensor:
        with self._autocast(), self.chunks():
            if self.task_levels:
                loss, _ = train_segments(self._fwd, x, y, token_losses)
                return loss.detach()
            loss = self._loss(x, y)
        loss.backward()
        return loss.detach()

    def _forward_loss(self, x: Tensor, y: Tensor) -> Tensor:
        logits, _ = self.model(x)
        return self._cross_entropy(logits, y)

    @torch.no_grad()
    def _eval_plain(self, x: Tensor, y: Tensor) -> Tensor:
        with self._autocast(), self.chunks():
            return self._loss(x, y)

    def eval_loss(self, batch: Tensor | tuple[Tensor, Tensor]) -> float:
        """Mean loss of ``batch`` with every in-context level adapting as in training; no outer update."""
        was = self.model.training
        self.model.eval()
        try:
            x, y = self._split(batch)
            if not self.task_levels:
                return float(self._eval_plain(x, y))
            with self._autocast(), self.chunks():
                loss, _ = train_segments(self._fwd, x, y, token_losses, outer_grads=False)
            return float(loss)
        finally:
            self.model.train(was)

    def _split(self, batch) -> tuple[Tensor, Tensor]:
        if isinstance(batch, (tuple, list)):
            x, y = batch
            return x.to(self.device), y.to(self.device)
        batch = batch.to(self.device)
        return batch[:, :-1], batch[:, 1:]

    def chunks(self):
        """The context in which this model runs: compiled chunk updates under ``scope = chunk``."""
        return chunk_context(self._chunk_options)

    def _autocast(self):
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    # ------------------------------------------------------------------------------------------ sampling

    def generate(self, prompt_tokens: Tensor, max_new: int, temperature: float = 1.0, top_k: int | None = None,
                 state: dict | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
        """Sample ``max_new`` tokens after the prompt, carrying every in-context state (memories keep
        learning from the prompt and from their own samples; task-objective levels adapt on the prompt
        from its surprise). Returns ``(prompt + samples, state)``; pass the state back to continue."""
        was = self.model.training
        self.model.eval()
        try:
            tokens = prompt_tokens.to(self.device)
            tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
            with self._autocast(), self.chunks():
                logits, state = prompt_state(self.model, tokens, state, self.task_levels)
                out = [tokens]
                for i in range(max_new):
                    nxt = sample_next(logits[:, -1], temperature, top_k, generator)
                    out.append(nxt)
                    if i + 1 < max_new:
                        with torch.no_grad():
                            logits, state = self.model(nxt, state)
            return torch.cat(out, dim=1), state
        finally:
            self.model.train(was)

    # ------------------------------------------------------------------------------------------ state

    @property
    def lr(self) -> float:
        """The current learning rate of the first optimizer (after warm-up/decay)."""
        return float(self.optimizers[0].param_groups[0]["lr"]) if self.optimizers else 0.0

    def component_of(self, param_name: str) -> str | None:
        """The spec component a parameter belongs to (``layers.0.sublayers.titans.fn.mem_init.0`` ->
        ``tiny_hope[0].titans.mem``)."""
        owner = self._owners.get(param_name.replace("_orig_mod.", ""))
        return owner[0][0] if owner else None

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers], "step": self.step,
                "outer": self._outer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if len(state.get("optimizers", ())) != len(self.optimizers):
            raise LowerError(Span(path=self.plan.path), f"the state has {len(state.get('optimizers', ()))} "
                             f"optimizers, this spec builds {len(self.optimizers)}",
                             "load a checkpoint of the same spec", code="NL504")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        self.step = int(state["step"])
        self._outer.load_state_dict(state.get("outer", {}))

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        opts = ", ".join(type(o).__name__ for o in self.optimizers)
        return (f"Compiled({self.plan.model.name}: {n:,} parameters on {self.device}, optimizers [{opts}], "
                f"compile={'on' if self.compiled else 'off'}, step {self.step})")


def token_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross entropy ``(B, n)`` (the loss ``train_segments`` accumulates the surprise of)."""
    return F.cross_entropy(_wide(logits).transpose(1, 2), targets, reduction="none")


def logits_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Mean next-token cross-entropy of ``logits`` ``(B, T, V)`` against ``y`` ``(B, T)``, in fp32."""
    return F.cross_entropy(_wide(logits).reshape(-1, logits.shape[-1]), y.reshape(-1))


def _wide(logits: Tensor) -> Tensor:
    """Logits in fp32 for the loss (float64 stays float64)."""
    return logits.to(compute_dtype(logits.dtype))


def prompt_state(model, tokens: Tensor, state: dict | None, task_levels: bool) -> tuple[Tensor, dict]:
    """Read the prompt: task-objective levels first learn from its surprise (test-time adaptation), then
    the last token gives the logits of the first sample."""
    if task_levels and state is None and tokens.shape[1] > 1:
        _, state = train_segments(model, tokens[:, :-1], tokens[:, 1:], token_losses, outer_grads=False)
        tokens = tokens[:, -1:]
    with torch.no_grad():
        return model(tokens, state)


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator=None) -> Tensor:
    """One token per row from ``logits`` (B, V): greedy at temperature 0, else softmax(logits / T) over the
    top k."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)


def _autocast_dtype(p: Plan, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda" or p.train.precision == "fp32":
        return None
    if p.train.precision == "fp16":
        raise LowerError(p.train.span, "precision = fp16 needs loss scaling, which nldsl does not do yet",
                         "use precision = bf16")
    return torch.bfloat16


def _compile_options(p: Plan) -> dict:
    """``compile(mode, fullgraph, dynamic)``; ``dynamic = false`` keeps torch's automatic dynamic shapes
    (positions carried in the state change from call to call)."""
    c = p.train.compile
    opts: dict = {"fullgraph": c.fullgraph, "dynamic": True if c.dynamic else None}
    if c.mode != "default":
        opts["mode"] = c.mode
    return opts


from nldsl._callable import make_callable  # noqa: E402  (``nldsl.build(path)`` calls ``build``)

make_callable(__name__, build)
