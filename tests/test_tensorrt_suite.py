"""Runs tests/trt_suite once per TensorRT version, each in its own process, through the real bindings.

The real ``tensorrt-cu12-bindings`` wheels (10.3.0 for JetPack 6, 11.4 for desktop GPUs and JetPack 7)
cannot share one process or site-packages; ``trt_standin.env.prepare`` installs each into its own folder
and builds the stub libnvinfer it links. Inside, danet-edge's TensorRT code runs against the real
enums, signatures and calibrator classes and a signature-checked stand-in for the library's objects.
The suite must pass with no skip; the counts and versions are printed at the end of the run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trt_standin.env import VERSIONS, Unavailable, prepare, prepare_cuda_bindings

HERE = Path(__file__).resolve().parent
RESULTS: list[str] = []  # printed by tests/conftest.py's terminal summary


@pytest.mark.parametrize("version", VERSIONS)
def test_tensorrt_suite(version, tmp_path):
    try:
        site = prepare(version)
        cuda_site = prepare_cuda_bindings()
    except Unavailable as e:
        RESULTS.append(f"TensorRT {version}: not run ({e})")
        pytest.skip(str(e))
    env = site.env()
    env["DANET_EDGE_CUDA_BINDINGS_SITE"] = str(cuda_site)
    r = subprocess.run([sys.executable, "-m", "pytest", str(HERE / "trt_suite"), "-q", "-p", "no:cacheprovider",
                        "-rfEs", "--basetemp", str(tmp_path / "suite"),
                        "-o", "tmp_path_retention_policy=failed"],
                       env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.strip()]
    summary = lines[-1] if lines else "(no output)"
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed)", summary)}
    RESULTS.append(f"TensorRT {version} bindings: {summary.strip('= ')}")
    assert r.returncode == 0, f"TensorRT {version} suite failed:\n{r.stdout[-6000:]}\n{r.stderr[-2000:]}"
    assert counts.get("passed", 0) > 0 and not counts.get("skipped"), f"skips are not allowed here:\n{r.stdout[-3000:]}"
