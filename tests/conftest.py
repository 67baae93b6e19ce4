"""Test set-up shared by every test file.

The tests mirror the package (``library/``, ``ops/``, ``mae/``, ``train/``, ``eval/``,
``tooling/``); the helpers beside this file (``independent``, ``tolerances``, ``gloo``, ...) are
imported by name from every folder. Without a GPU, Triton kernels run in Triton's interpreter, which must be switched on before any
``@triton.jit`` decorator runs, i.e. before ``mmae_fast.ops.tcr.triton`` is imported.
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shared helpers

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


#: Seed of the random test inputs; set MMAE_FAST_TEST_SEED to draw other inputs.
SEED = int(os.environ.get("MMAE_FAST_TEST_SEED", "0"))


@pytest.fixture
def gen():
    """A seeded CPU generator per test: random inputs, reproducible from MMAE_FAST_TEST_SEED."""
    return torch.Generator().manual_seed(SEED)


#: MMAE_FAST_REQUIRE_GPU=1 (``make gpu-check``): a GPU test that skips is reported as a failure.
REQUIRE_GPU = os.environ.get("MMAE_FAST_REQUIRE_GPU", "") == "1"


def _needs_gpu(item) -> bool:
    """The test is marked ``gpu`` or carries ``requires_cuda``."""
    return item.get_closest_marker("gpu") is not None or any(
        mark.kwargs.get("reason") == requires_cuda.kwargs["reason"]
        for mark in item.iter_markers("skipif"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_GPU and report.skipped and _needs_gpu(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"MMAE_FAST_REQUIRE_GPU=1: this GPU test was skipped ({reason}); "
                           f"on the GPU machine it must run")
