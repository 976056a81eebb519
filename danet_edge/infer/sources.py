"""Frame sources: video file, image file, folder or glob of images, camera index, stream URL, GStreamer pipeline.

Every source yields ``(H, W, 3) uint8 RGB`` frames (OpenCV's BGR converted here, at the edge) and
knows its fps and, when the container says so, its frame count. A video that breaks off mid-way
stops the iteration and sets :attr:`FrameSource.broken` to a one-line reason; the frames before
the break have been yielded.

Source strings (:func:`open_source`):
    ``0``, ``1``                      camera index (V4L2 / USB)
    ``"nvarguscamerasrc ! ... ! appsink"``  GStreamer pipeline (contains ``!`` and is not a file),
                                      ``cv2.CAP_GSTREAMER`` -- a Jetson CSI camera or hardware decode;
                                      needs an OpenCV built with GStreamer (JetPack's is; pip's wheels
                                      are not): :func:`gstreamer_support` reads ``cv2.getBuildInformation()``
    ``rtsp://...``, ``http://...``    stream URL (FFmpeg backend)
    ``clip.mp4`` (``VIDEO_SUFFIXES``) video file
    ``frame.png`` (``IMAGE_SUFFIXES``) one image
    ``dir/``, ``"dir/*.png"``         images in name order

With ``hw_decode`` (``infer --hw-decode``) a video file is decoded by the Jetson hardware decoder through
:func:`videoio.hw_decode_pipeline` (``filesrc ! qtdemux ! h264parse ! nvv4l2decoder ! ... ! appsink``); every
source records the decoder that runs (:attr:`FrameSource.decoder`).
"""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.errors import ConfigError, DataError, MissingDependencyError
from ..data.frames import IMAGE_SUFFIXES
from .videoio import HW_DECODER, gstreamer_support, hw_decode_pipeline

__all__ = ["FrameSource", "open_source", "output_names", "gstreamer_support", "is_gstreamer", "VIDEO_SUFFIXES",
           "IMAGE_SUFFIXES"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv")
DEFAULT_FPS = 25.0
MAX_PIXELS = 8192 * 8192  # refuse absurd frame sizes from untrusted files


class FrameSource:
    """An iterable of RGB frames with ``fps``, ``frame_count`` (None when unknown) and ``kind``.

    Attributes:
        name: what the user passed. kind: ``video``, ``image``, ``images``, ``camera``, ``stream``, ``gstreamer``.
        fps: frames per second (source's own, or 25 for images and streams that do not say).
        frame_count: frames announced by the container / number of images; None for live sources.
        broken: None, or why decoding stopped before ``frame_count`` (set after iteration).
        names: per-frame output names for image sources (:func:`output_names`: the file stem, unique), else None.
        decoder: what decodes the frames, for the summary (``OpenCV FFMPEG (CPU)``, ``OpenCV imread (CPU)``,
            ``GStreamer pipeline``, :data:`videoio.HW_DECODER`).
        live: frames arrive at the source's pace whether read or not (camera, stream, GStreamer pipeline), so a
            slow reader lags behind or must drop frames; files and images wait for the reader.
    """

    LIVE_KINDS = ("camera", "stream", "gstreamer")

    def __init__(self, name: str, kind: str, fps: float, frame_count: int | None,
                 capture: Any = None, files: list[Path] | None = None, decoder: str | None = None) -> None:
        self.name, self.kind, self.fps, self.frame_count = name, kind, fps, frame_count
        self.decoder = decoder or ("OpenCV imread (CPU)" if files is not None else "OpenCV (CPU)")
        self._cap, self._files = capture, files
        self.broken: str | None = None
        self.names = output_names(files) if files else None

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iter_images() if self._files is not None else self._iter_capture()

    def _iter_capture(self) -> Iterator[np.ndarray]:
        n = 0
        try:
            while True:
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                n += 1
                yield _to_rgb(bgr, f"{self.name} frame {n}")
        finally:
            self.close()
        if self.kind == "video" and self.frame_count and n < self.frame_count:
            self.broken = (f"{self.name}: video broke off after {n} of {self.frame_count} frames "
                           "(file truncated or corrupt)")

    def _iter_images(self) -> Iterator[np.ndarray]:
        cv2 = import_cv2()
        for i, path in enumerate(self._files):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                self.broken = f"{path}: not a readable image (stopped after {i} images)"
                return
            yield _to_rgb(bgr, str(path))

    @property
    def live(self) -> bool:
        return self.kind in self.LIVE_KINDS

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()


def output_names(files: list[Path]) -> list[str]:
    """One output name per image file (``labels/<name>.png``), never two alike.

    The stem (``a.jpg`` -> ``a``) unless two files share it; those keep their extension
    (``a.png``, ``a.jpg`` -> ``a_png``, ``a_jpg``); a name still taken (the same file name in two folders
    of a glob, or a case-only difference) gets ``_2``, ``_3``... in path order.
    """
    stems = Counter(p.stem.casefold() for p in files)
    used: set[str] = set()
    out = []
    for p in files:
        base = p.stem if stems[p.stem.casefold()] == 1 else f"{p.stem}_{p.suffix.lstrip('.').lower()}"
        name, k = base, 1
        while name.casefold() in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name.casefold())
        out.append(name)
    return out


