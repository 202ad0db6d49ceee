"""The assembled network of a Plan: token embedding -> stacked blocks -> final norm -> head.

A block body is lowered generically from its ``flow``: each component on the path is a pre-norm residual
sub-layer ``x = x + f(norm(x))`` (docs/language.md §6), except a CMS, whose levels carry their own pre-norm
and residual (``nldsl.nn.hope``). ``forward(tokens, state=None) -> (logits, state)`` threads every in-context
state (KV caches, memories, CMS fast weights) as a nested dict ``{"<layer>": {"<component>": state}}``, so
a sequence processed in pieces equals the whole (DESIGN.md §3.2) and each sequence of a batch has its own
fast state (§3.7). For ``task = classify`` the input is a feature vector (or a sequence of them) and the
output one row of class logits per input.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nldsl.nn.layers import ShortConv, check_positive_int

ACT = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu, "tanh": torch.tanh, "identity": lambda x: x}


def _compiling() -> bool:
    return bool(torch.compiler.is_compiling()) if hasattr(torch, "compiler") else False


class ComponentError(RuntimeError):
    """A failure inside one component, named with the ``.nl`` line it was declared on."""


class MLP(nn.Module):
    """A static MLP of ``depth`` linear layers (the catalog's ``mlp`` component; no residual here)."""

    @dataclass(kw_only=True)
    class Config:
        dim: int
        """Input and output width."""
        hidden: int
        """Width of the hidden layers."""
        depth: int = 2
        """Linear layers (1 = a single dim x dim matrix)."""
        activation: str = "gelu"
        """Between layers: gelu, silu, relu, tanh or identity."""

        def build(self) -> "MLP":
            return MLP(**asdict(self))

    def __init__(self, dim: int, hidden: int, depth: int = 2, activation: str = "gelu"):
        super().__init__()
        for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            check_positive_int(f"MLP {name}", value)
        if activation not in ACT:
            raise ValueError(f"MLP activation must be one of {sorted(ACT)}, got {activation!r}")
        widths = [dim] + [hidden] * (depth - 1) + [dim]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))
        self.act = ACT[activation]

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else self.act(x))
        return x


class StatefulConv(nn.Module):
    """``ShortConv`` with a dict state ``{"conv": (B, K-1, D)}`` like every other stateful module."""

    def __init__(self, conv: ShortConv):
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        if x.shape[1] == 0:
            empty = x.new_zeros(x.shape[0], self.conv.kernel_size - 1, self.conv.dim)
            return x, {"conv": empty if state is None else state["conv"]}
        y, tail = self.conv(x, None if state is None else state["conv"])
        return y, {"conv": tail}


class Sublayer(nn.Module):
    """One component on a flow: ``x + f(norm(x))`` (or ``f(x)`` for a CMS / a norm)."""

    def __init__(self, fn: nn.Module, norm: nn.Module | None, residual: bool, stateful: bool, where: str):
        super().__init__()
        self.fn, self.norm = fn, norm
        self.residual, self.stateful, self.where = residual, stateful, where

    def run(self, x: Tensor, state: dict | None) -> tuple[Tensor, dict | None]:
        h = x if self.norm is None else self.norm(x)
        y, new = self.fn(h, state) if self.stateful else (self.fn(h), None)
        return (x + y if self.residual else y), new

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict | None]:
        if _compiling():
            return self.run(x, state)
        try:
            return self.run(x, state)
        except ComponentError:
            raise
        except (RuntimeError, ValueError) as err:
            raise ComponentError(f"{self.where}: {err}") from err


_TAKEN = nn.ModuleDict()


def module_key(name: str) -> str:
    """The ``nn.ModuleDict`` key of a component: its name, or ``name-`` where the name is an attribute of
    the container (``items``, ``forward``, ``training``, ...). ``-`` cannot occur in a .nl name, so the
    mangled key never meets another component's."""
    return f"{name}-" if hasattr(_TAKEN, name) or name in ("_modules", "_parameters", "_buffers") else name


class FlowBlock(nn.Module):
    """The components of one block (or one model-level component) in flow order; state is keyed by the
    components' own names, parameters by ``module_key(name)``."""

    def __init__(self, sublayers: dict[str, Sublayer]):
        super().__init__()
        self.names = tuple(sublayers)
        self.sublayers = nn.ModuleDict({module_key(n): sub for n, sub in sublayers.items()})

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        out: dict = {}
        for name, sub in zip(self.names, self.sublayers.values()):
            x, st = sub(x, None if state is None else state.get(name))
            if st is not None:
                out[name] = st
        return x, out


class NLModel(nn.Module):
    """embed -> layers -> final norm -> head; ``forward(tokens, state=None) -> (logits, state)``."""

    def __init__(self, embed: nn.Module, layers: list[FlowBlock], norm: nn.Module, head: nn.Module | None,
                 task: str = "lm", tied: bool = False):
        super().__init__()
        self.embed, self.layers, self.norm = embed, nn.ModuleList(layers), norm
        self.task, self.tied = task, tied
        if tied:  # the output head reads the embedding table (weight tying)
            head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
            head.weight = embed.weight
        self.head = head if head is not None else nn.Identity()

    def forward(self, tokens: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:
        single = self.task == "classify" and tokens.dim() == 2
        x = self.embed(tokens.unsqueeze(1) if single else tokens)  # (B, T, D)
        new: dict = {}
        for i, layer in enumerate(self.layers):
            x, st = layer(x, None if state is None else state.get(str(i)))
            if st:
                new[str(i)] = st
        logits = self.head(self.norm(x))
        return (logits[:, -1] if single else logits), new
