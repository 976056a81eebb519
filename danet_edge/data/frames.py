"""Frames in: the one home for image files, their suffixes, fitting frames to the model and static batches.

Every stage that takes images uses this module: calibration (ONNX Runtime's reader and the TensorRT
calibrator), export verification, ``check``, the inference pipeline and its sources, the data sets.

* Frames are ``np.ndarray (H, W, 3) uint8 RGB``; OpenCV's BGR is converted here, at the edge.
* :func:`fit_frame` brings a frame to the model size ``(h, w)`` (stretch, as in training, or letterbox)
  through ``preprocess.resize_image`` (the one resize); :func:`restore_labels` maps the model-size
  class map back to the frame.
* :func:`static_batches` stacks frames into the artifact's static batch, padding the last batch by
  repeating its last frame, and says how many are real.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.optional import import_cv2
from ..core.errors import DataError
from .preprocess import normalize, resize_image, resize_labels

__all__ = ["model_inputs", "IMAGE_SUFFIXES", "is_image", "list_images", "read_image", "Placement", "fit_frame",
           "restore_labels", "static_batches"]

#: Image files every stage reads (lower-case ``Path.suffix``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: str | os.PathLike[str]) -> bool:
    """True for a file name with one of :data:`IMAGE_SUFFIXES` (any case)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and below it with ``recursive``), sorted by path.

    Raises:
        DataError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and is_image(p))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8 RGB``.

    Raises:
        DataError: missing, empty or not an image (one line naming the file).
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: cannot read image (missing, empty or not an image)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class Placement:
    """Where a frame sits inside the model input: ``top, left, height, width`` in model pixels."""

    top: int
    left: int
    height: int
    width: int


def fit_frame(frame: np.ndarray, size: tuple[int, int], letterbox: bool = False,
              pad_value: int = 114) -> tuple[np.ndarray, Placement]:
    """Bring ``frame: (H, W, 3) uint8 RGB`` to the model size ``(h, w)``.

    Stretch resize by default (as in training); with ``letterbox`` keep the aspect ratio and pad
    with grey. Returns the model image ``(h, w, 3) uint8`` and the frame's placement inside it.
    """
    h, w = size
    if not letterbox or frame.shape[:2] == (h, w):
        return resize_image(frame, size), Placement(0, 0, h, w)
    fh, fw = frame.shape[:2]
    scale = min(h / fh, w / fw)
    nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
    out = np.full((h, w, 3), pad_value, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top:top + nh, left:left + nw] = resize_image(frame, (nh, nw))
    return out, Placement(top, left, nh, nw)


def restore_labels(labels: np.ndarray, placement: Placement, frame_size: tuple[int, int]) -> np.ndarray:
    """Model-size class map ``(h, w)`` -> frame-size ``(H, W)``: crop the letterbox, nearest resize."""
    p = placement
    crop = labels[p.top:p.top + p.height, p.left:p.left + p.width]
    return resize_labels(crop, frame_size)


def static_batches(frames: Iterable[np.ndarray] | Sequence[np.ndarray], batch: int
                   ) -> Iterator[tuple[np.ndarray, int]]:
    """Stack same-size frames into ``(batch, ...)`` arrays; the last one is padded by repeating its
    last frame. Yields ``(array, n_real)``; ``array[:n_real]`` are the given frames.

    Raises:
        DataError: ``batch < 1`` or frames of different shapes in one batch.
    """
    if batch < 1:
        raise DataError(f"batch must be at least 1, got {batch}")
    chunk: list[np.ndarray] = []
    for f in frames:
        chunk.append(np.asarray(f))
        if len(chunk) == batch:
            yield _stack(chunk), batch
            chunk = []
    if chunk:
        n = len(chunk)
        yield _stack(chunk + [chunk[-1]] * (batch - n)), n


def _stack(chunk: list[np.ndarray]) -> np.ndarray:
    shapes = {c.shape for c in chunk}
    if len(shapes) != 1:
        raise DataError(f"frames of different shapes in one batch: {sorted(shapes)}")
    return np.stack(chunk)


def model_inputs(frames: Sequence[np.ndarray], manifest: Any, fused: bool | None = None) -> list[np.ndarray]:
    """Frames ``(H, W, 3) uint8 RGB`` as a static-shape graph's input batches (``manifest``: its image_size,
    batch_size, input_dtype, mean, std): uint8 ``(N, h, w, 3)`` for fused I/O, else normalised
    ``(N, 3, h, w)`` float32; the last batch padded (:func:`static_batches`). ``fused=False`` gives the
    normalised form even for a fused-I/O manifest (the PyTorch reference's input)."""
    fused = manifest.input_dtype == "uint8" if fused is None else fused
    fitted = [resize_image(f, tuple(manifest.image_size)) for f in frames]
    return [b if fused else normalize(b, manifest.mean, manifest.std)
            for b, _ in static_batches(fitted, manifest.batch_size)]
