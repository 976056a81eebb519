"""The TensorRT suite: runs in its own process per TensorRT version (see tests/test_tensorrt_suite.py).

Imports the real ``tensorrt_bindings`` of the version the driver prepared (``DANET_EDGE_TRT_SITE`` on
``sys.path``, its stub libraries on ``LD_LIBRARY_PATH``) as ``tensorrt``, then replaces the classes
that need libnvinfer (Builder, Runtime, OnnxParser and what they create) with the signature-checked
stand-in of ``trt_standin``; enums, Dims, nptype, Logger and the calibrator base classes stay real.
CUDA comes from host-memory fakes of pycuda / cuda-python.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

_SITE = os.environ.get("DANET_EDGE_TRT_SITE")
if not _SITE:  # pragma: no cover - the driver always sets it
    raise RuntimeError("tests/trt_suite runs only under tests/test_tensorrt_suite.py (DANET_EDGE_TRT_SITE unset)")
sys.path.insert(0, _SITE)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for trt_standin and helpers

import tensorrt_bindings  # noqa: E402 - the real bindings, on the stub library

sys.modules["tensorrt"] = tensorrt_bindings  # what `import tensorrt` gives on a TensorRT install

from trt_standin import cuda_fakes, library  # noqa: E402
from trt_standin.hostmem import GPU, POOL  # noqa: E402

TRT = tensorrt_bindings
LIB = library.install(TRT)
MAJOR = int(TRT.__version__.split(".")[0])


def pytest_report_header(config):
    return f"TensorRT bindings {TRT.__version__} (real, stub libnvinfer.so.{MAJOR}) with the danet-edge stand-in"


@pytest.fixture(autouse=True)
def machine():
    """A fresh simulated machine per test: a GPU (sm_87), no DLA, pycuda available."""
    GPU.present, GPU.compute_capability, GPU.dla_cores = True, (8, 7), 0
    GPU.trt_usable, GPU.pycuda_broken, LIB.force_fp32_layers = True, False, False
    GPU.name = "Stand-in GPU (host memory)"
    GPU.streams.clear()
    cuda_fakes.install({"pycuda"})
    live = POOL.live()
    yield GPU
    cuda_fakes.uninstall()
    assert POOL.live() == live, f"{POOL.live() - live} device allocations leaked by this test"


@pytest.fixture
def trt():
    return TRT


@pytest.fixture
def lib():
    return LIB


@dataclass
class Exported:
    """Graphs of one input-sensitive 8-class DANet (ResNet-18, 64x96) and the images to test them on."""

    checkpoint: Path
    fp32: Path
    fp16: Path
    int8: Path  # TensorRT target: symmetric INT8 Q/DQ
    int8_cpu: Path  # uint8 activations: TensorRT's parser must refuse it
    fused: Path  # uint8 (N, H, W, 3) in, (N, H, W) class map out
    calib: Path
    frames: np.ndarray  # (N, 64, 96, 3) uint8 RGB: CamVid val frames when present, else synthetic street scenes
    frames_source: str


def _test_frames(n: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    import cv2

    from _runtime_helpers import CAMVID

    val = CAMVID / "val"
    files = sorted(val.glob("*.png"))[:n] if val.is_dir() else []
    if len(files) == n:
        frames = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), size[::-1],
                             interpolation=cv2.INTER_AREA) for f in files]
        return np.stack(frames), f"CamVid val ({n} frames)"
    from danet_edge.data.synthetic import render_scene

    return (np.stack([render_scene(np.random.default_rng(i), *size)[0] for i in range(n)]),
            f"synthetic street scenes ({n})")


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Exported:
    import cv2

    from _runtime_helpers import make_sensitive_checkpoint
    from danet_edge.export.export import ExportConfig, export_model

    root = tmp_path_factory.mktemp("exported")
    ckpt = make_sensitive_checkpoint(root / "model.pt", num_classes=8, image_size=(64, 96))
    frames, source = _test_frames(6, (64, 96))
    calib = root / "calib"
    calib.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(calib / f"img{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    res = export_model(ckpt, ExportConfig(fp16=True, int8=True, calib=calib, calib_size=6, fused_io=False, out=root / "trt"))
    by = {a.manifest.precision: a.path for a in res.artifacts}
    cpu = export_model(ckpt, ExportConfig(int8=True, target="cpu", calib=calib, calib_size=6, fused_io=False, out=root / "cpu"))
    fused = export_model(ckpt, ExportConfig(fused_io=True, out=root / "fused"))
    return Exported(ckpt, Path(by["fp32"]), Path(by["fp16"]), Path(by["int8"]),
                    Path([a.path for a in cpu.artifacts if a.manifest.precision == "int8"][0]),
                    Path(fused.artifacts[0].path), calib, frames, source)


def run_cli(*args: str) -> int:
    """``danet-edge ARGS`` in this process (against the stand-in); returns the exit code."""
    from danet_edge.cli import main

    old = sys.argv
    sys.argv = ["danet-edge", *args]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0
