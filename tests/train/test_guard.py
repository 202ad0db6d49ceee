"""Numeric guards (NaN/inf losses named by step, level and first bad tensor) and graceful Ctrl-C."""
from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from torch import nn

from nldsl.checkpoint import latest, load_checkpoint, save_checkpoint
from nldsl.runtime_guard import (GracefulInterrupt, NonFiniteLossError, NonFiniteTensor, check_all_finite,
                                 check_finite, find_non_finite, first_non_finite)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_finite_loss_passes_through() -> None:
    assert check_finite(torch.tensor(1.25), step=3) == 1.25
    assert check_finite(0.5, step=3) == 0.5
    assert check_finite(torch.tensor(2.0, dtype=torch.bfloat16), step=1) == 2.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "neg-inf"])
def test_non_finite_loss_names_step_and_level(bad: float) -> None:
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss \({bad}\) at step 12 in level 'cms\.fast' "
                                                 r"\(component 'mlp'\)\. Try a lower learning rate") as info:
        check_finite(torch.tensor(bad), step=12, where="level 'cms.fast' (component 'mlp')")
    assert info.value.step == 12 and info.value.culprit is None
    assert isinstance(info.value, FloatingPointError)


def test_finds_the_first_bad_parameter() -> None:
    model = _model()
    with torch.no_grad():
        model[2].weight[0, :2] = float("nan")
        model[2].bias[1] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"first non-finite tensor: parameter '2\.weight' "
                                                 r"\(2 NaN, 0 inf of 8 values\)") as info:
        check_finite(torch.tensor(float("nan")), step=4, model=model)
    assert info.value.culprit == NonFiniteTensor("2.weight", "parameter", 2, 0, 8)


def test_finds_a_bad_gradient_when_parameters_are_fine() -> None:
    model = _model()
    model(torch.randn(3, 4)).sum().backward()
    model[0].bias.grad[0] = float("-inf")
    assert find_non_finite(model) == NonFiniteTensor("0.bias", "gradient", 0, 1, 4)


def test_finds_bad_in_context_state_by_name() -> None:
    state = {"hope": {"cms": [{"W": torch.zeros(2, 3)}, {"W": torch.tensor([[1.0, float("nan")]])}], "pos": 3},
             "tokens": torch.zeros(2, dtype=torch.int64)}
    found = find_non_finite(_model(), state)
    assert found == NonFiniteTensor("hope.cms.1.W", "state", 1, 0, 2)
    assert "state 'hope.cms.1.W' (1 NaN, 0 inf of 2 values)" in found.describe()
    assert find_non_finite(_model(), {"ok": torch.ones(3)}) is None
    assert first_non_finite([("none", None), ("ints", torch.tensor([1, 2]))], "state") is None


def test_check_all_finite_names_the_level() -> None:
    values = check_all_finite({"level 'slow'": torch.tensor(1.0), "level 'fast'": 2.0}, step=1)
    assert values == {"level 'slow'": 1.0, "level 'fast'": 2.0}
    with pytest.raises(NonFiniteLossError, match=r"at step 9 in level 'fast'"):
        check_all_finite({"level 'slow'": 1.0, "level 'fast'": float("nan")}, step=9)


def test_nan_stops_before_saving_so_last_good_checkpoint_survives(tmp_path) -> None:
    """The pattern the training loop follows: check, then save; a NaN never reaches the disk."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        for step in range(1, 6):
            scale = float("inf") if step == 3 else 1.0
            loss = model(x * scale).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            check_finite(loss, step, "level 'outer'", model=model)
            opt.step()
            save_checkpoint(tmp_path, step=step, spec_hash="h", model=model)
    good = load_checkpoint(latest(tmp_path))
    assert good.step == 2 and all(bool(torch.isfinite(t).all()) for t in good.model.values())


# --------------------------------------------------------------------------- Ctrl-C
def test_first_interrupt_sets_a_flag_second_aborts(capsys) -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with GracefulInterrupt() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested  # the loop would save a checkpoint here and break
            assert "press Ctrl-C again to abort" in capsys.readouterr().err
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_handler_restored_after_a_clean_exit() -> None:
    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as stop:
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before and not stop.requested


def test_sigterm_can_be_handled_too() -> None:
    with GracefulInterrupt(signals=(signal.SIGTERM,), message="preempted") as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested


def test_disabled_or_off_main_thread_is_a_no_op() -> None:
    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt(enabled=False):
        assert signal.getsignal(signal.SIGINT) is before
    errors = []

    def worker() -> None:
        try:
            with GracefulInterrupt() as stop:
                assert not stop.requested
        except Exception as exc:  # signal.signal off the main thread would raise ValueError
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
