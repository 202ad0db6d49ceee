"""The fused memory scan: one Triton program per (sequence, head) runs every chunk of a Titans-style memory.

Why: the torch path (``memory_ops.memory_scan``) runs one chunk update at a time from Python, about 90
small kernels per chunk forward and backward: a Titans layer at T = 2048 is launch-bound (GPU busy 31%,
docs/performance.md). Here the fast weights stay on chip for the whole sequence; the backward walks
the chunks in reverse from the saved chunk-start states. Kernels: :mod:`nldsl.nn.fused_memory_kernels`.

Route (``memory_scan`` asks :func:`usable`): a residual MLP memory of depth 2 with SiLU, the ``l2``
objective, GD (no DGD, no rate normalisation, no per-head stop-grad), a query read, power-of-two widths
and chunk in [16, 128], on CUDA with Triton. The chunks that start at a chunk boundary run fused; a
leading or trailing partial chunk takes the torch path. Everything else takes the torch path, which
stays the CPU path and the reference. ``NLDSL_FUSED_SCAN=off`` (or :func:`fused_scan_mode`) turns the
route off; ``interpret`` takes the route on any device, for Triton's CPU interpreter (``TRITON_INTERPRET=1``,
which tests/conftest.py sets on machines without CUDA).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor

from nldsl.nn.functional import chunk_decay_weights

__all__ = ["MODES", "fused_scan_mode", "mode", "usable", "why_not", "scan_routes", "scan_full_chunks",
           "triton_available"]

MODES = ("auto", "off", "interpret")
"""``auto``: fused on CUDA where the rule fits; ``off``: always the torch path; ``interpret``: fused on any
device through Triton's interpreter (slow; for tests and debugging)."""

NUM_WARPS = 4
"""Warps per (sequence, head) program: the fast weights and their momentum (4 × 64 × 64 fp32 at Titans'
sizes) live in registers, so fewer warps spill (benchmarks/fused_scan.py sweeps it)."""

BF16_DOTS = True
"""bf16/fp16 inputs (autocast): matrix products on bf16/fp16 operands with fp32 accumulation, as the torch
path's autocast matmuls; ``False``: TF32 products of the fp32 values (more mantissa, half the tensor-core rate).
fp32/fp64 inputs always get exact fp32/fp64 products."""

NUM_STAGES: int | None = None
"""Software-pipelining stages of the chunk loop (``None``: Triton's default for bf16/fp16 inputs, 1 for
fp32, whose prefetched k/v/q/dy tiles would not fit in shared memory)."""

_OVERRIDE: list[str] = []
_WIDTHS = (16, 32, 64)
"""Widths and chunks the kernels are built and GPU-tested for (the state lives in registers: wider spills)."""


