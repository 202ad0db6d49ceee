"""Training (and decoding) throughput of issue 5's table, side by side with the hand-written baseline.

One command, one device call: measures the two ceilings (bf16 matmul, copy bandwidth), then for every
sequence length and model a full training step (forward with in-context updates, backward, fused AdamW)
timed with CUDA events after warm-up (median), and prints model, params, tokens/s, ratio to the baseline of
the same run, TFLOP/s (analytic FLOPs, benchmarks/flops.py), MFU against the measured matmul ceiling, the
floor of the design (flops.py) and the peak memory. A failing row (OOM, error, time limit) is reported and
the table goes on. ``--budget-s`` bounds the whole table: each row gets a fair share of what is left, is
skipped when too little is left, and is stopped by an alarm far past its share.

    python benchmarks/throughput.py                       # the full table (H100: < 8 minutes)
    python benchmarks/throughput.py --seqs 2048 --models baseline,titans --steps 20
    python benchmarks/throughput.py --generate            # decode tokens/s, batch 1 and 32
    python benchmarks/throughput.py --smoke               # CPU, toy sizes, seconds

Models come from ``nldsl.build`` (the compiler) when it is importable and ``--source`` allows it, otherwise
from ``benchmarks/lm.py`` (the runtime blocks assembled by hand, as examples/*.nl describe them).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_util as bu  # noqa: E402
import flops  # noqa: E402
import lm  # noqa: E402

SEQ_BATCH = {2048: 16, 16384: 2}
"""Issue 5: batch 16 at seq 2048, batch 2 at seq 16384 (the same 32K tokens per step)."""
SMOKE_SEQ_BATCH = {16: 2}
MIN_ROW_S = 15.0

TRAIN_COLUMNS = [
    ("model", "model", ""), ("seq", "seq", "d"), ("batch", "B", "d"), ("params_M", "params M", ".1f"),
    ("compile", "compile", ""), ("tok_s", "tok/s", ",.0f"), ("ratio", "x base", ".3f"),
    ("tflops", "TFLOP/s", ".1f"), ("mfu", "MFU", ".1%"), ("floor_tok_s", "floor tok/s", ",.0f"),
    ("of_floor", "% floor", ".1%"), ("bound", "bound", ""), ("peak_gib", "peak GiB", ".1f"),
    ("step_ms", "step ms", ".1f"), ("steps", "n", "d"), ("warm_s", "warm s", ".0f"), ("kernels", "kernels", "d"),
    ("busy", "GPU busy", ".0%"), ("note", "note", ""),
]
GEN_COLUMNS = [
    ("model", "model", ""), ("batch", "B", "d"), ("prefill_tok_s", "prefill tok/s", ",.0f"),
    ("decode_tok_s", "decode tok/s", ",.1f"), ("ratio", "x base", ".3f"), ("ms_per_token", "ms/token", ".2f"),
    ("peak_gib", "peak GiB", ".1f"), ("kernels", "kernels/token", "d"), ("busy", "GPU busy", ".0%"),
    ("note", "note", ""),
]
PROFILED_TOKENS = 4
"""Decode tokens under the profiler per --generate row (kernels per token, GPU busy share, top kernels)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(lm.MODEL_NAMES), help="comma list of " + ", ".join(lm.MODEL_NAMES))
    p.add_argument("--seqs", default=None, help="comma list of sequence lengths (default 2048,16384)")
    p.add_argument("--batch", default=None, help="comma list of batch sizes matching --seqs (default 16 and 2)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row at most (the budget may cut it)")
    p.add_argument("--compile", default="auto",
                   help="mode for every model (auto, eager, model, block, chunk) or name=mode items: titans=eager")
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    p.add_argument("--torch-mode", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                   help="torch.compile mode of the nldsl.build models (train.compile = compile(mode = ...)); "
                        "default: each spec's own")
    p.add_argument("--source", choices=("auto", "lm", "build"), default="auto",
                   help="nldsl.build when importable (auto), always lm.py, or always nldsl.build")
    p.add_argument("--budget-s", type=float, default=None,
                   help="seconds for the whole table (default 420 for training, 200 for --generate)")
    p.add_argument("--generate", action="store_true", help="decode throughput (batch 1 and 32) instead of training")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens for --generate")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens for --generate")
    p.add_argument("--gen-batches", default="1,32")
    p.add_argument("--sdpa", choices=("default", "no-cudnn"), default="default",
                   help="--generate: SDPA backends torch may pick; no-cudnn leaves out cuDNN attention (which "
                        "plans per shape, and every decoded token has a new cache length)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the profiled step per row (kernel count, GPU busy share, top kernels)")
    p.add_argument("--profile-max-ms", type=float, default=2500.0, help="profile only rows with faster steps")
    p.add_argument("--smoke", action="store_true", help="CPU, toy sizes, eager (CI)")
    p.add_argument("--out", default=None, help="folder for throughput.json / .log")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in lm.MODEL_NAMES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {', '.join(lm.MODEL_NAMES)}")
    default = SMOKE_SEQ_BATCH if args.smoke else SEQ_BATCH
    seqs = [int(s) for s in args.seqs.split(",")] if args.seqs else list(default)
    batches = [int(b) for b in args.batch.split(",")] if args.batch else [default.get(s, 2) for s in seqs]
    if len(batches) != len(seqs):
        p.error(f"--batch needs one value per sequence length, got {batches} for {seqs}")
    args.shapes = list(zip(seqs, batches))
    args.compile_modes = _compile_modes(p, args.compile, args.models)
    if args.smoke:  # eager unless asked; dynamo only (no inductor codegen) when asked
        args.backend = "eager"
        if args.compile == "auto":
            args.compile_modes = {m: "eager" for m in args.models}
        args.steps, args.new_tokens, args.prompt = min(args.steps, 2), min(args.new_tokens, 3), min(args.prompt, 8)
        args.source = "lm" if args.source == "auto" else args.source
    args.gen_batches = [int(b) for b in args.gen_batches.split(",")] if not args.smoke else [1, 2]
    if args.budget_s is None:
        args.budget_s = 200.0 if args.generate else 420.0
    return args


