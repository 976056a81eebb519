"""Sources and the threaded pipeline: frame count/fps/size of outputs, label PNGs, faults, Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _runtime_helpers import export_tiny, random_frames
from danet_edge.errors import ConfigError, DataError, ManifestError, MissingDependencyError
from danet_edge.runtime.backends import open_backend, segment_frames
from danet_edge.runtime.pipeline import InferConfig, SourceBroken, overlay, run_inference, run_pipeline
from danet_edge.runtime.sources import gstreamer_support, open_source


def write_video(path: Path, frames: np.ndarray, fps: float = 12.0, fourcc: str = "mp4v") -> Path:
    h, w = frames.shape[1:3]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for f in frames:
        wr.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    wr.release()
    return path


def read_video(path: Path) -> tuple[int, float, tuple[int, int], list[np.ndarray]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return len(frames), fps, frames[0].shape[:2] if frames else (0, 0), frames


@pytest.fixture(scope="module")
def onnx_model(tiny_checkpoint, tmp_path_factory):
    return export_tiny(tiny_checkpoint, tmp_path_factory.mktemp("rt") / "tiny.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    # frame size differs from the model's 64x96: exercises resize in and out
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", random_frames(10, 80, 112))


def test_open_source_kinds_and_errors(tmp_path, clip):
    src = open_source(clip)
    assert src.kind == "video" and src.frame_count == 10 and src.fps == pytest.approx(12.0)
    assert sum(1 for _ in src) == 10 and src.broken is None
    for i, f in enumerate(random_frames(3, 40, 50)):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), f)
    src = open_source(tmp_path)
    assert src.kind == "images" and src.frame_count == 3 and src.names == ["im0", "im1", "im2"]
    frames = list(src)
    assert frames[0].shape == (40, 50, 3) and frames[0].dtype == np.uint8
    assert open_source(str(tmp_path / "im*.png")).frame_count == 3
    assert open_source(tmp_path / "im1.png").kind == "image"
    with pytest.raises(DataError, match="source not found"):
        open_source(tmp_path / "nope.mp4")
    (tmp_path / "notes.xyz").write_text("x")
    with pytest.raises(DataError, match="unsupported extension '.xyz'"):
        open_source(tmp_path / "notes.xyz")
    (tmp_path / "text.mp4").write_text("this is not a video")
    with pytest.raises(DataError, match="cannot be opened"):
        open_source(tmp_path / "text.mp4")
    with pytest.raises(DataError, match="no images"):
        open_source(str(tmp_path / "*.jpg"))
    if gstreamer_support() is False:  # pip's OpenCV wheels: one line saying so, before trying
        with pytest.raises(MissingDependencyError, match="built without GStreamer.*JetPack's OpenCV"):
            open_source("videotestsrc num-buffers=1 ! fakesink")
    else:
        with pytest.raises(DataError, match="GStreamer pipeline cannot be opened"):
            open_source("videotestsrc num-buffers=1 ! fakesink")


class _FakeCapture:
    """A cv2.VideoCapture stand-in that records how it was opened and yields two BGR frames."""

    opened: list = []

    def __init__(self, spec, api=None):
        self.spec, self.api, self.left = spec, api, 2
        _FakeCapture.opened.append((spec, api))

    def isOpened(self):
        return not str(self.spec).startswith("bad")

    def get(self, prop):
        return {5: 30.0, 7: 0.0}.get(prop, 0.0)  # CAP_PROP_FPS, CAP_PROP_FRAME_COUNT

    def read(self):
        if self.left == 0:
            return False, None
        self.left -= 1
        frame = np.zeros((4, 6, 3), np.uint8)
        frame[..., 0] = 255  # blue in BGR
        return True, frame

    def release(self):
        pass


def _fake_cv2(gstreamer: str):
    import types

    fake = types.SimpleNamespace(
        __version__="4.8.0-jetpack", CAP_GSTREAMER=1800, CAP_PROP_FPS=5, CAP_PROP_FRAME_COUNT=7,
        COLOR_BGR2RGB=4, COLOR_GRAY2BGR=8, VideoCapture=_FakeCapture,
        getBuildInformation=lambda: f"  Video I/O:\n    FFMPEG:                      YES\n"
                                    f"    GStreamer:                   {gstreamer}\n",
        cvtColor=lambda im, code: im[..., ::-1].copy() if code == 4 else im)
    return fake


JETSON_CSI = ("nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
              "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=1")


def test_gstreamer_pipeline_opens_with_cap_gstreamer(monkeypatch, tmp_path):
    """A source string with '!' is a GStreamer pipeline for cv2.CAP_GSTREAMER (JetPack's OpenCV has it)."""
    import sys

    from danet_edge.runtime.sources import is_gstreamer

    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("YES (1.20.3)"))
    _FakeCapture.opened = []
    assert gstreamer_support() is True
    src = open_source(JETSON_CSI)
    assert src.kind == "gstreamer" and src.fps == 30.0 and src.frame_count is None
    assert _FakeCapture.opened == [(JETSON_CSI, 1800)]
    frames = list(src)
    assert len(frames) == 2 and frames[0][0, 0].tolist() == [0, 0, 255]  # BGR -> RGB at the edge
    with pytest.raises(DataError, match="GStreamer pipeline cannot be opened.*appsink"):
        open_source("bad ! appsink")
    # a file whose name holds '!' is a file, not a pipeline
    odd = tmp_path / "take!1.mp4"
    odd.write_bytes(b"x")
    assert not is_gstreamer(str(odd)) and is_gstreamer(JETSON_CSI)
    _FakeCapture.opened = []
    assert open_source(odd).kind == "video" and _FakeCapture.opened == [(str(odd), None)]


