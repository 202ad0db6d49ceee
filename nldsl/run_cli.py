"""The `nldsl` subcommands that run models: ``train``, ``eval``, ``generate``, ``codegen``, ``bench``.

``register(subparsers)`` adds all five to the main parser of ``nldsl.cli`` (one line there); each command
is one function ``cmd_X(args) -> exit code``. User mistakes (a spec with errors, missing data, a
checkpoint from another spec or a corrupt one, a CUDA request without a GPU, a bad ``--set``) print one
clear message and exit non-zero, never a traceback:

======  ==============================================================================
0       done
1       a user mistake (message printed), or a diverged run (non-finite loss)
130     interrupted by Ctrl-C (a checkpoint was saved first)
======  ==============================================================================
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Console

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130

_USER_ERRORS: tuple[type[BaseException], ...] | None = None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the user asked for something that cannot work" (imported lazily)."""
    global _USER_ERRORS
    if _USER_ERRORS is None:
        from nldsl.checkpoint import CheckpointError
        from nldsl.datasets import DataError
        from nldsl.errors import NLError
        from nldsl.overrides import OverrideError
        from nldsl.runs import RunError
        from nldsl.tokenizer import TokenizerError

        _USER_ERRORS = (NLError, RunError, DataError, CheckpointError, OverrideError, TokenizerError,
                        FileNotFoundError)
    return _USER_ERRORS


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def report(exc: BaseException, console: Console | None = None) -> None:
    """Print a user error: diagnostics rendered with their source lines, anything else as one line."""
    from nldsl.errors import NLError
    from nldsl.runs import SpecInvalid
    from nldsl.source import render

    console = console or err_console()
    if isinstance(exc, SpecInvalid):
        for diag in exc.diagnostics:
            console.print(render(diag, {exc.source.path: exc.source}), markup=False)
        if exc.overrides:
            console.print(f"(with --set {' '.join(str(o) for o in exc.overrides)})", markup=False)
        return
    if isinstance(exc, NLError):
        for diag in exc.diagnostics:
            console.print(render(diag), markup=False)
        return
    text = str(exc.args[0]) if isinstance(exc, FileNotFoundError) and exc.args else str(exc)
    console.print(f"error: {text}", markup=False)


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command; user errors become a message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except _user_errors() as exc:
            report(exc)
            return EXIT_ERROR
        except KeyboardInterrupt:
            err_console().print("interrupted", markup=False)
            return EXIT_INTERRUPTED

    return wrapper


def _console(args: argparse.Namespace) -> Console:
    """stdout; off a terminal (logs, pipes) at least 120 columns wide so the tables do not wrap."""
    console = Console(highlight=False)
    return console if console.is_terminal or console.width >= 120 else Console(highlight=False, width=120)


# --------------------------------------------------------------------------- train
@guarded
def cmd_train(args: argparse.Namespace) -> int:
    from nldsl.train import train

    console = _console(args)
    result = train(args.file, steps=args.steps, device=args.device, out=args.out, resume=args.resume,
                   overwrite=args.overwrite, overrides=args.set or (), compile=False if args.no_compile else None,
                   progress=not args.quiet, console=console, tensorboard=not args.no_tensorboard)
    console.print(result.summary.table(title=f"run summary: {result.out}"))
    if result.loss_png is not None:
        console.print(f"loss curve: {result.loss_png}", markup=False)
    if result.status == "diverged":
        err_console().print(f"error: {result.error}", markup=False)
        if result.checkpoint is not None:
            err_console().print(f"the last good checkpoint is {result.checkpoint}", markup=False)
        return EXIT_ERROR
    if result.status == "interrupted":
        console.print(f"interrupted at step {result.step}: checkpoint {result.checkpoint}; "
                      f"continue with: nldsl train {args.file} --out {result.out} --resume", markup=False)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the .nl file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a setting (repeatable): steps=100, D=32, optimizer.lr=1e-3, seq=256, "
                        "data=corpus.txt ... (see docs/cli-train.md)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                   help="where to run (default: the spec's `device`, else cuda when present)")


def _register_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train the model of a .nl file",
                       description="Train the model of a .nl file: progress bar, metrics, evaluation, checkpoints.")
    _add_common(p)
    p.add_argument("--steps", type=int, default=None, help="outer steps (overrides `steps` in the file)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<file stem>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="start over in an --out that holds a run")
    p.add_argument("--no-compile", action="store_true", help="switch torch.compile off")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)