def _compile_modes(p, spec: str, models: list[str]) -> dict[str, str]:
    modes = {m: "auto" for m in models}
    for item in spec.split(","):
        name, _, mode = item.rpartition("=")
        targets = [name] if name else models
        if mode not in lm.COMPILE_MODES or any(t not in lm.MODEL_NAMES for t in targets):
            p.error(f"--compile: bad item {item!r} (modes {', '.join(lm.COMPILE_MODES)})")
        modes.update({t: mode for t in targets})
    return modes


# ----------------------------------------------------------------------------------------- models
def use_build(name: str, args) -> bool:
    return name != "baseline" and args.source != "lm"


def build_compiled(name: str, mode: str, args, device, seq: int, batch: int):
    """``nldsl.build`` of the example; ``model`` and ``chunk`` keep the compiler's own torch.compile (its
    scope auto: the whole model without memories, one chunk update at a time with them), ``block``
    compiles the eager build's blocks in place (see lm.py)."""
    from nldsl.build import build

    overrides = {"train.seq": seq, "train.batch": batch}
    if args.torch_mode is not None:
        overrides["train.compile"] = f"compile(mode = {json.dumps(args.torch_mode)})"
    compiled = build(lm.EXAMPLES[name], device=str(device), compile=mode in ("model", "chunk"), overrides=overrides)
    if mode == "block":
        lm.compile_in_place(compiled.model, mode, args.backend)
    return compiled


def make_model(name: str, size: lm.Size, args, device, seq: int, batch: int):
    """``(model, step, mode, source)``: nldsl.build's model and step when allowed and working, else lm.py's."""
    mode = lm.resolve_compile(name, args.compile_modes[name])
    source = "lm.py"
    if use_build(name, args):
        try:
            compiled = build_compiled(name, mode, args, device, seq, batch)

            def step(tokens):
                return compiled.train_step(tokens)["loss"]

            return compiled.model, step, _scope_label(compiled, mode), "nldsl.build"
        except Exception as exc:  # noqa: BLE001 - reported, then the hand assembly is measured
            if args.source == "build":
                raise
            source = "lm.py" if isinstance(exc, ImportError) else f"lm.py ({bu.short_error(exc, 60)})"
    model = lm.build_model(name, size, device)
    step, _, mode = lm.make_train_step(model, name, mode, args.backend)
    return model, step, mode, source


