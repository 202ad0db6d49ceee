"""GPU check: ceilings, GPU-marked tests, and a bf16 smoke run of every runtime block, in one command.

1. torch / triton / GPU, and the two ceilings of METHOD.md: device-to-device copy (GB/s, read + write) and a
   bf16 8192^3 matmul on random data (TFLOP/s).
2. ``pytest -m gpu -q tests/gpu tests/optim tests/nn`` (only GPU-marked tests run).
3. Every block (TransformerBlock, TitansBlock, HopeBlock, HopeAttentionBlock, SelfModifyingTitans,
   NeuralMemory and its delta-rule route, CMS with in-context l2 writes) and a 2-layer HOPE LM trained
   through ``train_segments``: forward + backward under bf16 autocast at a moderate size (B=4, T=1024,
   D=512; B=1 where per-sequence fast weights are large), with time, peak memory, and the relative error of
   the output, the input gradient and the worst parameter gradient against the same module in fp32 (and of
   fp32 against fp64). Then torch.compile'd at ``--compile-seq`` tokens: compile time, speed-up over eager
   at that length, agreement with eager, and graph breaks (``torch._dynamo.explain``).
4. A short table last.

    python benchmarks/gpu_check.py [--out DIR] [--no-compile] [--no-tests]
    python benchmarks/gpu_check.py --smoke        # CPU, toy sizes, seconds (CI)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_util as bu  # noqa: E402
import lm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PYTEST = ["-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/gpu", "tests/optim", "tests/nn"]

COLUMNS = [
    ("case", "case", ""), ("shape", "B x T x D", ""), ("eager_ms", "fwd+bwd ms", ".1f"),
    ("peak_gib", "peak GiB", ".2f"),
    ("err_y", "bf16 y", ".1e"), ("err_dx", "bf16 dx", ".1e"), ("err_dw", "bf16 dW max", ".1e"),
    ("err_fp32", "fp32 vs fp64", ".1e"), ("compile_s", "compile s", ".0f"), ("speedup", "compiled x", ".2f"),
    ("err_compiled", "cmp vs eager", ".1e"), ("graphs", "graphs/breaks", ""), ("note", "note", ""),
]


@dataclass
class Case:
    """One smoke case: ``make()`` builds an fp32 module; ``lm_case`` cases take tokens and train in segments."""

    name: str
    make: object
    batch: int
    lm_case: bool = False
    compile: bool = True
    notes: list = field(default_factory=list)


STABLE_RATES = dict(momentum=0.5, eta_scale=0.02)
"""hope.nl's momentum 0.9 and eta 0.1 make the projection memories diverge within ~100 tokens at init
(docs/performance.md); the numerics need finite numbers, so HOPE's cases use these."""


def sizes(smoke: bool) -> lm.Size:
    if smoke:
        return lm.scaled(lm.TOY, layers=2)
    return lm.Size(vocab=4096, dim=512, layers=2, heads=8, cms_hidden=2048, cms_periods=(64, 256, 1024))


def cases(size: lm.Size, smoke: bool) -> list[Case]:
    """The blocks of issue 3's smoke run, each in the configuration the benchmark models use."""
    from nldsl.nn import CMS, NeuralMemory
    from nldsl.nn.cms import CMSLevel

    D, H = size.dim, size.heads
    big = 1 if not smoke else 2  # per-sequence projection memories are (4, 4D, D) fp32 per sequence
    titans = lm.block_config("titans", size)
    hope = lm.block_config("hope", size)
    hope.titans.update(STABLE_RATES)
    delta = dict(dim=D, n_heads=H, depth=1, chunk_size=1, objective="l2", dgd=True, lr=0.5, lr_mode="data",
                 retention=0.99, retention_mode="data")
    l2_levels = [CMSLevel(hidden=size.cms_width, period=p, lr=1e-3, objective="l2", kind="mlp")
                 for p in size.cms_periods]
    return [
        Case("TransformerBlock", lambda: lm.block_config("transformer", size).build(), 4),
        Case("TitansBlock", lambda: titans.build(), 4),
        Case("HopeBlock", lambda: hope.build(), big),
        Case("HopeAttentionBlock", lambda: lm.block_config("hope_attention", size).build(), 4),
        Case("SelfModifyingTitans", lambda: hope.titans_config().build(), big),
        Case("NeuralMemory", lambda: titans.memory_config().build(), 4),
        Case("NeuralMemory delta-rule", lambda: NeuralMemory(NeuralMemory.Config(**delta)), 4),
        Case("CMS l2 (in-context)", lambda: CMS(CMS.Config(dim=D, levels=l2_levels)), 4),
        Case("HOPE LM train_segments", lambda: lm.NLLM(hope, size), big, lm_case=True, compile=False),
    ]


