"""Checkpoints: tree codec, RNG round trip, atomic writes, keep-last-K, validation, bit-identical resume."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import nldsl.checkpoint as ckmod
from nldsl.checkpoint import (META_FILE, TENSOR_FILE, CheckpointError, capture_rng, decode_tree, encode_tree,
                              fingerprint, latest, list_checkpoints, load_checkpoint, restore_rng, save_checkpoint)
from nldsl.datasets import BatchSampler

SPEC = fingerprint("level fast { every 1 tokens }")


def _toy(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(32, 16), nn.Dropout(0.1), nn.Linear(16, 32))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)


def _step(model: nn.Module, opt: torch.optim.Optimizer, batch: torch.Tensor) -> float:
    logits = model(batch[:, :-1])  # (B, T, V)
    loss = nn.functional.cross_entropy(logits.reshape(-1, 32), batch[:, 1:].reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


# --------------------------------------------------------------------------- codec
def test_tree_codec_round_trip_is_exact() -> None:
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "buf": torch.randn(2, 3, dtype=torch.float64)}},
        "groups": [{"betas": (0.9, 0.95), "lr": 1e-3, "eps": float("inf"), "nan": float("nan"),
                    "fused": None, "dtype": torch.bfloat16, "params": [0, 1], "__secret": 1}],
        "np": np.int64(7),
    }
    tensors: dict = {}
    encoded = encode_tree(tree, "opt", tensors)
    text = json.dumps(encoded, allow_nan=False)  # strict JSON
    back = decode_tree(json.loads(text), tensors)
    assert set(tensors) == {"opt/state/0/step", "opt/state/0/buf"}
    assert torch.equal(back["state"][0]["buf"], tree["state"][0]["buf"])
    group = back["groups"][0]
    assert group["betas"] == (0.9, 0.95) and isinstance(group["betas"], tuple)
    assert group["eps"] == math.inf and math.isnan(group["nan"])
    assert group["dtype"] is torch.bfloat16 and group["__secret"] == 1 and back["np"] == 7


def test_codec_rejects_unknown_objects() -> None:
    with pytest.raises(CheckpointError, match=r"cannot save object at 'extra/x'"):
        encode_tree({"x": object()}, "extra", {})


def test_rng_round_trip_through_json() -> None:
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    saved = json.loads(json.dumps(capture_rng()))
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(2), random.seed(2), np.random.seed(2)
    restore_rng(saved)
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


# --------------------------------------------------------------------------- saving
def test_save_layout_and_keep_last(tmp_path: Path) -> None:
    model, opt = _toy()
    for step in (10, 20, 30, 40):
        path = save_checkpoint(tmp_path, step=step, spec_hash=SPEC, model=model, optimizers={"adamw": opt},
                               metrics={"loss": 1.5}, keep_last=2)
        assert path == tmp_path / f"step-{step:08d}"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    assert latest(tmp_path) == tmp_path / "step-00000040"
    meta = json.loads((latest(tmp_path) / META_FILE).read_text())
    assert meta["step"] == 40 and meta["spec_hash"] == SPEC and meta["versions"]["torch"] == torch.__version__
    assert meta["metrics"] == {"loss": 1.5} and "python" in meta["rng"] and "torch" in meta["rng"]
    assert latest(tmp_path / "missing") is None


def test_tied_weights_and_resave_same_step(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight  # weight tying: two names, one storage
    save_checkpoint(tmp_path, step=1, spec_hash=SPEC, model=model)
    save_checkpoint(tmp_path, step=1, spec_hash=SPEC, model=model, metrics={"again": True})
    ck = load_checkpoint(tmp_path)
    assert ck.metrics == {"again": True} and len(list(tmp_path.iterdir())) == 1
    fresh = nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 8, bias=False))
    fresh[1].weight = fresh[0].weight
    ck.restore(model=fresh, rng=False)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_crash_during_save_leaves_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    model, opt = _toy()
    good = save_checkpoint(tmp_path, step=5, spec_hash=SPEC, model=model, optimizers={"adamw": opt})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckmod, "_sha256_file", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*step-00000006: .*No space left"):
        save_checkpoint(tmp_path, step=6, spec_hash=SPEC, model=model)
    assert [p.name for p in tmp_path.iterdir()] == [good.name]  # no partial folder, no temp left behind
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 5


def test_stale_temp_folders_are_ignored_and_cleaned(tmp_path: Path) -> None:
    model, _ = _toy()
    (tmp_path / ".tmp-step-00000009-deadbeef").mkdir(parents=True)
    assert latest(tmp_path) is None
    save_checkpoint(tmp_path, step=3, spec_hash=SPEC, model=model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003"]


def test_save_rejects_bad_arguments(tmp_path: Path) -> None:
    model, _ = _toy()
    with pytest.raises(ValueError, match="step must be a non-negative integer, got -1"):
        save_checkpoint(tmp_path, step=-1, spec_hash=SPEC, model=model)
    with pytest.raises(ValueError, match="keep_last must be an integer >= 1, got 0"):
        save_checkpoint(tmp_path, step=1, spec_hash=SPEC, model=model, keep_last=0)


# --------------------------------------------------------------------------- loading errors
@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    model, opt = _toy()
    return save_checkpoint(tmp_path / "ckpt", step=7, spec_hash=SPEC, model=model, optimizers={"adamw": opt})


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nowhere: the path does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*empty: it holds no step-\* folders"):
        load_checkpoint(tmp_path / "empty")


def test_load_other_spec(saved: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"was written for a different spec \(hash {SPEC}, this spec has "
                                              r"0123456789abcdef\)"):
        load_checkpoint(saved, spec_hash="0123456789abcdef")
    assert load_checkpoint(saved.parent, spec_hash=SPEC).step == 7  # a checkpoints folder -> its newest


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / META_FILE).unlink(), "meta.json is missing"),
    (lambda p: (p / TENSOR_FILE).unlink(), "tensors.safetensors is missing"),
    (lambda p: (p / META_FILE).write_text("{oops"), "meta.json is not valid JSON"),
    (lambda p: (p / META_FILE).write_text('{"format": "other"}'), "is not an nldsl checkpoint"),
    (lambda p: _truncate(p / TENSOR_FILE), "does not match the hash"),
    (lambda p: _flip_last_byte(p / TENSOR_FILE), "does not match the hash"),
], ids=["no-meta", "no-tensors", "bad-json", "foreign-json", "truncated", "bit-flip"])
def test_load_corrupt(saved: Path, damage, message: str) -> None:
    damage(saved)
    with pytest.raises(CheckpointError, match=rf"corrupt checkpoint .*step-00000007: .*{message}"):
        load_checkpoint(saved)


def test_truncated_tensor_file_without_hash_check(saved: Path) -> None:
    _truncate(saved / TENSOR_FILE)
    with pytest.raises(CheckpointError, match="cannot read tensors.safetensors"):
        load_checkpoint(saved, verify=False)


def test_newer_format_is_refused(saved: Path) -> None:
    meta = json.loads((saved / META_FILE).read_text())
    meta["format_version"] = 99
    (saved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="written by a newer nldsl"):
        load_checkpoint(saved)


def test_restore_into_mismatched_objects(saved: Path) -> None:
    ck = load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="model parameters do not fit this model"):
        ck.restore(model=nn.Linear(3, 3))
    _, opt = _toy()
    with pytest.raises(CheckpointError, match=r"no state for optimizer 'muon' \(saved: adamw\)"):
        ck.restore(optimizers={"muon": opt})
    other = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match="optimizer 'adamw' state does not fit"):
        ck.restore(optimizers={"adamw": other})


def test_never_unpickles() -> None:
    source = Path(ckmod.__file__).read_text()
    assert "torch.load(" not in source and "import pickle" not in source


# --------------------------------------------------------------------------- resume
def test_resume_is_bit_identical(tmp_path: Path) -> None:
    """10 straight steps == 5 steps, save, load into fresh objects, 5 more (dropout RNG and data included)."""
    data = torch.randint(0, 32, (4000,), generator=torch.Generator().manual_seed(0))

    def fresh():
        model, opt = _toy(seed=0)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return model, opt, sched, BatchSampler(data, 4, 16, seed=9)

    torch.manual_seed(123)
    model, opt, sched, sampler = fresh()
    straight = []
    for _ in range(10):
        straight.append(_step(model, opt, next(sampler)))
        sched.step()

    torch.manual_seed(123)
    m1, o1, s1, d1 = fresh()
    first = []
    for _ in range(5):
        first.append(_step(m1, o1, next(d1)))
        s1.step()
    state = {"mem": torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), "pos": 4}  # in-context state
    save_checkpoint(tmp_path, step=5, spec_hash=SPEC, model=m1, optimizers={"adamw": o1, "sched": s1},
                    sampler=d1, context_state=state)
    torch.manual_seed(999)  # disturb every generator before resuming
    random.seed(999)

    m2, o2, s2, d2 = fresh()
    ck = load_checkpoint(tmp_path, spec_hash=SPEC)
    ck.restore(model=m2, optimizers={"adamw": o2, "sched": s2}, sampler=d2)
    assert ck.step == 5 and ck.context_state["pos"] == 4 and torch.equal(ck.context_state["mem"], state["mem"])
    second = []
    for _ in range(5):
        second.append(_step(m2, o2, next(d2)))
        s2.step()
    assert first + second == straight
    for (name, p), q in zip(model.named_parameters(), m2.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(o2.state_dict()["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])
