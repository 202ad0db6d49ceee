"""`make demo` (``python -m nldsl.demo``): the tour of nldsl, on a laptop CPU in a few minutes.

1. check ``examples/hope.nl`` (every diagnostic, located);
2. draw its level graph and frequency ladder into ``out/demo/`` (SVG + PNG);
3. explain it (the level table: one row per level, fastest first);
4. train ``examples/tiny.nl`` (a toy HOPE with every mechanism switched on) for a short run on the CPU,
   with the same progress bar, metrics, evaluation and checkpoints as ``nldsl train``;
5. show where the loss curve is and sample a continuation from the trained model, its in-context
   memories updating while it writes.

Options: ``--steps`` (default 300), ``--time-limit`` seconds for the training part (default 120: the
run stops cleanly, with a checkpoint, when it is reached), ``--out`` (default ``out/demo``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.rule import Rule

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PROMPT = "HAMLET.\nTo be, or not to be"


def _step(console: Console, title: str) -> None:
    console.print(Rule(f"[bold]{title}"))


def check_and_draw(console: Console, spec_file: Path, out: Path) -> bool:
    """Steps 1-3 on one file; False when it has errors (the demo stops there)."""
    import nldsl
    from nldsl.explain import explain_table
    from nldsl.source import render

    _step(console, f"1. nldsl check {spec_file.name}")
    graph = nldsl.graph(nldsl.load(spec_file))
    diags = nldsl.check(graph)
    for diag in diags:
        console.print(render(diag), markup=False)
    errors = sum(d.is_error for d in diags)
    console.print(f"{errors} errors, {len(diags) - errors} warnings", highlight=False)
    if errors:
        return False
    _step(console, f"2. nldsl graph / ladder {spec_file.name} -> {out}/")
    out.mkdir(parents=True, exist_ok=True)
    stem = spec_file.stem
    for path in (nldsl.render_graph(graph, out / f"{stem}_graph.svg"),
                 nldsl.render_graph(graph, out / f"{stem}_graph.png"),
                 nldsl.render_ladder(graph, out / f"{stem}_ladder.svg"),
                 nldsl.render_ladder(graph, out / f"{stem}_ladder.png")):
        console.print(f"wrote {path}", markup=False)
    _step(console, f"3. nldsl explain {spec_file.name}")
    console.print(explain_table(graph))
    return True


def train_and_sample(console: Console, spec_file: Path, out: Path, steps: int, time_limit: float | None) -> int:
    """Steps 4-5: a short training run, then a sample from its last checkpoint."""
    from nldsl.generate import generate_run
    from nldsl.train import train

    run_dir = out / spec_file.stem
    _step(console, f"4. nldsl train {spec_file.name} --steps {steps} --out {run_dir}")
    t0 = time.perf_counter()
    result = train(spec_file, steps=steps, out=run_dir, overwrite=True, console=console, time_limit=time_limit,
                   tensorboard=False)
    console.print(result.summary.table(title=f"run summary ({time.perf_counter() - t0:.0f} s)"))
    if result.status == "diverged":
        console.print(f"training diverged: {result.error}", markup=False)
        return 1
    _step(console, "5. loss curve and a sample")
    console.print(f"loss curve: {result.loss_png}", markup=False)
    gen = generate_run(spec_file, run_dir, PROMPT, tokens=200, temperature=0.8, top_k=40, seed=0)
    console.print(f"nldsl generate {spec_file.name} --ckpt {run_dir} --prompt {PROMPT!r} --tokens 200 --top-k 40",
                  markup=False, style="dim")
    console.print(gen.prompt, style="bold", end="", markup=False, highlight=False)
    console.print(gen.text, markup=False, highlight=False)
    if gen.note:
        console.print(f"({gen.note})", markup=False, style="dim")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nldsl.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/demo", help="where the drawings and the run go")
    parser.add_argument("--steps", type=int, default=300, help="training steps of examples/tiny.nl")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds of training at most (0: no limit)")
    parser.add_argument("--spec", default=str(EXAMPLES / "hope.nl"), help="the spec to check, draw and explain")
    parser.add_argument("--train-spec", default=str(EXAMPLES / "tiny.nl"), help="the spec to train")
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    if not console.is_terminal and console.width < 160:  # logs and pipes: wide enough for the level table
        console = Console(highlight=False, width=160)
    from nldsl.run_cli import _user_errors, report

    try:
        if not check_and_draw(console, Path(args.spec), Path(args.out)):
            return 1
        return train_and_sample(console, Path(args.train_spec), Path(args.out), args.steps, args.time_limit or None)
    except _user_errors() as exc:
        report(exc)
        return 1
    except KeyboardInterrupt:
        console.print("demo interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
