"""Shared pytest set-up: GPU tests skip cleanly without CUDA; ``--update-golden`` rewrites goldens."""
from __future__ import annotations

import os

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite golden files (tests/golden, tests/checks) from the current output; review the diff")


@pytest.fixture
def update_golden(request) -> bool:
    """True with ``--update-golden`` (or ``NLDSL_UPDATE_GOLDEN=1``)."""
    return bool(request.config.getoption("--update-golden")) or os.environ.get("NLDSL_UPDATE_GOLDEN") == "1"


def pytest_configure(config):
    """One torch thread per xdist worker: two workers on two cores otherwise oversubscribe badly.

    Without CUDA, Triton kernels (the fused memory scan) run in Triton's CPU interpreter, which Triton
    only chooses when ``TRITON_INTERPRET=1`` is set before it is first imported: here, before any test.
    """
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing is a packaging error, reported by the tests themselves
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