def _to_rgb(bgr: np.ndarray, what: str) -> np.ndarray:
    cv2 = import_cv2()
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    if bgr.shape[0] * bgr.shape[1] > MAX_PIXELS:
        raise DataError(f"{what}: {bgr.shape[1]}x{bgr.shape[0]} frame is larger than the supported maximum")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _fps(cap: Any) -> float:
    cv2 = import_cv2()
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS


def is_gstreamer(spec: str) -> bool:
    """A source string that is a GStreamer pipeline: it contains ``!`` and names no existing file."""
    return "!" in spec and not Path(spec).exists()


def _decoder_name(cap: Any, kind: str, spec: str | int, hw: bool) -> str:
    if hw:
        return HW_DECODER
    if kind == "gstreamer":
        return "GStreamer pipeline" + (" (nvv4l2decoder)" if "nvv4l2decoder" in str(spec) else "")
    try:
        return f"OpenCV {cap.getBackendName()} (CPU)"
    except Exception:  # noqa: BLE001 - a stand-in or old capture: the name is cosmetic
        return "OpenCV (CPU)"


def _open_capture(spec: str | int, kind: str, api: int | None = None, name: str | None = None,
                  hw: bool = False) -> FrameSource:
    """Open a ``cv2.VideoCapture``; ``name``: what the user gave when ``spec`` is a pipeline built from it."""
    cv2 = import_cv2()
    if kind == "gstreamer" and gstreamer_support(cv2) is False:
        raise MissingDependencyError(
            f"{spec}: this OpenCV ({getattr(cv2, '__version__', '?')}) was built without GStreamer (cv2.getBuildInformation() says "
            "GStreamer: NO; pip's opencv-python wheels are): on a Jetson use JetPack's OpenCV (python3-opencv, "
            "a venv made with --system-site-packages, no pip opencv-python in it), or give a video file or camera index")
    cap = cv2.VideoCapture(spec, api) if api is not None else cv2.VideoCapture(spec)
    if not cap.isOpened():
        if hw:
            raise DataError(f"{name}: --hw-decode pipeline cannot be opened (not H.264 / H.265 / MPEG-4, or "
                            f"nvv4l2decoder missing: try it with gst-launch-1.0 ending in '! fakesink'): {spec}")
        what = {"video": "video file cannot be opened (truncated, corrupt, not a video, or a codec OpenCV lacks)",
                "camera": "camera cannot be opened (wrong index, busy, or no permission)",
                "gstreamer": "GStreamer pipeline cannot be opened (a bad pipeline or a missing plugin: end it with "
                             "'! video/x-raw,format=BGR ! appsink', and try it with gst-launch-1.0 ending in "
                             "'! fakesink')",
                "stream": "stream cannot be opened (unreachable URL or unsupported protocol)"}[kind]
        if kind == "video" and str(spec).lower().endswith((".mp4", ".mov", ".m4v")):
            what += "; an .mp4 cut short loses its index (moov atom) and cannot be read at all"
        raise DataError(f"{spec}: {what}")
    count = None
    if kind == "video" and not hw:  # GStreamer's count may differ by a frame: no "broke off" alarm on it
        c = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        count = int(c) if c and math.isfinite(c) and c > 0 else None
    return FrameSource(str(spec if name is None else name), kind, _fps(cap), count, capture=cap,
                       decoder=_decoder_name(cap, kind, spec, hw))


