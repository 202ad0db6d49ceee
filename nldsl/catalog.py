"""The vocabulary of the `.nl` language as data: every name a user may type, with its parameters.

The grammar only knows the *shape* of statements; which component kinds, objectives, optimizers,
schedules, units, precisions... exist, which parameters they take (type, default, unit) and which
parameter categories a component owns are listed here. The checks use these tables for "unknown name,
did you mean" and type/value diagnostics; the compiler uses them for defaults; docs/language.md lists
the same tables (a test keeps them in sync).

Parameter types (``Param.type``):
  ``int`` integer, ``number`` int or float, ``bool``, ``string``, ``symbol`` one of ``choices``,
  ``symbols`` a list of symbols from ``choices``, ``hyper`` a hyperparameter (a number,
  ``learned(init)``, ``data(activation, scale = ...)`` or ``memory(name)``), ``name`` a component name,
  ``call`` one of the call forms in ``choices`` (a bare symbol is a call with no arguments).
Defaults are plain Python values; a string default such as ``"4 * dim"`` names a rule the compiler
applies (documented in ``doc``); ``None`` means "required" when ``required`` is set, else "unset".
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

PARAM_TYPES = ("int", "number", "bool", "string", "symbol", "symbols", "hyper", "name", "call")


@dataclass(frozen=True)
class Param:
    """One parameter of a kind (or one setting of ``model``/``train``)."""

    name: str
    type: str
    default: Any = None
    doc: str = ""
    unit: str = ""
    """What the number counts (``tokens``, ``channels``, ``steps`` ...), for docs and messages."""
    choices: tuple[str, ...] = ()
    positive: bool = False
    """Must be > 0 (ints) or > 0 and finite (numbers)."""
    required: bool = False


@dataclass(frozen=True)
class Kind:
    """A named thing with parameters: an objective, optimizer, schedule, init, transfer, data source..."""

    name: str
    doc: str
    params: tuple[Param, ...] = ()
    paper: str = ""
    """Where it comes from (NL paper section / equation)."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


@dataclass(frozen=True)
class ComponentKind(Kind):
    """A component kind: what it computes, its parameters, who owns its trainable tensors."""

    owns: tuple[str, ...] = ()
    """Parameter categories (``CATEGORIES``) of its outer-loop-trained tensors (including the
    meta-learned initial states of in-context memories)."""
    default_update: str | None = None
    """``"static"`` (outer loop, ``every 1 steps``), ``"nonparametric"`` (f = ∞), or ``None``: in
    context, the period must be written (or is inherited from the parent component)."""
    roles: tuple[str, ...] = ("component",)
    """Where it may appear: ``component``, ``memory`` (inside a self-modifying component), ``level``
    (inside a CMS)."""
    child_role: str | None = None
    """The role of its children (``memory`` or ``level``), ``None`` when it takes no children."""
    stateful: bool = False
    """Holds a fast state that can be updated in context (``every N tokens``)."""
    objectives: tuple[str, ...] = ()
    """Objectives its state can optimize (empty: any)."""


# --------------------------------------------------------------------------------------------------
# Parameter categories, units, selectors

CATEGORIES = ("matrices", "vectors", "embeddings")
"""Outer-optimizer parameter groups: 2-D weights, 1-D (and conv/gate) tensors, embedding tables."""
SELECTORS = ("all",) + CATEGORIES
"""Words allowed after ``optimizer ... for``; also ``component NAME`` and a quoted glob."""
UNITS = ("tokens", "steps")
"""``every N tokens``: in context; ``every N steps``: outer loop (accumulated gradients)."""
PERIOD_KINDS = ("every", "never", "nonparametric")
REDUCTIONS = ("sum", "mean")
"""How ``every N steps`` combines the N accumulated outer gradients (``update ... (reduce = sum)``)."""
PRECISIONS = ("fp32", "bf16", "fp16")
PARALLEL = ("none", "ddp", "fsdp")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")
HYPER_FORMS = ("learned", "data", "memory")
"""Call forms of a hyperparameter besides a plain number: ``learned(init)``, ``data(softplus|sigmoid,
scale = s)`` (a projection of the input), ``memory(name)`` (produced by a sibling memory)."""
DATA_ACTIVATIONS = ("softplus", "sigmoid")
SHARE_WHAT = ("state",)
SHARE_ACROSS = ("batch",)
FLOW_ENDS = ("input", "output")
"""Reserved names in ``flow``: the enclosing body's input and output."""
SELF_MOD_MEMORIES = ("k", "v", "q", "eta", "alpha", "mem")
"""Memory names of a self-modifying Titans (NL §8.1, Eq. 76-82)."""