def test_gstreamer_pipeline_on_opencv_without_gstreamer_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("NO"))
    _FakeCapture.opened = []
    assert gstreamer_support() is False
    with pytest.raises(MissingDependencyError, match=r"4\.8\.0-jetpack\) was built without GStreamer") as e:
        open_source(JETSON_CSI)
    assert "\n" not in str(e.value) and e.value.exit_code == 4
    assert _FakeCapture.opened == []  # refused before trying
    monkeypatch.setitem(sys.modules, "cv2", None)  # no OpenCV at all
    with pytest.raises(MissingDependencyError, match=r"OpenCV is not importable.*danet-edge\[video\]"):
        open_source(JETSON_CSI)


def test_images_come_back_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (frame,) = list(open_source(tmp_path / "red.png"))
    assert frame[0, 0].tolist() == [200, 0, 0]


def test_pipeline_outputs_match_source_and_segment_frames(onnx_model, clip, tmp_path):
    cfg = InferConfig(out_dir=tmp_path / "out", save_labels=True)
    summary = run_inference(onnx_model, clip, cfg)
    assert summary.frames == 10 and summary.broken is None and summary.fps > 0
    n, fps, size, _ = read_video(Path(summary.outputs["video"]))
    assert (n, size) == (10, (80, 112)) and fps == pytest.approx(12.0)
    pngs = sorted((tmp_path / "out" / "labels").glob("*.png"))
    assert len(pngs) == 10
    with open_backend(onnx_model) as b:
        expected = segment_frames(b, [f for f in open_source(clip)])
    for png, exp in zip(pngs, expected):
        img = Image.open(png)
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), exp)
    assert Image.open(pngs[0]).getpalette()[:15] == [v for c in b.manifest.palette for v in c]
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(data["stages"]) == {"decode", "preprocess", "infer", "postprocess", "encode"}
    assert data["end_to_end"]["p99_ms"] >= data["end_to_end"]["p50_ms"] > 0
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_max_frames_letterbox_and_no_video(onnx_model, clip, tmp_path):
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path, max_frames=3, letterbox=True, save_video=False,
                                                    save_labels=True))
    assert s.frames == 3 and "video" not in s.outputs
    assert np.asarray(Image.open(tmp_path / "labels" / "000000.png")).shape == (80, 112)


def test_truncated_video_keeps_frames_before_the_break(onnx_model, tmp_path):
    avi = write_video(tmp_path / "clip.avi", random_frames(10, 64, 96), fourcc="MJPG")
    data = avi.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceBroken, match=r"broke off after \d+ of 10 frames.*frames before the break are in") as ei:
        run_inference(onnx_model, cut, InferConfig(out_dir=tmp_path / "out"))
    kept = ei.value.summary.frames
    assert 0 < kept < 10
    n, _, size, _ = read_video(tmp_path / "out" / "cut_overlay.mp4")  # playable, closed properly
    assert n == kept and size == (64, 96)
    # an mp4 cut in half has lost its index: refused up front with a clear line
    mp4 = write_video(tmp_path / "clip.mp4", random_frames(10, 64, 96))
    half = tmp_path / "half.mp4"
    half.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    with pytest.raises(DataError, match="moov atom"):
        run_inference(onnx_model, half, InferConfig(out_dir=tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


def test_missing_manifest_and_bad_options(onnx_model, clip, tmp_path):
    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_model.read_bytes())
    with pytest.raises(ManifestError, match="not found beside it"):
        run_inference(lone, clip, InferConfig(out_dir=tmp_path / "o"))
    with pytest.raises(ConfigError, match="alpha"):
        run_inference(onnx_model, clip, InferConfig(alpha=2.0))
    with pytest.raises(ConfigError, match="GUI support"):
        run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "o", show=True))


class _InterruptingBackend:
    """Wraps a backend and raises KeyboardInterrupt on the 4th predict (a Ctrl-C mid-run)."""

    def __init__(self, inner):
        self.inner, self.manifest, self.name, self.calls = inner, inner.manifest, "wrapped", 0

    def predict(self, images):
        self.calls += 1
        if self.calls == 4:
            raise KeyboardInterrupt
        return self.inner.predict(images)