# ------------------------------------------------------------------------------------------ runs
@contextlib.contextmanager
def torch_delta_rule():
    """Force the torch path of the delta rule (fla has no float64 kernels): for the fp64 reference."""
    from nldsl.nn import delta_rule

    original = delta_rule.fla_available
    delta_rule.fla_available = lambda device: False
    try:
        yield
    finally:
        delta_rule.fla_available = original


def run_once(case: Case, module, inputs, cotangent, autocast: bool):
    """Forward + backward; returns (output or loss, input grad or None, {param: grad})."""
    module.zero_grad(set_to_none=True)
    device = next(module.parameters()).device
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast and device.type == "cuda" else \
        torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    if case.lm_case:
        from nldsl.nn.surprise import train_segments

        tokens, targets = inputs
        with ctx:
            out, _ = train_segments(module, tokens, targets, lm.token_losses)
        dx = None
    else:
        x = inputs.detach().requires_grad_()
        with ctx:
            y, _ = module(x)
        out = y
        (y.to(cotangent.dtype) * cotangent).sum().backward()  # fp32 cotangent (fp64 for the reference)
        dx = x.grad
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), dx, grads


def errors(a, b) -> dict:
    """Relative errors of output, input grad and the worst parameter grad of run ``a`` against run ``b``."""
    from nldsl.testing import rel_err

    out, dx, gw = a
    ref_out, ref_dx, ref_gw = b
    dw = [rel_err(gw[n], ref_gw[n]) for n in ref_gw if n in gw and float(ref_gw[n].norm()) > 0]
    return {"y": rel_err(out, ref_out), "dx": None if dx is None else rel_err(dx, ref_dx),
            "dw": max(dw) if dw else None}


def make_inputs(case: Case, size: lm.Size, T: int, device, gen: torch.Generator):
    if case.lm_case:
        tokens = torch.randint(0, size.vocab, (case.batch, T + 1), device=device, generator=gen)
        return (tokens[:, :-1], tokens[:, 1:]), None
    x = torch.randn(case.batch, T, size.dim, device=device, generator=gen)
    return x, torch.randn(case.batch, T, size.dim, device=device, generator=gen)


def to64(inputs):
    return inputs if isinstance(inputs, tuple) else inputs.double()


def check_case(case: Case, size: lm.Size, T: int, args, device) -> dict:
    row = {"case": case.name, "shape": f"{case.batch}x{T}x{size.dim}"}
    gen = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)
    module = case.make().to(device)
    inputs, cot = make_inputs(case, size, T, device, gen)
    bu.reset_peak(device)
    runs = []
    first = bu.time_ms(lambda: runs.append(run_once(case, module, inputs, cot, True)), device)[0]
    bf16 = runs[0]
    timed = bu.time_ms(lambda: run_once(case, module, inputs, cot, True), device, args.reps)
    row["eager_ms"] = bu.median(timed) if timed else first
    row["peak_gib"] = bu.peak_gib(device)
    if not torch.isfinite(bf16[0]).all():
        case.notes.append("non-finite output")
    with tf32(False):
        fp32 = run_once(case, module, inputs, cot, autocast=False)
    with torch_delta_rule():
        twin = copy.deepcopy(module).double()
        ref = run_once(case, twin, to64(inputs), None if cot is None else cot.double(), False)
    e = errors(bf16, fp32)
    e32 = [v for v in errors(fp32, ref).values() if v is not None]
    row.update(err_y=e["y"], err_dx=e["dx"], err_dw=e["dw"], err_fp32=max(e32))
    if case.compile and not args.no_compile:
        if args.compile_spent < args.compile_budget_s:
            t0 = time.perf_counter()
            row.update(compiled_case(case, module, size, args, device))
            args.compile_spent += time.perf_counter() - t0
        else:
            case.notes.append("compile skipped: --compile-budget-s spent")
    row["note"] = "; ".join(case.notes)
    return row


@contextlib.contextmanager
def tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def compiled_case(case: Case, module, size: lm.Size, args, device) -> dict:
    """torch.compile at ``--compile-seq`` tokens: breaks (explain), compile time, speed-up, agreement."""
    from nldsl.testing import rel_err

    out = {}
    T = args.compile_seq
    gen = torch.Generator(device=device).manual_seed(1)
    x, cot = make_inputs(case, size, T, device, gen)
    torch._dynamo.reset()
    try:
        with bu.time_limit(args.compile_timeout):
            ex = torch._dynamo.explain(module)(x)
        out["graphs"] = f"{ex.graph_count}/{ex.graph_break_count}"
        if ex.graph_break_count:
            reasons = {" ".join(str(getattr(r, "reason", r)).split())[:60] for r in ex.break_reasons}
            case.notes.append("break: " + " | ".join(sorted(reasons))[:120])
    except Exception as exc:  # noqa: BLE001
        case.notes.append(f"explain {bu.short_error(exc, 60)}")
    torch._dynamo.reset()
    compiled = torch.compile(module, backend=args.backend)
    try:
        runs = []
        with bu.time_limit(args.compile_timeout):
            out["compile_s"] = bu.wall(lambda: runs.append(run_once(case, compiled, x, cot, True)), device)
        runs.append(run_once(case, module, x, cot, True))
        out["err_compiled"] = rel_err(runs[0][0], runs[1][0])
        if args.reps:
            ms_c = bu.median(bu.time_ms(lambda: run_once(case, compiled, x, cot, True), device, args.reps))
            ms_e = bu.median(bu.time_ms(lambda: run_once(case, module, x, cot, True), device, args.reps))
            out["speedup"] = ms_e / ms_c
    except Exception as exc:  # noqa: BLE001
        case.notes.append(f"compile {bu.short_error(exc, 60)}")
    torch._dynamo.reset()
    return out


