"""The stable codes of ``nldsl check``: NL2xx graph and structure, NL3xx values, NL4xx training setup.

Codes never change meaning once released. Each has a default severity, a title, a paragraph for
``docs/errors.md`` and a *bad* and a *fixed* example; a test checks that every bad example produces its
code (and only it) and that every fixed example is clean, and ``docs/errors.md`` is generated from this
table (``python -m nldsl.checks.docs``). The NL1xx codes of the language core are in ``nldsl.codes``.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.source import Severity


@dataclass(frozen=True)
class CheckCode:
    code: str
    severity: Severity
    title: str
    doc: str
    bad: str
    fixed: str


E, W = Severity.error, Severity.warning
_TRAIN = 'train {\n  optimizer adamw(lr = 1e-3) for all\n  data = text("builtin:shakespeare")\n}\n'
_MEM = "  component mem : neural_memory(heads = 4) {\n    update every 16 tokens\n    objective l2\n" \
       "    optimizer momentum(lr = 0.1)\n  }\n"


def _model(body: str) -> str:
    return "model m {\n  dim = 64\n" + body + "}\n"


def _cms(levels: str, variant: str = "sequential", extra: str = "") -> str:
    return _model(f"  component ffn : cms(variant = {variant}) {{\n    objective task\n    optimizer gd(lr = 0.01)\n"
                  + levels + extra + "  }\n")


_FAST_SLOW = "    level fast : mlp { update every 16 tokens }\n    level slow : mlp { update every 64 tokens }\n"

_CODES = (
    # ------------------------------------------------------------------ NL2xx: names, structure, graph
    CheckCode("NL200", E, "unknown component kind",
              "The kind after `:` must be one of the component kinds of the catalog (docs/language.md).",
              _model("  component ffn : mpl(hidden = 256)\n"), _model("  component ffn : mlp(hidden = 256)\n")),
    CheckCode("NL201", E, "unknown parameter",
              "A parameter, setting or argument that the kind (or `model`, `train`, the call) does not take, "
              "or more positional arguments than it has parameters.",
              _model("  component ffn : mlp(hiden = 256)\n"), _model("  component ffn : mlp(hidden = 256)\n")),
    CheckCode("NL202", E, "unknown objective",
              "`objective` names the inner loss of a level: dot, l2, huber, lp, orthogonality or task.",
              _model(_MEM.replace("objective l2", "objective l3")), _model(_MEM)),
    CheckCode("NL203", E, "unknown optimizer",
              "Inner optimizers (in a level) and outer optimizers (in `train`) are separate vocabularies; "
              "the hint says when a name belongs to the other one.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("adamw(lr = 1e-3) for all",
                                                                 "moun(lr = 3e-4) for matrices\n  optimizer adamw for vectors, embeddings"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("adamw(lr = 1e-3) for all",
                                                                 "muon(lr = 3e-4) for matrices\n  optimizer adamw for vectors, embeddings")),
    CheckCode("NL204", E, "unknown schedule",
              "The learning-rate schedule of the outer loop: constant, cosine, linear or wsd.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  schedule cosin(warmup = 100)\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  schedule cosine(warmup = 100)\n  data")),
    CheckCode("NL205", E, "unknown transfer kind",
              "The five knowledge-transfer mechanisms of NL §3.3: parametric, nonparametric, backprop, init, "
              "generate.",
              _cms(_FAST_SLOW, "nested", "    transfer inits slow -> fast\n"),
              _cms(_FAST_SLOW, "nested", "    transfer init slow -> fast\n")),
    CheckCode("NL206", E, "unknown unit",
              "Periods count `tokens` (in context, inside a sequence) or `steps` (outer optimizer steps).",
              _model(_MEM.replace("16 tokens", "16 tokenz")), _model(_MEM)),
    CheckCode("NL207", E, "unknown component name",
              "A flow or transfer endpoint, `memory(x)`, `gradients(of = x)`, `like = x` or "
              "`for component x` that names no component visible in that body (the body itself, then the "
              "bodies around it). Dotted paths reach inside components: `titans.k`.",
              _model("  component attn : attention(heads = 4)\n  component ffn : mlp\n"
                     "  flow input -> atn -> ffn -> output\n"),
              _model("  component attn : attention(heads = 4)\n  component ffn : mlp\n"
                     "  flow input -> attn -> ffn -> output\n")),
    CheckCode("NL208", E, "unknown init",
              "`init` says where an in-context level starts each sequence: meta (learned by the outer loop), "
              "zeros, normal or pretrained.",
              _model(_MEM.replace("  }\n", "    init mata\n  }\n")), _model(_MEM.replace("  }\n", "    init meta\n  }\n"))),
    CheckCode("NL209", E, "unknown value",
              "A word that must be one of a fixed set: an activation, a precision, a data source, a "
              "tokenizer, a hyperparameter form, a parameter group after `for`, the words of `share`.",
              _model("  component ffn : mlp(activation = gleu)\n"), _model("  component ffn : mlp(activation = gelu)\n")),
    CheckCode("NL210", E, "duplicate or reserved name",
              "Names the builder cannot see colliding: a component called `input` or `output` (reserved in "
              "`flow`), a model component named like a stacked block, a parameter given twice in one call, "
              "and (as a warning) the same transfer written twice.",
              _model("  component output : mlp\n"), _model("  component out : mlp\n")),
    CheckCode("NL211", E, "component in the wrong place",
              "Inner components have roles: a self_modifying_titans holds `memory` children (k, v, q, eta, "
              "alpha, mem), a cms holds `level` children, other kinds hold none, and each kind lists the roles "
              "it can take.",
              _model("  component ffn : cms {\n    memory fast : mlp { update every 1 steps }\n  }\n"),
              _model("  component ffn : cms {\n    level fast : mlp { update every 1 steps }\n  }\n")),
    CheckCode("NL212", E, "no update period",
              "In-context memories (neural_memory, self_modifying_titans, buffer, and memories without a "
              "period to inherit) have no default period: write how often they change.",
              _model(_MEM.replace("    update every 16 tokens\n", "")), _model(_MEM)),
    CheckCode("NL213", E, "period that the kind cannot have",
              "Attention is non-parametric (f = ∞); embeddings, norms, heads and convolutions are static and "
              "cannot be written in context; in-context memories count tokens, optimizer buffers count steps; "
              "`update` options (reduce) only apply to `every N steps`.",
              _model("  component pre : norm {\n    update every 16 tokens\n  }\n"),
              _model("  component pre : norm {\n    update every 1 steps\n  }\n")),
    CheckCode("NL214", W, "periods that never line up",
              "CMS levels must have periods that are multiples of each other, and a child's period must divide "
              "or be a multiple of its parent's, else the slower update falls mid-chunk of the faster level. "
              "A warning, except in the nested CMS (NL Eq. 72), where the slower level re-initialises the "
              "faster one at its chunk boundary: there it is an error.",
              _cms("    level fast : mlp { update every 16 tokens }\n    level slow : mlp { update every 100 tokens }\n"),
              _cms("    level fast : mlp { update every 16 tokens }\n    level slow : mlp { update every 96 tokens }\n")),
    CheckCode("NL215", E, "cycle",
              "A cycle of `flow` arrows (the forward pass cannot be computed) or of transfers (the levels have "
              "no order, NL §1.3). Gradients feeding an optimizer level that generates the updates are not a "
              "cycle.",
              _model("  component a : mlp\n  component b : mlp\n  flow input -> a -> b -> a -> output\n"),
              _model("  component a : mlp\n  component b : mlp\n  flow input -> a -> b -> output\n")),
    CheckCode("NL216", E, "parameter owned by two optimizers",
              "Each outer-trained parameter group must be stepped by exactly one optimizer: two `for` lists "
              "that both claim it, or `for component w` (or a glob naming it) when an optimizer level "
              "generates w's updates (`transfer generate m -> w`); `all` and the group names leave such "
              "components out.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  optimizer muon for matrices\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("for all", "for vectors, embeddings").replace(
                  "  data", "  optimizer muon for matrices\n  data")),
    CheckCode("NL217", E, "parameter owned by no optimizer",
              "A parameter group the outer loop should train (projections, MLP weights, norms, embeddings, "
              "meta-learned initial states) that no optimizer claims would silently stay at its initial "
              "value. Freeze it with `update never` if that is the intent.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("for all", "for vectors, embeddings"),
              _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL218", E, "level without objective or optimizer",
              "A level updated in context (every N tokens), and an optimizer buffer, solve their own problem "
              "(NL Def. 3): they need an objective and an inner optimizer, written in the component or "
              "inherited from its parent.",
              _model(_MEM.replace("    optimizer momentum(lr = 0.1)\n", "")), _model(_MEM)),
    CheckCode("NL219", E, "objective the memory cannot optimize",
              "The objectives each kind supports are in the catalog (a neural_memory regresses keys to "
              "values: dot, l2, huber, lp; the task loss has no path into its inner update). Also: "
              "`target = self` needs a self-modifying memory, `target = gradient` needs gradients as the "
              "context, `orthogonality` belongs to an optimizer buffer.",
              _model(_MEM.replace("objective l2", "objective task")), _model(_MEM)),
    CheckCode("NL220", E, "objective on a non-parametric component",
              "Attention is recomputed for every token from its context (f = ∞): there is no state for an "
              "objective, an inner optimizer or an init to act on, and a `task` objective has nothing to "
              "update.",
              _model("  component attn : attention(heads = 4) {\n    objective task\n  }\n"),
              _model("  component attn : attention(heads = 4)\n")),
    CheckCode("NL221", W, "fast state shared across the batch",
              "By default every sequence of a batch has its own fast state (DESIGN §3.7). `share state across "
              "batch` makes them read and write one memory, so sequences leak into each other.",
              _model(_MEM.replace("  }\n", "    share state across batch\n  }\n")), _model(_MEM)),
    CheckCode("NL222", E, "hyperparameter form in the wrong place",
              "`learned(init)`, `data(activation)` and `memory(name)` make inner-optimizer hyperparameters "
              "learned, data-dependent or produced by a memory; sizes and switches cannot take them, and "
              "`memory(name)` only exists inside a self_modifying_titans.",
              _model("  component ffn : mlp(hidden = learned(256))\n"), _model("  component ffn : mlp(hidden = 256)\n")),
    CheckCode("NL223", E, "transfer that cannot work",
              "A transfer from a component to itself, or an `init` transfer into a component that has no "
              "initial state to meta-learn (attention, static layers).",
              _model("  component attn : attention(heads = 4)\n" + _MEM + "  transfer init mem -> attn\n"),
              _model("  component attn : attention(heads = 4)\n" + _MEM + "  transfer parametric mem -> attn\n")),
    CheckCode("NL224", W, "init transfer from a faster level",
              "In NL Eq. 28 a slower level meta-learns the initial state of a faster one; an `init` arrow from "
              "a faster (or equally fast) level is most likely reversed.",
              _cms(_FAST_SLOW, "nested", "    transfer init fast -> slow\n"),
              _cms(_FAST_SLOW, "nested", "    transfer init slow -> fast\n")),
    CheckCode("NL225", E, "optimizer that cannot optimize the objective",
              "DGD is the exact proximal step of the l2 objective (NL §4.5, Sherman-Morrison); with another "
              "objective it is not defined.",
              _model(_MEM.replace("objective l2", "objective dot").replace("momentum(lr = 0.1)", "dgd(lr = 0.1)")),
              _model(_MEM.replace("momentum(lr = 0.1)", "dgd(lr = 0.1)"))),
    CheckCode("NL226", W, "task objective that no flow reaches",
              "A `task` level learns from the gradient of the training loss at its output (its local surprise "
              "signal). In a body that declares its `flow`, a level left out of it never receives one.",
              _cms(_FAST_SLOW, extra="    flow input -> fast -> output\n"),
              _cms(_FAST_SLOW, extra="    flow input -> fast -> slow -> output\n")),
    CheckCode("NL227", E, "matrix-only optimizer given vectors or embeddings",
              "Muon and M3 orthogonalise their update with Newton-Schulz, which is defined for matrices; norms, "
              "biases, gates and embedding tables need another optimizer.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("adamw(lr = 1e-3)", "muon(lr = 0.02)"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("adamw(lr = 1e-3) for all",
                                                                 "muon(lr = 0.02) for matrices\n  optimizer adamw for vectors, embeddings")),
    CheckCode("NL228", W, "selector that selects nothing",
              "A parameter group after `for` that matches no outer-trained parameter: a typo in a glob, a "
              "frozen component, or a group no component has.",
              _model("  component ffn : mlp\n  component old : mlp {\n    update never\n  }\n")
              + _TRAIN.replace("  data", "  optimizer sgd(lr = 0.1) for component old\n  data"),
              _model("  component ffn : mlp\n  component old : mlp {\n    update never\n  }\n") + _TRAIN),
    CheckCode("NL229", W, "statement that is never used",
              "An objective or optimizer on a frozen component, or an inner optimizer on a component the outer "
              "loop trains (every N steps), has no effect.",
              _model("  component ffn : mlp {\n    update never\n    optimizer gd(lr = 0.1)\n  }\n"),
              _model("  component ffn : mlp {\n    update never\n  }\n")),
    # ------------------------------------------------------------------ NL3xx: values
    CheckCode("NL300", E, "wrong type of value",
              "A value of the wrong type: a string where a number goes, a fraction where a whole number goes, "
              "a quoted word where a name goes.",
              _model("  component ffn : mlp(hidden = \"256\")\n"), _model("  component ffn : mlp(hidden = 256)\n")),
    CheckCode("NL301", E, "value that must be positive",
              "Sizes, counts, periods and learning rates must be greater than zero (`-0` is zero).",
              _model("  component ffn : mlp(hidden = -0)\n"), _model("  component ffn : mlp(hidden = 256)\n")),
    CheckCode("NL302", E, "number that is not finite",
              "`inf`, `nan` and literals that overflow a float (`1e999`) are not sizes or rates.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("1e-3", "1e999"),
              _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL303", E, "width that does not divide into heads",
              "Multi-head components give each head dim / heads channels (and grouped-query attention heads / "
              "kv_heads query heads per key/value head): the divisions must be exact, and there cannot be "
              "more heads than channels.",
              _model("  component attn : attention(heads = 5)\n"), _model("  component attn : attention(heads = 4)\n")),
    CheckCode("NL304", E, "value out of range",
              "Decays, retention gates and momenta live in [0, 1] (momentum and Adam betas in [0, 1)); weight "
              "decay, warm-up, gradient clipping and window sizes cannot be negative.",
              _model(_MEM.replace("momentum(lr = 0.1)", "momentum(lr = 0.1, beta = 1.5)")),
              _model(_MEM.replace("momentum(lr = 0.1)", "momentum(lr = 0.1, beta = 0.9)"))),
    CheckCode("NL305", E, "chunk longer than the training sequence",
              "In-context state restarts with every sequence. A period longer than `seq` never completes, so "
              "the memory is never written while training and silently acts as a static layer.",
              _model(_MEM.replace("16 tokens", "512 tokens")) + _TRAIN.replace("  data", "  seq = 256\n  data"),
              _model(_MEM.replace("16 tokens", "64 tokens")) + _TRAIN.replace("  data", "  seq = 256\n  data")),
    CheckCode("NL306", E, "missing required parameter",
              "A parameter or setting without a default: the model's `dim`, a buffer's `like`, a data "
              "source's `path`, `learned(init)`'s initial value.",
              _model("  component ffn : mlp\n") + _TRAIN.replace('text("builtin:shakespeare")', "text()"),
              _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL307", E, "number too large",
              f"Sizes, counts and periods are limited to {2**31 - 1}.",
              "model m {\n  dim = 64\n  vocab = 10000000000\n}\n", "model m {\n  dim = 64\n  vocab = 32000\n}\n"),
    # ------------------------------------------------------------------ NL4xx: training setup
    CheckCode("NL400", E, "train without an optimizer",
              "The outer loop needs at least one optimizer when the model has parameters to train.",
              _model("  component ffn : mlp\n") + 'train {\n  data = text("builtin:shakespeare")\n}\n',
              _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL401", E, "train without a model",
              "A `train` block trains the model of the same file; a file with `train` must have a `model` "
              "(an imported file's model is not used).",
              _TRAIN, _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL402", E, "evaluation or checkpoint period not in steps",
              "Evaluation and checkpoints happen between outer steps: write `every N steps`.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  eval every 100 tokens\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  eval every 100 steps\n  data")),
    CheckCode("NL403", W, "evaluation or checkpoint after the last step",
              "An `eval` or `checkpoint` period longer than `steps` never runs.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  steps = 1000\n  eval every 5000 steps\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  steps = 1000\n  eval every 500 steps\n  data")),
    CheckCode("NL404", E, "tokenizer vocabulary does not match the model",
              "A tokenizer that produces more ids than the model's `vocab` indexes past the embedding table "
              "(an error); fewer ids leave rows unused (a warning). bytes has 256 ids, bpe(vocab = N) has N.",
              "model m {\n  dim = 64\n  vocab = 256\n}\n" + _TRAIN.replace("  data", "  tokenizer = bpe(vocab = 4096)\n  data"),
              "model m {\n  dim = 64\n  vocab = 4096\n}\n" + _TRAIN.replace("  data", "  tokenizer = bpe(vocab = 4096)\n  data")),
    CheckCode("NL405", W, "warm-up not shorter than training",
              "With `warmup >= steps` the learning rate never reaches its peak.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  steps = 1000\n  schedule cosine(warmup = 2000)\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  steps = 1000\n  schedule cosine(warmup = 100)\n  data")),
    CheckCode("NL406", E, "task, data and tokenizer do not match",
              "A language model (task = lm) reads tokenized text; a classifier (task = classify) reads "
              "feature vectors with `tokenizer = none` and needs `inputs` and `classes`.",
              _model("  component ffn : mlp\n") + _TRAIN.replace('text("builtin:shakespeare")', "digits()"),
              _model("  component ffn : mlp\n") + _TRAIN),
    CheckCode("NL407", W, "step period that never comes",
              "A component updated every N steps with N > `steps` (or M3's `slow_every` > `steps`) never "
              "takes a step during training.",
              _model("  component ffn : mlp {\n    update every 5000 steps\n  }\n") + _TRAIN.replace("  data", "  steps = 1000\n  data"),
              _model("  component ffn : mlp {\n    update every 500 steps\n  }\n") + _TRAIN.replace("  data", "  steps = 1000\n  data")),
    CheckCode("NL408", W, "setting the device cannot use",
              "fp16 on a CPU (no fast kernels) and data parallelism (ddp, fsdp) on a CPU.",
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  device = cpu\n  precision = fp16\n  data"),
              _model("  component ffn : mlp\n") + _TRAIN.replace("  data", "  device = cpu\n  precision = fp32\n  data")),
    CheckCode("NL409", W, "data file not found",
              "A `text` or `jsonl` path that does not exist relative to the .nl file (it may exist on the "
              "machine that trains, hence a warning).",
              _model("  component ffn : mlp\n") + _TRAIN.replace("builtin:shakespeare", "no_such_corpus.txt"),
              _model("  component ffn : mlp\n") + _TRAIN),
)

CHECK_CODES: dict[str, CheckCode] = {c.code: c for c in _CODES}
"""Every NL2xx-NL4xx code by name."""