def mode() -> str:
    """The active mode: the innermost :func:`fused_scan_mode`, else ``$NLDSL_FUSED_SCAN``, else ``auto``."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    value = os.environ.get("NLDSL_FUSED_SCAN", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"NLDSL_FUSED_SCAN must be one of {', '.join(MODES)}, got {value!r}")
    return value


@contextlib.contextmanager
def fused_scan_mode(value: str):
    """Within the block, use ``value`` (one of :data:`MODES`) whatever the environment says."""
    if value not in MODES:
        raise ValueError(f"fused scan mode must be one of {', '.join(MODES)}, got {value!r}")
    _OVERRIDE.append(value)
    try:
        yield
    finally:
        _OVERRIDE.pop()


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # an absent or broken Triton (e.g. a CPU-only install) means the torch path
        return False
    return True


def why_not(rule, width: int, hidden: int, device: torch.device, dtype: torch.dtype,
            state_dtype: torch.dtype = torch.float32) -> str | None:
    """Why a memory with this rule and sizes would not take the fused route here (``None``: it would).
    The reasons a researcher can act on come first (the rule, the widths), then the machine."""
    reasons = [
        (rule.depth != 2, f"memory depth {rule.depth} (the kernels implement depth 2)"),
        (rule.activation != "silu", f"activation {rule.activation} (the kernels implement silu)"),
        (rule.objective != "l2", f"objective {rule.objective} (the kernels implement l2)"),
        (rule.dgd, "DGD (the kernels implement GD)"),
        (rule.normalized_rate, "normalised rates"),
        (any(rule.detached_heads), "per-head stop-grad"),
        (rule.chunk_size not in _WIDTHS, f"chunk {rule.chunk_size} (16, 32 or 64)"),
        (width not in _WIDTHS, f"head width {width} (16, 32 or 64)"),
        (hidden not in _WIDTHS, f"hidden width {hidden} (16, 32 or 64)"),
    ]
    for bad, reason in reasons:
        if bad:
            return reason
    m = mode()
    if m == "off":
        return "NLDSL_FUSED_SCAN=off"
    if not triton_available():
        return "Triton is not installed"
    if m == "interpret":
        return None
    if device.type != "cuda":
        return f"device {device.type} (the kernels run on CUDA)"
    if not _modern_gpu(device):
        return "GPU older than compute capability 8.0"
    if dtype not in (torch.bfloat16, torch.float16, torch.float32) or state_dtype != torch.float32:
        return f"precision {str(dtype).removeprefix('torch.')} (bf16, fp16 or fp32 activations, fp32 state)"
    return None


def usable(rule, k: Tensor, q: Tensor | None, state_dtype: torch.dtype, hidden: int | None = None) -> bool:
    """Whether :func:`scan_full_chunks` implements ``rule`` for these inputs (else the torch path runs).
    ``hidden``: the memory's hidden width (``W1``'s rows; default: the key width)."""
    if q is None or q.shape != k.shape:
        return False
    hidden = k.shape[-1] if hidden is None else hidden
    if why_not(rule, k.shape[-1], hidden, k.device, k.dtype, state_dtype) is not None:
        return False
    if mode() == "interpret" and not interpreter_on():
        raise RuntimeError("NLDSL_FUSED_SCAN=interpret needs Triton's interpreter: set TRITON_INTERPRET=1 "
                           "before Python starts (Triton reads it when it is imported)")
    return True


@functools.cache
def _modern_gpu(device: torch.device) -> bool:
    """Ampere or newer (bf16 tensor cores, >= 164 KB shared memory per SM): what the kernels are built for."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def interpreter_on() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` before Triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def _kernels():
    """``(forward, backward)`` JIT kernels (imported on first use: Triton is only needed on this route)."""
    from nldsl.nn import fused_memory_kernels as src

    return src.scan_fwd, src.scan_bwd


def _strides(*xs: Tensor) -> list[int]:
    return [s for x in xs for s in x.stride()[:3]]


def _launch(x: Tensor) -> dict:
    stages = NUM_STAGES if NUM_STAGES is not None else (1 if x.dtype.itemsize >= 4 else None)
    return {"num_warps": NUM_WARPS, **({} if stages is None else {"num_stages": stages})}


def _precision(x: Tensor) -> dict:
    """``PREC`` and ``OPDT`` of the kernels: the products' precision and operand dtype (see :data:`BF16_DOTS`)."""
    import triton.language as tl

    if x.dtype in (torch.bfloat16, torch.float16):  # (PREC only matters for fp32 operands)
        half = tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16
        return {"PREC": "tf32", "OPDT": half if BF16_DOTS else tl.float32}
    return {"PREC": "ieee", "OPDT": tl.float64 if x.dtype == torch.float64 else tl.float32}


