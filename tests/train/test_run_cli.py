"""The run commands on the command line: output, exit codes, and a clear message (never a traceback) for
every user mistake the issue lists."""
from __future__ import annotations

import json

import pytest
import torch

from nldsl.run_cli import main

from .nl_runs import small_spec


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    spec = small_spec(tmp)
    assert main(["train", str(spec), "--steps", "2", "--out", str(tmp / "run"), "--quiet", "--no-tensorboard"]) == 0
    return spec, tmp / "run"


def test_train_prints_progress_summary_and_curve(capsys, tmp_path):
    code, out, _ = run(capsys, "train", small_spec(tmp_path), "--steps", "2", "--out", tmp_path / "run",
                       "--no-tensorboard", "--set", "eval.every=1")
    assert code == 0
    assert "train step 2/2 (100%) | loss" in out and "tok/s" in out and "eta" in out  # plain lines off a TTY
    assert "step 1: val loss" in out and "bpb" in out
    assert "run summary" in out and "final train loss" in out
    assert f"loss curve: {tmp_path / 'run' / 'loss.png'}" in out.replace("\n", "")


def test_eval_and_generate_commands(capsys, trained):
    spec, run_dir = trained
    code, out, _ = run(capsys, "eval", spec, "--ckpt", run_dir, "--batches", "1", "--cloze-items", "2")
    assert code == 0 and "perplexity" in out and "bits per byte" in out and "cloze" in out
    assert (run_dir / "eval.json").is_file()
    code, out, _ = run(capsys, "generate", spec, "--ckpt", run_dir, "--prompt", "To be", "--tokens", "5", "--seed", "1")
    assert code == 0 and out.startswith("To be")


def _corrupt(run_dir):
    tensors = next((run_dir / "checkpoints").glob("step-*")) / "tensors.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", ["missing-data", "empty-data", "missing-file", "spec-error", "out-of-range-set",
                                  "unknown-set-key", "malformed-set", "resume-nothing", "existing-run"])
def test_train_user_errors_exit_1_with_a_message(capsys, tmp_path, case):
    (tmp_path / "empty.txt").write_text("")
    spec = small_spec(tmp_path, {"missing-data": 'text("nope.txt")', "empty-data": 'text("empty.txt")'}.get(
        case, 'text("builtin:shakespeare")'))
    if case == "existing-run":
        (tmp_path / "run" / "checkpoints" / "step-00000001").mkdir(parents=True)
    args = {
        "missing-file": ["train", tmp_path / "nope.nl"],
        "spec-error": ["train", small_spec(tmp_path, name="bad.nl", text="model m { dim = 0 }\n")],
        "out-of-range-set": ["train", spec, "--set", "seq=-4"],
        "unknown-set-key": ["train", spec, "--set", "stepz=4"],
        "malformed-set": ["train", spec, "--set", "steps"],
        "resume-nothing": ["train", spec, "--resume"],
    }.get(case, ["train", spec])
    code, out, err = run(capsys, *args, "--out", tmp_path / "run", "--quiet")
    expected = {
        "missing-data": "data not found", "empty-data": "is empty", "missing-file": "no such .nl file",
        "spec-error": "error[NL", "out-of-range-set": "(with --set seq=-4)", "unknown-set-key": "did you mean 'steps'",
        "malformed-set": "expects key=value", "resume-nothing": "no checkpoint to resume",
        "existing-run": "--resume to continue",
    }[case]
    assert code == 1 and expected in err, err


def test_checkpoint_of_another_spec_is_refused(capsys, trained, tmp_path):
    _, run_dir = trained
    other = small_spec(tmp_path, text=small_spec(tmp_path).read_text().replace("lr = 3e-3", "lr = 1e-3"))
    code, _, err = run(capsys, "eval", other, "--ckpt", run_dir, "--cloze-items", "0")
    assert code == 1 and "written for a different spec" in err