_HYPER = "a number, learned(init), data(softplus|sigmoid, scale = s) or memory(name)"


def _p(name: str, type: str, default: Any = None, doc: str = "", **kw: Any) -> Param:
    return Param(name=name, type=type, default=default, doc=doc, **kw)


# --------------------------------------------------------------------------------------------------
# Components

_DIM = _p("dim", "int", "model dim", "width of the component's input/output", unit="channels", positive=True)
_HEADS = _p("heads", "int", 1, "number of heads (dim must divide into them)", positive=True)
_CONV = _p("conv", "int", 0, "causal depthwise convolution window after q/k/v (0 = none)", unit="tokens")
_NORMALIZE = _p("normalize", "symbols", (), "projections that are l2-normalised", choices=("q", "k", "v"))
_DEPTH = _p("depth", "int", 2, "layers of the (residual) MLP memory; 1 = a linear matrix memory",
            positive=True)

COMPONENTS: dict[str, ComponentKind] = {c.name: c for c in (
    ComponentKind("embedding", "token embedding table", (
        _p("vocab", "int", "model vocab", "rows of the table", unit="tokens", positive=True), _DIM),
        owns=("embeddings",), default_update="static"),
    ComponentKind("head", "output projection to the vocabulary (or the classes)", (
        _p("tied", "bool", "model tie_embeddings", "share the embedding table"),),
        owns=("matrices",), default_update="static"),
    ComponentKind("norm", "normalisation layer", (
        _p("type", "symbol", "rmsnorm", "rmsnorm or layernorm", choices=("rmsnorm", "layernorm")),
        _p("eps", "number", 1e-6, "added to the variance", positive=True)),
        owns=("vectors",), default_update="static"),
    ComponentKind("linear", "a linear projection: static (outer loop) or a matrix memory", (
        _p("out", "int", "model dim", "output width", unit="channels", positive=True),
        _p("bias", "bool", False, "add a bias vector")),
        owns=("matrices",), default_update="static", roles=("component", "memory", "level"),
        stateful=True, paper="NL §1.5 (a), Eq. 3-6"),
    ComponentKind("mlp", "an MLP with a residual connection: a static FFN, a memory of depth L, a CMS level", (
        _p("hidden", "int", "4 * dim", "hidden width", unit="channels", positive=True),
        _DEPTH,
        _p("activation", "symbol", "gelu", "hidden activation", choices=ACTIVATIONS),
        _p("residual", "bool", True, "add the input to the output (M(z) = z + W1 σ(W2 z))")),
        owns=("matrices",), default_update="static", roles=("component", "memory", "level"),
        stateful=True, paper="NL Eq. 89/91"),
    ComponentKind("swiglu", "a SwiGLU feed-forward (Transformer++)", (
        _p("hidden", "int", "8/3 * dim rounded to 64", "hidden width", unit="channels", positive=True),),
        owns=("matrices",), default_update="static", roles=("component", "level"), stateful=True),
    ComponentKind("conv", "causal depthwise convolution", (
        _p("window", "int", 4, "kernel width", unit="tokens", positive=True),),
        owns=("vectors",), default_update="static"),
    ComponentKind("attention", "softmax attention (global, or sliding window): non-parametric, f = ∞", (
        _HEADS,
        _p("window", "int", 0, "sliding window length (0 = global causal attention)", unit="tokens"),
        _p("kv_heads", "int", "heads", "key/value heads (grouped-query attention)", positive=True),
        _p("rope", "bool", True, "rotary position embeddings"),
        _p("rope_base", "number", 10000.0, "rotary base", positive=True),
        _p("normalize", "symbols", (), "l2-normalised projections (qk-norm)", choices=("q", "k"))),
        owns=("matrices",), default_update="nonparametric", paper="NL §1.3, Eq. 62-63"),
    ComponentKind("neural_memory", "Titans long-term memory (LMM): linear or residual-MLP memory "
                  "written in context with surprise momentum and a forget gate", (
        _HEADS, _DEPTH, _CONV, _NORMALIZE,
        _p("hidden", "int", "dim per head", "hidden width of the memory MLP", unit="channels", positive=True),
        _p("persistent", "int", 0, "learnable persistent tokens prepended", unit="tokens"),
        _p("gate", "bool", True, "output normalisation and gate")),
        owns=("matrices", "vectors"), stateful=True,
        objectives=("dot", "l2", "huber", "lp"), paper="Titans; NL §2"),
    ComponentKind("self_modifying_titans", "self-modifying (deep self-referential) Titans: keys, values, "
                  "learning rates and decays come from its own memories (children role `memory`: "
                  "k, v, q, eta, alpha, mem)", (
        _HEADS, _DEPTH, _CONV, _NORMALIZE,
        _p("q", "symbol", "static", "static: q = x W_q (outer loop only); adaptive: q from memory q",
           choices=("static", "adaptive")),
        _p("gate", "bool", True, "output normalisation and gate")),
        owns=("matrices", "vectors"), stateful=True, child_role="memory",
        objectives=("dot", "l2", "huber", "lp"), paper="NL §8.1-8.2, Eq. 76-93"),
    ComponentKind("cms", "Continuum Memory System: MLP levels with their own periods "
                  "(children role `level`)", (
        _p("variant", "symbol", "sequential", "sequential chain (Eq. 73), independent with aggregation "
           "(Eq. 74) or nested (Eq. 72)", choices=("sequential", "independent", "nested")),
        _p("aggregate", "symbol", "sum", "independent variant: how outputs combine",
           choices=("sum", "mean", "learned"))),
        owns=("matrices",), stateful=True, child_role="level", paper="NL §7.1, Eq. 70-74"),
    ComponentKind("buffer", "an optimizer state written as a level: a key-less memory shaped like the "
                  "parameters of component `like` (momentum, second moment, slow momentum ...)", (
        _p("like", "name", None, "the component whose parameters it mirrors", required=True),
        _p("elementwise", "bool", True, "element-wise (diagonal) memory; false = full matrix"),
        _p("depth", "int", 0, "0 = a tensor buffer; L >= 1 = an MLP memory (deep momentum)"),
        _p("output", "symbol", "identity", "applied to the read-out (newton_schulz = Muon)",
           choices=("identity", "newton_schulz", "sign", "rsqrt"))),
        owns=(), stateful=True, objectives=("dot", "l2", "orthogonality"), paper="NL §4.2-4.4, App. B"),
)}

