"""Calibration images: the folder INT8 export and TensorRT 10's implicit calibration read.

``calib/`` holds real images (or a ``calib.txt`` list of them); ``load_calibration_set`` reads and
checks every one and draws a seeded subset; ``CalibrationSet.model_batch`` serves them as the graph's
static batches through exactly ``danet_edge.data.preprocess`` (the rule both ``quantize.quantize_int8`` and
the TensorRT calibrator ``engine_calib`` use). ``fill_calib_dir`` fills the folder with a class-balanced
sample of a data set.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.optional import import_cv2
from ..core.choices import CALIB_METHODS
from ..core.errors import CalibrationError, ConfigError, DataError
from .frames import IMAGE_SUFFIXES, read_image
from .preprocess import preprocess, resize_image
from ..core.runfolder import run_lock
from ..core.utils import atomic_path, ensure_output_names, make_dirs, remove_empty, write_json

__all__ = ["IMAGE_SUFFIXES", "LIST_FILE", "CALIB_METHODS", "CalibrationSet", "load_calibration_set",
           "graph_sha256", "fill_calib_dir"]

LIST_FILE = "calib.txt"

_MAX_IMAGES = 10_000


def _read_rgb(path: Path) -> np.ndarray:
    """``data.read_image`` (``(H, W, 3) uint8 RGB``), its failure told as a calibration error."""
    try:
        return read_image(path)
    except DataError:
        raise CalibrationError(f"calibration image {path} cannot be read (missing, empty or not an image)") from None


@dataclass
class CalibrationSet:
    """Calibration images, checked readable.

    Attributes:
        root: the calibration folder.
        paths: image files used, in order (the record lists them).
        seed: seed of the sample drawn when the folder holds more than ``count`` images.
        available: number of images the folder offered.
    """

    root: Path
    paths: list[Path]
    seed: int = 0
    available: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def frames(self) -> Iterator[np.ndarray]:
        """Each image as ``(H, W, 3) uint8 RGB`` (decoded again on every pass)."""
        for p in self.paths:
            yield _read_rgb(p)

    def num_batches(self, batch: int) -> int:
        """Batches of ``batch`` images that cover the set (the last one completed, see :meth:`model_batch`)."""
        return -(-len(self.paths) // batch)

    def model_batch(self, index: int, batch: int, size: tuple[int, int], mean: Any, std: Any,
                    fused: bool = False) -> np.ndarray:
        """Batch ``index`` as the graph's input: ``(batch, 3, h, w)`` float32 through
        ``preprocess.preprocess``, or ``(batch, h, w, 3)`` uint8 for fused I/O. The last batch is
        completed with images from the start of the set, so no image is dropped. The one rule for both
        ONNX Runtime's calibration reader and TensorRT's calibrator.

        Raises:
            CalibrationError: an image cannot be read (named).
        """
        frames = [_read_rgb(self.paths[(index * batch + k) % len(self.paths)]) for k in range(batch)]
        if fused:
            return np.stack([resize_image(f, size) for f in frames])
        return preprocess(frames, size, mean, std)

    def relative_paths(self) -> list[str]:
        out = []
        for p in self.paths:
            try:
                out.append(p.resolve().relative_to(self.root.resolve()).as_posix())
            except ValueError:
                out.append(str(p))
        return out


def load_calibration_set(directory: str | os.PathLike[str], count: int | None = None, seed: int = 0) -> CalibrationSet:
    """Read a calibration folder: ``calib.txt`` (one image path a line, relative to the folder, ``#``
    comments) when present, else every image file under it (sorted). Draws ``count`` of them with
    ``seed`` when more are offered, and decodes every chosen image once to check it.

    Raises:
        CalibrationError: missing folder, no image, a listed file missing or unreadable (named).
    """
    root = Path(directory)
    if not root.is_dir():
        raise CalibrationError(f"calibration folder {root} does not exist (fill it with `danet-edge calib fill` "
                               "or copy representative images into it)")
    if count is not None and count < 1:
        raise ConfigError(f"--calib-size must be at least 1, got {count}")
    list_file = root / LIST_FILE
    if list_file.is_file():
        paths = []
        for n, line in enumerate(list_file.read_text(errors="replace").splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            p = Path(line.split()[0])
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise CalibrationError(f"{list_file}:{n}: calibration image {p} does not exist")
            paths.append(p)
    else:
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationError(f"calibration folder {root} holds no image ({', '.join(IMAGE_SUFFIXES)}) "
                               f"and no {LIST_FILE}")
    available = len(paths)
    if len(paths) > _MAX_IMAGES and (count is None or count > _MAX_IMAGES):
        count = _MAX_IMAGES
    if count is not None and count < len(paths):
        paths = sorted(random.Random(seed).sample(paths, count))
    for p in paths:
        _read_rgb(p)
    return CalibrationSet(root, paths, seed, available)


def _write_calib_dir(out: Path, ds: Any, chosen: list[int], record: dict[str, Any], covered: list[str],
                     missing: list[str]) -> None:
    """Write the chosen images, ``calib.json`` and the list; a failure (a full disk) removes the images this call
    wrote, so a folder is either filled or as it was."""
    made = make_dirs(out / "images")
    written: list[Path] = []
    try:
        names = []
        for n, i in enumerate(chosen):
            src = ds.image_path(i)
            if src is not None:
                name = f"images/{n:05d}_{Path(src).name}"
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(src, tmp)
            else:
                name = f"images/{n:05d}.png"
                image, _ = ds[i]
                cv2 = import_cv2()
                ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise DataError(f"OpenCV cannot encode {out / name}")
                with atomic_path(out / name) as tmp:
                    tmp.write_bytes(png.tobytes())
            written.append(out / name)
            names.append(name)
        write_json(out / "calib.json", {**record, "count": len(names), "images": names, "classes_covered": covered,
                                        "classes_missing": missing})
        with atomic_path(out / LIST_FILE) as tmp:
            tmp.write_text("# calibration images, one a line, relative to this folder\n" + "\n".join(names) + "\n")
    except BaseException:
        for f in written:
            f.unlink(missing_ok=True)
        remove_empty(made)
        raise


def graph_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the graph (nodes, weights, I/O), metadata excluded: same weights, same hash."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def fill_calib_dir(dataset: str, data: str | os.PathLike[str] | None, count: int, out: str | os.PathLike[str],
                   split: str | None = None, seed: int | None = None, options: dict[str, Any] | None = None) -> Path:
    """Fill ``out`` with ``count`` representative images of a data set and a ``calib.txt`` list.

    ``split`` and ``seed``: None = :class:`~danet_edge.data.config.CalibFillConfig`'s defaults (train, 0).
    ``options``: the data set's options (``build_dataset``'s keywords: a synthetic size, a folder's classes).

    Class-balanced where labels exist: greedily picks, one at a time, the image whose classes are
    rarest (pixel share over the split) and least covered by the images already picked, so rare classes
    are calibrated on. Images are copied (the folder is self-contained); ``calib.json`` records the
    data set, split, seed and the classes covered.

    Raises:
        ConfigError: count < 1, unknown data set, a name it writes taken by a link or a folder;
            CalibrationError: ``out`` already holds a list.
        DataError: missing or unreadable data set. StorageError: the disk filled (the images written are removed).
        RunLocked: another run is writing into ``out``.
    """
    from .config import CalibFillConfig
    from .datasets import build_dataset

    split = CalibFillConfig.default("split") if split is None else split
    seed = CalibFillConfig.default("seed") if seed is None else seed
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    out = Path(out)
    ensure_output_names(out, "--out", ["calib.json", LIST_FILE], ["images"])  # a link or a folder: refused now
    if (out / LIST_FILE).exists():
        raise CalibrationError(f"{out / LIST_FILE} already exists; remove it or choose another --out")
    ds = build_dataset(dataset, data, split, **(options or {}))
    if len(ds) == 0:
        raise DataError(f"data set {dataset!r} split {split!r} is empty")
    k, ign = ds.info.num_classes, ds.info.ignore_index
    hist = np.zeros((len(ds), k), np.int64)
    for i in range(len(ds)):
        _, mask = ds[i]
        valid = mask[(mask != ign) & (mask >= 0) & (mask < k)]
        hist[i] = np.bincount(valid.ravel(), minlength=k)[:k]
    share = hist.sum(0) / max(1, hist.sum())
    rarity = np.where(share > 0, 1.0 / np.maximum(share, 1e-6), 0.0)
    order = list(range(len(ds)))
    random.Random(seed).shuffle(order)
    covered = np.zeros(k)
    chosen: list[int] = []
    left = set(order)
    for _ in range(min(count, len(ds))):
        best = max((i for i in order if i in left),
                   key=lambda i: float(((hist[i] > 0) * rarity / (1.0 + covered)).sum()))
        chosen.append(best)
        left.discard(best)
        covered += hist[best] > 0
    with run_lock(out, "calib fill"):
        _write_calib_dir(out, ds, chosen, {"dataset": dataset, "root": str(data) if data else None, "split": split,
                                           "seed": seed},
                         [ds.info.classes[c] for c in range(k) if covered[c] > 0],
                         [ds.info.classes[c] for c in range(k) if covered[c] == 0])
    return out
