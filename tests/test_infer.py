"""The ``build`` and ``infer`` commands end to end: one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from _runtime_helpers import export_tiny, random_frames
from test_runtime import read_video, write_video


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from danet_edge.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, tmp_path_factory):
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("cli") / "tiny.onnx")


def test_infer_cli_checkpoint_and_onnx(tiny_checkpoint, onnx_model, tmp_path):
    clip = write_video(tmp_path / "c.mp4", random_frames(6, 64, 96))
    r = cli("infer", onnx_model, clip, "--out", tmp_path / "o1", "--save-labels")
    assert r.returncode == 0, r.stderr
    assert "6 frames" in r.stdout and "end-to-end" in r.stdout
    assert read_video(tmp_path / "o1" / "c_overlay.mp4")[0] == 6
    r = cli("infer", tiny_checkpoint, clip, "--out", tmp_path / "o2", "--batch", "4", "--device", "cpu",
            "--no-save-video")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "o2" / "c_overlay.mp4").exists() and (tmp_path / "o2" / "summary.json").is_file()


def test_infer_cli_faults_are_one_line(onnx_model, tmp_path):
    assert "source not found" in one_error_line(cli("infer", onnx_model, tmp_path / "none.mp4"))
    (tmp_path / "t.mp4").write_text("not a video")
    assert "cannot be opened" in one_error_line(cli("infer", onnx_model, tmp_path / "t.mp4", "--out", tmp_path))
    assert "unsupported model suffix" in one_error_line(cli("infer", tmp_path / "m.tflite", tmp_path / "t.mp4"))
    assert "unknown execution provider" in one_error_line(
        cli("infer", onnx_model, write_video(tmp_path / "ok.mp4", random_frames(2, 64, 96)), "--providers", "tpu"))
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tests the missing-tensorrt path")
def test_build_cli_without_tensorrt(onnx_model, tmp_path):
    line = one_error_line(cli("build", onnx_model, "--out", tmp_path / "m.engine"))
    assert "tensorrt is not installed" in line and "trtexec --onnx=" in line and "copied over" in line
    assert not (tmp_path / "m.engine").exists()


def test_build_cli_refuses_fp16_without_manifest(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert "manifest" in one_error_line(cli("build", tmp_path / "m.onnx", "--fp16"))


def test_infer_cli_engine_without_tensorrt(onnx_model, tmp_path):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tests the missing-tensorrt path")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    Path(str(engine) + ".json").write_text(Path(str(onnx_model) + ".json").read_text())
    clip = write_video(tmp_path / "c.mp4", random_frames(2, 64, 96))
    assert "tensorrt is not installed" in one_error_line(cli("infer", engine, clip, "--out", tmp_path / "o"))
