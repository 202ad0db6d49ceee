"""GPU numerics of the runtime (issue 3 "GPU smoke", issue 5 "every kernel against the float64 reference").

Run with ``pytest -m gpu tests/gpu`` on a CUDA machine (everything here skips without CUDA):

* every block, forward + backward under bf16 autocast and in fp32 (TF32 off), against the same module in
  float64 on the GPU: output, input gradient and every parameter gradient by relative error;
* torch.compile(fullgraph=True) of every block against eager, forward and backward, in fp32;
* the chunked memory engine (``memory_scan``), the gated delta rule (torch path and fla's kernel when it
  is installed and runs), and the NeuralMemory / SelfModifyingTitans / CMS modules against the float64
  sequential references of ``nldsl/nn/reference.py`` and ``cms_reference.py`` (run on the CPU);
* pieces carried with their state equal the whole sequence on the GPU.

Tolerances (METHOD.md): fp32 arithmetic lands far under 1e-4; bf16 operands between 1e-3 and 1e-2 per
operation, a few 1e-2 through the unrolled inner updates; the worst parameter gradient (small gradients of
gates and rates) gets 1e-1.
"""
from __future__ import annotations

import contextlib
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from nldsl.nn import (CMS, HopeAttentionBlock, HopeBlock, NeuralMemory, SelfModifyingTitans, TitansBlock,
                      TransformerBlock)
from nldsl.nn.cms import CMSLevel
from nldsl.nn.cms_reference import cms_reference
from nldsl.nn.delta_rule import FLA_INSTALLED, chunk_gated_delta_rule
from nldsl.nn.memory_ops import MemoryRule, init_memory_state, memory_scan
from nldsl.nn.reference import ref_gated_delta_rule, ref_neural_memory, ref_self_modifying, snapshot_recurrence
from nldsl.testing import assert_rel_close, rel_err

pytestmark = pytest.mark.gpu
F64 = torch.float64
D, H = 64, 4


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 means fp32 here: TF32 off (restored after each test)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _levels(objective: str) -> list[CMSLevel]:
    return [CMSLevel(hidden=2 * D, period=p, lr=1e-2, objective=objective, kind="mlp") for p in (8, 16, 32)]


HOPE_TITANS = dict(hidden_mult=4.0, proj_hidden_mult=4.0, activation="gelu", momentum=0.5, eta_scale=0.02)
BLOCKS = {
    "transformer": lambda: TransformerBlock.Config(dim=D, n_heads=H).build(),
    "titans": lambda: TitansBlock.Config(dim=D, n_heads=H, chunk_size=8, lr=0.01,
                                         memory=dict(hidden_mult=1.0)).build(),
    "hope_attention": lambda: HopeAttentionBlock.Config(dim=D, n_heads=H, cms_levels=_levels("l2")).build(),
    "hope": lambda: HopeBlock.Config(dim=D, n_heads=H, chunk_size=16, proj_chunk_size=8, titans=HOPE_TITANS,
                                     cms_levels=_levels("l2")).build(),
    "self_modifying": lambda: SelfModifyingTitans.Config(dim=D, n_heads=H, chunk_size=16, proj_chunk_size=8,
                                                         **HOPE_TITANS).build(),
    "neural_memory": lambda: NeuralMemory.Config(dim=D, n_heads=H, depth=2, chunk_size=8, lr=0.03, lr_mode="data",
                                                 retention=0.95, retention_mode="data", momentum=0.9,
                                                 momentum_mode="data", conv_size=4, qkv_activation="silu").build(),
    # widths and chunk the fused Triton scan takes on CUDA (head width 16, hidden 16, chunk 16)
    "neural_memory_fused": lambda: NeuralMemory.Config(dim=D, n_heads=H, depth=2, hidden_mult=1.0, chunk_size=16,
                                                       lr=0.03, lr_mode="data", retention=0.95, retention_mode="data",
                                                       momentum=0.9, momentum_mode="data", conv_size=4,
                                                       qkv_activation="silu").build(),
    "titans_fused": lambda: TitansBlock.Config(dim=D, n_heads=H, chunk_size=16, lr=0.01,
                                               memory=dict(hidden_mult=1.0)).build(),
    "delta_rule_memory": lambda: NeuralMemory.Config(dim=D, n_heads=H, depth=1, chunk_size=1, dgd=True, lr=0.5,
                                                     lr_mode="data", retention=0.99, retention_mode="data").build(),
    "cms_l2": lambda: CMS.Config(dim=D, levels=_levels("l2")).build(),
}