CONTEXTS: dict[str, Kind] = {k.name: k for k in (
    Kind("tokens", "the level's input stream (keys/values projected from it): the default"),
    Kind("gradients", "the gradients of another component's parameters (optimizer levels)", (
        _p("of", "name", None, "the component whose gradients are the context", required=True),)),
    Kind("output", "the output of another component (a level fed by a faster one)", (
        _p("of", "name", None, "the producing component", required=True),)),
)}

COMMON_PARAMS: tuple[Param, ...] = (
    _p("context", "call", "tokens", "what the level compresses: tokens | gradients(of) | output(of)",
       choices=tuple(CONTEXTS)),
)
"""Parameters every component kind accepts besides its own."""

# --------------------------------------------------------------------------------------------------
# Objectives, inner optimizers, hyperparameters

_TARGET = _p("target", "symbol", "value", "regression target: the value v, a self-generated value "
             "v̂ = M(v), or the (negative) local surprise signal", choices=("value", "self", "gradient",
                                                                             "gradient_scale"))

OBJECTIVES: dict[str, Kind] = {k.name: k for k in (
    Kind("dot", "dot-product (Hebbian) objective -<M(k), v>", (_TARGET,), "NL Eq. 5-6, 12-16"),
    Kind("l2", "l2 regression ||M(k) - v||²", (_TARGET,), "NL Eq. 86-87"),
    Kind("huber", "Huber regression (Yaad)", (_TARGET, _p("delta", "number", 1.0, "quadratic zone",
                                                          positive=True)), "Miras"),
    Kind("lp", "l_p regression ||M(k) - v||_p^p (Moneta)", (_TARGET, _p("p", "number", 3.0, "exponent",
                                                                        positive=True)), "Miras"),
    Kind("orthogonality", "||P(g)ᵀP(g) - I||² (Newton-Schulz read as an inner level)", (), "NL Eq. 43"),
    Kind("task", "the model's own training loss; the level learns from its local surprise signal "
         "accumulated over its chunk", (), "NL §7.1, Eq. 70-71"),
)}

