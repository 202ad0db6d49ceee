"""Shared optimizer machinery: argument checks, param-group routing and the AdamW fallback.

The 1-D rule (one rule for every optimizer in this package): a parameter is updated by AdamW
instead of the optimizer's matrix rule when ``p.ndim < 2`` (biases, norm gains, scalars) or when its
param group sets ``adamw=True`` (use this for embeddings and output heads). The fallback uses the
group's ``lr × adamw_lr_ratio`` (so LR schedulers, which scale ``lr``, also scale it), ``adamw_betas``,
``adamw_eps`` and the group's decoupled ``weight_decay``. It is exactly ``torch.optim.AdamW``
(Loshchilov & Hutter, with bias correction), written out here so the same optimizer can own both kinds
of parameters and keep one state dict. Parameters with more than 2 dims (conv kernels) go through the
matrix rule reshaped to (shape[0], prod(shape[1:])).
"""
from __future__ import annotations

import abc
import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from nldsl.optim.newton_schulz import newton_schulz

FALLBACK_DEFAULTS: dict[str, Any] = {
    "adamw": False,
    "adamw_lr_ratio": 1.0,
    "adamw_betas": (0.9, 0.999),
    "adamw_eps": 1e-8,
}
"""Param-group keys of the AdamW fallback, shared by every optimizer here."""


def _number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        else:
            raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_nonneg(name: str, value: Any) -> None:
    """Learning rates, weight decays, eps and mixing weights: finite and >= 0."""
    if _number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def check_beta(name: str, value: Any) -> None:
    """Decay rates live in [0, 1): 1 would never forget, so EMAs and bias corrections break."""
    v = _number(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_unit(name: str, value: Any) -> None:
    """A strength in the closed interval [0, 1]."""
    v = _number(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def check_pos_int(name: str, value: Any) -> None:
    """Step counts and widths: a plain int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """A string option, with the known values in the message."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_betas(name: str, value: Any, n: int) -> None:
    """A tuple of ``n`` decay rates, each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise ValueError(f"{name} must be a tuple of {n} numbers in [0, 1), got {value!r}")
    for i, b in enumerate(value):
        check_beta(f"{name}[{i}]", b)


def check_bool(name: str, value: Any) -> None:
    """Flags must be real bools so a typo like ``nesterov="no"`` is not silently truthy."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def to_matrix(t: Tensor) -> Tensor:
    """View a (>= 2)-D tensor as (shape[0], rest): rows are output channels, columns fan-in."""
    return t.reshape(t.shape[0], -1)  # (rows, cols)


def muon_scale(shape: torch.Size) -> float:
    """max(1, rows/cols)^0.5 on the 2-D view: a tall matrix's orthogonal update has smaller RMS entries."""
    rows, cols = shape[0], math.prod(shape[1:])
    return max(1.0, rows / cols) ** 0.5


def adamw_update(p: Tensor, grad: Tensor, state: dict, group: dict) -> None:
    """One AdamW step (bias-corrected, decoupled weight decay), identical to ``torch.optim.AdamW``."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    beta1, beta2 = group["adamw_betas"]
    lr = group["lr"] * group["adamw_lr_ratio"]
    state["step"] += 1
    t = state["step"]
    p.mul_(1.0 - lr * group["weight_decay"])
    state["exp_avg"].lerp_(grad, 1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bc1 = 1.0 - beta1**t
    bc2_sqrt = math.sqrt(1.0 - beta2**t)
    denom = (state["exp_avg_sq"].sqrt() / bc2_sqrt).add_(group["adamw_eps"])
    p.addcdiv_(state["exp_avg"], denom, value=-lr / bc1)


class NLOptimizer(torch.optim.Optimizer, abc.ABC):
    """Base class: validates every param group and routes each parameter to its rule.

    Subclasses define ``_check_group(group)`` for their own keys and ``_matrix_step(group, params)``
    for the parameters that do not take the AdamW fallback.
    """

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        super().__init__(params, {**FALLBACK_DEFAULTS, **defaults})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_nonneg("lr", group["lr"])
        check_nonneg("weight_decay", group["weight_decay"])
        check_bool("adamw", group["adamw"])
        check_nonneg("adamw_lr_ratio", group["adamw_lr_ratio"])
        check_betas("adamw_betas", group["adamw_betas"], 2)
        check_nonneg("adamw_eps", group["adamw_eps"])
        self._check_group(group)

    @abc.abstractmethod
    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate the subclass's own hyperparameters (raise ValueError naming the bad value)."""

    @abc.abstractmethod
    def _matrix_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Apply the optimizer's own rule to ``params`` (all have gradients, none take the fallback)."""

    def uses_fallback(self, p: Tensor, group: dict[str, Any]) -> bool:
        """The documented 1-D rule (module docstring)."""
        return group["adamw"] or p.ndim < 2

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            matrix = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError(f"{type(self).__name__} does not support sparse gradients")
                if self.uses_fallback(p, group):
                    adamw_update(p, p.grad, self.state[p], group)
                else:
                    matrix.append(p)
            if matrix:
                self._matrix_step(group, matrix)
        return loss


def group_by_shape(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    """Indices of equally shaped (and typed) tensors, so Newton-Schulz can run once per batch."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
    return groups


def batched_newton_schulz(mats: list[Tensor], steps: int, bf16: bool = False) -> list[Tensor]:
    """newton_schulz on a list of 2-D tensors, stacking equal shapes into one batched call."""
    out: list[Tensor] = [torch.empty(0)] * len(mats)
    for idx in group_by_shape(mats).values():
        stack = torch.stack([mats[i] for i in idx])  # (B, rows, cols)
        dtype = torch.bfloat16 if bf16 and stack.is_cuda else None
        result = newton_schulz(stack, steps, dtype=dtype)
        for j, i in enumerate(idx):
            out[i] = result[j]
    return out
