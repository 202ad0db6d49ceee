"""Tokenizers: byte round trips, BPE training/saving/reloading bit-identically, bits per byte."""
from __future__ import annotations

import builtins
import json
import math

import pytest
import torch

from nldsl.datasets import builtin_path
from nldsl.tokenizer import (BPE_FILE, META_FILE, BPETokenizer, ByteTokenizer, Tokenizer, TokenizerError,
                             bits_per_byte, build_tokenizer, load_tokenizer)
import nldsl.tokenizer as tokmod

SAMPLES = ["", "hello world", "Ünïcödé — ✓ 日本語", "tabs\tand\nnewlines\r\n", "emoji 🙂🙃"]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return builtin_path("shakespeare").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(shakespeare: str) -> BPETokenizer:
    return BPETokenizer.train(shakespeare[:60_000], vocab_size=400)


@pytest.mark.parametrize("text", SAMPLES, ids=["empty", "ascii", "accents", "whitespace", "emoji"])
def test_byte_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    tensor = tok.encode_tensor(text)
    assert tensor.dtype == torch.int64 and tensor.tolist() == ids
    assert tok.decode(tensor) == text


def test_byte_tokenizer_basics(tmp_path) -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 and tok.name == "byte"
    assert torch.equal(tok.token_byte_lengths(), torch.ones(256, dtype=torch.int64))
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"  # sampled invalid UTF-8 does not crash
    with pytest.raises(TokenizerError, match="cannot decode id 300"):
        tok.decode([300])
    tok.save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)


@pytest.mark.parametrize("text", SAMPLES, ids=["empty", "ascii", "accents", "whitespace", "emoji"])
def test_bpe_round_trip(bpe: BPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_compresses_and_is_protocol(bpe: BPETokenizer, shakespeare: str) -> None:
    assert isinstance(bpe, Tokenizer)
    assert bpe.vocab_size == 400 and bpe.name == "bpe-400"
    text = shakespeare[100_000:110_000]
    ids = bpe.encode(text)
    assert len(ids) < 0.75 * len(text.encode())
    assert bpe.decode(ids) == text


def test_bpe_token_byte_lengths_cover_the_text(bpe: BPETokenizer, shakespeare: str) -> None:
    text = shakespeare[:5000] + " café ✓"
    lengths = bpe.token_byte_lengths()
    assert lengths.shape == (bpe.vocab_size,) and int(lengths.min()) >= 1
    assert int(lengths[bpe.encode_tensor(text)].sum()) == len(text.encode("utf-8"))


def test_bpe_training_is_deterministic(shakespeare: str) -> None:
    a = BPETokenizer.train(shakespeare[:30_000], vocab_size=300)
    b = BPETokenizer.train(shakespeare[:30_000], vocab_size=300)
    assert a.to_json() == b.to_json()


def test_bpe_save_load_bit_identical(bpe: BPETokenizer, shakespeare: str, tmp_path) -> None:
    bpe.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta == {"file": BPE_FILE, "kind": "bpe", "vocab_size": 400}
    again = load_tokenizer(tmp_path)
    assert isinstance(again, BPETokenizer)
    assert again.to_json() == bpe.to_json()
    text = shakespeare[200_000:204_000]
    assert again.encode(text) == bpe.encode(text)


def test_bpe_chunked_encoding_equals_whole(bpe: BPETokenizer, shakespeare: str, monkeypatch) -> None:
    text = shakespeare[:40_000]
    whole = bpe._tok.encode(text).ids
    monkeypatch.setattr(tokmod, "_ENCODE_CHUNK_CHARS", 97)  # many cuts, at odd places
    assert bpe.encode(text) == whole


@pytest.mark.parametrize("vocab", [0, 256, 3.5, True], ids=["zero", "bytes-only", "float", "bool"])
def test_bpe_rejects_bad_vocab_size(vocab) -> None:
    with pytest.raises(TokenizerError, match="vocab_size must be an integer >= 257"):
        BPETokenizer.train("some text", vocab_size=vocab)


def test_bpe_missing_package_message(monkeypatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(TokenizerError, match="needs the 'tokenizers' package.*pip install tokenizers"):
        BPETokenizer.train("some text", vocab_size=300)


def test_build_tokenizer() -> None:
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)
    assert build_tokenizer("bpe", train_text="ab ab ab abc " * 50, vocab_size=260).vocab_size <= 260
    with pytest.raises(TokenizerError, match="unknown tokenizer 'wordpiece'; known: byte, bpe"):
        build_tokenizer("wordpiece")
    with pytest.raises(TokenizerError, match="needs train_text and vocab_size"):
        build_tokenizer("bpe")


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="no saved tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(TokenizerError, match="corrupt tokenizer description"):
        load_tokenizer(tmp_path)
    (tmp_path / META_FILE).write_text('{"kind": "sentencepiece"}')
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'sentencepiece'"):
        load_tokenizer(tmp_path)
    (tmp_path / META_FILE).write_text('{"kind": "bpe"}')
    with pytest.raises(TokenizerError, match="no BPE vocabulary at"):
        load_tokenizer(tmp_path)
    (tmp_path / BPE_FILE).write_text("{}")
    with pytest.raises(TokenizerError, match="cannot read BPE vocabulary"):
        load_tokenizer(tmp_path)


def test_bits_per_byte() -> None:
    # byte-level: one token per byte, so bits/byte = loss / ln 2
    assert bits_per_byte(math.log(2), 100, 100) == pytest.approx(1.0)
    # 50 tokens covering 200 bytes at 2 nats/token = 100 nats = 100/ln2 bits over 200 bytes
    assert bits_per_byte(2.0, 50, 200) == pytest.approx(100 / math.log(2) / 200)
    with pytest.raises(ValueError, match="n_bytes > 0"):
        bits_per_byte(1.0, 10, 0)
