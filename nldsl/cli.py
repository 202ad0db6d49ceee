"""``nldsl``: the command line (argparse). Front-end commands: check, graph, ladder, explain, fmt, spec, schema.

Adding a command is one function decorated with ``@command(...)`` (its arguments in the decorator);
a module with its own commands plugs in with one line in ``REGISTRARS`` (a ``register(subparsers)``
function, e.g. ``nldsl.run_cli.register``).

Nothing a user types produces a Python traceback. Exit codes:

====  ==========================================================================================
0     success (``check``: no errors; warnings only fail with ``--strict``)
1     the input has errors (diagnostics printed), ``fmt --check`` found a file to reformat
2     bad command line (argparse)
70    internal error: a bug in nldsl (``NLDSL_DEBUG=1`` shows the traceback)
130   interrupted (Ctrl-C); 141: the output pipe was closed (``| head``)
====  ==========================================================================================
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 70, 130, 141
Command = Callable[[argparse.Namespace], int]
_COMMANDS: list[tuple[str, str, tuple, Command]] = []


def arg(*flags: str, **kwargs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    """One ``add_argument`` call, for ``@command``."""
    return flags, kwargs


def command(name: str, help: str, *arguments: tuple) -> Callable[[Command], Command]:
    """Register ``fn(args) -> exit code`` as the subcommand ``name`` with the given ``arg(...)``s."""
    def deco(fn: Command) -> Command:
        _COMMANDS.append((name, help, arguments, fn))
        return fn
    return deco


def _register_front_end(sub: Any) -> None:
    for name, help, arguments, fn in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(func=fn)


def _register_back_end(sub: Any) -> None:
    from nldsl import plan_cli, run_cli

    plan_cli.register(sub)
    run_cli.register(sub)


REGISTRARS: list[Callable[[Any], None]] = [_register_front_end, _register_back_end]
"""Functions that add subcommands to the parser (one line per module that brings its own)."""


def build_parser() -> argparse.ArgumentParser:
    from nldsl import __version__

    parser = argparse.ArgumentParser(prog="nldsl", description="A declarative compiler for Nested Learning: "
                                     ".nl level hierarchies -> checked specs, level graphs and training.")
    parser.add_argument("--version", action="version", version=f"nldsl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nldsl`` script: run one subcommand and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, bad flags
        return int(exit_.code or 0) if isinstance(exit_.code, int) or exit_.code is None else EXIT_USAGE
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except KeyboardInterrupt:
        print("nldsl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: short message, traceback on request
        if os.environ.get("NLDSL_DEBUG") == "1":
            traceback.print_exc()
        else:
            print(f"nldsl: internal error ({type(err).__name__}: {err}); this is a bug in nldsl, please report "
                  f"it (NLDSL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------- helpers


def _color(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ


def print_diagnostics(diags, stream=None, sources=None) -> None:
    """Render diagnostics (source line, caret, hint), one blank line apart (``nldsl.diagnostics``)."""
    from nldsl.diagnostics import print_diagnostics as _print

    stream = stream or sys.stdout
    _print(diags, stream, sources, color=_color(stream))


def load_checked(path: str, stream=None):
    """Load and check one file for the drawing commands: ``(graph, diagnostics)``, graph ``None`` on errors."""
    from nldsl.checks import check, with_partial_checks
    from nldsl.errors import NLError
    from nldsl.graph import build_graph
    from nldsl.spec import load

    try:
        spec = load(Path(path))
    except NLError as err:
        return None, with_partial_checks(err)
    graph = build_graph(spec)
    diags = check(graph)
    return (None if any(d.is_error for d in diags) else graph), diags


def _summary(diags, files: int) -> str:
    errors = sum(d.severity.value == "error" for d in diags)
    warnings = sum(d.severity.value == "warning" for d in diags)
    if not errors and not warnings:
        return f"checked {files} file{'s' if files != 1 else ''}: no problems"
    parts = [f"{errors} error{'s' if errors != 1 else ''}"] if errors else []
    parts += [f"{warnings} warning{'s' if warnings != 1 else ''}"] if warnings else []
    return f"{', '.join(parts)} in {files} file{'s' if files != 1 else ''}"


def _graph_or_fail(args: argparse.Namespace):
    graph, diags = load_checked(args.file)
    shown = [d for d in diags if d.is_error] if graph is None else diags
    print_diagnostics(shown, sys.stderr)
    return graph


# ---------------------------------------------------------------------------------------------- commands

_FILE = arg("file", metavar="FILE", help="a .nl file")


@command("check", "parse, build and check .nl files; print every diagnostic",
         arg("files", nargs="+", metavar="FILE", help=".nl files"),
         arg("--strict", action="store_true", help="warnings fail too (exit 1)"),
         arg("-q", "--quiet", action="store_true", help="no summary line"))
def cmd_check(args: argparse.Namespace) -> int:
    from nldsl.checks import check
    from nldsl.source import has_errors

    everything = []
    for path in args.files:
        diags = check(Path(path))
        print_diagnostics(diags)
        everything += diags
    if not args.quiet:
        print(_summary(everything, len(args.files)))
    return EXIT_ERRORS if has_errors(everything, strict=args.strict) else EXIT_OK


@command("graph", "draw the level graph (graphviz): components by block, levels ordered by frequency",
         _FILE, arg("-o", "--output", metavar="OUT", help="out.svg, out.png, out.pdf or out.dot (default: DOT on stdout)"))
def cmd_graph(args: argparse.Namespace) -> int:
    from nldsl.viz import level_graph_dot, render_graph

    graph = _graph_or_fail(args)
    if graph is None:
        return EXIT_ERRORS
    if not args.output:
        sys.stdout.write(level_graph_dot(graph).source)
        return EXIT_OK
    return _write(lambda: render_graph(graph, args.output), args.output)


@command("ladder", "draw the frequency ladder: which level updates when, for the first N tokens",
         _FILE, arg("-o", "--output", metavar="OUT", required=True, help="out.png, out.svg or out.pdf"),
         arg("--tokens", type=int, metavar="N", help="tokens to show (default: enough for the slowest level)"),
         arg("--steps", type=int, metavar="N", help="outer steps to show instead (N x seq x accumulate tokens)"))
def cmd_ladder(args: argparse.Namespace) -> int:
    from nldsl.viz import MAX_LADDER_TOKENS, render_ladder

    if args.tokens is not None and args.steps is not None:
        print("nldsl ladder: give --tokens or --steps, not both", file=sys.stderr)
        return EXIT_USAGE
    for flag, value in (("--tokens", args.tokens), ("--steps", args.steps)):
        if value is not None and not 1 <= value <= MAX_LADDER_TOKENS:
            print(f"nldsl ladder: {flag} must be between 1 and {MAX_LADDER_TOKENS}", file=sys.stderr)
            return EXIT_USAGE
    graph = _graph_or_fail(args)
    if graph is None:
        return EXIT_ERRORS
    tokens = args.tokens
    if args.steps is not None:
        tokens = args.steps * max(1, graph.train_int("seq") or 1) * max(1, graph.train_int("accumulate") or 1)
        if tokens > MAX_LADDER_TOKENS:
            print(f"nldsl ladder: {args.steps} steps are {tokens} tokens, more than the {MAX_LADDER_TOKENS} a "
                  f"ladder shows", file=sys.stderr)
            return EXIT_USAGE
    return _write(lambda: render_ladder(graph, args.output, tokens), args.output)


def _write(make: Callable[[], Path], out: str) -> int:
    try:
        path = make()
    except ValueError as err:  # unsupported extension
        print(f"nldsl: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"nldsl: cannot write '{out}': {err.strerror or err}", file=sys.stderr)
        return EXIT_ERRORS
    except RuntimeError as err:  # graphviz: `dot` missing or failing (ExecutableNotFound, CalledProcessError)
        print(f"nldsl: cannot draw '{out}': {err}", file=sys.stderr)
        return EXIT_ERRORS
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


@command("explain", "print the level table: level, frequency, period, size, context, objective, optimizer",
         _FILE, arg("--width", type=int, default=None, metavar="COLS", help="table width (default: the terminal's)"))
def cmd_explain(args: argparse.Namespace) -> int:
    from nldsl.explain import explain_text

    graph = _graph_or_fail(args)
    if graph is None:
        return EXIT_ERRORS
    width = args.width or (os.get_terminal_size().columns if sys.stdout.isatty() else 160)
    sys.stdout.write(explain_text(graph, width=max(60, min(width, 400)), color=_color(sys.stdout)))
    return EXIT_OK


@command("fmt", "format .nl files in place (canonical layout, comments kept); '-' formats stdin to stdout",
         arg("files", nargs="+", metavar="FILE"),
         arg("--check", action="store_true", help="only report files that would change (exit 1 if any)"))
def cmd_fmt(args: argparse.Namespace) -> int:
    results = [_fmt_one(path, args.check) for path in args.files]
    if args.files != ["-"]:
        print(_fmt_summary(results, args.check), file=sys.stderr)
    return EXIT_ERRORS if any(r in ("error", "would") for r in results) else EXIT_OK


def _fmt_summary(results: list[str], check_only: bool) -> str:
    """Like black: ``1 file reformatted, 2 files left unchanged, 1 file failed``."""
    def files(n: int) -> str:
        return f"{n} file{'s' if n != 1 else ''}"
    changed = results.count("would") + results.count("done")
    parts = [f"{files(changed)} {'would be reformatted' if check_only else 'reformatted'}"] if changed else []
    same = results.count("same")
    parts += [f"{files(same)} {'would be left' if check_only else 'left'} unchanged"] if same else []
    parts += [f"{files(results.count('error'))} failed"] if "error" in results else []
    return ", ".join(parts)


def _read_stdin() -> str:
    """Standard input as UTF-8 (invalid bytes become U+FFFD, reported as NL104 like a binary file)."""
    buffer = getattr(sys.stdin, "buffer", None)
    return buffer.read().decode("utf-8", errors="replace") if buffer is not None else sys.stdin.read()


def _fmt_one(path: str, check_only: bool) -> str:
    """Format one file: ``same``, ``done``, ``would`` (``--check``) or ``error``."""
    from nldsl.errors import NLError
    from nldsl.fmt import fmt
    from nldsl.source import Source
    from nldsl.spec.resolve import read_source

    source = None
    try:
        source = Source(path="<stdin>", text=_read_stdin()) if path == "-" else read_source(path)
        text = fmt(source)
    except NLError as err:
        print_diagnostics(err.diagnostics, sys.stderr, {source.path: source} if source is not None else None)
        return "error"
    if path == "-" and not check_only:
        sys.stdout.write(text)
        return "same"
    if text == source.text:
        return "same"
    if check_only:
        print(f"would reformat {source.path if path == '-' else path}", file=sys.stderr)
        return "would"
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as err:
        print(f"nldsl fmt: cannot write '{path}': {err.strerror or err}", file=sys.stderr)
        return "error"
    return "done"


@command("spec", "print the typed spec of a .nl file as JSON (imports resolved, constants evaluated)",
         _FILE, arg("--json", action="store_true", help="JSON output (the only format; accepted for clarity)"),
         arg("--no-spans", action="store_true", help="leave out source spans"))
def cmd_spec(args: argparse.Namespace) -> int:
    from nldsl.errors import NLError
    from nldsl.spec import load
    from nldsl.spec.export import to_json

    try:
        spec = load(Path(args.file))
    except NLError as err:
        print_diagnostics(err.diagnostics, sys.stderr)
        return EXIT_ERRORS
    sys.stdout.write(to_json(spec, spans=not args.no_spans))
    return EXIT_OK


@command("schema", "print the JSON Schema of the spec")
def cmd_schema(args: argparse.Namespace) -> int:
    from nldsl.spec.export import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
