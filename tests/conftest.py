"""Shared fixtures: a tiny trained-shape checkpoint, the CamVid path, thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Passive OpenMP waiting: on a busy or shared CPU the default spin-waiting makes torch 10-50x
# slower (measured here); it must be set before torch loads its OpenMP runtime.
if not os.environ.get("OMP_WAIT_POLICY"):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

from _runtime_helpers import CAMVID, make_sensitive_checkpoint, make_tiny_checkpoint  # noqa: E402,F401 - re-exported

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# tests/trt_suite runs in its own process per TensorRT version (tests/test_tensorrt_suite.py).
collect_ignore = [] if os.environ.get("DANET_EDGE_TRT_SUITE") else ["trt_suite"]



@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """Root of CamVid in the SegNet layout; skips the test where it is absent."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip(f"CamVid not found at {CAMVID} (set DANET_EDGE_CAMVID)")
    return CAMVID


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Path of a ResNet-18 DANet checkpoint, 5 classes, image size 64x96 (random weights)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def pytest_terminal_summary(terminalreporter):
    """Print the per-version counts of the TensorRT suite (tests/test_tensorrt_suite.py)."""
    try:
        from test_tensorrt_suite import RESULTS
    except ImportError:
        return
    if RESULTS:
        terminalreporter.write_sep("-", "TensorRT suites (real bindings + stand-in)")
        for line in RESULTS:
            terminalreporter.write_line(line)
