"""`nldsl train` of HOPE, Titans and Transformer++ at one size, next to the hand-written baseline, in one process.

    python benchmarks/train_compare.py [--steps 300] [--seq 2048] [--batch 8] [--dim 768] [--layers 12]
                                       [--heads 12] [--device cuda] [--out runs/compare] [--no-compile]
    python benchmarks/train_compare.py --smoke          # CPU, toy size, a few steps (what CI runs)

Each spec of ``examples/`` (hope.nl, titans.nl, transformer.nl) is trained with ``nldsl.train.train`` exactly
as ``nldsl train`` would, on the shipped text (``builtin:shakespeare``, byte tokenizer so all models share
the vocabulary of 256), with ``--set`` overrides that give all three the same width, depth, heads, batch
and sequence length. HOPE's CMS chunk sizes (64 / 512 / 2048 tokens) are kept when ``--seq`` allows
them and scaled down to fit otherwise. Then ``benchmarks/baseline.py`` (RMSNorm, RoPE, SDPA, SwiGLU,
torch.compile, fused AdamW, bf16 autocast on CUDA) trains on the same batches for the same steps.

Printed per model: parameters, training tokens/s (median over the logged steps, the first compiling ones
included in the run but not in the median's bulk), peak CUDA memory, final train loss (mean of the last 10
steps), tokens/s relative to the baseline, and the GPU's name. ``--json PATH`` also writes the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nldsl.bench import device_name, load_baseline  # noqa: E402
from nldsl.datasets import BatchSampler, load_text, tokenize_split  # noqa: E402
from nldsl.tokenizer import ByteTokenizer  # noqa: E402
from nldsl.train import train  # noqa: E402

SPECS = ("hope", "titans", "transformer")


def overrides(name: str, a: argparse.Namespace) -> list[str]:
    """The --set items that bring one example to the shared size."""
    common = [f"D={a.dim}", f"HEADS={a.heads}", f"layers={a.layers}", f"seq={a.seq}", f"batch={a.batch}",
              "tokenizer=bytes", "vocab=256", "data=builtin:shakespeare", f"eval.every={a.steps}", "eval.batches=4",
              f"checkpoint.every={a.steps}", "checkpoint.keep=1", "schedule=cosine(warmup = 10)",
              f"precision={'bf16' if a.device == 'cuda' else 'fp32'}", f"compile={'off' if a.no_compile else 'on'}"]
    if name == "hope":
        fast, mid, slow = (min(c, a.seq) for c in (64, 512, 2048))
        common += [f"hope.fast={fast}", f"hope.mid={mid}", f"hope.slow={slow}"]
    if name == "titans":
        common += [f"CHUNK={min(64, a.seq)}"]
    return common + list(getattr(a, "set", None) or [])


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def run_spec(name: str, a: argparse.Namespace, device: torch.device) -> dict:
    """``nldsl train examples/NAME.nl`` with the shared overrides; its throughput, memory and loss."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = train(ROOT / "examples" / f"{name}.nl", steps=a.steps, device=device.type, out=Path(a.out) / name,
                   overwrite=True, overrides=overrides(name, a), progress=not a.quiet, tensorboard=False)
    rates = [r["tokens_per_s"] for r in result.rows if r.get("split") == "train"][2:] or [0.0]
    status = result.status if result.error is None else f"{result.status}: {result.error}"
    if result.status != "finished":
        print(f"{name}.nl: {status}", flush=True)
    return {"model": f"{name}.nl (nldsl train)", "params": _param_count(name, a), "tokens_per_s": statistics.median(rates),
            "peak_gb": _peak(device), "final_loss": result.summary.final_train_loss, "status": status,
            "wall_s": time.perf_counter() - t0}


def _param_count(name: str, a: argparse.Namespace) -> int:
    """Parameters of the spec at the shared size (built on the meta device: no memory, no checkpoint needed)."""
    from nldsl.build import build

    sets = dict(item.split("=", 1) for item in overrides(name, a))
    with torch.device("meta"):
        c = build(ROOT / "examples" / f"{name}.nl", device="meta", compile=False, overrides=sets)
    return sum(p.numel() for p in c.model.parameters())


def run_baseline(a: argparse.Namespace, device: torch.device) -> dict:
    """benchmarks/baseline.py's Transformer++ at the same size on the same kind of batches."""
    base = load_baseline()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = base.BaselineLM(base.BaselineConfig(vocab=256, dim=a.dim, layers=a.layers, heads=a.heads,
                                                tie_embeddings=False)).to(device)
    step, _ = base.make_train_step(model, lr=6e-4, compile=not a.no_compile)
    data = tokenize_split(load_text("builtin:shakespeare"), ByteTokenizer())
    sampler = BatchSampler(data.train, a.batch, a.seq, seed=0)
    rates, losses = [], []
    t0 = time.perf_counter()
    for i in range(a.steps):
        batch = next(sampler).to(device)
        start = time.perf_counter()
        loss = float(step(batch))  # reading the loss synchronises
        rates.append(a.batch * a.seq / (time.perf_counter() - start))
        losses.append(loss)
    return {"model": "Transformer++ (hand-written)", "params": sum(p.numel() for p in model.parameters()),
            "tokens_per_s": statistics.median(rates[2:] or rates), "peak_gb": _peak(device),
            "final_loss": sum(losses[-10:]) / len(losses[-10:]), "status": "finished",
            "wall_s": time.perf_counter() - t0}


def table(rows: list[dict], title: str) -> str:
    base = next((r["tokens_per_s"] for r in rows if r["model"].startswith("Transformer++")), None)
    head = f"{'model':32} {'params':>9} {'tokens/s':>11} {'peak GB':>8} {'final loss':>10} {'vs baseline':>11}  status"
    lines = [title, head, "-" * len(head)]
    for r in rows:
        ratio = f"{100 * r['tokens_per_s'] / base:.1f}%" if base else "-"
        peak = "-" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        loss = "-" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
        lines.append(f"{r['model']:32} {r['params'] / 1e6:8.2f}M {r['tokens_per_s']:11,.0f} {peak:>8} {loss:>10} "
                     f"{ratio:>11}  {r['status']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=768, help="model width (a multiple of 3 and of --heads)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--only", nargs="*", choices=SPECS, default=list(SPECS), help="a subset of the specs")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra override for every spec (as nldsl train --set)")
    p.add_argument("--smoke", action="store_true", help="CPU, toy size, 3 steps: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.seq, a.batch, a.dim, a.layers, a.heads = 3, 64, 2, 48, 1, 2
        a.device, a.no_compile, a.quiet = "cpu", True, True
    device = torch.device(a.device)
    rows = [run_spec(name, a, device) for name in a.only]
    rows.append(run_baseline(a, device))
    title = (f"{device_name(device)} | torch {torch.__version__} | {a.steps} steps, batch {a.batch} x seq {a.seq}, "
             f"dim {a.dim}, {a.layers} layers, {a.heads} heads, byte vocab | compile {'off' if a.no_compile else 'on'}")
    print(table(rows, title))
    if a.json:
        Path(a.json).write_text(json.dumps({"title": title, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r["status"] == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