def test_corrupt_checkpoint_is_refused(capsys, tmp_path):
    spec = small_spec(tmp_path)
    assert main(["train", str(spec), "--steps", "1", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    _corrupt(tmp_path / "run")
    for argv in (["train", spec, "--out", tmp_path / "run", "--resume", "--steps", "2", "--quiet"],
                 ["eval", spec, "--ckpt", tmp_path / "run"]):
        code, _, err = run(capsys, *argv)
        assert code == 1 and "corrupt checkpoint" in err


def test_diverged_run_names_the_step_and_keeps_the_last_good_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "train", small_spec(tmp_path), "--steps", "20", "--out", tmp_path / "run", "--quiet",
                       "--set", "optimizer.lr=1e30", "--set", "grad_clip=0", "--set", "checkpoint.every=1")
    assert code == 1
    assert "non-finite loss" in err and "at step" in err and "level/component" in err
    assert "the last good checkpoint is" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when there is no GPU")
def test_cuda_without_gpu(capsys, tmp_path):
    code, _, err = run(capsys, "train", small_spec(tmp_path), "--device", "cuda", "--out", tmp_path / "run")
    assert code == 1 and "no CUDA GPU" in err


def test_codegen_command_writes_a_script(capsys, tmp_path):
    out = tmp_path / "train_small.py"
    code, stdout, _ = run(capsys, "codegen", small_spec(tmp_path), "-o", out)
    assert code == 0 and out.is_file() and "python" in stdout
    compile(out.read_text(), str(out), "exec")


def test_bench_prints_both_models_with_the_device(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide table: rich wraps cells at 80 columns off a terminal
    code, out, _ = run(capsys, "bench", small_spec(tmp_path), "--device", "cpu", "--steps", "2", "--warmup", "1",
                       "--no-compile")
    assert code == 0
    assert "small (nldsl)" in out and "Transformer++ (hand-written)" in out and "CPU" in out and "%" in out


def test_bench_says_how_each_memory_runs_its_chunks(capsys, monkeypatch):
    """Titans' memories: the fused scan needs CUDA, so on the CPU the bench names the torch loop and why."""
    from .nl_runs import ROOT

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("NLDSL_FUSED_SCAN", raising=False)
    small = ["D=48", "HEADS=3", "CHUNK=16", "model.layers=2", "model.vocab=256", "train.tokenizer=bytes"]
    args = ["--set=" + kv for kv in small]
    code, out, _ = run(capsys, "bench", str(ROOT / "examples" / "titans.nl"), "--device", "cpu", "--steps", "1",
                       "--warmup", "0", "--no-compile", "--no-baseline", "--seq", "32", "--batch", "2", *args)
    assert code == 0
    assert "memory scans:" in out
    assert "(+1 more): torch chunk loop (" in out
    assert "device cpu (the kernels run on CUDA)" in out or "Triton is not installed" in out


def test_scan_routes_name_the_reason_a_researcher_can_act_on():
    from nldsl.nn import NeuralMemory
    from nldsl.nn.fused_memory import fused_scan_mode, scan_routes

    fits = NeuralMemory(dim=64, n_heads=4, depth=2, hidden_mult=1.0, chunk_size=16)
    wide = NeuralMemory(dim=64, n_heads=4, depth=2, hidden_mult=3.0, chunk_size=16)
    gelu = NeuralMemory(dim=64, n_heads=4, depth=2, hidden_mult=1.0, chunk_size=16, activation="gelu")
    model = torch.nn.ModuleDict({"fits": fits, "wide": wide, "gelu": gelu})
    routes = scan_routes(model, torch.device("cpu"), torch.float32)
    assert routes["wide"] == "torch chunk loop (hidden width 48 (16, 32 or 64))"
    assert routes["gelu"] == "torch chunk loop (activation gelu (the kernels implement silu))"
    assert routes["fits"].startswith("torch chunk loop (")  # on the CPU
    with fused_scan_mode("off"):
        assert scan_routes(model, torch.device("cpu"), torch.float32)["fits"] == "torch chunk loop (NLDSL_FUSED_SCAN=off)"


@pytest.mark.parametrize("argv", [["train", "x.nl"], ["eval", "x.nl", "--ckpt", "d"],
                                  ["generate", "x.nl", "--ckpt", "d", "--prompt", "p"],
                                  ["codegen", "x.nl", "-o", "x.py"], ["bench", "x.nl"]], ids=lambda argv: argv[0])
def test_the_nldsl_command_has_the_run_commands(argv):
    from nldsl.cli import build_parser

    assert build_parser().parse_args(argv).command == argv[0]


def test_train_compare_smoke(tmp_path, capsys):
    """benchmarks/train_compare.py --smoke: the GPU comparison script, at toy size on the CPU."""
    import runpy

    from .nl_runs import ROOT

    compare = runpy.run_path(str(ROOT / "benchmarks" / "train_compare.py"), run_name="compare")
    assert compare["main"](["--smoke", "--out", str(tmp_path / "cmp"), "--json", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    for name in ("hope.nl (nldsl train)", "titans.nl (nldsl train)", "transformer.nl (nldsl train)",
                 "Transformer++ (hand-written)", "CPU", "vs baseline"):
        assert name in out
    assert len(json.loads((tmp_path / "cmp.json").read_text())["rows"]) == 4
