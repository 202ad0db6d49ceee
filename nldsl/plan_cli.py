"""``nldsl plan FILE``: print the Plan (plain-text tables, or ``--json``) of a checked spec.

``--set key=value`` applies overrides first (``nldsl.overrides``); ``--runtime`` also lowers the plan on
PyTorch's meta device (no memory is allocated) and prints what the runtime runs approximately (NL502) or
cannot run (NL501). Registered in ``nldsl.cli.REGISTRARS`` with ``plan_cli.register``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_OK, EXIT_ERRORS = 0, 1


def register(sub: Any) -> None:
    """Add the ``plan`` subcommand to an argparse subparsers object."""
    p = sub.add_parser("plan", help="print the compiled plan: components, levels, optimizers, schedule",
                       description="Print the Plan of a .nl file: every component with its resolved config and "
                       "source line, the levels and their update rules, the outer optimizers with the parameter "
                       "groups they own, the train settings and the update schedule.")
    p.add_argument("file", help="the .nl file")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a constant or setting before planning (repeatable)")
    p.add_argument("--runtime", action="store_true",
                   help="also lower the plan (on the meta device) and report what the runtime cannot run exactly")
    p.add_argument("-o", "--output", help="write to this file instead of stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from nldsl.errors import NLError
    from nldsl.overrides import OverrideError, load_with_overrides
    from nldsl.plan import plan
    from nldsl.source import render

    try:
        spec, source = load_with_overrides(args.file, args.set)
        p = plan(spec)
        notes = _runtime_notes(p) if args.runtime else []
    except NLError as err:
        sources = {source.path: source} if "source" in locals() else None
        for diag in err.diagnostics:
            print(render(diag, sources), file=sys.stderr)
        return EXIT_ERRORS
    except (OverrideError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERRORS
    text = p.to_json() + "\n" if args.json else p.render()
    if notes:
        text += "\nruntime notes\n" + "\n".join(render(d, {source.path: source}) for d in notes) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _runtime_notes(p) -> list:
    """Lower without allocating (meta device): NL501 errors raise, NL502 approximations are returned."""
    import torch

    from nldsl.lower import lower

    with torch.device("meta"):
        return list(lower(p, device="meta").notes.items)
