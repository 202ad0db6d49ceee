"""Numerical test helpers shared by the test suite and the GPU check script."""
from __future__ import annotations

import torch
from torch import Tensor


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """‖actual − expected‖ / max(‖expected‖, tiny), computed in float64."""
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    denom = max(float(e.norm()), 1e-300)
    return float((a - e).norm()) / denom


def assert_rel_close(actual: Tensor, expected: Tensor, tol: float, what: str = "value") -> None:
    """Fail with the measured relative error (not just a boolean) when it exceeds ``tol``."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = rel_err(actual, expected)
    if not err <= tol:  # also catches NaN
        raise AssertionError(f"{what}: relative error {err:.3e} > tolerance {tol:.1e}")
