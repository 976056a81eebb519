"""Sources and the threaded pipeline: frame count/fps/size of outputs, label PNGs, faults, Ctrl-C."""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _runtime_helpers import export_tiny, random_frames
from danet_edge.core.errors import ConfigError, DataError, ManifestError, MissingDependencyError
from danet_edge.runtime.backends import open_backend, segment_frames
from danet_edge.infer.config import InferConfig
from danet_edge.infer.results import SourceBroken
from danet_edge.infer.render import overlay
from danet_edge.infer.pipeline import run_inference, run_pipeline
from danet_edge.infer.sources import gstreamer_support, open_source


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
        __version__="4.8.0-jetpack", CAP_GSTREAMER=1800, CAP_PROP_FPS=5, CAP_PROP_FRAME_COUNT=7, CAP_PROP_FOURCC=6,
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

    from danet_edge.infer.sources import is_gstreamer

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


def test_onnxruntime_threads_default_to_every_physical_core(onnx_model, clip, tmp_path, monkeypatch):
    """Measured (InferConfig docstring): with the INT8 cpu graph, every core on the model beats leaving one
    to decode / encode; physical cores, as ONNX Runtime counts them; the summary records the count that ran."""
    import psutil

    import danet_edge.infer.pipeline as pipeline

    seen = {}
    real = pipeline.open_backend

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "open_backend", spy)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)  # 4 cores, SMT
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "a", max_frames=2, save_video=False))
    assert seen["threads"] == 4 and s.threads == 4
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "b", max_frames=2, save_video=False, threads=1))
    assert seen["threads"] == 1 and s.threads == 1
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["threads"] == 1
    with pytest.raises(ConfigError, match="threads"):
        InferConfig(threads=-1).validate()


# ------------------------------------------------------------------------------- legend and stamp (issue: at a glance)
CITY19 = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
          "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


@pytest.mark.parametrize("hw,min_text", [((360, 480), 9), ((1080, 1920), 20)])
def test_legend_covers_every_class_in_order_inside_the_frame(hw, min_text):
    from danet_edge.core.palettes import CITYSCAPES_PALETTE
    from danet_edge.infer.render import LEGEND_MAX_HEIGHT, draw_legend, legend_layout

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
    from danet_edge.core.palettes import CAMVID_CLASSES, CAMVID_PALETTE
    from danet_edge.infer.render import legend_layout

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
    from danet_edge.infer.render import draw_stamp

    for h, w in ((360, 480), (1080, 1920), (64, 96)):
        img = np.full((h, w, 3), 128, np.uint8)
        x0, y0, x1, y1 = draw_stamp(img, "model_int8_trt.onnx | int8 | 12.3 FPS")
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and y1 > 0.8 * h
        assert img[y0:y1, x0:x1].max() > 150 and (img[: h // 2] == 128).all()  # light text on the dark box


# --------------------------------------------------------------- issue 13: latency, low-latency mode, video codecs
def _fourcc_of(path: Path) -> str:
    """The codec fourcc OpenCV reads from ``path``, computed here (not with the code under test)."""
    cap = cv2.VideoCapture(str(path))
    code = int(cap.get(cv2.CAP_PROP_FOURCC))
    cap.release()
    return bytes([(code >> (8 * k)) & 0xFF for k in range(4)]).decode("latin-1")


def test_summary_reports_throughput_latency_decoder_encoder_and_codec(onnx_model, clip, tmp_path):
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path))
    data = json.loads((tmp_path / "summary.json").read_text())
    keys = list(data)
    assert keys.index("fps") < keys.index("latency_p50_ms") < keys.index("latency_p99_ms") < keys.index("stages")
    assert data["fps"] > 0 and 0 < data["latency_p50_ms"] <= data["latency_p99_ms"]
    e2e = data["end_to_end"]
    assert (data["latency_p50_ms"], data["latency_p99_ms"]) == (e2e["p50_ms"], e2e["p99_ms"])
    assert (data["decoded"], data["dropped"], data["queue_size"], data["low_latency"]) == (10, 0, 1, False)
    assert data["decoder"] == "OpenCV FFMPEG (CPU)"
    # the codec recorded is the one in the file, read back independently
    assert data["codec"] == _fourcc_of(tmp_path / "clip_overlay.mp4") == s.codec
    if data["codec"].lower() in ("avc1", "h264"):
        assert data["encoder"].startswith("H.264")
    else:  # this machine's pip OpenCV: no H.264 encoder, and the summary says so
        assert data["codec"] == "FMP4" and data["encoder"].startswith("mp4v via OpenCV")
        assert "cannot write H.264" in data["encoder_note"]


