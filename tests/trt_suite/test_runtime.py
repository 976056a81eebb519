"""The engine at run time: CUDA adapters (pycuda, cuda-python 12.x and 13.x layouts, the real
cuda-bindings without a GPU) and ``build -> infer -> check -> bench`` from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import TRT, run_cli
from danet_edge.trt.build import build_engine
from danet_edge.runtime.backends import open_backend
from trt_standin import cuda_fakes
from trt_standin.hostmem import GPU
from test_build import _copy, _labels


@pytest.mark.parametrize("layout", ["pycuda", "cuda-python-12", "cuda-python-13"])
def test_engine_runs_through_each_cuda_adapter(exported, tmp_path, layout):
    eng = build_engine(_copy(exported.int8, tmp_path))
    cuda_fakes.install({layout})
    with open_backend(eng) as b:
        runner = b._runner
        assert type(runner.cuda).__name__ == ("PyCudaApi" if layout == "pycuda" else "CudaPythonApi")
        t0 = time.perf_counter()
        first = b.predict(exported.frames[:1])
        e2e_ms = (time.perf_counter() - t0) * 1e3
        compute_ms = b.compute_ms  # the engine alone, between the two CUDA events on the stream
        streams = set(GPU.streams)
    assert 0 < compute_ms < e2e_ms
    assert runner.stream is None and not runner._buffers and runner._events is None  # closed: all given back
    assert streams and not (streams & GPU.streams) or layout == "pycuda"  # cuda-python destroys its stream
    assert np.array_equal(first.labels, _labels(exported.int8, exported.frames[:1]))
    assert np.array_equal(_labels(eng, exported.frames), _labels(exported.int8, exported.frames))


def test_build_infer_check_bench_from_the_command_line(exported, tmp_path, capsys):
    """The user's sequence on an engine: every step goes through danet-edge's own TensorRT code."""
    src = _copy(exported.fp16, tmp_path / "export")
    assert run_cli("build", str(src), "--timing-cache", str(tmp_path / "timing.cache")) == 0
    out = capsys.readouterr().out
    eng = src.with_suffix(".engine")
    assert f"engine: {eng}" in out and "equivalent: trtexec --onnx=" in out and eng.is_file()
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for f in exported.frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    assert run_cli("infer", str(eng), str(video), "--out", str(tmp_path / "infer"), "--save-labels") == 0
    summary = json.loads((tmp_path / "infer" / "summary.json").read_text())
    assert summary["frames"] == len(exported.frames)
    pngs = sorted((tmp_path / "infer").rglob("*.png"))
    assert len(pngs) == len(exported.frames)
    check_json = tmp_path / "check.json"
    rc = run_cli("check", str(eng), str(src), "--reference", str(exported.checkpoint), "--limit", "4",
              "--json", str(check_json), "--report", str(tmp_path / "report"))
    capsys.readouterr()
    report = json.loads(check_json.read_text())
    by = {Path(a["path"]).suffix: a for a in report["artifacts"]}
    assert by[".engine"]["precision"] == "fp16" and "engine layers" in by[".engine"]["precision_source"]
    assert by[".engine"]["agreement"] == by[".onnx"]["agreement"]  # same class maps as the graph
    assert rc == (0 if all(a["passed"] for a in report["artifacts"]) else 1)
    assert "engine layers per precision" in (tmp_path / "report" / "report.md").read_text()
    bench_json = tmp_path / "bench.json"
    assert run_cli("bench", str(eng), "--runs", "2", "--warmup", "1", "--duration", "0", "--warmup-s", "0",
                "--json", str(bench_json)) == 0
    entries = json.loads(bench_json.read_text())["entries"]
    (entry,) = [e for e in entries if e["path"] == str(eng)]
    assert entry["backend"] == "tensorrt" and entry["precision"] == "fp16" and entry["latency_p50_ms"] > 0
    assert entry["compute_timing"].startswith("CUDA events around execute_async_v3")
    assert 0 < entry["compute_p50_ms"] <= entry["latency_p50_ms"] and entry["runs"] == 2
    assert entry["fps_per_w"] == entry["power_total_w"] == "not a Jetson"


def test_cli_errors_are_one_line(exported, tmp_path, capsys):
    src = _copy(exported.int8_cpu, tmp_path)
    assert run_cli("build", str(src)) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ONNX parser failed" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_real_cuda_bindings_without_a_gpu(exported, tmp_path):
    """The real cuda-python 12.x (cuda-bindings) imports without a GPU and answers with an error code:
    `danet-edge build` must say so in one line (real TensorRT bindings, no stand-in, no pycuda)."""
    site = os.environ["DANET_EDGE_CUDA_BINDINGS_SITE"]
    src = _copy(exported.fp32, tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent / "shims"), site, os.environ["DANET_EDGE_TRT_SITE"]])
    r = subprocess.run([sys.executable, "-c", "from danet_edge.cli import main; main()", "build", str(src)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no usable CUDA GPU here (CUDA cudaGetDeviceProperties failed: cudaError" in lines[0]
    assert "danet-edge build model.onnx" in lines[0]
    assert not src.with_suffix(".engine").exists()
    assert TRT.__version__  # the same bindings version as the rest of this suite


NO_TORCH = '''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(name + " is not installed (Jetson runtime without PyTorch)")
sys.meta_path.insert(0, Block())
from danet_edge.cli import main
codes = []
for argv in ({argvs}):
    sys.argv = ["danet-edge", *argv]
    try:
        main()
    except SystemExit as e:
        codes.append(e.code or 0)
print("CODES", codes, "TORCH", any(m.split(".")[0] == "torch" for m in sys.modules))
'''


def test_engine_commands_need_no_torch(exported, tmp_path):
    """On the device (JetPack, no PyTorch): build, infer and bench an engine with torch unimportable."""
    src = _copy(exported.fp16, tmp_path)
    eng = tmp_path / "nt.engine"
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(exported.frames[:2]):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    argvs = [["build", str(src), "-o", str(eng)], ["infer", str(eng), str(frames), "-o", str(tmp_path / "i"), "-q"],
             ["bench", str(eng), "--runs", "1", "--warmup", "0", "--duration", "0", "--warmup-s", "0", "-q"]]
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH.replace("{argvs}", repr(argvs)))
    launcher = Path(__file__).resolve().parents[1] / "trt_standin" / "cli.py"
    r = subprocess.run([sys.executable, str(launcher), "--trt", TRT.__version__, str(script)],
                       capture_output=True, text=True, timeout=600)
    assert "CODES [0, 0, 0] TORCH False" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]
