"""Frames out: the overlay picture, palette label PNGs and the video writer of ``infer`` (its codec: ``videoio``).

Everything here writes under a temporary name and renames when done (``utils.atomic_path``), so an
interrupted run leaves complete files only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from typing import Any

import numpy as np
from PIL import Image

from ..core.optional import import_cv2
from ..core.errors import DataError, StorageError
from ..core.fixednames import open_fixed
from ..core.utils import atomic_path, free_bytes
from .config import VIDEO_RESERVE_MIB
from .videoio import VideoEncoder, open_writer, read_fourcc, video_encoders

__all__ = ["overlay", "save_label_png", "VideoOut", "partial_path", "LegendLayout", "legend_layout", "draw_legend", "draw_stamp",
           "side_by_side", "LEGEND_MAX_HEIGHT", "LEGEND_MAX_WIDTH", "BOX_OPACITY"]

#: Largest share of the frame height / width the legend's backing box may take (more classes: more columns,
#: then a smaller font).
LEGEND_MAX_HEIGHT = 0.45
LEGEND_MAX_WIDTH = 0.6
#: Opacity of the black backing box behind the legend and the stamp (0..1).
BOX_OPACITY = 0.65
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class LegendLayout:
    """Where the legend goes on a frame; pixels, ``(x0, y0, x1, y1)`` with x1/y1 exclusive.

    Attributes:
        box: the backing box. swatches: one colour square per class, in class order (column by column).
        text_origins: the baseline origin ``(x, y)`` of each class name. scale, thickness: OpenCV Hershey font
            scale and stroke (px). text_height: height of a capital letter (px). rows, cols: the grid.
    """

    box: tuple[int, int, int, int]
    swatches: tuple[tuple[int, int, int, int], ...]
    text_origins: tuple[tuple[int, int], ...]
    scale: float
    thickness: int
    text_height: int
    rows: int
    cols: int


def _font_scale(height: int) -> float:
    """Hershey font scale for a frame ``height`` px high: about 2.3 % of the height for a capital letter
    (about 10 px at 360 rows, 29 px at 1080)."""
    return max(0.4, height / 800.0)


@lru_cache(maxsize=32)
def legend_layout(frame_hw: tuple[int, int], classes: tuple[str, ...]) -> LegendLayout:
    """The legend of every class in ``classes`` order for a frame of ``frame_hw = (H, W)`` px.

    The font scales with the frame height (:func:`_font_scale`); the box stays within
    :data:`LEGEND_MAX_HEIGHT` of the height by using more columns (filled top to bottom, then left to right),
    and within :data:`LEGEND_MAX_WIDTH` of the width by shrinking the font when needed. It depends on the frame
    size and the class list only, never on the classes present, so it does not flicker or reorder.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    h, w = int(frame_hw[0]), int(frame_hw[1])
    k = max(1, len(classes))
    scale = _font_scale(h)
    while True:
        thick = max(1, round(scale * 1.5))
        widths = [cv2.getTextSize(str(c), _FONT, scale, thick)[0][0] for c in classes] or [0]
        (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thick)
        pad = max(2, round(5 * scale))
        sw = th + base
        row_h = sw + pad
        col_w = sw + pad + max(widths) + 2 * pad
        rows_fit = max(1, int((LEGEND_MAX_HEIGHT * h - pad) // row_h))
        cols = math.ceil(k / rows_fit)
        rows = math.ceil(k / cols)
        bw, bh = cols * col_w + pad, rows * row_h + pad
        if (bw <= LEGEND_MAX_WIDTH * w and bh <= LEGEND_MAX_HEIGHT * h + row_h) or scale <= 0.25:
            break
        scale *= 0.9
    x0 = y0 = max(2, pad)
    bw, bh = min(bw, w - 2 * x0), min(bh, h - 2 * y0)
    swatches, origins = [], []
    for i in range(len(classes)):
        c, r = divmod(i, rows)
        sx, sy = x0 + pad + c * col_w, y0 + pad + r * row_h
        swatches.append((sx, sy, sx + sw, sy + sw))
        origins.append((sx + sw + pad, sy + th + max(0, (sw - th) // 2) - 1))
    return LegendLayout((x0, y0, x0 + bw, y0 + bh), tuple(swatches), tuple(origins), scale, thick, th, rows, cols)


def _backing_box(img: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    roi = img[y0:y1, x0:x1]
    roi[...] = (roi.astype(np.float32) * (1.0 - BOX_OPACITY)).astype(np.uint8)


def draw_legend(img: np.ndarray, classes: Sequence[str], palette: np.ndarray) -> LegendLayout:
    """Draw the legend of every class (:func:`legend_layout`) on ``img (H, W, 3) uint8 RGB`` in place, on a
    semi-opaque black box (:data:`BOX_OPACITY`), each swatch with a light outline so that dark and grey
    colours (CamVid's "Sky") stay visible. Returns the layout.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    lay = legend_layout(img.shape[:2], tuple(str(c) for c in classes))
    _backing_box(img, lay.box)
    for k, ((sx0, sy0, sx1, sy1), org) in enumerate(zip(lay.swatches, lay.text_origins)):
        colour = tuple(int(v) for v in palette[min(k, len(palette) - 1)])
        cv2.rectangle(img, (sx0, sy0), (sx1 - 1, sy1 - 1), colour, -1)
        cv2.rectangle(img, (sx0, sy0), (sx1 - 1, sy1 - 1), (230, 230, 230), 1)
        cv2.putText(img, str(classes[k]), org, _FONT, lay.scale, (255, 255, 255), lay.thickness, cv2.LINE_AA)
    return lay


def draw_stamp(img: np.ndarray, text: str) -> tuple[int, int, int, int]:
    """Write ``text`` (e.g. ``"model_int8_trt.onnx | int8 | 12.3 FPS"``) at the bottom left of ``img`` in place,
    white on a semi-opaque black box, font scaled with the frame height. Returns the box ``(x0, y0, x1, y1)``.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    h, w = img.shape[:2]
    scale = 0.85 * _font_scale(h)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    while tw > 0.95 * w and scale > 0.25:
        scale *= 0.9
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = max(2, round(5 * scale))
    box = (pad, max(0, h - pad - th - base - 2 * pad), min(w, 3 * pad + tw), h - pad)
    _backing_box(img, box)
    cv2.putText(img, text, (2 * pad, h - 2 * pad - base), _FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return box


def overlay(frame: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float,
            classes: Sequence[str] | None = None, stamp: str | None = None) -> np.ndarray:
    """Blend the class colours over ``frame: (H, W, 3) uint8 RGB``; ``labels: (H, W)`` class indices.

    With ``classes``, the legend of every class of the model is drawn at the top left (:func:`draw_legend`:
    fixed order and place, the same on every frame); with ``stamp``, that text at the bottom left
    (:func:`draw_stamp`). Returns RGB uint8.

    Raises:
        MissingDependencyError: OpenCV is not importable.
    """
    cv2 = import_cv2()
    colour = palette[np.clip(labels, 0, len(palette) - 1)]
    out = cv2.addWeighted(frame, 1.0 - alpha, colour, alpha, 0.0)
    if classes:
        draw_legend(out, classes, palette)
    if stamp:
        draw_stamp(out, stamp)
    return out


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """``panels[0] | panels[1] | ...`` as one frame ``(H, sum of widths, 3)`` (all of the same height)."""
    if len({p.shape[0] for p in panels}) != 1:
        raise DataError(f"side by side: panels of {[p.shape[0] for p in panels]} rows")
    return np.concatenate(panels, axis=1)


def disagreement_tile(image: np.ndarray, disagree: np.ndarray) -> np.ndarray:
    """``image (H, W, 3) uint8`` darkened to 35 %, with the pixels where ``disagree (H, W) bool`` is True white:
    where two models' class maps differ, read at a glance (check's pictures and ``infer --compare``)."""
    tile = (np.asarray(image, np.uint8).astype(np.float32) * 0.35).astype(np.uint8)
    tile[np.asarray(disagree, bool)] = (255, 255, 255)
    return tile


def save_label_png(path: Path, labels: np.ndarray, palette: Sequence[Sequence[int]]) -> None:
    """Write ``labels (H, W)`` as a palette PNG (mode P, pixel value = class index), atomically."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [int(v) for c in palette for v in c]
    img.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def partial_path(path: Path) -> Path:
    """The name :class:`VideoOut` writes ``path`` under until it closes (``.<stem>.partial<suffix>``: OpenCV picks
    the container by the suffix). A fixed name: the run checks it before work and creates it as a regular file of
    its own before the encoder opens it (``core.fixednames``), so a link planted there is refused, never followed."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


class VideoOut:
    """The overlay video, written under a temporary name and renamed on close; nothing is left when no frame was
    written. The encoder is the first of ``encoders`` that opens (``videoio.video_encoders``: H.264 on the Jetson
    encoder, H.264 through OpenCV's FFmpeg, mp4v); ``encoder`` names it once the first frame is written, ``notes``
    then say why each better one was not used, ``codec`` is the fourcc read back from the closed file.

    Args:
        encoders, notes: from ``videoio.video_encoders()`` (its probe writes to a temporary folder and silences
            stderr for a moment: construct this before starting other threads); None: probed here.

    Raises (from ``write``):
        DataError: no encoder opens a writer there. MissingDependencyError: OpenCV is not importable.
        ConfigError: the temporary name (:func:`partial_path`) is a link, a folder or not a regular file.
    """

    def __init__(self, path: Path, fps: float, encoders: Sequence[VideoEncoder] | None = None,
                 notes: Sequence[tuple[int, str]] | None = None, reserve_mib: float = VIDEO_RESERVE_MIB) -> None:
        self.path, self.fps, self.reserve = path, fps, int(reserve_mib * 2**20)
        self.tmp = partial_path(path)
        if encoders is None:
            encoders, notes = video_encoders()
        self.encoders, self._left_out = list(encoders), list(notes or [])
        self.notes: list[str] = []
        self.writer: Any = None  # cv2.VideoWriter once the first frame gives the size
        self.encoder: str | None = None  # label of the encoder that opened (``VideoEncoder.label``)
        self.codec: str | None = None  # fourcc read back from the closed file
        self.size: tuple[int, int] | None = None
        self.frames = 0

    def _room(self) -> None:
        """Refuse the next frame when the file system is nearly full: an encoder does not report a failed write,
        and a file cut short has no index (an MP4 without its ``moov`` box plays nothing). So writing stops while
        ``reserve`` bytes (plus 64 frames at the mean encoded size so far) are still free, and the video is closed
        there: playable up to its last frame.

        Raises:
            StorageError: the file system holding the video has less room than that.
        """
        free = free_bytes(self.path.parent)
        written = self.tmp.stat().st_size if self.frames and self.tmp.exists() else 0
        need = self.reserve + 64 * (written // max(self.frames, 1))
        if free is None or free >= need:
            return
        kept = self.close()
        where = f"the {self.frames} frames before are in {kept}, playable" if kept else "no frame was written"
        raise StorageError(f"{self.path.parent}: the disk is nearly full ({free / 2**20:.1f} MiB free; the video "
                           f"keeps {need / 2**20:.0f} MiB free to close its file): {where}")

    def write(self, rgb: np.ndarray) -> None:
        """Append one ``(H, W, 3) uint8 RGB`` frame (resized to the first frame's size when it differs).

        Raises:
            StorageError: the disk is nearly full (:meth:`_room`); the video is closed and keeps the frames before.
        """
        cv2 = import_cv2()
        self._room()
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.size = (rgb.shape[1], rgb.shape[0])
            os.close(open_fixed(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))  # ours: never a planted link
            writer, enc, failed = open_writer(self.encoders, self.tmp, self.fps, self.size, cv2)
            if writer is None:
                raise DataError(f"{self.path}: OpenCV cannot write a video here ({'; '.join(t for _, t in failed)})")
            self.writer, self.encoder = writer, enc.label(writer)
            self.notes = [why for rank, why in sorted(self._left_out + failed) if rank < enc.rank]
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file, give it its name and read its codec back; None when no frame was written. Closing a
        closed video returns its path again."""
        if self.writer is None:
            return self.path if self.frames and self.path.exists() else None
        self.writer.release()
        self.writer = None
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        self.codec = read_fourcc(self.path)
        return self.path
