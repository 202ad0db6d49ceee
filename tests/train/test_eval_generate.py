"""`nldsl eval` (perplexity, bits per byte, cloze) and `nldsl generate` (seeded sampling, memories updating)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from nldsl.checkpoint import CheckpointError
from nldsl.datasets import ClozeItem
from nldsl.evaluate import cloze_accuracy, evaluate_run, load_trained
from nldsl.generate import generate_run, generate_text, sample
from nldsl.runs import RunError
from nldsl.tokenizer import ByteTokenizer
from nldsl.train import train

from .nl_runs import mem_spec, small_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mem")
    spec = mem_spec(tmp)
    train(spec, steps=2, out=tmp / "run", overrides=["checkpoint.every=1", "checkpoint.keep=3"], progress=False,
          tensorboard=False)
    return spec, tmp / "run"


@pytest.fixture(scope="module")
def loaded(trained):
    spec, run = trained
    return load_trained(spec, run, load_data=False)


def test_eval_reports_perplexity_bpb_and_cloze_and_writes_json(trained):
    spec, run = trained
    result = evaluate_run(spec, run, max_batches=2, cloze_items=4)
    assert result.step == 2 and result.val_tokens == 2 * 2 * 32
    assert result.perplexity == pytest.approx(math.exp(result.val_loss))
    assert result.bits_per_byte == pytest.approx(result.val_loss / math.log(2))
    assert result.cloze_items == 4 and 0.0 <= result.cloze_accuracy <= 1.0
    assert json.loads((run / "eval.json").read_text()) == result.to_dict()


def test_eval_takes_the_run_its_checkpoints_or_one_step(trained):
    spec, run = trained
    steps = [evaluate_run(spec, where, max_batches=1, cloze_items=0, json_path=run / "e.json").step
             for where in (run, run / "checkpoints", run / "checkpoints" / "step-00000001")]
    assert steps == [2, 2, 1]


def test_eval_of_another_spec_is_refused(trained, tmp_path):
    _, run = trained
    with pytest.raises(CheckpointError, match="different spec"):
        evaluate_run(small_spec(tmp_path), run, max_batches=1, cloze_items=0)


def test_eval_needs_a_run_folder(tmp_path):
    with pytest.raises(RunError, match="not inside an nldsl run folder"):
        evaluate_run(small_spec(tmp_path), tmp_path, cloze_items=0)


class _Oracle(torch.nn.Module):
    """Knows every item's text: predicts the true next byte (or always a wrong one) after any prefix."""

    def __init__(self, texts, wrong=False):
        super().__init__()
        self.next = {}
        for ids in texts:
            for i in range(1, len(ids)):
                self.next[tuple(ids[:i])] = ids[i]
        self.wrong = wrong

    def forward(self, tokens, state=None):
        logits = torch.zeros(*tokens.shape, 256)  # (B, T, V)
        for b, row in enumerate(tokens.tolist()):
            for t in range(len(row)):
                nxt = self.next.get(tuple(row[:t + 1]), 0)
                logits[b, t, (nxt + 1) % 256 if self.wrong else nxt] = 1.0
        return logits, {}


@pytest.mark.parametrize("wrong, expected", [(False, 1.0), (True, 0.0)], ids=["oracle", "always-wrong"])
def test_cloze_scores_exact_greedy_words(wrong, expected):
    tok = ByteTokenizer()
    items = [ClozeItem("Thou art more lovely and more ", "temperate"), ClozeItem("To be, or not to ", "be")]
    model = _Oracle([tok.encode(it.context + it.answer) for it in items], wrong)
    fake = SimpleNamespace(model=model, device="cpu", task_levels=False, autocast=None)
    assert cloze_accuracy(fake, tok, items, batch_size=2) == expected  # one right-padded batch


def test_generation_is_deterministic_under_a_seed(trained, loaded):
    spec, run = trained
    a = generate_run(spec, run, "To be", tokens=24, seed=3)  # the whole command: rebuild, load, sample
    b = generate_text(loaded, "To be", tokens=24, seed=3)
    c = generate_text(loaded, "To be", tokens=24, seed=4)
    assert a.text == b.text and a.ids == b.ids and len(a.ids) == 24
    assert c.ids != a.ids
    greedy = {generate_text(loaded, "To be", tokens=8, temperature=0.0, seed=s).text for s in (1, 2)}
    assert len(greedy) == 1
    assert generate_text(loaded, "To be", tokens=8, top_k=1, seed=5).text in greedy


def test_in_context_memory_keeps_updating_while_generating(loaded):
    gen = generate_text(loaded, "To be", tokens=24, seed=0, trace=True)
    before, after = gen.prompt_state["0"]["lmm"]["memory"], gen.state["0"]["lmm"]["memory"]
    assert not torch.equal(before["w"]["0"], after["w"]["0"])  # the memory kept writing from its own samples
    assert gen.state["0"]["ffn"]["pos"] == len("To be") + 24 - 1


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": -1}, "--tokens"), ({"temperature": -0.5}, "--temperature"), ({"top_k": 0}, "--top-k")],
    ids=["negative-tokens", "negative-temperature", "zero-top-k"])
def test_bad_sampling_options_are_clear_errors(trained, kwargs, message):
    spec, run = trained
    with pytest.raises(RunError, match=message):
        generate_run(spec, run, "To be", **kwargs)  # refused before anything is loaded


class _Diverging(torch.nn.Module):
    """Finite logits for the first ``good`` calls, NaN afterwards (a memory blowing up while it writes)."""

    def __init__(self, good):
        super().__init__()
        self.good = good

    def forward(self, tokens, state=None):
        calls = 0 if state is None else state["calls"]
        logits = torch.zeros(*tokens.shape, 256)  # (B, T, V)
        if calls >= self.good:
            logits.fill_(float("nan"))
        return logits, {"calls": calls + 1}


def test_sampling_stops_cleanly_when_the_logits_go_non_finite():
    fake = SimpleNamespace(model=_Diverging(good=4), device="cpu", task_levels=False, autocast=None)
    ids, state, note = sample(fake, [1, 2, 3], 10, temperature=1.0, seed=0)
    assert len(ids) == 4 and state["calls"] == 5
    assert "stopped after 4 of 10 tokens" in note and "non-finite" in note