_LR = _p("lr", "hyper", 1.0, f"step size η: {_HYPER}")
_RETAIN = _p("retain", "hyper", 1.0, f"retention / forget gate α (1 = no decay; M ← α M − ...): {_HYPER}")
_BETA = _p("beta", "hyper", 0.9, f"momentum decay: {_HYPER}")

INNER_OPTIMIZERS: dict[str, Kind] = {k.name: k for k in (
    Kind("gd", "gradient descent (with optional retention = weight decay / forget gate)",
         (_LR, _RETAIN), "NL Eq. 2"),
    Kind("momentum", "GD with momentum (Titans surprise): S ← β S − η ∇, M ← α M + S",
         (_LR, _RETAIN, _BETA), "Titans; NL Eq. 7-10, 33"),
    Kind("dgd", "delta gradient descent: M ← M(αI − η' k kᵀ) − η' ∇ (exact l2 proximal step)",
         (_LR, _RETAIN, _p("momentum", "hyper", 0.0, "optional Titans-style momentum β")),
         "NL §4.5, Eq. 56-57, 88"),
    Kind("delta_momentum", "momentum with an l2 objective: m ← (αI − gᵀg) m − η P g",
         (_LR, _BETA), "NL Eq. 21-22 / 48-49"),
    Kind("deep_momentum", "momentum as an MLP memory (DMGD)",
         (_LR, _BETA, _p("depth", "int", 2, "MLP depth", positive=True)), "NL Eq. 23 / 50"),
    Kind("newton_schulz", "orthogonalised momentum output (Muon as an inner optimizer)",
         (_LR, _BETA, _p("steps", "int", 5, "Newton-Schulz iterations", positive=True)), "NL Eq. 42-44"),
    Kind("adam", "Adam as an associative memory of gradients (accumulated moments)",
         (_LR, _p("beta1", "hyper", 0.9, "first moment"), _p("beta2", "hyper", 0.999, "second moment"),
          _p("eps", "number", 1e-8, "denominator floor", positive=True)), "NL App. B, Eq. 101-105"),
)}

HYPER_CALLS: dict[str, Kind] = {k.name: k for k in (
    Kind("learned", "a scalar learned by the outer loop", (
        _p("init", "number", None, "initial value", required=True),)),
    Kind("data", "data-dependent: activation(x W) * scale, a projection of the level's input", (
        _p("activation", "symbol", "softplus", "softplus or sigmoid", choices=DATA_ACTIVATIONS),
        _p("scale", "number", 1.0, "multiplier", positive=True))),
    Kind("memory", "produced by the sibling memory `name` of a self-modifying component", (
        _p("name", "name", None, "the memory (eta, alpha ...)", required=True),)),
)}

# --------------------------------------------------------------------------------------------------
# Initial states and knowledge transfer

_GRAD = _p("grad", "symbol", "unrolled", "unrolled: the outer gradient flows through the inner updates; "
           "stopgrad: writes are not differentiated", choices=("unrolled", "stopgrad"))

INITS: dict[str, Kind] = {k.name: k for k in (
    Kind("meta", "initial state meta-learned by the outer loop (MAML-style transfer)", (_GRAD,), "NL Eq. 28"),
    Kind("zeros", "starts every sequence from zero"),
    Kind("normal", "random normal, not learned", (_p("std", "number", 0.02, "standard deviation",
                                                      positive=True),)),
    Kind("pretrained", "copied from a checkpoint (ad-hoc level stacking)", (
        _p("path", "string", None, "safetensors file", required=True),
        _p("key", "string", "", "tensor name prefix")), "NL §7.3"),
)}
DEFAULT_INIT = "meta"
"""In-context levels without ``init``: meta-learned with the gradient through the unrolled updates."""

TRANSFERS: dict[str, Kind] = {k.name: k for k in (
    Kind("parametric", "the target's forward pass is conditioned on the source's parameters", (),
         "NL Eq. 24-26"),
    Kind("nonparametric", "the target is conditioned on the source's context", (), "NL Eq. 27"),
    Kind("backprop", "one gradient flow, different frequencies (the CMS design)", (), "NL §3.3 (3)"),
    Kind("init", "the (slower) source meta-learns the target's initial state", (_GRAD,), "NL Eq. 28"),
    Kind("generate", "the source generates the target's weights, inputs or updates", (
        _p("what", "symbol", "weights", "what is generated", choices=("weights", "inputs", "updates")),),
        "NL §3.3 (5)"),
)}

