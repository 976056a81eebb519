"""Frames out: the overlay picture, palette label PNGs and the video writer of ``infer``.

Everything here writes under a temporary name and renames when done (``utils.atomic_path``), so an
interrupted run leaves complete files only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from typing import Any

import numpy as np
from PIL import Image

from .._optional import import_cv2
from ..errors import DataError
from ..utils import atomic_path

__all__ = ["overlay", "save_label_png", "VideoOut"]


def overlay(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float,
            classes: Sequence[str] | None = None) -> np.ndarray:
    """Blend the class colours over ``frame: (H, W, 3) uint8 RGB``; ``labels: (H, W)`` class indices.

    With ``classes``, a legend of the classes present is drawn at the top left. Returns RGB uint8.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    colour = palette[np.clip(labels, 0, len(palette) - 1)]
    out = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
    if classes:
        present = np.unique(labels)
        scale = max(0.35, min(frame.shape[:2]) / 900)
        step = int(22 * scale / 0.5)
        for row, k in enumerate(present[present < len(classes)][:20]):
            y = 6 + row * step
            cv2.rectangle(out, (6, y), (6 + step - 4, y + step - 4), tuple(int(v) for v in palette[k]), -1)
            cv2.putText(out, str(classes[k]), (10 + step, y + step - 8), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_label_png(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write ``labels (H, W)`` as a palette PNG (mode P, pixel value = class index), atomically."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [int(v) for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


class VideoOut:
    """mp4v writer to a temporary name, renamed on close; nothing is left when no frame was written.

    Raises (from ``write``):
        DataError: OpenCV cannot open an mp4v writer there. MissingDependencyError: OpenCV is not importable.
    """

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = path, fps
        self.tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
        self.writer: Any = None  # cv2.VideoWriter once the first frame gives the size
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(H, W, 3) uint8 RGB`` frame (resized to the first frame's size when it differs)."""
        cv2 = import_cv2()
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = (rgb.shape[1], rgb.shape[0])
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot write an mp4v video here")
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and give it its name; None when no frame was written (nothing is left)."""
        if self.writer is None:
            return None
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        return self.path
