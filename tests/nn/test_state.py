"""The in-context state container: nesting, ints, detach, save/restore."""
import pytest
import torch

from nldsl.nn.state import (
    clone_state, detach_state, flatten_state, load_state, save_state, state_to, states_close, unflatten_state,
)


def _state():
    w = torch.randn(2, 3, 4, requires_grad=True)
    return {"mem": {"w": w * 2, "pos": 3}, "conv": torch.randn(2, 3, 5), "step": 7}


def test_flatten_roundtrip_keeps_ints_and_nesting():
    s = _state()
    back = unflatten_state(flatten_state(s))
    assert back["mem"]["pos"] == 3 and back["step"] == 7
    assert states_close(detach_state(s), back)


def test_detach_cuts_history_and_keeps_values():
    s = _state()
    d = detach_state(s)
    assert s["mem"]["w"].requires_grad and not d["mem"]["w"].requires_grad
    assert torch.equal(d["mem"]["w"], s["mem"]["w"].detach())


def test_save_load_safetensors(tmp_path):
    s = detach_state(_state())
    path = str(tmp_path / "state.safetensors")
    save_state(s, path)
    assert states_close(load_state(path), s, rtol=0, atol=0)


def test_dtype_move_and_clone_are_independent():
    s = detach_state(_state())
    d = state_to(s, torch.float64)
    assert d["conv"].dtype == torch.float64 and d["mem"]["pos"] == 3
    c = clone_state(s)
    c["conv"].add_(1)
    assert not torch.equal(c["conv"], s["conv"])


def test_states_close_detects_differences():
    s = detach_state(_state())
    other = clone_state(s)
    other["mem"]["pos"] = 4
    assert not states_close(s, other)
    assert not states_close(s, {"conv": s["conv"]})


def test_bad_keys_and_leaves_are_rejected():
    with pytest.raises(ValueError):
        flatten_state({"a.b": torch.zeros(1)})
    with pytest.raises(TypeError):
        flatten_state({"a": "text"})