def _image_source(name: str, files: list[Path]) -> FrameSource:
    if not files:
        raise DataError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return FrameSource(name, "images" if len(files) > 1 else "image", DEFAULT_FPS, len(files), files=files)


def _source_kind(spec: str) -> str:
    """What ``spec`` names, by the string and then the file system: ``camera``, ``gstreamer``, ``stream``,
    ``folder``, ``glob``, ``missing``, ``image``, ``video`` or ``other`` (an unsupported extension)."""
    if spec.isdigit():
        return "camera"
    if is_gstreamer(spec):
        return "gstreamer"
    if "://" in spec:
        return "stream"
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if any(ch in spec for ch in "*?["):
        return "glob"
    if not path.exists():
        return "missing"
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "other"


def open_source(source: str | int | os.PathLike[str], hw_decode: bool = False) -> FrameSource:
    """Open ``source`` (see the module docstring); ``hw_decode``: a video file through the Jetson hardware decoder.

    Raises:
        DataError: missing file, unsupported extension, video/camera/stream/pipeline that cannot be opened,
            folder or glob without images.
        ConfigError: ``hw_decode`` on an OpenCV without GStreamer, or with a source that is not a video file.
        MissingDependencyError: OpenCV is not importable, or a GStreamer pipeline was given to an OpenCV
            built without GStreamer.
    """
    cv2 = import_cv2()  # every source decodes through OpenCV: say so before looking at the string
    if hw_decode and gstreamer_support(cv2) is False:
        raise ConfigError(f"--hw-decode needs an OpenCV built with GStreamer (JetPack's); this OpenCV "
                          f"({getattr(cv2, '__version__', '?')}) says GStreamer: NO: leave out --hw-decode to decode "
                          "on the CPU")
    if isinstance(source, int) and not hw_decode:
        return _open_capture(source, "camera")
    spec = str(source)
    kind = _source_kind(spec)
    if hw_decode and kind not in ("video", "other", "missing"):
        raise ConfigError(f"--hw-decode decodes a video file ({', '.join(VIDEO_SUFFIXES)}); for a camera or a "
                          "stream give a GStreamer pipeline with nvv4l2decoder as the source instead")
    if kind == "camera":
        return _open_capture(int(spec), "camera")
    if kind == "gstreamer":
        return _open_capture(spec, "gstreamer", cv2.CAP_GSTREAMER)
    if kind == "stream":
        return _open_capture(spec, "stream")
    if kind == "folder":
        files = sorted(p for p in Path(spec).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return _image_source(spec, files)
    if kind == "glob":
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        return _image_source(spec, files)
    if kind == "missing":
        raise DataError(f"{spec}: source not found (a video, an image, a folder, a glob, a camera index, "
                        "a stream URL or a GStreamer pipeline)")
    if hw_decode:  # a video file (any extension the decoder may take) through nvv4l2decoder
        return _open_capture(hw_decode_pipeline(Path(spec), cv2), "video", cv2.CAP_GSTREAMER, name=spec, hw=True)
    if kind == "image":
        return _image_source(spec, [Path(spec)])
    if kind == "video":
        return _open_capture(spec, "video")
    suffix = Path(spec).suffix.lower()
    raise DataError(f"{spec}: unsupported extension {suffix or '(none)'!r}; videos: {' '.join(VIDEO_SUFFIXES)}; "
                    f"images: {' '.join(IMAGE_SUFFIXES)}")
