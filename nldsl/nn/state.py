"""In-context state: the plain tensor container every stateful module returns.

A state is a nested ``dict[str, Tensor | int | dict]``. Tensors hold fast weights, momentum
buffers and accumulators, always with the batch as their leading dimension (fast state is per
sequence, DESIGN.md 3.7). Python ints hold positions inside a chunk (how many tokens of the
current chunk were already seen), so that a sequence processed in pieces continues exactly where
it stopped (DESIGN.md 3.2). Plain dicts keep ``torch.compile`` happy and make states trivial to
detach, move, save (safetensors) and restore.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import torch
from torch import Tensor

State = dict[str, Any]
"""Nested mapping ``name -> Tensor | int | State``."""

Leaf = Union[Tensor, int]


def map_state(state: State | None, fn: Callable[[Tensor], Tensor]) -> State | None:
    """Apply ``fn`` to every tensor leaf, keeping ints and the nesting."""
    if state is None:
        return None
    out: State = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = map_state(value, fn)
        elif isinstance(value, Tensor):
            out[key] = fn(value)
        else:
            out[key] = value
    return out


def detach_state(state: State | None) -> State | None:
    """Cut the autograd history (truncated backprop through time across calls)."""
    return map_state(state, lambda t: t.detach())


def state_to(state: State | None, *args, **kwargs) -> State | None:
    """``Tensor.to`` on every leaf (device and/or dtype)."""
    return map_state(state, lambda t: t.to(*args, **kwargs))


def clone_state(state: State | None) -> State | None:
    return map_state(state, lambda t: t.clone())


_INT_TAG = "__int__"


def flatten_state(state: State, prefix: str = "") -> dict[str, Tensor]:
    """Flatten to ``{"a.b.c": tensor}`` for safetensors; ints become int64 scalars tagged by name."""
    flat: dict[str, Tensor] = {}
    for key, value in state.items():
        if "." in key:
            raise ValueError(f"state keys must not contain '.': {key!r}")
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_state(value, name + "."))
        elif isinstance(value, Tensor):
            flat[name] = value.detach().contiguous()
        elif isinstance(value, int):
            flat[name + _INT_TAG] = torch.tensor(int(value), dtype=torch.int64)
        else:
            raise TypeError(f"state leaf {name!r} has unsupported type {type(value).__name__}")
    return flat


def unflatten_state(flat: dict[str, Tensor]) -> State:
    """Inverse of :func:`flatten_state`."""
    state: State = {}
    for name, tensor in flat.items():
        is_int = name.endswith(_INT_TAG)
        if is_int:
            name = name[: -len(_INT_TAG)]
        *path, leaf = name.split(".")
        node = state
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = int(tensor.item()) if is_int else tensor
    return state


def save_state(state: State, path: str) -> None:
    """Write a state to a safetensors file."""
    from safetensors.torch import save_file

    save_file(flatten_state(state), path)


def load_state(path: str, device: str | torch.device = "cpu") -> State:
    """Read a state written by :func:`save_state`."""
    from safetensors.torch import load_file

    return unflatten_state(load_file(path, device=str(device)))


def states_close(a: State, b: State, rtol: float = 1e-5, atol: float = 1e-6) -> bool:
    """Structural and numerical equality of two states (used by tests)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict) != isinstance(y, dict):
            return False
        if isinstance(x, dict):
            if not states_close(x, y, rtol, atol):
                return False
        elif isinstance(x, Tensor):
            if not isinstance(y, Tensor) or x.shape != y.shape or not torch.allclose(x, y, rtol=rtol, atol=atol):
                return False
        elif x != y:
            return False
    return True