def test_video_encoders_prefer_h264_and_say_why_not(monkeypatch):
    import sys

    from danet_edge.infer import videoio

    monkeypatch.setattr(videoio, "fourcc_writable", lambda fourcc: True)
    assert videoio.video_encoders() == ([videoio.AVC1, videoio.MP4V], [])
    monkeypatch.setattr(videoio, "fourcc_writable", lambda fourcc: False)
    encoders, notes = videoio.video_encoders()
    assert encoders == [videoio.MP4V] and len(notes) == 1 and "cannot write H.264 (avc1" in notes[0][1]
    # JetPack's OpenCV (GStreamer): the hardware encoder first when GStreamer has the element
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("YES (1.20.3)"))
    monkeypatch.setattr(videoio, "fourcc_writable", lambda fourcc: True)
    monkeypatch.setattr(videoio, "gst_element_available", lambda name: name == "nvv4l2h264enc")
    assert videoio.video_encoders() == ([videoio.GST_H264, videoio.AVC1, videoio.MP4V], [])
    monkeypatch.setattr(videoio, "gst_element_available", lambda name: None)  # no gst-inspect: try to open it
    assert videoio.video_encoders()[0][0] == videoio.GST_H264
    monkeypatch.setattr(videoio, "gst_element_available", lambda name: False)  # Orin Nano: no NVENC
    encoders, notes = videoio.video_encoders()
    assert encoders == [videoio.AVC1, videoio.MP4V] and notes[0][0] == 0 and "no nvv4l2h264enc" in notes[0][1]


def test_fourcc_probe_matches_what_this_opencv_writes(tmp_path):
    """The probe's answer for avc1 is what a real writer does here (a pip wheel: no, silently)."""
    from danet_edge.infer.videoio import fourcc_writable

    w = cv2.VideoWriter(str(tmp_path / "a.mp4"), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"avc1"), 10.0, (64, 64))
    assert fourcc_writable("avc1") == w.isOpened()
    w.release()
    assert fourcc_writable("mp4v") is True


class _RefuseAvc1:
    """cv2.VideoWriter that cannot open avc1 (as on a pip wheel) and writes anything else for real."""

    real = cv2.VideoWriter

    def __new__(cls, *args):
        fourcc = args[2] if len(args) == 5 else args[1]
        if fourcc == cv2.VideoWriter_fourcc(*"avc1"):
            return _ClosedWriter()
        return cls.real(*args)


class _ClosedWriter:
    def isOpened(self):
        return False

    def release(self):
        pass


def test_video_out_falls_back_to_mp4v_when_the_h264_writer_does_not_open(monkeypatch, tmp_path):
    """The probe said yes, the writer at the real size says no: mp4v is written, the note says why, and the codec
    recorded is the file's."""
    from danet_edge.infer import videoio
    from danet_edge.infer.render import VideoOut

    monkeypatch.setattr(cv2, "VideoWriter", _RefuseAvc1)
    out = VideoOut(tmp_path / "v.mp4", 10.0, [videoio.AVC1, videoio.MP4V], [])
    for f in random_frames(3, 48, 64):
        out.write(f)
    assert out.close() == tmp_path / "v.mp4"
    assert out.encoder == "mp4v via OpenCV FFMPEG" and out.codec == _fourcc_of(tmp_path / "v.mp4") == "FMP4"
    assert out.notes == ["the H.264 (avc1) writer did not open for 64x48 frames"]
    assert read_video(tmp_path / "v.mp4")[0] == 3
    # a note about an encoder better than the one that ran is kept, one about a worse one is not
    out = VideoOut(tmp_path / "w.mp4", 10.0, [videoio.MP4V], [(0, "no nvv4l2h264enc"), (3, "not relevant")])
    out.write(random_frames(1, 48, 64)[0])
    out.close()
    assert out.notes == ["no nvv4l2h264enc"]


def test_pipeline_records_the_mp4v_fallback_when_avc1_cannot_be_written(onnx_model, clip, tmp_path, monkeypatch):
    from danet_edge.infer import videoio

    monkeypatch.setattr(videoio, "fourcc_writable", lambda fourcc: False)
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path, max_frames=2))
    assert s.encoder == "mp4v via OpenCV FFMPEG" and "cannot write H.264" in s.encoder_note
    assert s.codec == _fourcc_of(tmp_path / "clip_overlay.mp4")


