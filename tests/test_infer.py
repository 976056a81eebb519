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
    # throughput and latency up front, then what decoded and encoded (issue 13)
    assert "throughput " in r.stdout and " FPS, latency p50 " in r.stdout and "dropped 0 of 6 frames" in r.stdout
    assert "decoder: OpenCV FFMPEG (CPU)" in r.stdout and "codec read back" in r.stdout
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


def _label_pngs(folder: Path) -> list:
    import numpy as np
    from PIL import Image

    return [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]


def test_compare_writes_a_side_by_side_video_whose_halves_equal_single_runs(tiny_checkpoint, onnx_model, tmp_path):
    """--compare: the source's frame count, twice the width; the class maps of each half equal the single runs
    (the second artifact is a fused-I/O export: class maps only, no logits)."""
    import json

    import numpy as np

    from danet_edge.infer.config import InferConfig
    from danet_edge.infer.pipeline import run_inference

    fused = export_tiny(tiny_checkpoint, tmp_path / "fused.onnx", fused=True)
    frames = random_frames(5, 72, 100)
    clip = write_video(tmp_path / "c.mp4", frames)
    a = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "a", save_labels=True, stamp=False))
    b = run_inference(fused, clip, InferConfig(out_dir=tmp_path / "b", save_labels=True, stamp=False))
    c = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "c", save_labels=True, stamp=False,
                                                    compare=fused))
    n, _, size, _ = read_video(tmp_path / "c" / "c_compare.mp4")
    assert n == 5 == a.frames == c.frames and size == (72, 3 * 100)
    left, right = _label_pngs(tmp_path / "c" / "labels"), _label_pngs(tmp_path / "c" / "labels_compare")
    assert len(left) == len(right) == 5
    for x, y in zip(left, _label_pngs(tmp_path / "a" / "labels")):
        assert np.array_equal(x, y)
    for x, y in zip(right, _label_pngs(tmp_path / "b" / "labels")):
        assert np.array_equal(x, y)
    expect = 100.0 * np.mean([np.mean(x != y) for x, y in zip(left, right)])
    assert c.disagreement_pct == pytest.approx(expect, abs=1e-3) and c.compare == str(fused)
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["outputs"]["labels_compare"]
    # the left half of the side-by-side video is the single run's overlay (up to mp4v coding)
    left_px = np.stack(read_video(tmp_path / "c" / "c_compare.mp4")[3])
    single_px = np.stack(read_video(tmp_path / "a" / "c_overlay.mp4")[3])
    assert np.abs(left_px[:, :, :100].astype(int) - single_px.astype(int)).mean() < 6
    # and the middle panel is the other artifact's single run (not retouched), the right one the disagreement
    other_px = np.stack(read_video(tmp_path / "b" / "c_overlay.mp4")[3])
    assert np.abs(left_px[:, :, 100:200].astype(int) - other_px.astype(int)).mean() < 6
    dark = left_px[:, :, 200:].astype(int)
    assert dark.mean() < 0.6 * np.stack(frames).astype(int).mean() + 20
    # with the stamp on, the disagreement panel says what white is and how much there is (bottom left), nothing else
    d = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "d", compare=fused))
    stamped = np.stack(read_video(tmp_path / "d" / "c_compare.mp4")[3])[:, :, 200:].astype(int)
    changed = np.abs(stamped - dark).max(-1) > 40
    assert changed[:, -24:, :60].any() and not changed[:, :36].any() and d.frames == 5

def test_infer_cli_stamp_and_compare_flags(onnx_model, tmp_path):
    clip = write_video(tmp_path / "c.mp4", random_frames(3, 64, 96))
    r = cli("infer", onnx_model, clip, "--out", tmp_path / "o", "--no-stamp", "--compare", onnx_model)
    assert r.returncode == 0, r.stderr
    assert "disagreement with" in r.stdout and "0.000 % of pixels" in r.stdout
    assert read_video(tmp_path / "o" / "c_compare.mp4")[0] == 3
    assert "not found" in one_error_line(cli("infer", onnx_model, clip, "--compare", tmp_path / "none.onnx",
                                             "--out", tmp_path / "o2"))


def test_infer_cli_low_latency_on_a_file(onnx_model, tmp_path):
    """--low-latency on a file: one frame queued, nothing dropped (a file waits for the reader)."""
    import json

    clip = write_video(tmp_path / "c.mp4", random_frames(4, 64, 96))
    r = cli("infer", onnx_model, clip, "--out", tmp_path / "o", "--low-latency")
    assert r.returncode == 0, r.stderr
    assert "low latency, queue 1" in r.stdout
    data = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (data["low_latency"], data["queue_size"], data["dropped"], data["frames"]) == (True, 1, 0, 4)


def test_infer_on_a_camvid_sequence_records_the_codec_it_wrote(camvid_root, onnx_model, tmp_path):
    """Issue 13's check: a CamVid sequence (8 consecutive val frames, 360x480, as an mp4) through infer; the codec
    in summary.json is the one OpenCV reads back from the overlay video, and the encoder says what wrote it."""
    import json

    import cv2

    files = sorted((camvid_root / "val").glob("0016E5_*.png"))[:8]
    if len(files) < 8:
        pytest.skip("CamVid val has no 0016E5 sequence here")
    wr = cv2.VideoWriter(str(tmp_path / "seq.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (480, 360))
    for f in files:
        wr.write(cv2.imread(str(f)))
    wr.release()
    r = cli("infer", onnx_model, tmp_path / "seq.mp4", "--out", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "o" / "summary.json").read_text())
    cap = cv2.VideoCapture(str(tmp_path / "o" / "seq_overlay.mp4"))
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    n, size = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                                                       int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    cap.release()
    assert (data["frames"], n, size) == (8, 8, (360, 480))
    assert data["codec"] == bytes([(code >> (8 * k)) & 0xFF for k in range(4)]).decode("latin-1")
    assert data["encoder"].startswith("H.264" if data["codec"].lower() in ("avc1", "h264") else "mp4v")
    assert f"codec read back {data['codec']}" in r.stdout