# --------------------------------------------------------------------------------------------------
# Outer loop

_OLR = _p("lr", "number", 1e-3, "peak learning rate", positive=True)
_WD = _p("weight_decay", "number", 0.0, "decoupled weight decay")
_NS = _p("ns_steps", "int", 5, "Newton-Schulz iterations", positive=True)

OUTER_OPTIMIZERS: dict[str, Kind] = {k.name: k for k in (
    Kind("adamw", "AdamW", (_OLR, _p("beta1", "number", 0.9), _p("beta2", "number", 0.95),
                            _p("eps", "number", 1e-8, positive=True), _WD)),
    Kind("muon", "momentum + Newton-Schulz orthogonalisation (matrices only)",
         (_OLR, _p("momentum", "number", 0.95), _NS, _WD), "NL Eq. 42-44"),
    Kind("m3", "Multi-scale Momentum Muon: fast and slow momentum, orthogonalised, Adam second moment "
         "(matrices only)", (_OLR, _p("beta1", "number", 0.9), _p("beta2", "number", 0.999),
                             _p("beta3", "number", 0.9), _p("alpha", "number", 0.5, "slow momentum weight"),
                             _p("slow_every", "int", 10, "slow momentum period", unit="steps", positive=True),
                             _NS, _p("eps", "number", 1e-8, positive=True), _WD), "NL §7.2, Alg. 1"),
    Kind("deep_momentum", "deep momentum GD: the momentum is an MLP trained in the loop",
         (_OLR, _p("beta", "number", 0.9), _p("depth", "int", 2, positive=True),
          _p("hidden", "int", 64, unit="channels", positive=True), _WD), "NL Eq. 23 / 50"),
    Kind("delta_momentum", "delta-rule momentum with gradient-dependent decay",
         (_OLR, _p("beta", "number", 0.9), _WD), "NL Eq. 21-22"),
    Kind("sgd", "SGD with optional momentum", (_OLR, _p("momentum", "number", 0.0), _WD)),
)}
MATRIX_ONLY_OPTIMIZERS = ("muon", "m3")

SCHEDULES: dict[str, Kind] = {k.name: k for k in (
    Kind("constant", "constant learning rate after warm-up", (
        _p("warmup", "int", 0, unit="steps"),)),
    Kind("cosine", "linear warm-up then cosine decay", (
        _p("warmup", "int", 0, unit="steps"), _p("min", "number", 0.1, "final lr as a fraction of lr"))),
    Kind("linear", "linear warm-up then linear decay", (
        _p("warmup", "int", 0, unit="steps"), _p("min", "number", 0.0, "final lr fraction"))),
    Kind("wsd", "warm-up, stable, decay", (
        _p("warmup", "int", 0, unit="steps"), _p("decay", "number", 0.2, "fraction of steps decaying"),
        _p("min", "number", 0.0, "final lr fraction"))),
)}

DATA: dict[str, Kind] = {k.name: k for k in (
    Kind("text", "a plain-text file, or a built-in slice (`builtin:shakespeare`)", (
        _p("path", "string", None, required=True),)),
    Kind("jsonl", "one JSON object per line", (
        _p("path", "string", None, required=True), _p("field", "string", "text"))),
    Kind("digits", "scikit-learn's bundled 8x8 digits (classification)", (
        _p("tasks", "int", 1, "split into class-incremental tasks", positive=True),)),
    Kind("fashion_mnist", "Fashion-MNIST IDX files (classification)", (
        _p("path", "string", "/usr/share/dataset-fashion-mnist"),
        _p("tasks", "int", 1, positive=True))),
    Kind("generated", "a seeded synthetic task", (
        _p("task", "symbol", None, choices=("copy", "recall", "parity", "anbn", "babi"), required=True),
        _p("length", "int", 0, unit="tokens"))),
)}

TOKENIZERS: dict[str, Kind] = {k.name: k for k in (
    Kind("bytes", "UTF-8 bytes (vocab 256)"),
    Kind("bpe", "a BPE trained locally on the data", (
        _p("vocab", "int", 4096, unit="tokens", positive=True),)),
    Kind("none", "inputs are feature vectors (classification)"),
)}