def _dense(shape, like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor (``empty_like`` would copy a transposed or expanded layout, and the
    fake versions of the ops must promise exactly the real outputs' strides)."""
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _scan_forward(k: Tensor, v: Tensor, q: Tensor, gam: Tensor, rho: Tensor | None, dec: Tensor, w1: Tensor,
                  w2: Tensor, s1: Tensor | None, s2: Tensor | None, chunk: int, stopgrad: bool,
                  save_states: bool) -> tuple[Tensor, ...]:
    """``(y, W1', W2', S1', S2', saved chunk-start states)`` over full chunks (``S'``: empty without momentum;
    the saved states: one element unless ``save_states``). ``stopgrad`` is only read by the backward."""
    B, H, T, D = k.shape
    momentum = s1 is not None
    k, v, q = (x if x.stride(-1) == 1 else x.contiguous() for x in (k, v, q))
    gam, rho, dec = (None if x is None else x.contiguous() for x in (gam, rho, dec))  # indexed as dense
    state = [x.contiguous() for x in ((w1, w2, s1, s2) if momentum else (w1, w2))]
    y, *outs, save = outputs = _forward_outputs(k, w1, w2, s1, s2, chunk, save_states)
    dummy = gam.new_empty(1)  # stands in for the momentum pointers without momentum (never touched)
    fwd, _ = _kernels()
    fwd[(B * H,)](
        k, v, q, y, gam, rho if momentum else dummy, dec, *state[:2],
        *(state[2:] if momentum else (dummy, dummy)), *outs[:2], *(outs[2:] if momentum else (dummy, dummy)),
        save, H, *_strides(k, v, q),
        NC=T // chunk, C=chunk, D=D, HID=w1.shape[-2], MOMENTUM=momentum, SAVE_STATES=save_states,
        **_precision(k), NSAVE=4 if momentum else 2, **_launch(k),
    )
    return outputs


def _forward_outputs(k: Tensor, w1: Tensor, w2: Tensor, s1: Tensor | None, s2: Tensor | None, chunk: int,
                     save_states: bool) -> tuple[Tensor, ...]:
    """The forward op's outputs, allocated (by the real op and its fake alike, so the two cannot disagree):
    ``y``, ``W1', W2', S1', S2'`` (``S'`` empty without momentum) and the saved chunk-start states."""
    B, H, T, D = k.shape
    momentum = s1 is not None
    nsave = 4 if momentum else 2
    save = k.new_empty((B * H * (T // chunk) * nsave * w1.shape[-2] * D) if save_states else 1, dtype=w1.dtype)
    states = [_dense(x.shape, x) for x in ((w1, w2, s1, s2) if momentum else (w1, w2))]
    if not momentum:
        states += [w1.new_empty(0), w1.new_empty(0)]
    return (torch.empty(B, H, T, D, dtype=k.dtype, device=k.device), *states, save)


def _scan_backward(k: Tensor, v: Tensor, q: Tensor, dy: Tensor, gam: Tensor, rho: Tensor | None, dec: Tensor,
                   save: Tensor, dw1: Tensor, dw2: Tensor, ds1: Tensor | None, ds2: Tensor | None, chunk: int,
                   stopgrad: bool) -> tuple[Tensor, ...]:
    """``(dk, dv, dq, dγ, dρ, d decays, dW1, dW2, dS1, dS2)`` (dk, dv, dq in the state's dtype; dρ, dS: empty
    without momentum): the reverse walk over the chunks from the saved chunk-start states."""
    B, H, T, D = k.shape
    momentum = rho is not None
    gam, rho, dec, save = (None if x is None else x.contiguous() for x in (gam, rho, dec, save))
    adj = [x.to(gam.dtype).contiguous().clone() for x in ((dw1, dw2, ds1, ds2) if momentum else (dw1, dw2))]
    dk, dv, dq, dgam, drho, ddec = grads = _backward_input_grads(k, gam, dec, momentum)
    spare = gam.new_empty(1)  # the momentum pointers without momentum (never touched)
    _, bwd = _kernels()
    bwd[(B * H,)](
        k, v, q, dy.contiguous(), gam, rho if momentum else spare, dec, save,
        *adj[:2], *(adj[2:] if momentum else (spare, spare)), dk, dv, dq, dgam, drho if momentum else spare, ddec,
        H, *_strides(k, v, q),
        NC=T // chunk, C=chunk, D=D, HID=dw1.shape[-2], MOMENTUM=momentum, STOPGRAD=stopgrad, **_precision(k),
        NSAVE=4 if momentum else 2, **_launch(k),
    )
    return (*grads, *adj) if momentum else (*grads, *adj, gam.new_empty(0), gam.new_empty(0))


def _backward_input_grads(k: Tensor, gam: Tensor, dec: Tensor, momentum: bool) -> tuple[Tensor, ...]:
    """The backward op's ``(dk, dv, dq, dγ, dρ, d decays)``, allocated (by the real op and its fake alike;
    dk, dv, dq in the state's dtype, dρ empty without momentum, d decays zeroed: the kernel accumulates)."""
    B, H, T, D = k.shape
    dk, dv, dq = (torch.empty(B, H, T, D, dtype=gam.dtype, device=k.device) for _ in range(3))
    drho = _dense(gam.shape, gam) if momentum else gam.new_empty(0)
    return dk, dv, dq, _dense(gam.shape, gam), drho, torch.zeros(dec.shape, dtype=dec.dtype, device=dec.device)


_FWD_SCHEMA = ("(Tensor k, Tensor v, Tensor q, Tensor gam, Tensor? rho, Tensor dec, Tensor w1, Tensor w2, Tensor? s1, "
               "Tensor? s2, int chunk, bool stopgrad, bool save_states) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor k, Tensor v, Tensor q, Tensor dy, Tensor gam, Tensor? rho, Tensor dec, Tensor save, Tensor dw1, "
               "Tensor dw2, Tensor? ds1, Tensor? ds2, int chunk, bool stopgrad) -> "
               "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")

# Registered as torch custom ops (not an autograd.Function) so that torch.compile traces a whole memory layer,
# or a whole model, with the scan inside one graph: the ops are opaque to Dynamo and Inductor, and their
# fake versions below give the output shapes.
scan_op = torch.library.custom_op("nldsl::fused_memory_scan", _scan_forward, mutates_args=(), schema=_FWD_SCHEMA)
scan_backward_op = torch.library.custom_op("nldsl::fused_memory_scan_backward", _scan_backward, mutates_args=(),
                                           schema=_BWD_SCHEMA)


@scan_op.register_fake
def _(k, v, q, gam, rho, dec, w1, w2, s1, s2, chunk, stopgrad, save_states):
    return _forward_outputs(k, w1, w2, s1, s2, chunk, save_states)


@scan_backward_op.register_fake
def _(k, v, q, dy, gam, rho, dec, save, dw1, dw2, ds1, ds2, chunk, stopgrad):
    momentum = rho is not None
    adjoints = (dw1, dw2, ds1, ds2) if momentum else (dw1, dw2)
    adj = [torch.empty(x.shape, dtype=gam.dtype, device=x.device) for x in adjoints]
    grads = _backward_input_grads(k, gam, dec, momentum)
    return (*grads, *adj) if momentum else (*grads, *adj, gam.new_empty(0), gam.new_empty(0))


def _setup_context(ctx, inputs, output):
    k, v, q, gam, rho, dec, w1, w2, s1, s2, chunk, stopgrad, save_states = inputs
    ctx.save_for_backward(k, v, q, gam, rho, dec, output[5])
    ctx.meta = (chunk, stopgrad, save_states, (w1.shape, w2.shape), s1 is not None)
    ctx.mark_non_differentiable(output[5])
    ctx.set_materialize_grads(False)  # no (B·H·NC·4·HID·D) zero gradient for the saved states


class _OnceDifferentiable(torch.autograd.Function):
    """Identity whose backward refuses: the gradients of the scan are not themselves differentiable."""

    @staticmethod
    def forward(ctx, anchor, *xs):
        return tuple(x.view_as(x) for x in xs)

    @staticmethod
    def backward(ctx, *gs):
        raise RuntimeError("the fused memory scan is once_differentiable: double backward (create_graph=True) is "
                           "not supported; run the torch path with NLDSL_FUSED_SCAN=off")


def _scan_grads(ctx, *grads):
    if not torch.is_grad_enabled():
        return _scan_grads_of(ctx, *grads)
    with torch.no_grad():  # create_graph=True: the gradients come back, differentiating them raises
        out = _scan_grads_of(ctx, *grads)
    anchors = [g for g in grads if g is not None and g.requires_grad]
    if not anchors:  # nothing upstream asks for a graph
        return out
    present = [g for g in out if g is not None]
    marked = iter(_OnceDifferentiable.apply(anchors[0], *present))
    return tuple(None if g is None else next(marked) for g in out)


def _scan_grads_of(ctx, dy, dw1, dw2, ds1, ds2, _dsave):
    k, v, q, gam, rho, dec, save = ctx.saved_tensors
    chunk, stopgrad, save_states, shapes, momentum = ctx.meta
    if not save_states:
        raise RuntimeError("the fused memory scan saved no chunk states: its inputs did not require grad")
    fill = lambda g, shape: torch.zeros(shape, dtype=gam.dtype, device=k.device) if g is None else g  # noqa: E731
    adjoints = [fill(g, shape) for g, shape in zip((dw1, dw2, ds1, ds2), shapes * 2)][:4 if momentum else 2]
    dk, dv, dq, dgam, drho, ddec, *adj = scan_backward_op(
        k, v, q, torch.zeros_like(k) if dy is None else dy, gam, rho, dec, save,
        *adjoints, *([] if momentum else [None, None]), chunk, stopgrad)
    return (dk.to(k.dtype), dv.to(v.dtype), dq.to(q.dtype), dgam, drho if momentum else None, ddec,
            *(adj if momentum else adj[:2] + [None, None]), None, None, None)


scan_op.register_autograd(_scan_grads, setup_context=_setup_context)


def write_coefficients(eta: Tensor, log_alpha: Tensor | None, log_beta: Tensor | None, chunk: int,
                       stopgrad: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-token write coefficients ``γ = c·η`` and ``ρ = b·η`` ``(B·H, T)`` and per-chunk decays
    ``(A, s0, Bn)`` ``(B·H, T/C, 3)`` of :func:`~nldsl.nn.functional.chunk_decay_weights`, for every chunk
    at once (differentiable; the kernels take them as inputs and return their gradients)."""
    B, H, T = eta.shape
    shape = (B, H, T // chunk, chunk)
    la = torch.zeros(shape, dtype=dtype, device=eta.device) if log_alpha is None else log_alpha.to(dtype).reshape(shape)
    lb = None if log_beta is None else log_beta.to(dtype).reshape(shape)
    A, c, s0, b, Bn = chunk_decay_weights(la, lb)
    rate = (eta.detach() if stopgrad else eta).to(dtype).reshape(shape)
    gam = (c * rate).reshape(B * H, T)
    rho = None if lb is None else (b * rate).reshape(B * H, T).contiguous()
    zero = torch.zeros_like(A)
    dec = torch.stack([A, s0, Bn] if lb is not None else [A, zero, zero], dim=-1).reshape(B * H, T // chunk, 3)
    return gam.contiguous(), rho, dec.contiguous()


_COMPILED: dict = {}


def scan_full_chunks(
    rule, w: list[Tensor], s: list[Tensor] | None, k: Tensor, v: Tensor, q: Tensor, eta: Tensor,
    log_alpha: Tensor | None, log_beta: Tensor | None, compile_options: dict | None = None,
) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
    """Read and write ``T`` tokens (a multiple of the chunk) that start at a chunk boundary, fused.

    Same contract as chaining ``memory_ops._memory_segment`` over the chunks with ``snap = w`` at each
    chunk start: returns the reads ``(B, H, T, d)`` and the final weights and momentum.
    ``compile_options``: compile the write coefficients' elementwise work with these (scope chunk).
    """
    from nldsl.nn.memory_ops import compiled

    T, C, sd = k.shape[-2], rule.chunk_size, w[0].dtype
    if T % C:
        raise ValueError(f"scan_full_chunks needs a multiple of the chunk ({C}) tokens, got {T}")
    if rule.momentum != (log_beta is not None and s is not None):
        raise ValueError("log_beta and the momentum state must be given exactly when the rule has momentum")
    coefficients = compiled(write_coefficients, compile_options, _COMPILED, "write_coefficients")
    with torch.autocast(k.device.type, enabled=False):
        gam, rho, dec = coefficients(eta, log_alpha, log_beta if rule.momentum else None, C, rule.stopgrad, sd)
        inputs = (k, v, q, gam, rho, dec, w[0], w[1], *(s if rule.momentum else (None, None)))
        save_states = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)
        y, w1, w2, s1, s2, _ = scan_op(*inputs, C, rule.stopgrad, save_states)
    return y, [w1, w2], ([s1, s2] if rule.momentum else None)


def scan_routes(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    """How every in-context memory of ``model`` runs its chunks on ``device`` at activation ``dtype``:
    ``{module name: "fused Triton scan" | "torch chunk loop (<why>)" | ...}`` (``nldsl bench`` prints it)."""
    from nldsl.nn.neural_memory import NeuralMemory
    from nldsl.nn.self_modifying import SelfModifyingTitans

    routes = {}
    for name, module in model.named_modules():
        if isinstance(module, NeuralMemory):
            if module._delta_shaped():
                routes[name] = "gated delta rule (fla on CUDA where it runs, else the torch chunkwise form)"
                continue
            reason = why_not(module.rule, module.config.d, module.config.hidden, device, dtype)
            routes[name] = "fused Triton scan" if reason is None else f"torch chunk loop ({reason})"
        elif isinstance(module, SelfModifyingTitans):
            routes[name] = "torch chunk loop (self-modifying memories)"
    return routes
