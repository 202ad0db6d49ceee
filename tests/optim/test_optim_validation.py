"""Bad hyperparameters raise ValueError naming the argument and the value (never a deep traceback)."""
from __future__ import annotations

import math

import pytest
import torch

from nldsl.optim import M3, AdamMemory, DeepMomentum, DeltaMomentum, Muon

ALL = {
    "muon": Muon, "m3": M3, "delta_momentum": DeltaMomentum, "deep_momentum": DeepMomentum, "adam_memory": AdamMemory,
}

SHARED = {
    "negative_lr": (dict(lr=-1e-3), "lr must be >= 0"),
    "nan_lr": (dict(lr=math.nan), "lr must be finite"),
    "inf_lr": (dict(lr=math.inf), "lr must be finite"),
    "string_lr": (dict(lr="0.1"), "lr must be a number"),
    "negative_weight_decay": (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    "adamw_beta_one": (dict(adamw_betas=(0.9, 1.0)), r"adamw_betas\[1\] must be in \[0, 1\)"),
    "adamw_betas_length": (dict(adamw_betas=(0.9,)), "adamw_betas must be a tuple of 2"),
    "adamw_eps_nan": (dict(adamw_eps=math.nan), "adamw_eps must be finite"),
    "adamw_ratio_negative": (dict(adamw_lr_ratio=-1.0), "adamw_lr_ratio must be >= 0"),
}

SPECIFIC = {
    "muon_momentum_one": (Muon, dict(momentum=1.0), r"momentum must be in \[0, 1\)"),
    "muon_momentum_negative": (Muon, dict(momentum=-0.1), r"momentum must be in \[0, 1\)"),
    "muon_ns_steps_zero": (Muon, dict(ns_steps=0), "ns_steps must be an int >= 1"),
    "muon_nesterov_string": (Muon, dict(nesterov="yes"), "nesterov must be True or False"),
    "m3_betas_length": (M3, dict(betas=(0.9, 0.999)), "betas must be a tuple of 3"),
    "m3_beta3_one": (M3, dict(betas=(0.9, 0.999, 1.0)), r"betas\[2\] must be in \[0, 1\)"),
    "m3_beta1_inf": (M3, dict(betas=(math.inf, 0.999, 0.9)), r"betas\[0\] must be finite"),
    "m3_alpha_negative": (M3, dict(alpha=-0.5), "alpha must be >= 0"),
    "m3_slow_every_zero": (M3, dict(slow_every=0), "slow_every must be an int >= 1"),
    "m3_slow_every_float": (M3, dict(slow_every=2.5), "slow_every must be an int >= 1"),
    "m3_eps_negative": (M3, dict(eps=-1e-8), "eps must be >= 0"),
    "m3_form_unknown": (M3, dict(form="adam"), "form must be one of 'ema', 'paper'"),
    "m3_v_floor_negative": (M3, dict(v_floor=-0.1), "v_floor must be >= 0"),
    "m3_v_floor_nan": (M3, dict(v_floor=math.nan), "v_floor must be finite"),
    "delta_beta_one": (DeltaMomentum, dict(beta=1.0), r"beta must be in \[0, 1\)"),
    "delta_delta_above_one": (DeltaMomentum, dict(delta=1.5), r"delta must be in \[0, 1\]"),
    "delta_raw_delta_negative": (DeltaMomentum, dict(delta=-0.1, normalize=False), "delta must be >= 0"),
    "deep_hidden_zero": (DeepMomentum, dict(hidden=0), "hidden must be an int >= 1"),
    "deep_inner_lr_negative": (DeepMomentum, dict(inner_lr=-0.1), "inner_lr must be >= 0"),
    "deep_inner_decay_above_one": (DeepMomentum, dict(inner_decay=2.0), r"inner_decay must be in \[0, 1\]"),
    "deep_nonlinearity_unknown": (DeepMomentum, dict(nonlinearity="relu"), "nonlinearity must be one of"),
    "deep_seed_negative": (DeepMomentum, dict(seed=-1), "seed must be an int >= 0"),
    "adam_memory_form_unknown": (AdamMemory, dict(form="adagrad"), "form must be one of 'sum', 'ema'"),
    "adam_memory_sum_beta2_zero": (AdamMemory, dict(betas=(0.9, 0.0)), "betas.1. must be > 0 in the sum form"),
}


def _param():
    return [torch.nn.Parameter(torch.zeros(3, 3))]


@pytest.mark.parametrize("cls", ALL.values(), ids=ALL.keys())
@pytest.mark.parametrize("bad", SHARED.values(), ids=SHARED.keys())
def test_shared_arguments_rejected(cls, bad):
    kwargs, message = bad
    with pytest.raises(ValueError, match=message):
        cls(_param(), **kwargs)


@pytest.mark.parametrize("case", SPECIFIC.values(), ids=SPECIFIC.keys())
def test_specific_arguments_rejected(case):
    cls, kwargs, message = case
    with pytest.raises(ValueError, match=message):
        cls(_param(), **kwargs)


@pytest.mark.parametrize("cls", ALL.values(), ids=ALL.keys())
def test_bad_value_in_a_param_group_rejected(cls):
    with pytest.raises(ValueError, match="lr must be >= 0, got -0.5"):
        cls([{"params": _param()}, {"params": _param(), "lr": -0.5}])


@pytest.mark.parametrize("cls", ALL.values(), ids=ALL.keys())
def test_add_param_group_validates(cls):
    opt = cls(_param())
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        opt.add_param_group({"params": _param(), "weight_decay": -1.0})


def test_adamw_flag_must_be_bool():
    with pytest.raises(ValueError, match="adamw must be True or False"):
        Muon([{"params": _param(), "adamw": "yes"}])


def test_sparse_gradients_rejected():
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = Muon(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.step()


def test_zero_lr_is_allowed_and_freezes_matrices():
    p = _param()
    opt = M3(p, lr=0.0)
    p[0].grad = torch.ones(3, 3)
    opt.step()
    assert torch.equal(p[0].detach(), torch.zeros(3, 3))
