"""Which video decoder and encoder ``infer`` uses: one home for the choice, the probes and the GStreamer strings.

Encode (:func:`video_encoders`, tried in this order by ``render.VideoOut``; the first that opens is used):

1. ``H.264 via GStreamer nvv4l2h264enc``: OpenCV built with GStreamer (JetPack's) and the element present
   (``gst-inspect-1.0 --exists nvv4l2h264enc``; where that tool is missing, opening the writer is the probe).
   The Jetson hardware encoder (NVENC); Jetson Orin Nano has none, so there this step is skipped.
2. ``H.264 (avc1)`` through OpenCV's FFmpeg, when a 64x64 test writer opens (:func:`fourcc_writable`).
   pip's ``opencv-python`` wheels carry no software H.264 encoder (libx264 is GPL): their FFmpeg only tries
   ``h264_v4l2m2m``, a V4L2 hardware encoder absent on most hosts, so this fails there.
3. ``mp4v`` (MPEG-4 Part 2): every FFmpeg build writes it; VLC and ffplay play it, most browsers do not.
   When reached because H.264 could not be written, the summary says so (``encoder_note``).

Decode: OpenCV's own backend (FFmpeg for files and URLs, V4L2 for cameras) on the CPU, or with ``--hw-decode``
the Jetson hardware decoder through :func:`hw_decode_pipeline` (``nvv4l2decoder``, NVDEC), which needs an OpenCV
built with GStreamer.

Pipelines follow NVIDIA's "Accelerated GStreamer" guide (Jetson Linux Developer Guide, r35/r36: ``nvv4l2decoder``
and ``nvv4l2h264enc`` with ``nvvidconv`` between system memory and NVMM buffers), in the ``appsink`` / ``appsrc``
form OpenCV's ``CAP_GSTREAMER`` needs (BGR frames on the OpenCV side).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.errors import ConfigError

__all__ = ["VideoEncoder", "GST_H264", "AVC1", "MP4V", "gstreamer_support", "gst_element_available",
           "gst_decode_pipeline", "gst_encode_pipeline", "hw_decode_pipeline", "fourcc_writable", "read_fourcc",
           "video_encoders", "open_writer", "HW_DECODER"]

#: ``decoder`` recorded in the summary for ``--hw-decode``.
HW_DECODER = "GStreamer nvv4l2decoder (Jetson hardware decoder)"
# container suffix -> GStreamer demuxer; codec fourcc (lower case) -> parser ahead of nvv4l2decoder
_DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux",
             ".webm": "matroskademux", ".ts": "tsdemux", ".avi": "avidemux"}
_PARSERS = {"avc1": "h264parse", "h264": "h264parse", "x264": "h264parse", "hev1": "h265parse", "hvc1": "h265parse",
            "hevc": "h265parse", "h265": "h265parse", "mp4v": "mpeg4videoparse", "fmp4": "mpeg4videoparse",
            "xvid": "mpeg4videoparse", "divx": "mpeg4videoparse", "vp80": "", "vp90": ""}
_TO_BGR = "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink"


@dataclass(frozen=True)
class VideoEncoder:
    """One way to write the overlay video.

    Attributes:
        rank: preference, 0 best (a note about a left-out encoder matters only when a worse one ran).
        codec: what is written, for the summary (``H.264``, ``mp4v``).
        fourcc: the OpenCV fourcc (``avc1``, ``mp4v``); empty for a GStreamer pipeline (fourcc 0).
        gstreamer: the writer is :func:`gst_encode_pipeline` through ``cv2.CAP_GSTREAMER``.
    """

    rank: int
    codec: str
    fourcc: str = ""
    gstreamer: bool = False

    def open(self, cv2: Any, path: Path, fps: float, size: tuple[int, int]) -> Any:
        """A ``cv2.VideoWriter`` for ``size = (W, H)`` BGR frames at ``path`` (check ``isOpened()``)."""
        if self.gstreamer:
            return cv2.VideoWriter(gst_encode_pipeline(path), cv2.CAP_GSTREAMER, 0, fps, size, True)
        if self.fourcc == "mp4v":  # any backend that writes it (as before H.264 was tried)
            return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*self.fourcc), fps, size)
        return cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*self.fourcc), fps, size)

    @property
    def name(self) -> str:
        """``H.264 (GStreamer nvv4l2h264enc)``, ``H.264 (avc1)``, ``mp4v``."""
        if self.gstreamer:
            return f"{self.codec} (GStreamer nvv4l2h264enc)"
        return self.codec if self.codec == self.fourcc else f"{self.codec} ({self.fourcc})"

    def label(self, writer: Any) -> str:
        """``H.264 via GStreamer nvv4l2h264enc``, ``H.264 (avc1) via OpenCV FFMPEG``, ``mp4v via OpenCV FFMPEG``."""
        if self.gstreamer:
            return f"{self.codec} via GStreamer nvv4l2h264enc"
        try:
            backend = str(writer.getBackendName())
        except Exception:  # noqa: BLE001 - an old or stand-in writer: the name is cosmetic
            backend = "?"
        return f"{self.name} via OpenCV {backend}"


GST_H264 = VideoEncoder(0, "H.264", gstreamer=True)
AVC1 = VideoEncoder(1, "H.264", "avc1")
MP4V = VideoEncoder(2, "mp4v", "mp4v")


def gstreamer_support(cv2: Any = None) -> bool | None:
    """Whether this OpenCV was built with GStreamer, from the ``GStreamer:`` line of ``cv2.getBuildInformation()``
    (``YES (1.20.3)`` / ``NO``); None when the build information does not say.

    Args:
        cv2: the OpenCV module (default: :func:`danet_edge.core.optional.import_cv2`).

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = cv2 if cv2 is not None else import_cv2()
    try:
        info = str(cv2.getBuildInformation())
    except Exception:  # noqa: BLE001 - a stripped or unusual build: say "unknown", let VideoCapture decide
        return None
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return None if m is None else m.group(1).upper() != "NO"