def test_ctrl_c_leaves_a_playable_video(onnx_model, clip, tmp_path):
    with open_backend(onnx_model) as b:
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(_InterruptingBackend(b), open_source(clip), InferConfig(out_dir=tmp_path))
    n, _, _, _ = read_video(tmp_path / "clip_overlay.mp4")
    assert n == 3
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True


def test_overlay_blends_and_draws_legend():
    frame = np.zeros((60, 80, 3), np.uint8)
    labels = np.zeros((60, 80), np.int64)
    labels[:, 40:] = 1
    pal = np.array([[0, 0, 0], [200, 100, 0]], np.uint8)
    out = overlay(frame, labels, pal, 0.5)
    assert out[30, 70].tolist() == [100, 50, 0] and out[30, 10].tolist() == [0, 0, 0]
    assert not np.array_equal(overlay(frame, labels, pal, 0.5, ["road", "car"]), out)  # legend drawn


def test_onnxruntime_threads_leave_a_core_for_decode_and_encode(onnx_model, clip, tmp_path, monkeypatch):
    import danet_edge.runtime.pipeline as pipeline

    seen = {}
    real = pipeline.open_backend

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "open_backend", spy)
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 4)
    run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "a", max_frames=2, save_video=False))
    assert seen["threads"] == 3
    run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "b", max_frames=2, save_video=False, threads=1))
    assert seen["threads"] == 1
    with pytest.raises(ConfigError, match="threads"):
        InferConfig(threads=-1).validate()


# ------------------------------------------------------------------------------- legend and stamp (issue: at a glance)
CITY19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
          "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.mark.parametrize("hw,min_text", [((360, 480), 9), ((1080, 1920), 20)])
def test_legend_covers_every_class_in_order_inside_the_frame(hw, min_text):
    from danet_edge.palettes import CITYSCAPES_PALETTE
    from danet_edge.runtime.render import LEGEND_MAX_HEIGHT, draw_legend, legend_layout

    lay = legend_layout(hw, tuple(CITY19))
    h, w = hw
    x0, y0, x1, y1 = lay.box
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert y1 - y0 <= LEGEND_MAX_HEIGHT * h + lay.text_height * 2  # no 990 px column at 1080p
    assert lay.text_height >= min_text  # readable
    assert len(lay.swatches) == 19 and lay.cols >= (2 if h == 1080 else 1)
    for i, (sx0, sy0, sx1, sy1) in enumerate(lay.swatches):  # inside the box, column by column in class order
        assert x0 <= sx0 < sx1 <= x1 and y0 <= sy0 < sy1 <= y1
        c, r = divmod(i, lay.rows)
        if r:
            assert sy0 > lay.swatches[i - 1][1] and sx0 == lay.swatches[i - 1][0]
        elif i:
            assert sx0 > lay.swatches[i - 1][0]
    for i in range(19):  # text boxes of neighbouring columns do not overlap the next column's swatches
        if i + lay.rows < 19:
            assert lay.text_origins[i][0] < lay.swatches[i + lay.rows][0]
    img = np.full((h, w, 3), 255, np.uint8)
    draw_legend(img, CITY19, np.asarray(CITYSCAPES_PALETTE, np.uint8))
    for k, (sx0, sy0, sx1, sy1) in enumerate(lay.swatches):
        assert img[(sy0 + sy1) // 2, (sx0 + sx1) // 2].tolist() == CITYSCAPES_PALETTE[k]
    assert img[y1 - 2, x1 - 2].tolist() == [89, 89, 89]  # white under a 65 % opaque black box


def test_legend_is_identical_between_frames_with_different_classes_present():
    from danet_edge.palettes import CAMVID_CLASSES, CAMVID_PALETTE
    from danet_edge.runtime.render import legend_layout

    frame = np.asarray(random_frames(1, 360, 480)[0])
    pal = np.asarray(CAMVID_PALETTE, np.uint8)
    a = np.zeros((360, 480), np.int64)  # only Sky
    b = np.full((360, 480), 8, np.int64)  # only Car
    oa = overlay(frame, a, pal, 0.0, CAMVID_CLASSES)  # alpha 0: the pixels under the legend are the frame's
    ob = overlay(frame, b, pal, 0.0, CAMVID_CLASSES)
    x0, y0, x1, y1 = legend_layout((360, 480), tuple(CAMVID_CLASSES)).box
    assert np.array_equal(oa[y0:y1, x0:x1], ob[y0:y1, x0:x1])
    assert not np.array_equal(oa[y0:y1, x0:x1], frame[y0:y1, x0:x1])  # something was drawn


def test_stamp_is_drawn_bottom_left_and_fits():
    from danet_edge.runtime.render import draw_stamp

    for h, w in ((360, 480), (1080, 1920), (64, 96)):
        img = np.full((h, w, 3), 128, np.uint8)
        x0, y0, x1, y1 = draw_stamp(img, "model_int8_trt.onnx | int8 | 12.3 FPS")
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and y1 > 0.8 * h
        assert img[y0:y1, x0:x1].max() > 150 and (img[: h // 2] == 128).all()  # light text on the dark box