def _scope_label(compiled, mode: str) -> str:
    """What the build compiled: its resolved scope (``model`` / ``chunk``) and a torch mode other than the
    default (``model+reduce-overhead``); ``block`` and ``eager`` as asked."""
    if compiled.compile_scope is None:
        return mode
    torch_mode = compiled.plan.train.compile.mode
    return compiled.compile_scope + ("" if torch_mode == "default" else f"+{torch_mode}")


# ------------------------------------------------------------------------------------- training
def warm_seq(name: str, mode: str, size: lm.Size, seq: int) -> int:
    """Warm-up length: only eager steps may warm up short; every compiled mode has graphs whose shapes
    follow T (the whole model, or the static sublayers compiled beside the chunk updates)."""
    if mode != "eager":
        return seq
    return min(seq, 2 * max(size.cms_periods[0], size.titans_chunk, size.hope_chunk))


CHEAP_STEP_MS, MIN_TIMED_STEPS = 2000.0, 5
"""Rows whose step is under CHEAP_STEP_MS always get MIN_TIMED_STEPS timed steps, past their budget share."""


def train_row(name: str, seq: int, batch: int, size: lm.Size, args, device, share_s: float, ceiling: dict) -> dict:
    row = {"model": lm.LABELS[name], "key": name, "seq": seq, "batch": batch}
    torch.manual_seed(0)
    bu.reset_peak(device)
    model, step, mode, source = make_model(name, size, args, device, seq, batch)
    row.update(params_M=lm.param_count(model) / 1e6, compile=mode, source=source, config=lm.describe(name, size))
    tokens = torch.randint(0, size.vocab, (batch, seq + 1), device=device)
    warm = tokens[:, : warm_seq(name, mode, size, seq) + 1]
    t_start = time.perf_counter()
    row["warm_s"] = bu.wall(lambda: step(warm), device)
    losses = []
    first = bu.time_ms(lambda: losses.append(step(tokens)), device)[0]
    left = share_s - (time.perf_counter() - t_start)
    more = max(0, min(args.steps - 1, int(left * 1e3 / max(first, 1e-3))))
    if first < CHEAP_STEP_MS:  # a long compile must not leave a fast model one timed step: a median needs a few
        more = max(more, min(args.steps - 1, MIN_TIMED_STEPS - 1))
    times = bu.time_ms(lambda: losses.append(step(tokens)), device, more)
    row["step_ms"] = bu.median(times) if len(times) >= 2 else first
    row["steps"] = len(times) if len(times) >= 2 else 1
    row["tok_s"] = batch * seq / (row["step_ms"] * 1e-3)
    row["peak_gib"] = bu.peak_gib(device)
    row["loss"] = float(losses[-1])
    if args.profile and row["step_ms"] < args.profile_max_ms:
        row.update(profile_step(lambda: step(tokens), device, args.log, f"{name} seq {seq}", row["step_ms"]))
    shape = lm.flops_shape(model, seq, batch)
    row["tflops"] = flops.train_flops_per_token(name, shape) * row["tok_s"] / 1e12
    row["mfu"] = row["tflops"] / ceiling["tflops"]
    hw = flops.Hardware("measured", ceiling["tflops"] * 1e12, ceiling["gbs"] * 1e9)
    fl = flops.floor(name, shape, hw)
    row.update(floor_tok_s=fl.tokens_per_s, of_floor=row["tok_s"] / fl.tokens_per_s, bound=fl.bound)
    notes = [] if name == "baseline" else ["build" if source == "nldsl.build" else source]
    if not math.isfinite(row["loss"]):
        notes.append("loss not finite")
    row["note"] = "; ".join(notes)
    return row