@lru_cache(maxsize=16)
def gst_element_available(name: str) -> bool | None:
    """Whether GStreamer has the element ``name`` (``gst-inspect-1.0 --exists``); None without that tool."""
    tool = shutil.which("gst-inspect-1.0")
    if tool is None:
        return None
    try:
        return subprocess.run([tool, "--exists", name], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return None


def _location(path: str | os.PathLike[str]) -> str:
    """``path`` as a quoted GStreamer property value (``gst_parse_launch`` syntax)."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def gst_decode_pipeline(path: str | os.PathLike[str], demuxer: str = "qtdemux", parser: str = "h264parse") -> str:
    """The ``--hw-decode`` pipeline for a video file: demux, parse, decode on NVDEC, BGR frames to OpenCV.

    ``filesrc location=PATH ! qtdemux ! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx !
    videoconvert ! video/x-raw,format=BGR ! appsink`` (``nvvidconv`` copies the decoder's NVMM NV12 buffers to
    system memory as BGRx; ``videoconvert`` drops the x, as OpenCV wants BGR).
    """
    parse = f"{parser} ! " if parser else ""
    return f"filesrc location={_location(path)} ! {demuxer} ! {parse}nvv4l2decoder ! {_TO_BGR}"


def gst_encode_pipeline(path: str | os.PathLike[str]) -> str:
    """The writer pipeline for H.264 on the Jetson encoder, fed BGR frames by ``cv2.VideoWriter``.

    ``appsrc ! video/x-raw,format=BGR ! queue ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv !
    video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc ! h264parse ! qtmux ! filesink location=PATH``
    (``nvvidconv`` takes BGRx, not BGR, and moves the frames to NVMM NV12 for the encoder; ``qtmux`` writes the
    mp4 index when OpenCV sends end-of-stream on ``release()``).
    """
    return ("appsrc ! video/x-raw,format=BGR ! queue ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! "
            "video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc ! h264parse ! qtmux ! "
            f"filesink location={_location(path)}")


def read_fourcc(path: str | os.PathLike[str], cv2: Any = None) -> str | None:
    """The codec fourcc OpenCV reads back from the video at ``path`` (``avc1``, ``FMP4``...); None if unreadable.

    FFmpeg names MPEG-4 Part 2 (what ``mp4v`` writes) ``FMP4``.
    """
    cv2 = cv2 if cv2 is not None else import_cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    text = code.to_bytes(4, "little").decode("latin-1") if code > 0 else ""
    return text if text.isprintable() and text.strip() else None


def hw_decode_pipeline(path: Path, cv2: Any = None) -> str:
    """:func:`gst_decode_pipeline` for the video file at ``path``: the demuxer from its suffix, the parser from
    the codec OpenCV reads in it (H.264 when it cannot say).

    Raises:
        ConfigError: a container with no demuxer here (the suffixes are listed).
    """
    demuxer = _DEMUXERS.get(path.suffix.lower())
    if demuxer is None:
        raise ConfigError(f"--hw-decode: no GStreamer demuxer for {path.suffix or 'no suffix'!r} here "
                          f"({', '.join(sorted(_DEMUXERS))}); leave out --hw-decode to decode on the CPU")
    fourcc = (read_fourcc(path, cv2) or "avc1").lower()
    return gst_decode_pipeline(path, demuxer, _PARSERS.get(fourcc, "h264parse"))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (FFmpeg's and OpenCV's C-level messages) for a probe; a no-op where it cannot."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@lru_cache(maxsize=8)
def fourcc_writable(fourcc: str) -> bool:
    """Whether OpenCV's FFmpeg writes ``fourcc`` into an mp4 here: a 64x64 writer opened and fed two frames in a
    temporary folder, its messages silenced (a pip wheel prints why ``h264_v4l2m2m`` failed). Cached per process.

    Call it before other threads write to stderr (it redirects the process's file descriptor 2 for a moment).
    """
    cv2 = import_cv2()
    with tempfile.TemporaryDirectory(prefix="danet-fourcc-") as tmp, _quiet_stderr():
        path = Path(tmp) / "probe.mp4"
        w = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 64))
        ok = bool(w.isOpened())
        if ok:
            for v in (0, 128):
                w.write(np.full((64, 64, 3), v, np.uint8))
        w.release()
        return ok and path.is_file() and path.stat().st_size > 0


def video_encoders(cv2: Any = None) -> tuple[list[VideoEncoder], list[tuple[int, str]]]:
    """The encoders to try, best first (module docstring), and ``(rank, why)`` notes on those left out.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = cv2 if cv2 is not None else import_cv2()
    out, notes = [], []
    if gstreamer_support(cv2):
        if gst_element_available("nvv4l2h264enc") is False:
            notes.append((GST_H264.rank, "GStreamer has no nvv4l2h264enc (no Jetson hardware encoder here; "
                                         "Orin Nano has none)"))
        else:
            out.append(GST_H264)
    if fourcc_writable("avc1"):
        out.append(AVC1)
    else:
        notes.append((AVC1.rank, "this OpenCV build cannot write H.264 (avc1): pip's opencv-python wheels have no "
                                 "H.264 encoder; mp4v is MPEG-4 Part 2, which VLC and ffplay play and most "
                                 "browsers do not"))
    out.append(MP4V)
    return out, notes


def open_writer(encoders: Sequence[VideoEncoder], path: Path, fps: float, size: tuple[int, int],
                cv2: Any = None) -> tuple[Any, VideoEncoder | None, list[tuple[int, str]]]:
    """Open the first of ``encoders`` that opens for ``size = (W, H)`` at ``path``.

    Returns ``(writer, encoder, notes)``: ``(rank, why)`` notes on those that did not open; ``(None, None, notes)``
    when none did.
    """
    cv2 = cv2 if cv2 is not None else import_cv2()
    notes = []
    for enc in encoders:
        writer = enc.open(cv2, path, fps, size)
        if writer.isOpened():
            return writer, enc, notes
        writer.release()
        notes.append((enc.rank, f"the {enc.name} writer did not open for {size[0]}x{size[1]} frames"))
    return None, None, notes
