"""Task-objective CMS levels: the local surprise of the task loss, accumulated segment by segment.

DESIGN.md 3.4, NL_REFERENCE 3.1 (Eq. 71) and 7 item 6. A "task" level with period C updates
``dW <- dW - lr * sum_{t in chunk} dL_t/dW``: the summed gradients of the model's own per-token loss
w.r.t. the level's (per-sequence) weights, taken at the weights the chunk was read with. Autograd gives
exactly that when the level's fast delta is a leaf: ``d(sum_t L_t)/d(delta) = sum_t dL_t/dW``, per sequence
because each sequence reads its own delta. The update must land before the next chunk is read, so the
sequence is processed in segments of ``g = gcd`` of all task periods (aligned to absolute positions):

    for each segment:
        make every task level's delta a fresh leaf (requires_grad)       # its grad = the local surprise
        y, state = model(tokens_seg, state)      # a CMS applies pending surprise at its boundaries
        losses = loss_fn(y, targets_seg)         # per token, (B, n)
        backward(sum(losses) / (B * T))          # outer grads accumulate as usual (mean over the call)
        state.surprise += leaf.grad * (B * T)    # = sum over the segment's tokens, per sequence
        state = detach(state)                    # stop-grad writes; truncated BPTT across segments

Writes carry no gradient (no second-order terms); base weights get outer gradients through every read.
Cost: the FLOPs of one forward + backward over the sequence, in T/g sequential segments; see
docs/runtime-blocks.md. Any module with ``forward(x, state) -> (y, state)`` whose state contains CMS nodes
works: task levels are found in the state as dicts holding both ``"delta"`` and ``"surprise"``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from nldsl.nn.state import State, detach_state

__all__ = ["train_segments", "task_segment_len", "initial_state", "task_nodes"]


def task_segment_len(model: nn.Module) -> int | None:
    """gcd of the periods of every task-objective CMS level in ``model`` (None when there is none)."""
    periods = [p for m in model.modules() if hasattr(m, "task_periods") for p in m.task_periods()]
    return math.gcd(*periods) if periods else None


def initial_state(model: nn.Module, tokens: Tensor) -> State:
    """The model's state before any token, from a forward over zero tokens (zero fast deltas).

    Built with gradients enabled: the meta-learned initial states of in-context memories (their
    parameters expanded to the batch) stay connected to those parameters, so the first segment gives
    them their outer gradient (later segments see the detached state: truncated BPTT).
    """
    try:
        with torch.enable_grad():
            _, state = model(tokens[:, :0], None)
    except Exception as exc:  # a block that cannot run on an empty sequence
        raise ValueError(f"train_segments: {type(model).__name__} cannot build its initial state from an "
                         f"empty sequence ({exc}); pass state= explicitly") from exc
    if state is None:
        raise ValueError("train_segments: the model returned no state")
    return state


def task_nodes(state: State, path: tuple = (), pos: int | None = None) -> Iterator[tuple[tuple, dict, int | None]]:
    """``(path, node, position)`` of every task-level node (a dict with ``"delta"`` and ``"surprise"``).

    The position is the nearest enclosing int ``"pos"`` (a CMS keeps one for all its levels).
    """
    here = state.get("pos")
    pos = here if isinstance(here, int) else pos
    for key, value in state.items():
        if isinstance(value, dict):
            if "delta" in value and "surprise" in value:
                yield path + (key,), value, pos
            else:
                yield from task_nodes(value, path + (key,), pos)


def _get(state: State, path: tuple) -> dict:
    for key in path:
        state = state[key]
    return state


def _with_leaves(state: State, paths: list[tuple]) -> tuple[State, list[tuple[tuple, str, Tensor]]]:
    """A shallow copy of ``state`` whose task deltas are fresh leaves (their grads = the surprise)."""
    state = _copy_tree(state)
    leaves = []
    for path in paths:
        node = _get(state, path)
        node["delta"] = {k: v.detach().requires_grad_() for k, v in node["delta"].items()}
        leaves.extend((path, k, v) for k, v in node["delta"].items())
    return state, leaves


def _copy_tree(state: State) -> State:
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in state.items()}


def train_segments(
    model: nn.Module,
    tokens: Tensor,
    targets: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    state: State | None = None,
    segment_len: int | None = None,
    outer_grads: bool = True,
) -> tuple[Tensor, State]:
    """Run ``model`` over ``tokens`` (B, T, ...) in surprise-driven segments; returns (mean loss, state).

    Args:
        loss_fn: ``loss_fn(y_seg, targets_seg) -> (B, n)`` per-token losses (e.g. cross entropy with
            ``reduction="none"``). The task levels accumulate the gradient of their *sum*; the outer
            gradient (accumulated into ``.grad``, no optimizer step) is that of their mean over B*T.
        state: carried state (None = fresh, built by a forward over zero tokens).
        segment_len: defaults to the gcd of the task periods; must divide each of them.
        outer_grads: False computes only the surprise (test-time adaptation, leaves ``.grad`` alone).
    """
    B, T = tokens.shape[0], tokens.shape[1]
    if T == 0:
        raise ValueError("train_segments: empty sequence (T = 0)")
    periods = [p for m in model.modules() if hasattr(m, "task_periods") for p in m.task_periods()]
    g = segment_len if segment_len is not None else (math.gcd(*periods) if periods else T)
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise ValueError(f"train_segments: segment_len must be a positive integer, got {segment_len!r}")
    if any(p % g for p in periods):
        raise ValueError(f"train_segments: segment_len {g} must divide every task period {sorted(set(periods))}")
    if targets.shape[:2] != tokens.shape[:2]:
        raise ValueError(f"train_segments: targets {tuple(targets.shape)} do not match tokens {tuple(tokens.shape)}")
    state = initial_state(model, tokens) if state is None else state
    nodes = list(task_nodes(state))
    positions = {pos for _, _, pos in nodes if pos is not None}
    if len(positions) > 1:
        raise ValueError(f"train_segments: task levels disagree on the position: {sorted(positions)}")
    pos, count = (positions.pop() if positions else 0), B * T
    total, t = None, 0
    while t < T:
        n = min(g - (pos + t) % g, T - t)
        paths = [path for path, _, _ in task_nodes(state)]
        seg_state, leaves = _with_leaves(state, paths)
        y, out = model(tokens[:, t:t + n], seg_state)
        losses = loss_fn(y, targets[:, t:t + n])
        if losses.shape != (B, n):
            raise ValueError(f"train_segments: loss_fn must return per-token losses of shape {(B, n)}, "
                             f"got {tuple(losses.shape)}")
        grads = _backward(losses, [leaf for _, _, leaf in leaves], count, outer_grads)
        _add_surprise(out, leaves, grads)
        state = detach_state(out)
        total = losses.detach().sum() if total is None else total + losses.detach().sum()
        t += n
    return total / count, state


def _backward(losses: Tensor, leaves: list[Tensor], count: int, outer_grads: bool) -> list[Tensor | None]:
    """Gradients of the segment's summed loss w.r.t. the leaves; also the outer grads when asked."""
    if not outer_grads:
        if not leaves:
            return []
        return list(torch.autograd.grad(losses.sum(), leaves, allow_unused=True))
    (losses.sum() / count).backward()
    return [None if leaf.grad is None else leaf.grad * count for leaf in leaves]


def _add_surprise(out: State, leaves: list[tuple[tuple, str, Tensor]], grads: list[Tensor | None]) -> None:
    """``surprise += grad`` in the returned state, leaf by leaf (an unused level gets nothing)."""
    for (path, name, _), grad in zip(leaves, grads):
        node = _get(out, path)
        if grad is not None:
            node["surprise"] = {**node["surprise"], name: node["surprise"][name] + grad.to(node["surprise"][name].dtype)}
