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
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import import_cv2
from ..errors import DataError, MissingDependencyError
from ..frames import IMAGE_SUFFIXES

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
    """

    def __init__(self, name: str, kind: str, fps: float, frame_count: int | None,
                 capture: Any = None, files: list[Path] | None = None) -> None:
        self.name, self.kind, self.fps, self.frame_count = name, kind, fps, frame_count
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


def gstreamer_support(cv2: Any = None) -> bool | None:
    """Whether this OpenCV was built with GStreamer, from the ``GStreamer:`` line of ``cv2.getBuildInformation()``
    (``YES (1.20.3)`` / ``NO``); None when the build information does not say.

    Args:
        cv2: the OpenCV module (default: :func:`danet_edge._optional.import_cv2`).

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


def is_gstreamer(spec: str) -> bool:
    """A source string that is a GStreamer pipeline: it contains ``!`` and names no existing file."""
    return "!" in spec and not Path(spec).exists()


def _open_capture(spec: str | int, kind: str, api: int | None = None) -> FrameSource:
    cv2 = import_cv2()
    if kind == "gstreamer" and gstreamer_support(cv2) is False:
        raise MissingDependencyError(
            f"{spec}: this OpenCV ({getattr(cv2, '__version__', '?')}) was built without GStreamer (cv2.getBuildInformation() says "
            "GStreamer: NO; pip's opencv-python wheels are): on a Jetson use JetPack's OpenCV (python3-opencv, "
            "a venv made with --system-site-packages, no pip opencv-python in it), or give a video file or camera index")
    cap = cv2.VideoCapture(spec, api) if api is not None else cv2.VideoCapture(spec)
    if not cap.isOpened():
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
    if kind == "video":
        c = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        count = int(c) if c and math.isfinite(c) and c > 0 else None
    return FrameSource(str(spec), kind, _fps(cap), count, capture=cap)


def _image_source(name: str, files: list[Path]) -> FrameSource:
    if not files:
        raise DataError(f"{name}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return FrameSource(name, "images" if len(files) > 1 else "image", DEFAULT_FPS, len(files), files=files)


def open_source(source: str | int | os.PathLike[str]) -> FrameSource:
    """Open ``source`` (see the module docstring).

    Raises:
        DataError: missing file, unsupported extension, video/camera/stream/pipeline that cannot be opened,
            folder or glob without images.
        MissingDependencyError: OpenCV is not importable, or a GStreamer pipeline was given to an OpenCV
            built without GStreamer.
    """
    cv2 = import_cv2()  # every source decodes through OpenCV: say so before looking at the string
    if isinstance(source, int):
        return _open_capture(source, "camera")
    spec = str(source)
    if spec.isdigit():
        return _open_capture(int(spec), "camera")
    if is_gstreamer(spec):
        return _open_capture(spec, "gstreamer", cv2.CAP_GSTREAMER)
    if "://" in spec:
        return _open_capture(spec, "stream")
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return _image_source(spec, files)
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        return _image_source(spec, files)
    if not path.exists():
        raise DataError(f"{spec}: source not found (a video, an image, a folder, a glob, a camera index, "
                        "a stream URL or a GStreamer pipeline)")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _image_source(spec, [path])
    if suffix in VIDEO_SUFFIXES:
        return _open_capture(spec, "video")
    raise DataError(f"{spec}: unsupported extension {suffix or '(none)'!r}; videos: {' '.join(VIDEO_SUFFIXES)}; "
                    f"images: {' '.join(IMAGE_SUFFIXES)}")
