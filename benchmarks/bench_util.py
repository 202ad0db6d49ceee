"""Measuring helpers shared by gpu_check.py and throughput.py (METHOD.md: events, warm-up, medians, ceilings).

Everything works on CPU too (host clock, tiny sizes), so the scripts' ``--smoke`` runs in CI.
"""
from __future__ import annotations

import contextlib
import gc
import json
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int = 1) -> list[float]:
    """Milliseconds of each of ``reps`` calls: CUDA events around each call (host clock on CPU)."""
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synchronised (for warm-ups that include compilation)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- memory
def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def short_error(exc: BaseException, limit: int = 90) -> str:
    kind = "OOM" if is_oom(exc) else type(exc).__name__
    text = " ".join(str(exc).split())
    return f"{kind}: {text}"[:limit]


# -------------------------------------------------------------------------------------- ceilings
def device_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda)
    else:
        info["gpu"] = "none (CPU)"
    return info


def copy_gbs(device: torch.device, nbytes: int | None = None, reps: int = 20) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written (median of ``reps``)."""
    nbytes = nbytes or (2 * 2**30 if device.type == "cuda" else 2**24)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    time_ms(lambda: dst.copy_(src), device, 3)
    ms = median(time_ms(lambda: dst.copy_(src), device, reps))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def matmul_tflops(device: torch.device, n: int | None = None, reps: int = 20) -> float:
    """Dense matmul rate on random data: bf16 ``n^3`` (8192) on CUDA, fp32 256^3 on CPU."""
    n = n or (8192 if device.type == "cuda" else 256)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    time_ms(lambda: a @ b, device, 3)
    ms = median(time_ms(lambda: a @ b, device, reps))
    return 2 * n**3 / (ms * 1e-3) / 1e12


# ------------------------------------------------------------------------------------- reporting
def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else format(value, spec)
    return str(value)


def render_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec); a missing key prints ``-``. Plain fixed-width text."""
    cells = [[h for _, h, _ in columns]] + [[fmt(r.get(k), s) for k, _, s in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Log:
    """Print and keep every line, so ``--out`` can write the full log next to the JSON."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, *parts) -> None:
        line = " ".join(str(p) for p in parts)
        self.lines.append(line)
        print(line, flush=True)


def write_out(out: str | None, name: str, payload: dict, log: Log) -> None:
    if not out:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (folder / f"{name}.log").write_text("\n".join(log.lines) + "\n")


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (Unix; a no-op elsewhere or when None)."""
    if not seconds or not hasattr(signal, "SIGALRM") or sys.platform == "win32":
        yield
        return

    def _raise(signum, frame):
        raise TimeoutError(f"time limit of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def release() -> None:
    """Return cached device memory between rows (callers drop their own references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
