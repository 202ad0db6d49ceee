"""The outer loop (nldsl.train): outputs of a run, evaluation, checkpoints, data wiring, divergence, bad input."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nldsl.checkpoint import list_checkpoints, load_checkpoint
from nldsl.datasets import DataError
from nldsl.metrics import read_metrics
from nldsl.runs import RunError
from nldsl.tokenizer import load_tokenizer
from nldsl.train import train

from .nl_runs import TINY, TINY_SET, small_spec, train_losses


RUN_SET = ["eval.every=3", "checkpoint.every=2", "checkpoint.keep=2"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small")
    return train(small_spec(tmp), steps=6, out=tmp / "run", overrides=RUN_SET, progress=False, tensorboard=False)


def test_tiny_hope_trains_with_every_mechanism(tmp_path):
    """examples/tiny.nl: M3 + AdamW, an every-4-steps level, task-objective CMS, self-modifying Titans."""
    result = train(TINY, steps=2, out=tmp_path / "tiny", overrides=[*TINY_SET, "eval.every=2"], progress=False,
                   tensorboard=False)
    assert result.status == "finished" and len(result.losses()) == 2 and len(result.losses("val")) == 1
    assert all(math.isfinite(loss) for _, loss in result.losses() + result.losses("val"))


def test_run_finishes_with_every_output(small_run):
    out = small_run.out
    assert small_run.status == "finished" and small_run.step == 6
    for name in ("run.json", "spec.nl", "metrics.jsonl", "metrics.csv", "loss.png", "summary.json",
                 "tokenizer/nldsl-tokenizer.json"):
        assert (out / name).is_file(), name
    assert "eval every 3 steps" in (out / "spec.nl").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["extra"]["status"] == "finished"


def test_train_rows_are_logged_every_step(small_run):
    rows = read_metrics(small_run.out / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 for r in train_rows)
    assert [r["tokens"] for r in train_rows] == [64 * k for k in range(1, 7)]  # 2 x 32 targets per step
    csv_lines = (small_run.out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,split,time") and len(csv_lines) == len(rows) + 1


def test_evaluation_every_k_steps_reports_ppl_and_bpb(small_run):
    val = [r for r in read_metrics(small_run.out / "metrics.jsonl") if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    for r in val:
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
        assert r["bpb"] == pytest.approx(r["loss"] / math.log(2))  # byte-level: one byte per token


def test_checkpoints_keep_the_newest_k(small_run):
    names = [p.name for p in list_checkpoints(small_run.out / "checkpoints")]
    assert names == ["step-00000004", "step-00000006"]
    assert small_run.checkpoint.name == "step-00000006"
    assert load_checkpoint(small_run.checkpoint).step == 6


def test_same_seed_same_losses(small_run, tmp_path):
    again = train(small_spec(tmp_path), steps=6, out=tmp_path / "again", overrides=RUN_SET, stop_after=3,
                  progress=False, tensorboard=False)
    assert train_losses(again.rows) == train_losses(small_run.rows)[:3]


def test_existing_run_needs_resume_or_overwrite(small_run):
    with pytest.raises(RunError, match="already holds a run"):
        train(small_spec(small_run.out.parent), steps=6, out=small_run.out, progress=False)


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(RunError, match="no checkpoint to resume"):
        train(small_spec(tmp_path), out=tmp_path / "none", resume=True, progress=False)


def test_nan_loss_stops_naming_step_and_component_keeping_last_good_checkpoint(tmp_path):
    result = train(small_spec(tmp_path), steps=30, out=tmp_path / "nan", progress=False, tensorboard=False,
                   overrides=["optimizer.lr=1e30", "grad_clip=0", "checkpoint.every=1", "checkpoint.keep=2",
                              "eval.every=100"])
    assert result.status == "diverged"
    err = result.error
    assert err.step >= 2 and f"at step {err.step}" in str(err)
    assert "model 'small'" in str(err) and "level/component " in str(err)
    assert err.culprit is not None and err.culprit.name in str(err)
    assert "small.nl:4:13: in 'blk[0].attn'" in str(err)  # where the replayed forward pass first overflows
    good = load_checkpoint(tmp_path / "nan" / "checkpoints")
    assert good.step == err.step - 1 == result.step  # the failed step is not saved
    finite = [v for v in good.model.values() if v.is_floating_point()]
    assert finite and all(bool(torch.isfinite(t).all()) for t in finite)


@pytest.mark.parametrize("layout", ["folder", "jsonl", "glob"])
def test_data_sources(tmp_path, layout):
    text = "".join(f"Line {i} of a small corpus, with words enough to fill windows.\n" for i in range(200))
    if layout == "folder":
        (tmp_path / "docs").mkdir()
        for i in range(4):
            (tmp_path / "docs" / f"part{i}.txt").write_text(text)
        data = 'text("docs")'
    elif layout == "jsonl":
        rows = [json.dumps({"body": text[i * 500:(i + 1) * 500]}) for i in range(20)]
        (tmp_path / "c.jsonl").write_text("\n".join(rows))
        data = 'jsonl("c.jsonl", field = "body")'
    else:
        for i in range(3):
            (tmp_path / f"shard{i}.txt").write_text(text)
        data = 'text("shard*.txt")'
    result = train(small_spec(tmp_path, data), steps=2, out=tmp_path / "run", progress=False, tensorboard=False)
    assert result.status == "finished" and all(math.isfinite(loss) for _, loss in result.losses())


def test_bpe_tokenizer_is_trained_saved_and_reused(tmp_path):
    spec = small_spec(tmp_path, 'text("builtin:shakespeare")')
    overrides = ["tokenizer=bpe(vocab = 320)", "vocab=320"]
    first = train(spec, steps=2, out=tmp_path / "bpe", overrides=overrides, progress=False, tensorboard=False)
    saved = load_tokenizer(tmp_path / "bpe" / "tokenizer")
    assert saved.name.startswith("bpe") and saved.vocab_size <= 320
    assert (tmp_path / "bpe" / "tokenizer" / "tokenizer.json").is_file()
    resumed = train(spec, steps=3, out=tmp_path / "bpe", resume=True, progress=False, tensorboard=False)
    assert resumed.status == "finished" and resumed.step == 3
    assert load_tokenizer(tmp_path / "bpe" / "tokenizer").to_json() == saved.to_json()


@pytest.mark.parametrize("data, message", [
    ('text("missing.txt")', "data not found"),
    ('text("empty.txt")', "empty"),
    ('text("tiny.txt")', "fewer than one window"),
    ('jsonl("bad.jsonl")', "invalid JSON"),
], ids=["missing", "empty", "too-short", "bad-jsonl"])
def test_bad_data_is_a_data_error(tmp_path, data, message):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "tiny.txt").write_text("too short\n" * 4)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=message):
        train(small_spec(tmp_path, data), out=tmp_path / "run", progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="no CUDA GPU"):
        train(small_spec(tmp_path), device="cuda", out=tmp_path / "run", progress=False)


def test_bpe_that_stops_short_sizes_the_model_to_the_vocabulary_reached(tmp_path):
    words = " ".join(f"w{i % 97} x{i % 13}" for i in range(3000))
    (tmp_path / "few.txt").write_text("\n".join(words[i:i + 60] for i in range(0, len(words), 60)))
    result = train(small_spec(tmp_path, 'text("few.txt")'), steps=1, out=tmp_path / "run", progress=False,
                   tensorboard=False, overrides=["tokenizer=bpe(vocab = 4000)", "vocab=4000"])
    reached = load_tokenizer(tmp_path / "run" / "tokenizer").vocab_size
    assert result.status == "finished" and 256 < reached < 4000
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert f"model.vocab={reached}" in record["overrides"] and record["vocab_size"] == reached


def test_checkpoint_of_another_runtime_gets_a_short_summary():
    from nldsl.train import _mismatch

    with pytest.raises(RuntimeError) as info:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(3, 3), "extra": torch.zeros(1)})
    assert _mismatch(info.value) == "1 missing, 1 unexpected, 1 shape mismatches, e.g. bias"


def test_nan_gradient_with_a_finite_loss_stops_before_any_update(tmp_path, monkeypatch):
    """A NaN gradient (here from a hook) with a finite loss: the run stops at that step naming the gradient
    and its component, and no parameter was updated from it."""
    import nldsl.build as build_module

    real_build = build_module.build
    poisoned = {}

    def build_with_nan_grad(*args, **kwargs):
        c = real_build(*args, **kwargs)
        name, param = next((n, p) for n, p in c.model.named_parameters() if "ffn" in n)
        poisoned["name"], poisoned["component"] = name, c.component_of(name)
        param.register_hook(lambda g: torch.full_like(g, float("nan")) if c.step >= 2 else g)
        return c

    monkeypatch.setattr(build_module, "build", build_with_nan_grad)
    result = train(small_spec(tmp_path), steps=5, out=tmp_path / "run", overrides=["checkpoint.every=1"],
                   progress=False, tensorboard=False)
    assert result.status == "diverged" and result.step == 2
    message = str(result.error)
    assert "non-finite gradient norm" in message and "at step 3" in message
    assert poisoned["name"] in message and poisoned["component"] in message
    from nldsl.checkpoint import load_checkpoint
    ck = load_checkpoint(result.checkpoint, verify=False)
    assert ck.step == 2 and all(bool(torch.isfinite(t).all()) for t in ck.model.values() if t.is_floating_point())
