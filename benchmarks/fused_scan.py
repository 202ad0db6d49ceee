"""One Titans memory layer's scan, forward + backward: the fused Triton kernels against the torch path.

Times ``memory_scan`` at Titans' sizes (12 heads of 64, MLP memory 64 -> 64 -> 64, chunk 64, momentum,
data-dependent rates, bf16 q/k/v) for the torch path (eager, and with the chunk update compiled, as the
compiler's ``scope = chunk`` runs it) and for the fused kernels at several warp counts; checks that every
path gives the same reads and gradients as the torch path (relative error) and prints one table.

    python benchmarks/fused_scan.py --out DIR              # seq 2048 x 16 and 16384 x 2 (H100: ~1 min)
    python benchmarks/fused_scan.py --smoke                # CPU, toy sizes (the fused rows need TRITON_INTERPRET=1)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_util as bu  # noqa: E402

from nldsl.nn import fused_memory  # noqa: E402
from nldsl.nn.memory_ops import MemoryRule, compiled_chunks, init_memory_state, memory_scan  # noqa: E402
from nldsl.testing import rel_err  # noqa: E402

COLUMNS = [("path", "path", ""), ("seq", "seq", "d"), ("batch", "B", "d"), ("warps", "warps", ""), ("dots", "dots", ""),
           ("fwd_ms", "fwd ms", ".2f"), ("step_ms", "fwd+bwd ms", ".2f"), ("speedup", "x torch", ".1f"),
           ("tok_s", "tok/s (1 layer)", ",.0f"), ("peak_gib", "peak GiB", ".2f"), ("err_y", "rel err y", ".1e"),
           ("err_grad", "rel err grads", ".1e"), ("note", "note", "")]


def make_inputs(B, H, T, d, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w0 = [torch.randn(H, d, d, generator=g) / math.sqrt(d) for _ in range(2)]
    q, k, v = (torch.randn(B, H, T, d, generator=g) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    eta = 0.01 * torch.sigmoid(torch.randn(B, H, T, generator=g))
    la = F.logsigmoid(4 + torch.randn(B, H, T, generator=g))
    lb = F.logsigmoid(2 + torch.randn(B, H, T, generator=g))
    return ([w.to(device).requires_grad_() for w in w0],
            [t.to(device, dtype).requires_grad_() for t in (q, k, v)],
            [t.to(device).requires_grad_() for t in (eta, la, lb)])


def step(rule, ws, qkv, rates, backward: bool):
    q, k, v = qkv
    state = init_memory_state(rule, ws, q.shape[0], torch.float32)
    y, new = memory_scan(rule, state, k, v, *rates, q)
    if backward:
        (y.float().square().mean() + sum(w.square().mean() for w in new["w"].values())).backward()
    return y


@contextlib.contextmanager
def _launch_settings(warps: int | None, dots: str | None):
    """The kernels' warp count and product precision for one path, restored afterwards."""
    saved = fused_memory.NUM_WARPS, fused_memory.BF16_DOTS
    fused_memory.NUM_WARPS = warps or fused_memory.NUM_WARPS
    fused_memory.BF16_DOTS = dots != "tf32"
    try:
        yield
    finally:
        fused_memory.NUM_WARPS, fused_memory.BF16_DOTS = saved


def run_path(rule, inputs, device, mode: str, warps: int | None, dots: str | None, compiled: bool, reps: int):
    ws, qkv, rates = inputs
    leaves = ws + qkv + rates
    ctx = compiled_chunks() if compiled else contextlib.nullcontext()
    with fused_memory.fused_scan_mode(mode), ctx, _launch_settings(warps, dots):
        for t in leaves:
            t.grad = None
        step(rule, ws, qkv, rates, True)  # warm-up (compiles)
        bu.sync(device)
        with torch.no_grad():
            fwd = bu.median(bu.time_ms(lambda: step(rule, ws, qkv, rates, False), device, reps))
        bu.reset_peak(device)
        for t in leaves:
            t.grad = None
        full = bu.time_ms(lambda: step(rule, ws, qkv, rates, True), device, reps)
        peak = bu.peak_gib(device)
        for t in leaves:
            t.grad = None
        y = step(rule, ws, qkv, rates, True)
    return fwd, bu.median(full), peak, y.detach(), [t.grad.detach().clone() for t in leaves]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seqs", default="2048:16,16384:2", help="seq:batch pairs")
    p.add_argument("--warps", default="4,8")
    p.add_argument("--dots", default="bf16,tf32", help="operands of the fused kernels' products (bf16 inputs)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="CPU, toy sizes")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    H, d, C = (2, 16, 16) if args.smoke else (12, 64, 64)
    pairs = [(64, 1)] if args.smoke else [tuple(int(x) for x in s.split(":")) for s in args.seqs.split(",")]
    rule = MemoryRule(2, "silu", "l2", momentum=True, chunk_size=C)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    fused_mode = "auto" if device.type == "cuda" else ("interpret" if fused_memory.interpreter_on() else None)
    info = bu.device_info(device)
    print(f"device: {info['gpu']}  torch {info['torch']}  triton {info['triton']}")
    rows = []
    for T, B in pairs:
        inputs = make_inputs(B, H, T, d, device, dtype)
        paths = [("torch eager", "off", None, None, False),
                 ("torch, chunk compiled", "off", None, None, device.type == "cuda")]
        if fused_mode and fused_memory.triton_available():
            paths += [("fused", fused_mode, int(w), dots, False)
                      for dots in args.dots.split(",") for w in args.warps.split(",")]
        ref = None
        for name, mode, warps, dots, compiled in paths:
            row = {"path": name, "seq": T, "batch": B, "warps": warps or "-", "dots": dots or "-"}
            try:
                fwd, full, peak, y, grads = run_path(rule, inputs, device, mode, warps, dots, compiled, args.reps)
            except Exception as exc:  # a failing path is a row, not the end of the table
                row["note"] = bu.short_error(exc)
                rows.append(row)
                continue
            if ref is None:
                ref = (full, y, grads)
            row.update(fwd_ms=fwd, step_ms=full, speedup=ref[0] / full, tok_s=B * T / (full * 1e-3), peak_gib=peak,
                       err_y=rel_err(y.float(), ref[1].float()),
                       err_grad=max(rel_err(a.float(), b.float()) for a, b in zip(grads, ref[2])))
            rows.append(row)
            print(bu.render_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    table = bu.render_table(rows, COLUMNS)
    print(f"\nTitans memory scan, one layer (H={H}, d={d}, chunk {C}, momentum), {info['gpu']}\n{table}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "fused_scan.json").write_text(json.dumps({"device": info, "rows": rows}, indent=1, default=str))
        (out / "fused_scan.txt").write_text(table + "\n")
    failed = [r for r in rows if r.get("note")]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