def profile_step(fn, device, log: bu.Log, label: str, step_ms: float) -> dict:
    """One step under the torch profiler: kernel launches, GPU busy time (sum of kernel durations) as a share of
    the timed step (a small share means launch / host bound), and the kernels that take the most time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        bu.sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    per_name: dict[str, float] = {}
    for e in kernels:
        per_name[e.name] = per_name.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3
    busy = sum(per_name.values())
    log(f"[profile] {label}: {len(kernels)} kernels, GPU busy {busy:.1f} ms of a {step_ms:.1f} ms step")
    for kernel, ms in sorted(per_name.items(), key=lambda kv: -kv[1])[:16]:
        log(f"[profile]   {ms:9.2f} ms  {kernel[:110]}")
    ops = []  # the operators that launched them (self GPU time), to tell what in the model costs
    for avg in prof.key_averages():
        self_us = getattr(avg, "self_device_time_total", None) or getattr(avg, "self_cuda_time_total", 0.0)
        if self_us and avg.key.startswith(("aten::", "Torch-Compiled", "CompiledFunction", "_Scan")):
            ops.append((self_us / 1e3, avg.count, avg.key))
    for ms, count, key in sorted(ops, reverse=True)[:10]:
        log(f"[profile]   op {ms:9.2f} ms  x{count:<6d} {key[:90]}")
    return {"kernels": len(kernels), "busy": busy / step_ms if kernels else None}


def run_rows(kind: str, plan: list, measure, args, log: bu.Log) -> list[dict]:
    """Measure every planned row within ``--budget-s``; failures become rows with a note."""
    rows, deadline = [], time.perf_counter() + args.budget_s
    for i, (name, *rest) in enumerate(plan):
        left = deadline - time.perf_counter()
        share = left / (len(plan) - i)
        base = {"model": lm.LABELS[name], "key": name, **dict(zip(("seq", "batch"), rest))}
        if left < (1.0 if args.smoke else MIN_ROW_S):
            rows.append({**base, "note": "skipped: budget"})
            log(f"[{kind}] {name} {rest}: skipped (budget)")
            continue
        try:
            with bu.time_limit(None if args.smoke else max(3 * share, 60.0)):
                row = measure(name, *rest, share)
        except Exception as exc:  # noqa: BLE001 - a failing row is reported, the table goes on
            row = {**base, "note": bu.short_error(exc)}
        rows.append(row)
        log(f"[{kind}] " + " ".join(f"{k}={bu.fmt(v)}" for k, v in row.items()))
        bu.write_out(args.out, f"{kind}_partial", {"rows": rows}, log)  # survives a killed command
        torch._dynamo.reset()
        bu.release()
    return rows


def add_ratios(rows: list[dict], key: str, group: str) -> None:
    """Ratio of ``key`` to the baseline row of the same ``group`` (seq or batch)."""
    base = {r[group]: r[key] for r in rows if r.get("key") == "baseline" and r.get(key)}
    for r in rows:
        if r.get(key) and r.get(group) in base:
            r["ratio"] = r[key] / base[r[group]]


def train_table(args, device, size: lm.Size, ceiling: dict, log: bu.Log) -> list[dict]:
    order = sorted(args.models, key=lm.MODEL_NAMES.index)
    plan = [(m, seq, batch) for seq, batch in args.shapes for m in order]

    def measure(name, seq, batch, share):
        return train_row(name, seq, batch, size, args, device, share, ceiling)

    rows = run_rows("train", plan, measure, args, log)
    add_ratios(rows, "tok_s", "seq")
    return rows


# ----------------------------------------------------------------------------------- generation
def gen_model(name: str, size: lm.Size, args, device, batch: int):
    """``(model, task_levels, source)`` for decoding: nldsl.build's eager model when allowed, else lm.py's."""
    if use_build(name, args):
        try:
            from nldsl.build import build

            compiled = build(lm.EXAMPLES[name], device=str(device), compile=False, overrides={"train.batch": batch})
            return compiled.model, compiled.task_levels, "nldsl.build"
        except Exception as exc:  # noqa: BLE001
            if args.source == "build":
                raise
            source = "lm.py" if isinstance(exc, ImportError) else f"lm.py ({bu.short_error(exc, 60)})"
    else:
        source = "lm.py"
    return lm.build_model(name, size, device), False, source


def gen_row(name: str, batch: int, size: lm.Size, args, device) -> dict:
    """Prefill (as ``nldsl generate`` reads a prompt: task levels adapt from its surprise), then greedy decoding
    one token per call with the carried state (the baseline: its KV cache)."""
    row = {"model": lm.LABELS[name], "key": name, "batch": batch}
    torch.manual_seed(0)
    bu.reset_peak(device)
    model, task, source = gen_model(name, size, args, device, batch)
    model.eval()
    fn = lm.lm_step_fn(model, name)
    prompt = torch.randint(0, size.vocab, (batch, args.prompt), device=device)
    cuda = device.type == "cuda"

    def prefill(tokens):
        if task:
            from nldsl.build import prompt_state

            return prompt_state(model, tokens, None, True)
        with torch.no_grad():
            return fn(tokens, None)

    def decode(state, token, n):
        with torch.no_grad():
            for _ in range(n):
                logits, state = fn(token, state)
                token = logits[:, -1:].argmax(-1)
        return state, token

    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda), sdpa_backends(args.sdpa):
        # warm-up at the timed prompt's own shape: kernels specialised on the length (the fused scan's chunk
        # count, compiled graphs) are built here, not in the timed prefill
        logits, state = prefill(prompt)
        decode(state, logits[:, -1:].argmax(-1), 4)
        result = []
        prefill_ms = bu.time_ms(lambda: result.append(prefill(prompt)), device)[0]
        logits, state = result[0]
        token = logits[:, -1:].argmax(-1)
        ms = bu.time_ms(lambda: decode(state, token, args.new_tokens), device)[0]
        if args.profile and cuda:  # what a token costs: launches (host bound?) or a slow kernel
            label = f"{name} decode B {batch} ({PROFILED_TOKENS} tokens)"
            prof = profile_step(lambda: decode(state, token, PROFILED_TOKENS), device, args.log, label,
                                PROFILED_TOKENS * ms / args.new_tokens)
            row.update(kernels=prof["kernels"] // PROFILED_TOKENS, busy=prof["busy"])
    notes = ["KV cache" if name in ("baseline", "transformer") else "in-context state"]
    if args.sdpa != "default":
        notes.append(f"sdpa {args.sdpa}")
    if task:
        notes.append("prefill adapts task levels")
    if name != "baseline":
        notes.append("build" if source == "nldsl.build" else source)
    row.update(prefill_tok_s=batch * args.prompt / (prefill_ms * 1e-3), ms_per_token=ms / args.new_tokens,
               decode_tok_s=batch * args.new_tokens / (ms * 1e-3), peak_gib=bu.peak_gib(device),
               note="; ".join(notes))
    return row


def sdpa_backends(choice: str):
    """The SDPA backends of ``--sdpa`` as a context (nothing changed for ``default``)."""
    if choice == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def gen_table(args, device, size: lm.Size, log: bu.Log) -> list[dict]:
    order = sorted(args.models, key=lm.MODEL_NAMES.index)
    plan = [(m, b) for b in args.gen_batches for m in order]

    def measure(name, batch, share):
        return gen_row(name, batch, size, args, device)

    rows = run_rows("generate", plan, measure, args, log)
    add_ratios(rows, "decode_tok_s", "batch")
    return rows


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    log = args.log = bu.Log()
    if args.smoke:
        torch.set_num_threads(1)  # toy sizes: threads only add OpenMP barriers (40x slower on a busy box)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    size = lm.TOY if args.smoke else lm.PAPER
    info = bu.device_info(device)
    log("device:", " ".join(f"{k}={v}" for k, v in info.items()))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for limit in ("recompile_limit", "cache_size_limit"):  # chunk mode: a few graphs per rule, stride, shape
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, max(64, getattr(torch._dynamo.config, limit)))
    ceiling = {"tflops": bu.matmul_tflops(device), "gbs": bu.copy_gbs(device)}
    log(f"ceilings: matmul {ceiling['tflops']:.1f} TFLOP/s, copy {ceiling['gbs']:.0f} GB/s")
    t0 = time.perf_counter()
    if args.generate:
        rows, columns, title = gen_table(args, device, size, log), GEN_COLUMNS, "decode throughput"
        title += f" (prompt {args.prompt}, {args.new_tokens} new tokens, greedy, eager, bf16)"
    else:
        rows, columns, title = train_table(args, device, size, ceiling, log), TRAIN_COLUMNS, "training step"
        title += " (fwd + in-context updates + bwd + fused AdamW, bf16 autocast)"
    kept = {k: v for k, v in vars(args).items() if k not in ("shapes", "log")}
    payload = {"info": info, "ceiling": ceiling, "args": kept,
               "rows": rows, "seconds": time.perf_counter() - t0}
    log("")
    log(f"== {title} on {info['gpu']}, torch {info['torch']}; "
        f"ceilings {ceiling['tflops']:.0f} TFLOP/s, {ceiling['gbs']:.0f} GB/s; {payload['seconds']:.0f} s")
    log(bu.render_table(rows, columns))
    bu.write_out(args.out, "generate" if args.generate else "throughput", payload, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
