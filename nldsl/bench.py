"""`nldsl bench`: training throughput of a compiled spec next to a hand-written Transformer++, one process.

Both models get the same batch shape (``--batch`` x ``--seq``), the same width, depth, head count and
vocabulary (read off the Plan), random token batches from one seeded generator, ``--warmup`` untimed steps
(compilation happens there) and ``--steps`` timed ones. Reported per model: parameters, tokens/s, mean
step time, peak CUDA memory (allocated; not measured on CPU), the last loss, and tokens/s as a share of
the baseline's. The baseline is ``benchmarks/baseline.py`` (RMSNorm, RoPE, SDPA, SwiGLU, torch.compile,
fused AdamW under bf16 autocast on CUDA), imported from the source tree.
"""
from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from nldsl.nn.fused_memory import scan_routes
from nldsl.runs import RunError, load_spec, resolve_device, train_settings

BASELINE_FILE = Path(__file__).resolve().parent.parent / "benchmarks" / "baseline.py"


@dataclass
class BenchRow:
    model: str
    params: int
    tokens_per_s: float
    step_ms: float
    peak_mem_gb: float | None
    loss: float
    ratio: float | None = None
    """tokens/s relative to the baseline (None for the baseline itself or when it did not run)."""


@dataclass
class BenchResult:
    device: str
    batch: int
    seq: int
    steps: int
    rows: list[BenchRow] = field(default_factory=list)
    scans: dict[str, str] = field(default_factory=dict)
    """How each in-context memory ran its chunks (``fused_memory.scan_routes``): the fused Triton scan, or the
    torch chunk loop and why, so a slow row says which memory to change."""

    def scan_lines(self) -> list[str]:
        """``name: route`` per memory, memories with the same route folded into one line."""
        by_route: dict[str, list[str]] = {}
        for name, route in self.scans.items():
            by_route.setdefault(route, []).append(name)
        return [f"{names[0]}{f' (+{len(names) - 1} more)' if len(names) > 1 else ''}: {route}"
                for route, names in by_route.items()]

    def table(self, title: str | None = None) -> Any:
        from rich.table import Table

        title = title or f"bench on {self.device}: batch {self.batch} x seq {self.seq}, {self.steps} timed steps"
        table = Table(title=title)
        for col in ("model", "params", "tokens/s", "step (ms)", "peak mem (GB)", "loss", "vs baseline"):
            table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for r in self.rows:
            table.add_row(r.model, f"{r.params / 1e6:.2f}M", f"{r.tokens_per_s:,.0f}", f"{r.step_ms:.1f}",
                          "-" if r.peak_mem_gb is None else f"{r.peak_mem_gb:.2f}", f"{r.loss:.4f}",
                          "-" if r.ratio is None else f"{100 * r.ratio:.1f}%")
        return table


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[torch.Tensor], Any], batches: Sequence[torch.Tensor], *, warmup: int,
               device: torch.device) -> tuple[float, float, float | None]:
    """Run ``warmup`` untimed then the remaining timed steps; returns (seconds/step, last loss, peak GB)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    loss = float("nan")
    for batch in batches[:warmup]:
        loss = _loss(step(batch))
    _sync(device)
    t0 = time.perf_counter()
    for batch in batches[warmup:]:
        out = step(batch)
    _sync(device)
    elapsed = time.perf_counter() - t0
    loss = _loss(out) if len(batches) > warmup else loss
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return elapsed / max(len(batches) - warmup, 1), loss, peak


def _loss(out: Any) -> float:
    value = out["loss"] if isinstance(out, dict) else out
    return float(value.detach().float()) if isinstance(value, torch.Tensor) else float(value)


def load_baseline() -> Any:
    """benchmarks/baseline.py as a module (it is not part of the installed package)."""
    if not BASELINE_FILE.is_file():
        raise RunError(f"the baseline {BASELINE_FILE} is not here (it ships with the source tree, not the wheel); "
                       "use --no-baseline")
    name = "nldsl_bench_baseline"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BASELINE_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def model_size(plan: Any) -> dict[str, Any]:
    """Width, depth, heads, vocab and embedding tying of a planned model, for a baseline of the same size."""
    heads = next((int(c.get("heads")) for c in plan.components if c.get("heads") and c.parent is None
                  and c.kind in ("attention", "neural_memory", "self_modifying_titans")), None)
    dim = int(plan.model.dim)
    return {"dim": dim, "layers": max(int(plan.model.layers), 1), "heads": heads or max(dim // 64, 1),
            "vocab": int(plan.model.vocab or 256), "tie_embeddings": bool(plan.model.tie_embeddings)}


def baseline_row(size: dict[str, Any], batches: Sequence[torch.Tensor], *, warmup: int, device: torch.device,
                 compile: bool, lr: float = 3e-4) -> BenchRow:
    """Time benchmarks/baseline.py's Transformer++ at ``size`` on the same batches."""
    base = load_baseline()
    torch.manual_seed(0)
    model = base.BaselineLM(base.BaselineConfig(**size)).to(device)
    step, _ = base.make_train_step(model, lr=lr, compile=compile)
    sec, loss, peak = time_steps(step, batches, warmup=warmup, device=device)
    tokens = batches[0].shape[0] * (batches[0].shape[1] - 1)
    params = sum(p.numel() for p in model.parameters())
    return BenchRow("Transformer++ (hand-written)", params, tokens / sec, 1000 * sec, peak, loss)


def bench_file(file: str | Path, *, device: str | None = None, steps: int = 20, seq: int | None = None,
               batch: int | None = None, overrides: Sequence[str] = (), compile: bool = True, baseline: bool = True,
               warmup: int = 3) -> BenchResult:
    """``nldsl bench``: the compiled model of ``file`` and (``baseline``) the hand-written one, same size."""
    from nldsl.build import build

    if steps < 1 or warmup < 0:
        raise RunError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    extra = [f"seq={seq}"] * (seq is not None) + [f"batch={batch}"] * (batch is not None)
    spec, _, _ = load_spec(file, [*overrides, *extra])
    s = train_settings(spec)
    dev = resolve_device(device, s)
    torch.manual_seed(s.seed)
    compiled = build(spec, device=str(dev), compile=None if compile else False)
    size = model_size(compiled.plan)
    gen = torch.Generator().manual_seed(s.seed)
    batches = [torch.randint(0, size["vocab"], (s.batch, s.seq + 1), generator=gen).to(dev)  # (B, T+1)
               for _ in range(warmup + steps)]
    sec, loss, peak = time_steps(compiled.train_step, batches, warmup=warmup, device=dev)
    params = sum(p.numel() for p in compiled.model.parameters())
    result = BenchResult(device_name(dev), s.batch, s.seq, steps)
    result.scans = scan_routes(compiled.model, dev, compiled.autocast or next(compiled.model.parameters()).dtype)
    result.rows.append(BenchRow(f"{spec.model.name} (nldsl)", params, s.batch * s.seq / sec, 1000 * sec, peak, loss))
    if baseline:
        del compiled
        base = baseline_row(size, batches, warmup=warmup, device=dev, compile=compile)
        result.rows.append(base)
        result.rows[0].ratio = result.rows[0].tokens_per_s / base.tokens_per_s
    return result
