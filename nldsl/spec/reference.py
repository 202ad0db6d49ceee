"""Markdown reference tables generated from ``nldsl.catalog`` and ``nldsl.codes``.

docs/language.md embeds ``catalog_markdown()`` between ``<!-- catalog:begin -->`` and
``<!-- catalog:end -->``; tests/lang/test_docs.py keeps the two identical (``--update-golden`` rewrites the
document), so the documented vocabulary is always the one the checks and the compiler use.
"""
from __future__ import annotations

from nldsl import catalog
from nldsl.codes import CODES


def _cell(text: str) -> str:
    """A Markdown table cell: a literal ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _default(p: catalog.Param) -> str:
    if p.required:
        return "required"
    if p.default is None:
        return "unset"
    if isinstance(p.default, bool):
        return f"`{str(p.default).lower()}`"
    if isinstance(p.default, tuple):
        return "`[" + ", ".join(p.default) + "]`"
    if isinstance(p.default, str) and " " in p.default:
        return p.default
    return f"`{p.default}`"


def _params(params) -> str:
    if not params:
        return "—"
    return "<br>".join(f"`{p.name}`: {p.type}{' (' + p.unit + ')' if p.unit else ''} = {_cell(_default(p))}"
                       for p in params)


def _kind_table(title: str, table: dict[str, catalog.Kind]) -> list[str]:
    out = [f"### {title}", "", "| name | what | parameters (type (unit) = default) | paper |", "|---|---|---|---|"]
    out += [f"| `{k.name}` | {_cell(k.doc)} | {_params(k.params)} | {k.paper} |" for k in table.values()]
    return out + [""]


def _components() -> list[str]:
    out = ["### Component kinds", "",
           "| kind | what | parameters (type (unit) = default) | owns | default period | roles |",
           "|---|---|---|---|---|---|"]
    for k in catalog.COMPONENTS.values():
        period = {"static": "`every 1 steps`", "nonparametric": "`nonparametric`", None: "must be written"}
        out.append(f"| `{k.name}` | {_cell(k.doc)} | {_params(k.params)} | {', '.join(k.owns) or '—'} | "
                   f"{period[k.default_update]} | {', '.join(k.roles)} |")
    out.append("")
    out.append("Every kind also accepts " + ", ".join(f"`{p.name}` ({p.doc}, default `{p.default}`)"
                                                     for p in catalog.COMMON_PARAMS) + ".")
    return out + [""]


def _settings(title: str, table: dict[str, catalog.Param]) -> list[str]:
    out = [f"### {title}", "", "| setting | type | unit | default | meaning |", "|---|---|---|---|---|"]
    for p in table.values():
        choices = " (" + " \\| ".join(p.choices) + ")" if p.choices else ""
        out.append(f"| `{p.name}` | {p.type}{choices} | {p.unit or '—'} | {_default(p)} | {_cell(p.doc)} |")
    return out + [""]


def _words() -> list[str]:
    rows = [("units", catalog.UNITS), ("selectors", catalog.SELECTORS + ("component NAME", '"glob"')),
            ("reductions", catalog.REDUCTIONS), ("precisions", catalog.PRECISIONS),
            ("parallel", catalog.PARALLEL), ("activations", catalog.ACTIVATIONS),
            ("data activations", catalog.DATA_ACTIVATIONS), ("share", ("state across batch",)),
            ("flow ends", catalog.FLOW_ENDS), ("self-modifying memories", catalog.SELF_MOD_MEMORIES)]
    out = ["### Words", "", "| where | accepted |", "|---|---|"]
    out += [f"| {title} | {', '.join(f'`{w}`' for w in words)} |" for title, words in rows]
    return out + [""]


def catalog_markdown() -> str:
    """Every table of the language vocabulary, as Markdown."""
    lines = _components()
    for title, table in (("Objectives", catalog.OBJECTIVES), ("Inner optimizers", catalog.INNER_OPTIMIZERS),
                         ("Hyperparameter forms", catalog.HYPER_CALLS), ("Initial states", catalog.INITS),
                         ("Knowledge transfer", catalog.TRANSFERS), ("Contexts", catalog.CONTEXTS),
                         ("Outer optimizers", catalog.OUTER_OPTIMIZERS), ("Schedules", catalog.SCHEDULES),
                         ("Data", catalog.DATA), ("Tokenizers", catalog.TOKENIZERS), ("Compile", catalog.COMPILE)):
        lines += _kind_table(title, table)
    lines += _settings("`model` settings", catalog.MODEL_SETTINGS)
    lines += _settings("`train` settings", catalog.TRAIN_SETTINGS)
    for title, params in (("`update` options", catalog.UPDATE_ARGS), ("`eval` options", catalog.EVAL_ARGS),
                          ("`checkpoint` options", catalog.CHECKPOINT_ARGS)):
        lines += _settings(title, {p.name: p for p in params})
    lines += _words()
    return "\n".join(lines)


def codes_markdown() -> str:
    """The NL1xx codes with their bad and fixed examples (for docs/errors.md)."""
    out = []
    for code in CODES.values():
        out += [f"### {code.code}: {code.title}", ""]
        if code.bad:
            out += ["Bad:", "```", code.bad.rstrip("\n"), "```", "Fixed:", "```", code.fixed.rstrip("\n"), "```", ""]
    return "\n".join(out)
