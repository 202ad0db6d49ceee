"""Tokenizers for `nldsl train/eval/generate`: byte-level (default) and a locally trained BPE.

Both satisfy the :class:`Tokenizer` protocol, so the training loop never cares which one it has.
A tokenizer is saved beside the run (``save(dir)``) and reloaded from there (``load_tokenizer``), so
evaluation and generation always decode with exactly the vocabulary the model was trained on. Nothing
here downloads anything: the BPE is trained on the run's own training split with the `tokenizers`
package (an optional dependency, imported only when a BPE is asked for).

Bits per byte (``bits_per_byte``) makes losses comparable across tokenizers: a loss of L nats per
token over N tokens that cover B bytes of UTF-8 text is ``L * N / (B * ln 2)`` bits per byte.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

META_FILE = "nldsl-tokenizer.json"
"""Small JSON file naming the tokenizer kind; written by every ``save``."""
BPE_FILE = "tokenizer.json"
"""The `tokenizers` library's own JSON (vocabulary + merges) for a BPE tokenizer."""
_ENCODE_CHUNK_CHARS = 256
"""Encode in small pieces: `tokenizers` pre-tokenises one long string several times slower per byte."""


class TokenizerError(ValueError):
    """A tokenizer cannot be built, saved or loaded (missing package, bad folder, bad vocab size)."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the training loop needs from a tokenizer."""

    name: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_tensor(self, text: str) -> Tensor: ...

    def decode(self, ids: Sequence[int] | Tensor) -> str: ...

    def token_byte_lengths(self) -> Tensor: ...

    def save(self, directory: str | Path) -> Path: ...


def _as_id_list(ids: Sequence[int] | Tensor) -> list[int]:
    if isinstance(ids, Tensor):
        return [int(i) for i in ids.reshape(-1).tolist()]
    return [int(i) for i in ids]


def _write_meta(directory: str | Path, meta: dict[str, Any]) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256): no training, no unknown tokens, bits/byte = loss/ln 2."""

    name = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> Tensor:
        """Fast path for whole corpora: one buffer copy instead of a Python list."""
        data = text.encode("utf-8")
        if not data:
            return torch.zeros(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Invalid UTF-8 (a model can sample any byte) becomes U+FFFD instead of an exception."""
        values = _as_id_list(ids)
        bad = [i for i in values if not 0 <= i < 256]
        if bad:
            raise TokenizerError(f"byte tokenizer cannot decode id {bad[0]}: ids must be in 0..255")
        return bytes(values).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> Tensor:
        return torch.ones(256, dtype=torch.int64)

    def save(self, directory: str | Path) -> Path:
        return _write_meta(directory, {"kind": "byte", "vocab_size": 256})


def _import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as exc:
        raise TokenizerError(
            "the BPE tokenizer needs the 'tokenizers' package, which is not installed; "
            "install it with `pip install tokenizers` (or `pip install nldsl[bpe]`), "
            "or use the default byte tokenizer"
        ) from exc
    return tokenizers


def _safe_cuts(text: str, chunk_chars: int) -> Iterable[str]:
    """Split before a whitespace char that follows a non-whitespace char.

    The byte-level pre-tokenizer always has a boundary there (no pre-token runs from a letter, digit or
    punctuation mark into whitespace), so encoding the pieces gives exactly the ids of the whole text,
    about 3x faster than one call, and never holds one giant `Encoding` in memory.
    """
    start = 0
    while len(text) - start > chunk_chars:
        cut = start + chunk_chars
        while cut < len(text) and not (text[cut].isspace() and not text[cut - 1].isspace()):
            cut += 1
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


class BPETokenizer:
    """Byte-level BPE trained locally with `tokenizers`: any text encodes, decoding is lossless."""

    def __init__(self, backend: Any):
        self._tok = backend
        self.name = f"bpe-{self.vocab_size}"

    @classmethod
    def train(cls, texts: str | Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> "BPETokenizer":
        """Learn merges from the training split only (never the validation text).

        Args:
            texts: the training text, or an iterable of documents.
            vocab_size: target size including the 256 byte symbols; a small corpus may yield fewer.
            min_frequency: a pair must occur this often to become a merge.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
            raise TokenizerError(f"BPE vocab_size must be an integer >= 257 (256 bytes + merges), got {vocab_size!r}")
        if min_frequency < 1:
            raise TokenizerError(f"min_frequency must be >= 1, got {min_frequency}")
        tk = _import_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        docs = [texts] if isinstance(texts, str) else texts
        tok.train_from_iterator(docs, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in _safe_cuts(text, _ENCODE_CHUNK_CHARS):
            ids.extend(self._tok.encode(piece, add_special_tokens=False).ids)
        return ids

    def encode_tensor(self, text: str) -> Tensor:
        return torch.tensor(self.encode(text), dtype=torch.int64)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        values = _as_id_list(ids)
        bad = [i for i in values if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"{self.name} cannot decode id {bad[0]}: ids must be in 0..{self.vocab_size - 1}")
        return self._tok.decode(values)

    def token_byte_lengths(self) -> Tensor:
        """Bytes each token stands for: one byte-level symbol (a char of the token string) is one byte."""
        lengths = torch.zeros(self.vocab_size, dtype=torch.int64)
        for token, idx in self._tok.get_vocab().items():
            lengths[idx] = len(token)
        return lengths

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | Path) -> Path:
        path = _write_meta(directory, {"kind": "bpe", "vocab_size": self.vocab_size, "file": BPE_FILE})
        (path / BPE_FILE).write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "BPETokenizer":
        file = Path(directory) / BPE_FILE
        if not file.is_file():
            raise TokenizerError(f"no BPE vocabulary at {file}")
        tk = _import_tokenizers()
        try:
            return cls(tk.Tokenizer.from_str(file.read_text(encoding="utf-8")))
        except Exception as exc:  # the Rust side raises a plain Exception for bad JSON
            raise TokenizerError(f"cannot read BPE vocabulary {file}: {exc}") from exc


TOKENIZER_KINDS = ("byte", "bpe")


def build_tokenizer(kind: str = "byte", *, train_text: str | Iterable[str] | None = None,
                    vocab_size: int | None = None) -> Tokenizer:
    """Make the tokenizer a spec asks for; a BPE is trained on ``train_text``."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if train_text is None or vocab_size is None:
            raise TokenizerError("a BPE tokenizer needs train_text and vocab_size")
        return BPETokenizer.train(train_text, vocab_size)
    raise TokenizerError(f"unknown tokenizer {kind!r}; known: {', '.join(TOKENIZER_KINDS)}")


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Reload the tokenizer a run saved, whatever its kind."""
    meta_path = Path(directory) / META_FILE
    if not meta_path.is_file():
        raise TokenizerError(f"no saved tokenizer in {directory} (missing {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenizerError(f"corrupt tokenizer description {meta_path}: {exc}") from exc
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(directory)
    raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r}; known: {', '.join(TOKENIZER_KINDS)}")


def bits_per_byte(loss_nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Convert a mean token loss (nats) into bits per UTF-8 byte of the text it covers."""
    if n_tokens < 0 or n_bytes <= 0:
        raise ValueError(f"bits_per_byte needs n_tokens >= 0 and n_bytes > 0, got {n_tokens}, {n_bytes}")
    return float(loss_nats_per_token) * n_tokens / (n_bytes * math.log(2))