COMPILE: dict[str, Kind] = {k.name: k for k in (
    Kind("off", "eager PyTorch"),
    Kind("on", "torch.compile with its defaults"),
    Kind("compile", "torch.compile with options", (
        _p("mode", "string", "default", choices=("default", "reduce-overhead", "max-autotune")),
        _p("fullgraph", "bool", False), _p("dynamic", "bool", False),
        _p("scope", "symbol", "auto", "what one compiled graph covers: model (the whole forward and loss), "
           "chunk (one chunk update of each in-context memory, and each static sublayer: the chunk loops stay "
           "in Python), auto (chunk when the model has in-context memories, else model)",
           choices=("auto", "model", "chunk")))),
)}

# --------------------------------------------------------------------------------------------------
# Settings of `model` and `train`

MODEL_SETTINGS: dict[str, Param] = {p.name: p for p in (
    _p("vocab", "int", None, "vocabulary size", unit="tokens", positive=True),
    _p("dim", "int", None, "model width", unit="channels", positive=True, required=True),
    _p("layers", "int", 1, "how many times each `stack` repeats its block", positive=True),
    _p("tie_embeddings", "bool", False, "share the embedding table with the output head"),
    _p("task", "symbol", "lm", "lm: next-token prediction; classify: one label per input",
       choices=("lm", "classify")),
    _p("inputs", "int", None, "classify: input features", unit="features", positive=True),
    _p("classes", "int", None, "classify: number of labels", positive=True),
    _p("norm", "symbol", "rmsnorm", "block pre-norm", choices=("rmsnorm", "layernorm")),
)}

TRAIN_SETTINGS: dict[str, Param] = {p.name: p for p in (
    _p("steps", "int", 1000, "outer optimizer steps", unit="steps", positive=True),
    _p("batch", "int", 8, "sequences per step", unit="sequences", positive=True),
    _p("seq", "int", 256, "sequence length", unit="tokens", positive=True),
    _p("accumulate", "int", 1, "micro-batches per step", positive=True),
    _p("precision", "symbol", "fp32", "compute precision", choices=PRECISIONS),
    _p("compile", "call", "off", "off | on | compile(mode, fullgraph, dynamic)", choices=tuple(COMPILE)),
    _p("data", "call", None, "training data", choices=tuple(DATA), required=True),
    _p("tokenizer", "call", "bytes", "bytes | bpe(vocab) | none", choices=tuple(TOKENIZERS)),
    _p("parallel", "symbol", "none", "data parallelism", choices=PARALLEL),
    _p("seed", "int", 0, "random seed"),
    _p("grad_clip", "number", 1.0, "global gradient-norm clip (0 = off)"),
    _p("device", "symbol", "auto", "where to train", choices=("auto", "cpu", "cuda")),
)}

EVAL_ARGS = (_p("batches", "int", 8, "batches per evaluation", positive=True),)
CHECKPOINT_ARGS = (_p("keep", "int", 1, "checkpoints kept", positive=True),
                   _p("dir", "string", "runs", "output directory"))
UPDATE_ARGS = (_p("reduce", "symbol", "sum", "every N steps: combine the accumulated gradients",
                  choices=REDUCTIONS),)

STATEMENTS: dict[str, tuple[str, ...]] = {
    "file": ("import", "const", "block", "model", "train"),
    "block": ("component", "flow", "transfer", "share"),
    "model": ("setting", "component", "stack", "flow", "transfer", "share"),
    "component": ("setting", "update", "objective", "optimizer", "init", "component", "memory", "level",
                  "flow", "transfer", "share"),
    "train": ("setting", "optimizer", "schedule", "eval", "checkpoint"),
}
"""Which statements each body accepts (the builder rejects the others with NL120)."""

# --------------------------------------------------------------------------------------------------
# Lookup helpers


def suggest(name: str, known: Iterable[str]) -> str | None:
    """The closest known name for a "did you mean" hint (``None`` when nothing is close).

    >>> suggest("moun", ["adamw", "muon", "m3"])
    'muon'
    """
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def known(names: Iterable[str]) -> str:
    """``a, b, c`` sorted, for hints that list the choices."""
    return ", ".join(sorted(names))