def test_gstreamer_pipeline_strings():
    from danet_edge.infer.videoio import gst_decode_pipeline, gst_encode_pipeline

    assert gst_encode_pipeline("/out/a b/v.mp4") == (
        "appsrc ! video/x-raw,format=BGR ! queue ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! "
        "video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc ! h264parse ! qtmux ! "
        'filesink location="/out/a b/v.mp4"')
    assert gst_decode_pipeline("clip.mp4") == (
        'filesrc location="clip.mp4" ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! '
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink")
    assert gst_decode_pipeline('we"ird.mkv', "matroskademux", "h265parse").startswith(
        'filesrc location="we\\"ird.mkv" ! matroskademux ! h265parse ! nvv4l2decoder ! ')


def test_hw_decode_builds_the_nvv4l2decoder_pipeline(monkeypatch, clip, tmp_path):
    import sys

    from danet_edge.infer.videoio import HW_DECODER, hw_decode_pipeline

    assert " ! mpeg4videoparse ! nvv4l2decoder ! " in hw_decode_pipeline(clip)  # the clip is mp4v: parser follows
    with pytest.raises(ConfigError, match="no GStreamer demuxer for '.wmv'"):
        hw_decode_pipeline(tmp_path / "x.wmv")
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("YES (1.20.3)"))
    _FakeCapture.opened = []
    src = open_source(clip, hw_decode=True)
    spec, api = _FakeCapture.opened[-1]
    assert api == 1800 and spec == f'filesrc location="{clip}" ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! ' \
        "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink"  # fourcc unknown: H.264
    assert (src.name, src.kind, src.decoder, src.live) == (str(clip), "video", HW_DECODER, False)
    with pytest.raises(ConfigError, match="decodes a video file"):
        open_source("0", hw_decode=True)
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2("NO"))
    with pytest.raises(ConfigError, match=r"^--hw-decode needs an OpenCV built with GStreamer") as e:
        open_source(clip, hw_decode=True)
    assert "\n" not in str(e.value) and e.value.exit_code == 2


class _LiveCapture:
    """A camera stand-in: a new frame every 4 ms whether read or not (``read`` blocks until the next one)."""

    def __init__(self, n: int) -> None:
        self.n, self.i = n, 0

    def isOpened(self):
        return True

    def read(self):
        if self.i == self.n:
            return False, None
        time.sleep(0.004)
        self.i += 1
        return True, np.full((64, 96, 3), self.i % 256, np.uint8)

    def release(self):
        pass


class _SlowBackend:
    """The real backend, 25 ms slower per call: a model that cannot keep up with the camera."""

    def __init__(self, inner):
        self.inner, self.manifest, self.name = inner, inner.manifest, "slow"

    def predict(self, images):
        time.sleep(0.025)
        return self.inner.predict(images)


class _RecordingQueue(queue.Queue):
    made: list = []
    deepest = 0

    def __init__(self, maxsize=0):
        super().__init__(maxsize)
        _RecordingQueue.made.append(maxsize)

    def _put(self, item):
        super()._put(item)
        _RecordingQueue.deepest = max(_RecordingQueue.deepest, self._qsize())


def test_low_latency_drops_frames_of_a_live_source_and_counts_them(onnx_model, tmp_path, monkeypatch):
    from danet_edge.infer import stages
    from danet_edge.infer.sources import FrameSource

    monkeypatch.setattr(stages.queue, "Queue", _RecordingQueue)
    _RecordingQueue.made, _RecordingQueue.deepest = [], 0
    with open_backend(onnx_model) as b:
        camera = FrameSource("0", "camera", 250.0, None, capture=_LiveCapture(60), decoder="stand-in camera")
        s = run_pipeline(_SlowBackend(b), camera, InferConfig(out_dir=tmp_path / "low", low_latency=True,
                                                              save_video=False, save_labels=True))
    assert _RecordingQueue.made == [1, 1] and _RecordingQueue.deepest == 1  # one frame between stages
    assert s.decoded == 60 and s.dropped >= 20 and s.frames + s.dropped == 60
    assert (s.queue_size, s.low_latency, s.decoder) == (1, True, "stand-in camera")
    processed = sorted(int(p.stem) for p in (tmp_path / "low" / "labels").glob("*.png"))
    assert len(processed) == s.frames and processed[-1] >= 55  # the model saw recent frames, not a backlog
    assert json.loads((tmp_path / "low" / "summary.json").read_text())["dropped"] == s.dropped
    # the same camera without --low-latency: every frame, none dropped (the model lags behind the camera)
    with open_backend(onnx_model) as b:
        camera = FrameSource("0", "camera", 250.0, None, capture=_LiveCapture(20))
        s = run_pipeline(_SlowBackend(b), camera, InferConfig(out_dir=tmp_path / "all", save_video=False))
    assert (s.frames, s.decoded, s.dropped, s.queue_size) == (20, 20, 0, 1)


def test_low_latency_on_a_file_keeps_every_frame_unless_asked(onnx_model, clip, tmp_path):
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "a", low_latency=True, save_video=False))
    assert (s.frames, s.dropped, s.queue_size) == (10, 0, 1)
    # --drop-frames on a file: read at its 12 FPS as a camera would deliver it; nothing to drop at this speed
    t0 = time.perf_counter()
    s = run_inference(onnx_model, clip, InferConfig(out_dir=tmp_path / "b", drop_frames=True, save_video=False))
    assert time.perf_counter() - t0 >= 9 / 12 and s.frames + s.dropped == s.decoded == 10
    with pytest.raises(ConfigError, match="--low-latency keeps at most 2 frames queued"):
        InferConfig(low_latency=True, queue_size=8)
    assert InferConfig(low_latency=True, queue_size=2).queue_frames == 2
    assert InferConfig().queue_frames == 1 and InferConfig(queue_size=8).queue_frames == 8
