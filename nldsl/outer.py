"""The outer loop (NL §1.3: the pre-training level): optimizers, schedules, ``every N steps`` accumulation.

``OPTIMIZERS`` maps each outer optimizer of the catalog to the runtime class (``torch.optim.AdamW``, fused on
CUDA; ``SGD``; ``nldsl.optim`` Muon, M3, DeepMomentum, DeltaMomentum). Each ``optimizer`` line of ``train``
becomes one torch optimizer; its parameters are split into param groups by update period. A group whose
level says ``update every N steps (reduce = sum|mean)`` keeps its own gradient accumulator: at every outer
step the (clipped) gradient is added to it and the parameter's ``.grad`` is hidden from the optimizer; at
steps N, 2N, ... the accumulator (its sum, or mean over N) becomes ``.grad`` and the optimizer steps that
group (DESIGN.md §3.5). Optimizers skip parameters without a gradient, so their per-parameter state (Adam
moments, M3 momenta) advances only when the level steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from nldsl.optim.schedule import lr_multiplier
from nldsl.runtime_guard import NonFiniteLossError, first_non_finite
from nldsl.plan import OptimizerPlan, TrainPlan

OptimizerFactory = Callable[[OptimizerPlan, list[dict], bool], torch.optim.Optimizer]


def _adamw(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    c = dict(o.config)
    fused = {"fused": True} if cuda else {}
    return torch.optim.AdamW(groups, lr=c["lr"], betas=(c["beta1"], c["beta2"]), eps=c["eps"],
                             weight_decay=c["weight_decay"], **fused)


def _sgd(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    c = dict(o.config)
    return torch.optim.SGD(groups, lr=c["lr"], momentum=c["momentum"], weight_decay=c["weight_decay"])


def _muon(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    from nldsl.optim import Muon

    c = dict(o.config)
    return Muon(groups, lr=c["lr"], momentum=c["momentum"], ns_steps=c["ns_steps"], weight_decay=c["weight_decay"])


def _m3(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    from nldsl.optim import M3

    c = dict(o.config)
    return M3(groups, lr=c["lr"], betas=(c["beta1"], c["beta2"], c["beta3"]), alpha=c["alpha"],
              slow_every=c["slow_every"], ns_steps=c["ns_steps"], eps=c["eps"], weight_decay=c["weight_decay"])


def _deep(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    from nldsl.optim import DeepMomentum

    c = dict(o.config)
    return DeepMomentum(groups, lr=c["lr"], beta=c["beta"], hidden=c["hidden"], weight_decay=c["weight_decay"])


def _delta(o: OptimizerPlan, groups: list[dict], cuda: bool) -> torch.optim.Optimizer:
    from nldsl.optim import DeltaMomentum

    c = dict(o.config)
    return DeltaMomentum(groups, lr=c["lr"], beta=c["beta"], weight_decay=c["weight_decay"])


OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adamw": _adamw, "sgd": _sgd, "muon": _muon, "m3": _m3, "deep_momentum": _deep, "delta_momentum": _delta,
}
"""Catalog outer optimizer -> runtime optimizer (a miss is reported by ``nldsl.lower``)."""


@dataclass(frozen=True)
class LRSchedule:
    """Warm-up then decay, as a multiplier of each group's peak lr (picklable for LambdaLR state dicts).

    ``constant``, ``cosine`` and ``linear`` follow ``nldsl.optim.schedule``; ``wsd`` is warm-up, a stable
    phase, then a linear decay over the last ``decay`` fraction of training down to ``min``.
    """

    kind: str
    warmup: int = 0
    total: int = 1
    min: float = 0.0
    decay: float = 0.2

    def __call__(self, step: int) -> float:
        if self.kind == "wsd":
            return self._wsd(step)
        return lr_multiplier(step, self.kind, self.warmup, max(self.total, self.warmup + 1), self.min)

    def _wsd(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        start = self.total - max(1, math.ceil(self.decay * self.total))
        if step < start:
            return 1.0
        p = min(1.0, (step - start) / max(1, self.total - start))
        return self.min + (1.0 - self.min) * (1.0 - p)


def schedule(train: TrainPlan) -> LRSchedule:
    args = dict(train.schedule_args)
    return LRSchedule(train.schedule, int(args.get("warmup", 0)), train.steps, float(args.get("min", 0.0)),
                      float(args.get("decay", 0.2)))


class OuterLoop:
    """Clip, accumulate ``every N steps`` groups, step every optimizer and scheduler."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], schedulers: list, params: dict[str, nn.Parameter],
                 grad_clip: float):
        self.optimizers, self.schedulers, self.grad_clip = optimizers, schedulers, grad_clip
        self.names = {id(p): n for n, p in params.items()}
        self.acc: dict[str, Tensor] = {}
        self.periodic = [g for o in optimizers for g in o.param_groups if g.get("nl_every", 1) > 1]
        self.trainable = [p for o in optimizers for g in o.param_groups for p in g["params"]]

    def step(self, step: int, loss: Tensor | None = None) -> dict:
        """Outer step ``step`` (0-based): returns the gradient norm and which periodic groups stepped.

        ``loss`` (the step's loss, still on the device) is read in the same device sync as the gradient norm,
        so a step waits on the GPU once; a non-finite ``loss`` makes no update (``skipped``) and keeps the
        gradients for the diagnosis."""
        grads = [p for p in self.trainable if p.grad is not None]
        total = _total_norm(grads)
        loss_value, norm = _read_together(loss, total)
        if not math.isfinite(loss_value):
            return {"loss": loss_value, "grad_norm": float("nan"), "level_steps": 0, "skipped": True}
        if not math.isfinite(norm):  # a finite loss can still have NaN gradients: stop before any update
            culprit = first_non_finite(((self.names[id(p)], p.grad) for p in grads), "gradient")
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            raise NonFiniteLossError(step + 1, "the outer gradients", norm, culprit, what="gradient norm")
        if self.grad_clip > 0 and total is not None:
            _scale_to(grads, self.grad_clip, total)
        stepped = [self._gate(g, step) for g in self.periodic]
        for opt in self.optimizers:
            opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        for sched in self.schedulers:
            sched.step()
        return {"loss": loss_value, "grad_norm": norm, "level_steps": sum(stepped), "skipped": False}

    def _gate(self, group: dict, step: int) -> bool:
        """Fold this step's gradients into the group's accumulator; expose the sum/mean when it is due."""
        every, due = group["nl_every"], (step + 1) % group["nl_every"] == 0
        for p in group["params"]:
            name = self.names[id(p)]
            if p.grad is not None:
                self.acc[name] = p.grad.detach().clone() if name not in self.acc else self.acc[name].add_(p.grad)
                p.grad = None
            if due and name in self.acc:
                total = self.acc.pop(name)
                p.grad = total / every if group["nl_reduce"] == "mean" else total
        return due

    def state_dict(self) -> dict:
        return {"acc": {k: v.clone() for k, v in self.acc.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.acc = {k: v.clone() for k, v in state.get("acc", {}).items()}


def _total_norm(grads: list[Tensor]) -> Tensor | None:
    """The global L2 norm of ``grads`` as a device tensor (no sync; grouped foreach kernels where torch has them)."""
    if not grads:
        return None
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm([p.grad for p in grads])
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads]))


def _read_together(loss: Tensor | None, norm: Tensor | None) -> tuple[float, float]:
    """``(loss, norm)`` as floats in one device-to-host copy (0.0 for what is absent)."""
    present = [t.detach().double().reshape(()) for t in (loss, norm) if t is not None]
    values = iter(torch.stack([t.to(present[0].device) for t in present]).tolist() if present else [])
    return (next(values) if loss is not None else 0.0), (next(values) if norm is not None else 0.0)


def _scale_to(grads: list[Tensor], max_norm: float, total: Tensor) -> None:
    """Clip: scale every gradient by ``min(1, max_norm / (norm + 1e-6))`` (torch's clip_grad_norm_ rule)."""
    clip_with_norm = getattr(torch.nn.utils, "clip_grads_with_norm_", None)  # torch >= 2.6
    if clip_with_norm is not None:
        clip_with_norm(grads, max_norm, total)
        return
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in grads:
        p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