def make_block(name: str, device) -> torch.nn.Module:
    torch.manual_seed(0)
    return BLOCKS[name]().to(device)


def block_inputs(device, B=2, T=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g).to(device), torch.randn(B, T, D, generator=g).to(device)


@contextlib.contextmanager
def torch_delta_rule():
    """fla has no float64 kernels: references take the torch path of the delta rule."""
    from nldsl.nn import delta_rule

    original = delta_rule.fla_available
    delta_rule.fla_available = lambda device: False
    try:
        yield
    finally:
        delta_rule.fla_available = original


def fwd_bwd(module, x, cot, bf16: bool = False):
    """Output, input gradient and parameter gradients of ``<module(x), cot>``."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        y, _ = module(x)
    (y.to(cot.dtype) * cot).sum().backward()
    grads = {n.replace("_orig_mod.", ""): p.grad.detach().clone()
             for n, p in module.named_parameters() if p.grad is not None}
    return y.detach(), x.grad.detach(), grads


def compare(run, ref, tol_y: float, tol_dx: float, tol_dw: float, what: str) -> None:
    y, dx, gw = run
    y_ref, dx_ref, gw_ref = ref
    assert torch.isfinite(y).all(), f"{what}: non-finite output"
    assert_rel_close(y, y_ref, tol_y, f"{what} output")
    assert_rel_close(dx, dx_ref, tol_dx, f"{what} input gradient")
    assert gw.keys() == gw_ref.keys(), f"{what}: parameters with gradients differ"
    worst = max(((rel_err(gw[n], gw_ref[n]), n) for n in gw_ref if float(gw_ref[n].norm()) > 0), default=(0.0, ""))
    assert worst[0] <= tol_dw, f"{what}: gradient of {worst[1]} has relative error {worst[0]:.3e} > {tol_dw:.0e}"


def check_block_precision(name: str, device, bf16: bool) -> None:
    module = make_block(name, device)
    x, cot = block_inputs(device)
    with torch_delta_rule():
        ref = fwd_bwd(copy.deepcopy(module).double(), x.double(), cot.double())
    run = fwd_bwd(module, x, cot, bf16=bf16)
    tols = (2e-2, 3e-2, 1e-1) if bf16 else (fp32_tol(name),) * 3
    compare(run, ref, *tols, f"{name} {'bf16' if bf16 else 'fp32'}")


def fp32_tol(name: str) -> float:
    """1e-4, except where fla's kernel runs: Triton's fp32 dots use TF32 (METHOD.md: near 3e-4)."""
    return 5e-3 if name == "delta_rule_memory" and FLA_INSTALLED else 1e-4


def check_compiled(name: str, device) -> None:
    torch._dynamo.reset()
    module = make_block(name, device)
    x, cot = block_inputs(device, T=16)  # two chunks of each memory: small graphs, quick to compile
    eager = fwd_bwd(module, x, cot)
    compiled = fwd_bwd(torch.compile(module, fullgraph=True), x, cot)
    compare(compiled, eager, 1e-4, 1e-4, 1e-4, f"{name} compiled")
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------ blocks
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_bf16_matches_float64(name):
    check_block_precision(name, "cuda", bf16=True)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_fp32_matches_float64(name):
    check_block_precision(name, "cuda", bf16=False)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_compiled_block_matches_eager(name):
    check_compiled(name, "cuda")


def check_pieces(name: str, device) -> None:
    module = make_block(name, device)
    x, _ = block_inputs(device, T=40)
    with torch.no_grad():
        whole, _ = module(x)
        state, ys = None, []
        for a, b in ((0, 5), (5, 21), (21, 40)):  # cuts inside chunks and periods
            y, state = module(x[:, a:b], state)
            ys.append(y)
    tol = 1e-5 if fp32_tol(name) <= 1e-4 else fp32_tol(name)  # fla: TF32 dots, chunked differently in pieces
    assert_rel_close(torch.cat(ys, 1), whole, tol, f"{name} pieces")


@pytest.mark.parametrize("name", list(BLOCKS))
def test_pieces_with_state_equal_whole(name):
    check_pieces(name, "cuda")


# --------------------------------------------------------------------------------- memory engine
RULES = {
    "linear_l2_gd_c1": (MemoryRule(1, "silu", "l2", False, False, False, 1), False),
    "linear_dot_dgd_c5": (MemoryRule(1, "silu", "dot", True, False, False, 5), True),
    "mlp2_l2_momentum_c4": (MemoryRule(2, "silu", "l2", False, True, False, 4), True),
    "mlp2_self_dgd_momentum_c8": (MemoryRule(2, "gelu", "self", True, True, False, 8), True),
    "mlp2_self_dgd_momentum_stopgrad_c3": (MemoryRule(2, "gelu", "self", True, True, True, 3), True),
}


def engine_case(rule: MemoryRule, decay: bool, B=2, Hm=3, T=29, d=8, hidden=16, seed=0):
    """Float64 CPU inputs of one memory: weights (Hm, o, i), q/k/v, rates; keys unit norm."""
    g = torch.Generator().manual_seed(seed)
    dims = [(d, d)] if rule.depth == 1 else [(hidden, d), (d, hidden)]
    w0 = [torch.randn(Hm, o, i, generator=g, dtype=F64) / math.sqrt(i) for o, i in dims]
    q, k, v = (torch.randn(B, Hm, T, d, generator=g, dtype=F64) for _ in range(3))
    k = F.normalize(k, dim=-1)
    eta = 0.05 + 0.1 * torch.rand(B, Hm, T, generator=g, dtype=F64)
    log_alpha = F.logsigmoid(3 + torch.randn(B, Hm, T, generator=g, dtype=F64)) if decay else None
    log_beta = F.logsigmoid(1 + torch.randn(B, Hm, T, generator=g, dtype=F64)) if rule.momentum else None
    return w0, q, k, v, eta, log_alpha, log_beta


def engine_fast(rule, w0, q, k, v, eta, la, lb, device, dtype):
    """memory_scan on ``device``; returns reads, final weights and the gradients of a fixed functional."""
    leaves = [t.to(device, dtype).requires_grad_() for t in (*w0, q, k, v)]
    ws, (qq, kk, vv) = leaves[: len(w0)], leaves[len(w0):]
    state = init_memory_state(rule, ws, q.shape[0], dtype)
    cast = (lambda t: None if t is None else t.to(device, dtype))
    y, new = memory_scan(rule, state, kk, vv, cast(eta), cast(la), cast(lb), qq)
    loss = (y * torch.linspace(-1, 1, y.numel(), device=device, dtype=dtype).view_as(y)).sum()
    loss = loss + sum((w * w).sum() for w in new["w"].values())
    return y.detach(), [w.detach() for w in new["w"].values()], _grads(loss, leaves)


def _grads(loss, leaves) -> list:
    """Gradients of ``loss``; a leaf it does not depend on (k under stopgrad) gets zeros."""
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g.detach() for g, x in zip(grads, leaves)]


def engine_reference(rule, w0, q, k, v, eta, la, lb):
    """The same functional through the float64 token-by-token snapshot reference (autograd gradients)."""
    leaves = [t.clone().requires_grad_() for t in (*w0, q, k, v)]
    ws, (qq, kk, vv) = leaves[: len(w0)], leaves[len(w0):]
    state = init_memory_state(rule, ws, q.shape[0], F64)
    alpha = None if la is None else torch.exp(la)
    beta = None if lb is None else torch.exp(lb)
    y, new = snapshot_recurrence(rule, state, qq, kk, vv, eta, alpha, beta)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=F64).view_as(y)).sum()
    loss = loss + sum((w * w).sum() for w in new["w"].values())
    return y.detach(), [w.detach() for w in new["w"].values()], _grads(loss, leaves)


def check_engine(name: str, device, dtype) -> None:
    rule, decay = RULES[name]
    case = engine_case(rule, decay)
    y, w, grads = engine_fast(rule, *case, device=device, dtype=dtype)
    y_ref, w_ref, grads_ref = engine_reference(rule, *case)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_rel_close(y.cpu(), y_ref, tol, f"{name} reads")
    for i, (a, b) in enumerate(zip(w, w_ref)):
        assert_rel_close(a.cpu(), b, tol, f"{name} final W{i}")
    labels = [f"dW0_{i}" for i in range(len(case[0]))] + ["dq", "dk", "dv"]
    for label, a, b in zip(labels, grads, grads_ref):
        if float(b.norm()) == 0:  # no dependence (stopgrad): the fast form must agree exactly
            assert float(a.norm()) == 0, f"{name} {label}: gradient where the reference has none"
        else:
            assert_rel_close(a.cpu(), b, 10 * tol, f"{name} {label}")


@pytest.mark.parametrize("name", list(RULES))
def test_memory_engine_fp32_matches_float64_reference(name):
    check_engine(name, "cuda", torch.float32)


# ----------------------------------------------------------------------------------- delta rule
def delta_case(B=2, T=77, Hd=3, K=16, V=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hd, K, generator=g, dtype=F64)
    k = F.normalize(torch.randn(B, T, Hd, K, generator=g, dtype=F64), dim=-1)
    v = torch.randn(B, T, Hd, V, generator=g, dtype=F64)
    gate = -0.2 * torch.rand(B, T, Hd, generator=g, dtype=F64)
    beta = torch.rand(B, T, Hd, generator=g, dtype=F64)
    h0 = torch.randn(B, Hd, K, V, generator=g, dtype=F64)
    return q, k, v, gate, beta, h0


def check_delta_rule(device, use_fla: bool, dtype) -> None:
    case = delta_case()
    leaves = [t.to(device, dtype).requires_grad_() for t in case[:3]]
    state_dtype = torch.float32 if use_fla else dtype  # fla: fp32 log decays and state, like its own layers
    rest = [case[3].to(device, state_dtype), case[4].to(device, dtype), case[5].to(device, state_dtype)]
    try:
        o, hT = chunk_gated_delta_rule(*leaves, *rest[:2], initial_state=rest[2], use_fla=use_fla)
    except Exception as exc:  # fla guards some kernels on Hopper with Triton < 3.7.1 (DESIGN.md 6)
        if use_fla:
            pytest.skip(f"fla refused to run here: {type(exc).__name__}: {str(exc)[:200]}")
        raise
    grads = torch.autograd.grad((o.float() * o.float()).sum(), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in case[:3]]
    o_ref, h_ref = ref_gated_delta_rule(*ref_leaves, *case[3:5], case[5])
    grads_ref = torch.autograd.grad((o_ref * o_ref).sum(), ref_leaves)
    tol = {torch.float32: 5e-3 if use_fla else 1e-4, torch.bfloat16: 3e-2}[dtype]  # fla: tf32 dots
    assert_rel_close(o.cpu(), o_ref, tol, "outputs")
    assert_rel_close(hT.cpu(), h_ref, tol, "final state")
    for label, a, b in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_rel_close(a.cpu(), b, 3 * tol, label)


def test_delta_rule_torch_path_matches_float64_reference():
    check_delta_rule("cuda", use_fla=False, dtype=torch.float32)


@pytest.mark.skipif(not FLA_INSTALLED, reason="flash-linear-attention is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_delta_rule_fla_kernel_matches_float64_reference(dtype):
    check_delta_rule("cuda", use_fla=True, dtype=dtype)


# --------------------------------------------------------------------------- module references
def module_pair(kind: str, device):
    """A float32 module on ``device`` and its float64 CPU twin (same weights), with the reference call."""
    torch.manual_seed(0)
    if kind == "neural_memory":
        module = BLOCKS["neural_memory"]()
        ref = lambda m, x: ref_neural_memory(m, x)[0]  # noqa: E731
    elif kind == "self_modifying":
        module = BLOCKS["self_modifying"]()
        ref = lambda m, x: ref_self_modifying(m, x)[0]  # noqa: E731
    else:
        module = BLOCKS["cms_l2"]()
        ref = lambda m, x: cms_reference(m, x)[0]  # noqa: E731
    return module.to(device), copy.deepcopy(module).double(), ref


@pytest.mark.parametrize("kind", ["neural_memory", "self_modifying", "cms"])
def test_module_fp32_matches_sequential_float64_reference(kind):
    check_module_reference(kind, "cuda")


def check_module_reference(kind: str, device) -> None:
    module, twin, ref = module_pair(kind, device)
    x, _ = block_inputs("cpu", T=40)
    with torch.no_grad():
        y, _ = module(x.to(device))
        y_ref = ref(twin, x.double())
    assert_rel_close(y.cpu(), y_ref, 1e-4, f"{kind} vs sequential reference")


# ------------------------------------------------------------------------------ fused memory scan
FUSED_CASES = {  # name: (rule, decay, d, hidden, T, pos)
    "titans_c64_d64": (MemoryRule(2, "silu", "l2", False, True, False, 64), True, 64, 64, 200, 0),
    "titans_c64_offset": (MemoryRule(2, "silu", "l2", False, True, False, 64), True, 64, 64, 171, 23),
    "no_momentum_c16_d32_h64": (MemoryRule(2, "silu", "l2", False, False, False, 16), True, 32, 64, 70, 0),
    "stopgrad_c32_d16": (MemoryRule(2, "silu", "l2", False, True, True, 32), False, 16, 32, 96, 0),
}


def fused_case(name: str):
    rule, decay, d, hidden, T, pos = FUSED_CASES[name]
    return rule, pos, engine_case(rule, decay, B=2, Hm=3, T=T, d=d, hidden=hidden, seed=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_scan_matches_float64_reference(name, dtype):
    """The compiled Triton kernels (forward and backward) against the float64 snapshot reference; the
    route must be taken (no silent torch path)."""
    from nldsl.nn import fused_memory

    rule, pos, (w0, q, k, v, eta, la, lb) = fused_case(name)
    assert fused_memory.usable(rule, k.cuda().to(dtype), q.cuda(), torch.float32)
    leaves = [t.cuda().float().requires_grad_() for t in w0] + [t.cuda().to(dtype).requires_grad_() for t in (q, k, v)]
    ws, (qq, kk, vv) = leaves[:2], leaves[2:]
    state = init_memory_state(rule, ws, q.shape[0], torch.float32)
    state["pos"] = pos
    f32 = (lambda t: None if t is None else t.cuda().float())
    y, new = memory_scan(rule, state, kk, vv, f32(eta), f32(la), f32(lb), qq)
    weight = torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)
    loss = (y.float() * weight).sum() + sum((w * w).sum() for w in new["w"].values())
    grads = _grads(loss, leaves)

    ref_leaves = [t.clone().requires_grad_() for t in (*w0, q, k, v)]
    rs, (rq, rk, rv) = ref_leaves[:2], ref_leaves[2:]
    rstate = init_memory_state(rule, rs, q.shape[0], F64)
    rstate["pos"] = pos
    y_ref, rnew = snapshot_recurrence(rule, rstate, rq, rk, rv, eta, None if la is None else la.exp(),
                                      None if lb is None else lb.exp())
    rloss = (y_ref * torch.linspace(-1, 1, y_ref.numel(), dtype=F64).view_as(y_ref)).sum()
    rloss = rloss + sum((w * w).sum() for w in rnew["w"].values())
    grads_ref = _grads(rloss, ref_leaves)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_rel_close(y.double().cpu(), y_ref, tol, f"{name} reads")
    for i in ("0", "1"):
        assert_rel_close(new["w"][i].double().cpu(), rnew["w"][i], tol, f"{name} final W{i}")
    for label, a, b in zip(["dW1", "dW2", "dq", "dk", "dv"], grads, grads_ref):
        if float(b.norm()) == 0:
            assert float(a.norm()) == 0, f"{name} {label}: gradient where the reference has none"
        else:
            assert_rel_close(a.double().cpu(), b, 10 * tol, f"{name} {label}")


def test_fused_scan_equals_torch_path_on_gpu():
    """Same inputs, route on and off, fp32: reads, state and every gradient (rates included) agree."""
    from nldsl.nn.fused_memory import fused_scan_mode

    rule, pos, (w0, q, k, v, eta, la, lb) = fused_case("titans_c64_offset")
    results = {}
    for mode in ("auto", "off"):
        leaves = [t.cuda().float().requires_grad_() for t in (*w0, q, k, v, eta, la, lb)]
        ws, (qq, kk, vv, ee, aa, bb) = leaves[:2], leaves[2:]
        state = init_memory_state(rule, ws, q.shape[0], torch.float32)
        state["pos"] = pos
        with fused_scan_mode(mode):
            y, new = memory_scan(rule, state, kk, vv, ee, aa, bb, qq)
        loss = (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum()
        loss = loss + sum((t * t).sum() for t in (*new["w"].values(), *new["s"].values()))
        results[mode] = [y.detach()] + _grads(loss, leaves)
    labels = ["reads", "dW1", "dW2", "dq", "dk", "dv", "deta", "dlog_alpha", "dlog_beta"]
    for label, a, b in zip(labels, results["auto"], results["off"]):
        assert_rel_close(a, b, 1e-4, label)


def test_titans_compiles_whole_with_the_fused_scan():
    """titans.nl on the GPU: every memory runs fused, so scope auto compiles the whole model (Inductor, the
    scan an opaque op in the graph); two training steps give the eager build's losses (fp32)."""
    import warnings
    from pathlib import Path

    from nldsl.build import build

    spec = Path(__file__).resolve().parents[2] / "examples" / "titans.nl"
    sizes = {"D": 96, "HEADS": 6, "CHUNK": 16, "model.layers": 2, "model.vocab": 256, "train.tokenizer": "bytes",
             "train.precision": "fp32"}
    batch = torch.randint(0, 256, (2, 129), device="cuda")
    losses = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = build(spec, device="cuda", compile=compiled, overrides=sizes)
        if compiled:
            assert c.compile_scope == "model"
        losses[compiled] = [c.train_step(batch)["loss"] for _ in range(2)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
