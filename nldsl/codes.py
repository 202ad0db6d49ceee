"""Stable diagnostic codes of the language core: NL1xx = syntax and spec building.

Codes never change meaning once released; ``docs/errors.md`` documents each with a bad and a fixed
example (the ``bad``/``fixed`` fields below are those examples, and a test builds every one of them).
NL2xx (graph) and NL3xx (values) belong to ``nldsl.checks``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: str
    title: str
    bad: str
    fixed: str


CODES: dict[str, Code] = {c.code: c for c in (
    Code("NL100", "unexpected character",
         "model m { dim = 64 ; }\n", "model m { dim = 64 }\n"),
    Code("NL101", "unexpected token (the hint lists what the parser expected)",
         "model m { dim 64 }\n", "model m { dim = 64 }\n"),
    Code("NL102", "unexpected end of file (an unclosed `{`, `(` or `[`)",
         "model m {\n  dim = 64\n", "model m {\n  dim = 64\n}\n"),
    Code("NL103", "unterminated string (strings end on the same line)",
         'const CORPUS = "data/a.txt\n', 'const CORPUS = "data/a.txt"\n'),
    Code("NL104", "the input is not UTF-8 text (binary data)",
         "model m { dim = 64 }\x00\n", "model m { dim = 64 }\n"),
    Code("NL105", "nesting deeper than 64 levels",
         "const X = " + "(" * 70 + "1" + ")" * 70 + "\n", "const X = 1\n"),
    Code("NL106", "input larger than 64 MB", "<a 65 MB file>\n", "model m { dim = 64 }\n"),
    Code("NL110", "unknown constant or block parameter in an expression",
         "const D = 64\nmodel m { dim = 2 * DD }\n", "const D = 64\nmodel m { dim = 2 * D }\n"),
    Code("NL111", "unknown block in `stack`",
         "block b { component f : mlp }\nmodel m { dim = 8  stack bb }\n",
         "block b { component f : mlp }\nmodel m { dim = 8  stack b }\n"),
    Code("NL112", "wrong block arguments (unknown, missing, repeated or too many)",
         "block b(width) { component f : mlp(hidden = width) }\nmodel m { dim = 8  stack b(widht = 32) }\n",
         "block b(width) { component f : mlp(hidden = width) }\nmodel m { dim = 8  stack b(width = 32) }\n"),
    Code("NL113", "duplicate definition (constant, block, component, model or train)",
         "const D = 64\nconst D = 128\n", "const D = 64\nconst D2 = 128\n"),
    Code("NL114", "invalid arithmetic (division by zero, a string or list in arithmetic)",
         'const D = 64 / 0\n', 'const D = 64 / 2\n'),
    Code("NL115", "a file that cannot be read (missing import, a directory, no permission)",
         'import "missing.nl"\n', '# (import a file that exists)\n'),
    Code("NL116", "circular import",
         '# a.nl\nimport "a.nl"\n', '# a.nl\n# (no import of itself)\n'),
    Code("NL117", "a constant defined in terms of itself",
         "const A = B + 1\nconst B = A\n", "const A = 2\nconst B = A\n"),
    Code("NL118", "note: an imported file has errors (they are reported in that file)",
         '# a.nl, beside lib.nl holding `const W = 2 * WIDHT` (NL110 in lib.nl)\nimport "lib.nl"\n',
         '# a.nl, beside lib.nl holding `const W = 2 * WIDTH`\nimport "lib.nl"\n'),
    Code("NL119", "imports nested too deeply (more than 64 files, each importing the next)",
         "<a chain of 65 files: a.nl imports b.nl, which imports c.nl, ...>\n",
         '# a.nl imports the files it uses directly\nimport "lib/blocks.nl"\n'),
    Code("NL120", "a statement in a body that does not accept it",
         "model m {\n  dim = 8\n  optimizer adamw for all\n}\n",
         'model m {\n  dim = 8\n}\ntrain {\n  optimizer adamw for all\n  data = text("builtin:shakespeare")\n}\n'),
    Code("NL121", "a statement that may appear once is repeated (update, objective, schedule ...)",
         "block b { component f : mlp { update every 1 steps  update never } }\n",
         "block b { component f : mlp { update never } }\n"),
    Code("NL122", "`for` selectors on an optimizer that is not in `train`",
         "block b { component f : mlp { optimizer gd(lr = 0.1) for matrices } }\n",
         "block b { component f : mlp { optimizer gd(lr = 0.1) } }\n"),
    Code("NL123", "a parameter or setting given twice",
         "model m { dim = 8  dim = 16 }\n", "model m { dim = 16 }\n"),
)}