# --------------------------------------------------------------------------- eval
@guarded
def cmd_eval(args: argparse.Namespace) -> int:
    from nldsl.evaluate import evaluate_run

    console = _console(args)
    result = evaluate_run(args.file, args.ckpt, device=args.device, overrides=args.set or (),
                          max_batches=args.batches or None, cloze_items=args.cloze_items, json_path=args.json)
    console.print(result.table())
    console.print(f"written: {result.json_path}", markup=False)
    return EXIT_OK


def _register_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="perplexity, bits per byte and cloze accuracy of a trained run",
                       description="Evaluate a checkpoint on the held-out split of its data.")
    _add_common(p)
    p.add_argument("--ckpt", required=True, help="run folder (--out of nldsl train), or a checkpoint in it")
    p.add_argument("--batches", type=int, default=50, help="validation batches (default 50; 0: the whole split)")
    p.add_argument("--cloze-items", type=int, default=200, help="last-word cloze items (0: skip)")
    p.add_argument("--json", default=None, help="where to write the results (default: <run>/eval.json)")
    p.set_defaults(func=cmd_eval)


# --------------------------------------------------------------------------- generate
@guarded
def cmd_generate(args: argparse.Namespace) -> int:
    from nldsl.generate import generate_run

    result = generate_run(args.file, args.ckpt, args.prompt, tokens=args.tokens, temperature=args.temperature,
                          top_k=args.top_k, seed=args.seed, device=args.device, overrides=args.set or ())
    sys.stdout.write(result.text if args.raw else result.prompt + result.text)
    sys.stdout.write("\n")
    if result.note:
        err_console().print(f"warning: {result.note}", markup=False)
    return EXIT_OK


def _register_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="sample text from a trained run (in-context memories keep learning)",
                       description="Sample a continuation of a prompt; in-context levels keep updating from "
                                   "the model's own context while it writes.")
    _add_common(p)
    p.add_argument("--ckpt", required=True, help="run folder (--out of nldsl train), or a checkpoint in it")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--tokens", type=int, default=200, help="tokens to sample")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    p.add_argument("--raw", action="store_true", help="print only the continuation")
    p.set_defaults(func=cmd_generate)


# --------------------------------------------------------------------------- codegen
@guarded
def cmd_codegen(args: argparse.Namespace) -> int:
    from nldsl.codegen import write_script

    path = write_script(args.file, args.output, overrides=args.set or ())
    Console(highlight=False).print(f"wrote {path}; run it with: python {path}", markup=False)
    return EXIT_OK


def _register_codegen(sub: Any) -> None:
    p = sub.add_parser("codegen", help="write a standalone training script for a .nl file",
                       description="Render the compiled plan as a readable Python training script that trains "
                                   "exactly like `nldsl train`.")
    p.add_argument("file", help="the .nl file")
    p.add_argument("-o", "--output", required=True, help="the script to write (e.g. train_tiny.py)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help="override a setting (repeatable)")
    p.set_defaults(func=cmd_codegen)


# --------------------------------------------------------------------------- bench
@guarded
def cmd_bench(args: argparse.Namespace) -> int:
    from nldsl.bench import bench_file

    console = _console(args)
    result = bench_file(args.file, device=args.device, steps=args.steps, seq=args.seq, batch=args.batch,
                        overrides=args.set or (), compile=not args.no_compile, baseline=not args.no_baseline,
                        warmup=args.warmup)
    console.print(result.table())
    if result.scans:
        console.print("memory scans:")
        for line in result.scan_lines():
            console.print(f"  {line}", markup=False, highlight=False)
    return EXIT_OK


def _register_bench(sub: Any) -> None:
    p = sub.add_parser("bench", help="tokens/s and memory of the compiled model next to a hand-written Transformer++",
                       description="Time training steps of the compiled model and of benchmarks/baseline.py's "
                                   "Transformer++ at the same size, in one process.")
    _add_common(p)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--seq", type=int, default=None, help="sequence length (default: the spec's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the spec's)")
    p.add_argument("--no-compile", action="store_true", help="eager mode for both models")
    p.add_argument("--no-baseline", action="store_true", help="only the compiled model")
    p.set_defaults(func=cmd_bench)


# --------------------------------------------------------------------------- wiring
def register(subparsers: Any) -> None:
    """Add train, eval, generate, codegen and bench to ``nldsl``'s subparsers (``set_defaults(func=...)``)."""
    for add in (_register_train, _register_eval, _register_generate, _register_codegen, _register_bench):
        add(subparsers)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nldsl.run_cli train ...``: these commands without the rest of ``nldsl``."""
    parser = argparse.ArgumentParser(prog="nldsl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