# ----------------------------------------------------------------------------------------- steps
def ceilings(device, log: bu.Log) -> dict:
    info = bu.device_info(device)
    log("device:", " ".join(f"{k}={v}" for k, v in info.items()))
    ceil = {"copy_gbs": bu.copy_gbs(device), "matmul_tflops": bu.matmul_tflops(device)}
    log(f"ceilings: copy {ceil['copy_gbs']:.0f} GB/s (read + write), matmul {ceil['matmul_tflops']:.1f} TFLOP/s "
        f"({'bf16 8192^3' if device.type == 'cuda' else 'fp32 256^3, CPU'}, random data)")
    return {"info": info, **ceil}


def run_tests(log: bu.Log, timeout: int) -> dict:
    cmd = [sys.executable, *PYTEST]
    log("$", " ".join(cmd[1:]))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"pytest: timed out after {timeout} s")
        return {"rc": None, "summary": f"timeout {timeout} s"}
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    for line in lines[-25:]:
        log("  " + line)
    summary = lines[-1] if lines else ""
    if proc.returncode == 5:
        summary = "no GPU-marked tests collected"
    log(f"pytest: rc={proc.returncode} in {time.perf_counter() - t0:.0f} s")
    return {"rc": proc.returncode, "summary": summary}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="CPU, toy sizes (CI)")
    p.add_argument("--out", default=None, help="folder for gpu_check.json / .log")
    p.add_argument("--seq", type=int, default=None, help="tokens of the eager smoke (default 1024)")
    p.add_argument("--compile-seq", type=int, default=None, help="tokens of the compiled runs (default 64)")
    p.add_argument("--compile-timeout", type=float, default=120.0, help="seconds per compiled case")
    p.add_argument("--compile-budget-s", type=float, default=150.0, help="seconds for all compiled cases")
    p.add_argument("--backend", default=None, help="torch.compile backend (inductor; eager in --smoke)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-tests", action="store_true")
    p.add_argument("--test-timeout", type=int, default=300)
    p.add_argument("--cases", default=None, help="comma list of case names (default all)")
    args = p.parse_args(argv)
    args.seq = args.seq or (8 if args.smoke else 1024)
    args.compile_seq = args.compile_seq or (4 if args.smoke else 64)
    args.backend = args.backend or ("eager" if args.smoke else "inductor")
    args.reps = 0 if args.smoke else args.reps  # smoke: the checked run is the timed one
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    log = bu.Log()
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: threads only add OpenMP barriers (40x slower on a busy box)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    payload = {"ceilings": ceilings(device, log)}
    payload["tests"] = {"summary": "skipped (--no-tests)"} if args.no_tests else run_tests(log, args.test_timeout)
    size = sizes(args.smoke)
    args.compile_spent = 0.0
    wanted = None if not args.cases else {c.strip() for c in args.cases.split(",")}
    rows = []
    for case in cases(size, args.smoke):
        if wanted and case.name not in wanted:
            continue
        t0 = time.perf_counter()
        try:
            row = check_case(case, size, args.seq, args, device)
        except Exception as exc:  # noqa: BLE001 - a failing case is reported, the others still run
            row = {"case": case.name, "note": "; ".join(case.notes + [bu.short_error(exc, 120)])}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        log("[case] " + " ".join(f"{k}={bu.fmt(v)}" for k, v in row.items()))
        bu.write_out(args.out, "gpu_check", {**payload, "rows": rows}, log)  # partial results survive a kill
        bu.release()
    payload["rows"] = rows
    info, c = payload["ceilings"]["info"], payload["ceilings"]
    log("")
    log(f"== gpu_check on {info['gpu']} (torch {info['torch']}, triton {info['triton']}): "
        f"copy {c['copy_gbs']:.0f} GB/s, matmul {c['matmul_tflops']:.1f} TFLOP/s; tests: {payload['tests']['summary']}")
    log("   errors are ||a - b|| / ||b||; bf16 columns: bf16 autocast vs fp32 (TF32 off); "
        f"compiled at T={args.compile_seq}")
    log(bu.render_table(rows, COLUMNS))
    bu.write_out(args.out, "gpu_check", payload, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
