"""A training run's setup, shared by `nldsl train/eval/generate/codegen`: settings, data, tokenizer, run folder.

``prepare_run(path, overrides, ...)`` turns a `.nl` file into everything the outer loop needs before any
tensor is allocated: the spec (with ``--set`` overrides applied and checked), the ``train`` block as
plain values (:class:`TrainSettings`), the text split and tokenized data (``nldsl.datasets``), the
tokenizer (trained once for ``bpe(vocab)`` on the training split and saved in the run folder; reloaded
from there on resume, eval and generate) and the spec hash that ties checkpoints to the spec.

Run folder layout (``--out DIR``, default ``runs/<file stem>``)::

    run.json            what was trained: spec file, overrides, spec hash, tokenizer, settings
    spec.nl             the exact source text trained (overrides applied)
    tokenizer/          the tokenizer (nldsl-tokenizer.json, + tokenizer.json for a BPE)
    checkpoints/        step-NNNNNNNN/ folders (nldsl.checkpoint), the newest K kept
    metrics.jsonl/.csv  every logged row (nldsl.metrics); tb/ when tensorboard is installed
    loss.png            the loss curve;  summary.json  the run summary;  eval.json  `nldsl eval`
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from nldsl import catalog
from nldsl.checkpoint import fingerprint
from nldsl.datasets import DataError, TextSplit, TokenData, load_text, tokenize_split
from nldsl.errors import NLError
from nldsl.overrides import (Override, OverrideError, apply_overrides, load_source, load_with_overrides,
                             parse_overrides)
from nldsl.source import Diagnostic, Source, has_errors
from nldsl.spec import model as m
from nldsl.spec.export import to_dict
from nldsl.tokenizer import Tokenizer, build_tokenizer, load_tokenizer

RUN_FILE = "run.json"
SPEC_COPY = "spec.nl"
TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
VAL_FRACTION = 0.1
"""Share of the data held out for validation, eval and cloze (datasets.split_documents)."""
RUN_ONLY_SETTINGS = ("steps", "device", "compile")
"""Train settings left out of the spec hash: changing them does not make a checkpoint unusable."""


class RunError(ValueError):
    """A run cannot start: no train block, a device that is not there, a run folder in the way ..."""


class SpecInvalid(RunError):
    """The spec (after overrides) has errors; carries the diagnostics and the source to render them."""

    def __init__(self, diagnostics: list[Diagnostic], source: Source, overrides: Sequence[Override] = ()):
        self.diagnostics, self.source, self.overrides = diagnostics, source, list(overrides)
        super().__init__(f"{source.path}: {sum(d.is_error for d in diagnostics)} error(s)")


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TrainSettings:
    """The ``train`` block as plain values, catalog defaults filled in."""

    steps: int
    batch: int
    seq: int
    seed: int
    precision: str
    device: str
    """``auto``, ``cpu`` or ``cuda`` as written (``resolve_device`` picks the real one)."""
    data_kind: str
    """``text`` or ``jsonl`` (classification data sets are refused by ``nldsl train``)."""
    data_path: str
    data_field: str
    tokenizer: str
    """``bytes`` or ``bpe``."""
    bpe_vocab: int
    eval_every: int
    """0: no evaluation during training."""
    eval_batches: int
    checkpoint_every: int
    """0: only the final (and Ctrl-C) checkpoint."""
    checkpoint_keep: int
    checkpoint_dir: str


def _plain(value: m.Value | None) -> Any:
    if isinstance(value, m.Number):
        return value.value
    if isinstance(value, (m.String,)):
        return value.value
    if isinstance(value, m.Bool):
        return value.value
    if isinstance(value, m.Symbol):
        return value.name
    if isinstance(value, m.Call):
        return value.name
    return None


def _setting(train: m.Train, name: str) -> Any:
    value = _plain(train.get(name))
    return catalog.TRAIN_SETTINGS[name].default if value is None else value


def _call_arg(call: m.Value | None, name: str, position: int, default: Any) -> Any:
    if not isinstance(call, m.Call):
        return default
    found = call.get(name)
    if found is None and len(call.positional) > position:
        found = call.positional[position]
    value = _plain(found)
    return default if value is None else value


def _stmt_arg(stmt: m.Eval | m.Checkpoint | None, name: str, default: Any) -> Any:
    value = _plain(stmt.get(name)) if stmt is not None else None
    return default if value is None else value


def _period(stmt: m.Eval | m.Checkpoint | None) -> int:
    if stmt is None or stmt.period.kind != "every":
        return 0
    return int(_plain(stmt.period.count) or 0)


def train_settings(spec: m.Spec) -> TrainSettings:
    """Read the train block (the checks have validated it; this only fills in defaults)."""
    train = spec.train
    if train is None:
        raise RunError(f"{spec.path}: no `train` block: nothing says what to train on (see docs/training.md)")
    data, tok = train.get("data"), train.get("tokenizer")
    ev, ck = train.eval, train.checkpoint
    return TrainSettings(
        steps=int(_setting(train, "steps")), batch=int(_setting(train, "batch")), seq=int(_setting(train, "seq")),
        seed=int(_setting(train, "seed")), precision=str(_setting(train, "precision")),
        device=str(_setting(train, "device")),
        data_kind=_plain(data) or "", data_path=str(_call_arg(data, "path", 0, "")),
        data_field=str(_call_arg(data, "field", 1, "text")),
        tokenizer=_plain(tok) or "bytes", bpe_vocab=int(_call_arg(tok, "vocab", 0, 4096)),
        eval_every=_period(ev), eval_batches=int(_stmt_arg(ev, "batches", 8)),
        checkpoint_every=_period(ck), checkpoint_keep=int(_stmt_arg(ck, "keep", 1)),
        checkpoint_dir=str(_stmt_arg(ck, "dir", "runs")),
    )


def spec_hash(spec: m.Spec) -> str:
    """Fingerprint of what a checkpoint depends on: the spec without spans, paths and run-only settings.

    ``steps``, ``device``, ``compile``, ``eval`` and ``checkpoint`` are left out, so a run can be resumed
    for longer, on another device or with evaluation switched off; anything that changes the model, the
    optimizers, the data or the batch shape changes the hash.
    """
    data = to_dict(spec, spans=False)
    data.pop("path", None)
    data.pop("imports", None)
    train = data.get("train") or {}
    train["settings"] = [s for s in train.get("settings", []) if s.get("name") not in RUN_ONLY_SETTINGS]
    train.pop("eval", None)
    train.pop("checkpoint", None)
    return fingerprint(json.dumps(data, sort_keys=True))


# --------------------------------------------------------------------------- spec + checks
def check_spec(spec: m.Spec, source: Source, overrides: Sequence[Override] = ()) -> list[Diagnostic]:
    """Run every check; errors raise SpecInvalid, warnings are returned for the caller to show."""
    from nldsl.checks import check

    diags = check(spec)
    if has_errors(diags):
        raise SpecInvalid(diags, source, overrides)
    return diags


def load_spec(path: str | Path, overrides: Sequence[str] | Sequence[Override] = ()
              ) -> tuple[m.Spec, Source, list[Diagnostic]]:
    """Load, apply ``--set`` items and check; returns the spec, its edited source and the warnings."""
    items = [o if isinstance(o, Override) else parse_overrides([o])[0] for o in overrides]
    try:
        spec, source = load_with_overrides(path, items)
    except NLError as err:
        raise SpecInvalid(err.diagnostics, _shown_source(path, items), items) from err
    return spec, source, check_spec(spec, source, items)


def _shown_source(path: str | Path, items: Sequence[Override]) -> Source:
    """The text diagnostics point into: the edited source when the overrides apply, else the file."""
    try:
        return apply_overrides(load_source(path), items)
    except (OverrideError, NLError):
        return load_source(path)


# --------------------------------------------------------------------------- device
def resolve_device(requested: str | None, settings: TrainSettings | None = None) -> torch.device:
    """``--device`` wins over the spec's ``device``; ``auto`` means CUDA when present."""
    name = (requested or (settings.device if settings else "auto") or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunError(f"device {name!r} requested but no CUDA GPU is available here "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise RunError(f"unknown device {name!r}: use cpu or cuda")


# --------------------------------------------------------------------------- data
def data_source(settings: TrainSettings, spec_path: str) -> str:
    """The data path as ``datasets`` reads it: next to the .nl file first, else from the working directory."""
    if settings.data_kind not in ("text", "jsonl"):
        raise RunError(f"`data = {settings.data_kind}(...)` is classification data; `nldsl train` trains language "
                       "models on text(...) or jsonl(...) data")
    path = settings.data_path
    if not path:
        raise DataError(f"`data = {settings.data_kind}(...)` names no path")
    if path.startswith("builtin:") or Path(path).expanduser().is_absolute() or spec_path.startswith("<"):
        return path
    beside = Path(spec_path).resolve().parent / path
    return str(beside) if beside.exists() or any(c in path for c in "*?[") else path


def read_split(settings: TrainSettings, spec_path: str) -> TextSplit:
    return load_text(data_source(settings, spec_path), field=settings.data_field, val_fraction=VAL_FRACTION)


def get_tokenizer(settings: TrainSettings, split: TextSplit | None, run_dir: Path | None, *,
                  reuse: bool = True) -> Tokenizer:
    """The run's tokenizer: reloaded from ``run_dir/tokenizer`` when saved there, else made (and saved)."""
    saved = run_dir / TOKENIZER_DIR if run_dir is not None else None
    if reuse and saved is not None and saved.is_dir():
        return load_tokenizer(saved)
    if settings.tokenizer == "bytes":
        tok = build_tokenizer("byte")
    elif settings.tokenizer == "bpe":
        if split is None:
            raise RunError("a BPE tokenizer must be trained on the data, but no data was loaded")
        tok = build_tokenizer("bpe", train_text=split.train, vocab_size=settings.bpe_vocab)
    else:
        raise RunError(f"tokenizer {settings.tokenizer!r} does not read text; use bytes or bpe(vocab = N)")
    if saved is not None:
        tok.save(saved)
    return tok


# --------------------------------------------------------------------------- the prepared run
@dataclass
class Run:
    """Everything resolved before building the model."""

    spec: m.Spec
    source: Source
    settings: TrainSettings
    overrides: list[Override]
    tokenizer: Tokenizer
    split: TextSplit | None
    data: TokenData | None
    spec_hash: str
    out: Path | None
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def checkpoint_dir(self) -> Path:
        if self.out is None:
            raise RunError("this run has no output folder")
        return self.out / CHECKPOINT_DIR

    def write_record(self) -> None:
        """run.json + spec.nl: enough for `nldsl eval/generate --ckpt DIR` to rebuild the run."""
        out = self.checkpoint_dir.parent  # RunError without an output folder
        out.mkdir(parents=True, exist_ok=True)
        (out / SPEC_COPY).write_text(self.source.text, encoding="utf-8")
        record = {"spec_path": str(Path(self.source.path).resolve()) if not self.source.path.startswith("<") else
                  self.source.path, "overrides": [str(o) for o in self.overrides], "spec_hash": self.spec_hash,
                  "tokenizer": self.tokenizer.name, "vocab_size": self.tokenizer.vocab_size,
                  "settings": asdict(self.settings)}
        (out / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def default_out(spec_path: str | Path, settings: TrainSettings) -> Path:
    return Path(settings.checkpoint_dir) / Path(str(spec_path)).stem


def _vocab_fix(spec: m.Spec, tokenizer: Tokenizer) -> int | None:
    """A BPE may stop short of the asked vocab on a small corpus: the model is built with the size reached."""
    vocab = _plain(spec.model.get("vocab")) if spec.model is not None else None
    if tokenizer.name.startswith("bpe") and isinstance(vocab, int) and vocab > tokenizer.vocab_size:
        return tokenizer.vocab_size
    return None


def prepare_run(path: str | Path, overrides: Sequence[str] = (), *, out: str | Path | None = None,
                load_data: bool = True, reuse_tokenizer: bool = True, extra: Sequence[str] = ()) -> Run:
    """Spec + checks + data + tokenizer (+ the model vocab fitted to a BPE that came out smaller).

    Args:
        overrides: ``--set`` items; ``extra`` are more items added by flags (``--steps``), applied last.
        out: the run folder (created lazily by the caller); None for no folder (codegen).
        load_data: False skips reading the corpus (generate with a saved tokenizer).
    """
    items = parse_overrides([*overrides, *extra])
    spec, source, warnings = load_spec(path, items)
    task = _plain(spec.model.get("task")) if spec.model is not None else None
    if task == "classify":
        raise RunError(f"{source.path}: model {spec.model.name} has task = classify; train, eval, generate and "
                       "codegen run language models on text (classifiers: see docs/training.md)")
    settings = train_settings(spec)
    out_dir = Path(out) if out is not None else None
    split = read_split(settings, source.path) if load_data or settings.tokenizer == "bpe" and not (
        out_dir and (out_dir / TOKENIZER_DIR).is_dir()) else None
    tokenizer = get_tokenizer(settings, split, out_dir, reuse=reuse_tokenizer)
    vocab = _vocab_fix(spec, tokenizer)
    if vocab is not None:  # the tokenizer's declared size must match the model's too (check NL404)
        items = parse_overrides([*overrides, *extra, f"model.vocab={vocab}", f"tokenizer=bpe(vocab = {vocab})"])
        spec, source, warnings = load_spec(path, items)
        settings = train_settings(spec)
    data = tokenize_split(split, tokenizer) if split is not None and load_data else None
    return Run(spec, source, settings, items, tokenizer, split, data, spec_hash(spec), out_dir, warnings)


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a run folder (RunError when it is not one)."""
    file = Path(run_dir) / RUN_FILE
    if not file.is_file():
        raise RunError(f"{run_dir} is not an nldsl run folder (no {RUN_FILE}); pass the --out folder of `nldsl train`")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RunError(f"{file} is not valid JSON: {exc}") from exc


def find_run_dir(ckpt: str | Path) -> Path:
    """``--ckpt`` may be the run folder, its checkpoints/ folder or one step-* folder inside it."""
    path = Path(ckpt)
    if not path.exists():
        raise RunError(f"no run or checkpoint at {ckpt}")
    for candidate in (path, path.parent, path.parent.parent):
        if (candidate / RUN_FILE).is_file():
            return candidate
    raise RunError(f"{ckpt} is not inside an nldsl run folder (no {RUN_FILE} found); pass the --out folder of "
                   "`nldsl train`")
