"""The benchmark scripts on CPU at toy sizes: every code path of gpu_check.py and throughput.py runs before
a GPU job does, and benchmarks/flops.py's analytic counts match torch's FlopCounterMode on the real models."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import flops  # noqa: E402
import fused_scan  # noqa: E402
import gpu_check  # noqa: E402
import lm  # noqa: E402
import throughput  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Toy sizes: one thread (OpenMP barriers make tiny ops 40x slower on a busy 2-core box)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_throughput_smoke_measures_every_model(tmp_path, capsys):
    assert throughput.main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert [r["key"] for r in rows] == list(lm.MODEL_NAMES)
    for r in rows:
        assert r["tok_s"] > 0 and r["steps"] >= 1, r
        assert r["params_M"] > 0 and r["floor_tok_s"] > 0 and r["mfu"] > 0, r
        assert "Error" not in r["note"] and "OOM" not in r["note"], r["note"]
    assert rows[0]["ratio"] == 1.0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("HOPE ")  # the table is printed last
    assert (tmp_path / "throughput.log").read_text().count("[train]") == len(rows)


def test_chunk_compile_mode_traces_the_memory_update_once(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    args = ["--smoke", "--models", "titans,hope", "--compile", "chunk", "--no-profile", "--out", str(tmp_path)]
    assert throughput.main(args) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert [r["compile"] for r in rows] == ["chunk", "chunk"] and all(r["tok_s"] > 0 for r in rows)
    assert counters["stats"]["unique_graphs"] > 0  # the patched memory_segment went through dynamo


def test_generate_smoke_decodes_with_state_and_kv_cache(tmp_path):
    args = ["--smoke", "--generate", "--models", "baseline,transformer,hope", "--out", str(tmp_path)]
    assert throughput.main(args) == 0
    rows = json.loads((tmp_path / "generate.json").read_text())["rows"]
    expected = [(m, b) for b in (1, 2) for m in ("baseline", "transformer", "hope")]
    assert [(r["key"], r["batch"]) for r in rows] == expected
    for r in rows:
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0, r


def test_generate_without_cudnn_attention_gives_the_same_tokens(tmp_path):
    """``--sdpa no-cudnn`` only narrows the SDPA backends: the row says so, and the decoding is unchanged."""
    args = ["--smoke", "--generate", "--models", "baseline", "--gen-batches", "1", "--out", str(tmp_path)]
    assert throughput.main([*args, "--sdpa", "no-cudnn"]) == 0
    rows = json.loads((tmp_path / "generate.json").read_text())["rows"]
    assert rows and all("sdpa no-cudnn" in r["note"] and r["decode_tok_s"] > 0 for r in rows)
    with throughput.sdpa_backends("no-cudnn"):
        torch.manual_seed(0)
        model = lm.build_model("baseline", lm.Size(vocab=64, dim=32, layers=1, heads=2), "cpu").eval()
        prompt = torch.randint(0, 64, (1, 6))
        with torch.no_grad():
            narrowed = lm.generate(lm.lm_step_fn(model, "baseline"), prompt, 3)
    with torch.no_grad():
        plain = lm.generate(lm.lm_step_fn(model, "baseline"), prompt, 3)
    assert torch.equal(narrowed, plain)


def test_gpu_check_smoke_runs_every_case(tmp_path):
    """Every case eagerly; dynamo (explain + compile, eager backend) until a small budget is spent."""
    assert gpu_check.main(["--smoke", "--no-tests", "--compile-budget-s", "3", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert len(rows) == len(gpu_check.cases(gpu_check.sizes(True), True))
    for r in rows:
        assert "eager_ms" in r, r  # no case failed
        assert r["err_fp32"] < 1e-5 and r["err_y"] < 3e-2, r
        if r["case"] != "HOPE LM train_segments":
            assert ("graphs" in r and r["err_compiled"] < 1e-6) or "compile skipped" in r["note"], r
    assert rows[0]["graphs"] == "1/0" and "compile skipped" in rows[-2]["note"]


def test_fused_scan_smoke_compares_every_path(tmp_path, capsys):
    """benchmarks/fused_scan.py at toy size: the torch paths, and the fused kernels where Triton's interpreter is
    on (tests/conftest.py turns it on without CUDA), each row within rounding of the torch path."""
    from nldsl.nn import fused_memory

    assert fused_scan.main(["--smoke", "--warps", "4", "--dots", "tf32", "--reps", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "fused_scan.json").read_text())["rows"]
    paths = [r["path"] for r in rows]
    expected = ["torch eager", "torch, chunk compiled"]
    if fused_memory.triton_available() and fused_memory.interpreter_on():
        expected.append("fused")
    assert paths == expected
    assert all(r["err_y"] < 1e-5 and r["err_grad"] < 1e-4 and r["step_ms"] > 0 for r in rows)
    assert "Titans memory scan, one layer" in capsys.readouterr().out


def test_a_failing_row_is_reported_and_the_table_goes_on(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(throughput, "train_row", broken)
    assert throughput.main(["--smoke", "--models", "baseline,titans", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())["rows"]
    assert [r["note"][:4] for r in rows] == ["OOM:", "OOM:"]


def test_baseline_kv_cache_decoding_equals_the_full_forward():
    torch.manual_seed(0)
    model = lm.build_model("baseline", lm.TOY).double()
    tokens = torch.randint(0, lm.TOY.vocab, (2, 13))
    fn = lm.lm_step_fn(model, "baseline")
    logits, cache = fn(tokens[:, :6], None)
    pieces = [logits]
    for a, b in ((6, 9), (9, 10), (10, 13)):  # several new tokens at once, then one
        logits, cache = fn(tokens[:, a:b], cache)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, 1), model(tokens), atol=1e-10, rtol=0)


# -------------------------------------------------------------------------------------------- flops
FLOP_SIZE = lm.Size(vocab=96, dim=48, layers=2, heads=2, cms_hidden=40, cms_periods=(8, 16, 32), titans_chunk=8,
                    hope_chunk=8, hope_proj_chunk=4)
"""dim 48: the baseline's SwiGLU width (rounded to 64) equals nldsl's (rounded to 32); T a multiple of chunks."""


def _count(fn) -> tuple[float, float]:
    """(all FLOPs, FLOPs of SDPA) counted by FlopCounterMode while ``fn`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = counter.get_flop_counts()["Global"]
    sdpa = sum(v for k, v in per_op.items() if "scaled_dot_product" in str(k))
    return counter.get_total_flops(), sdpa


@pytest.mark.parametrize("name", lm.MODEL_NAMES)
def test_analytic_forward_flops_match_the_flop_counter(name):
    torch.manual_seed(0)
    model = lm.build_model(name, FLOP_SIZE)
    B, T = 2, 32
    tokens = torch.randint(0, FLOP_SIZE.vocab, (B, T))
    total, sdpa = _count(lambda: model(tokens))
    shape = lm.flops_shape(model, T, B)
    attention_layers = shape.layers if name in ("baseline", "transformer", "hope_attention") else 0
    expected = flops.forward_flops_per_token(name, shape) - attention_layers * flops.attention_core(shape.dim, T)
    assert abs((total - sdpa) / (expected * B * T) - 1) < 1e-6  # SDPA aside (not counted on every backend)


@pytest.mark.parametrize("name", ["titans", "hope"])
def test_backward_costs_about_two_forwards(name):
    """TRAIN_FACTOR = 3 holds for the unrolled inner updates too (depthwise-conv backward is mis-counted by
    FlopCounterMode as a dense conv, so convolutions are left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = lm.build_model(name, FLOP_SIZE)
    tokens = torch.randint(0, FLOP_SIZE.vocab, (2, 32))
    with FlopCounterMode(display=False) as fwd:
        logits, _ = model(tokens)
    with FlopCounterMode(display=False) as bwd:
        logits.float().square().mean().backward()

    def no_conv(counter):
        return sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" not in str(k))

    assert 1.6 < no_conv(bwd) / no_conv(fwd) < 2.2


def test_floors_at_the_table_sizes():
    """The numbers docs/performance.md quotes (H100: 790 TFLOP/s, 3.0 TB/s)."""
    shapes = [flops.Shape(seq=2048, batch=16), flops.Shape(seq=16384, batch=2)]
    rows = {(r["model"], r["seq"]): r for r in flops.table(list(flops.LAYER_FLOPS), shapes)}
    assert math.isclose(rows["baseline", 2048]["params_M"], 109.5, abs_tol=0.1)
    assert math.isclose(rows["baseline", 2048]["GFLOP_per_token"], 0.770, abs_tol=1e-3)
    assert rows["titans", 2048]["bound"] == "compute" and rows["titans", 16384]["floor_ratio"] > 2
    assert rows["hope", 2048]["bound"] == rows["hope_attention", 2048]["bound"] == "memory"
    # per-head projection memories and CMS levels of hidden = dim (the examples): still far below the
    # baseline's floor, because of the per-sequence fast state streamed every chunk
    assert rows["hope", 2048]["floor_ratio"] < 0.1 and rows["hope_attention", 2048]["floor_ratio"] < 0.5
    assert math.isclose(rows["hope", 2048]["params_M"], 137.0, abs_tol=0.5)
    assert math.isclose(rows["hope_attention", 2048]["params_M"], 120.0, abs_tol=0.5)
