"""Segmentation data sets (synthetic, CamVid, Cityscapes, image folder) and augmentation.

Every data set yields raw samples ``(image, mask)``: ``image (H, W, 3) uint8 RGB``,
``mask (H, W) int64`` class indices, with ``info.ignore_index`` for unlabelled pixels. Transforms
(``TrainTransform``, ``EvalTransform``) turn them into ``(3, H, W) float32`` normalised tensors
and ``(H, W) int64`` targets through ``TransformedDataset``.

Checks: list files, folders and image/mask pairing are checked when the data set is built;
readability, equal image/mask sizes and label values (``0..K-1`` or the ignore index) are checked
per item when it is read, and for every file at once by :func:`verify_files` (``train`` runs it
before the first epoch). Every problem raises ``DataError`` naming the file.

``synthetic`` (the default) draws street scenes procedurally (``synthetic.py``): no files,
deterministic for a given seed, split and index.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import ConfigError, DataError
from .frames import IMAGE_SUFFIXES, read_image
from ..core.palettes import CAMVID_CLASSES, CAMVID_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, palette_for
from ..model.config import IMAGENET_MEAN, IMAGENET_STD
from .synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, render_scene, synthetic_frames, write_synthetic_video

__all__ = [
    "DatasetInfo", "SegmentationDataset", "SyntheticDataset", "build_dataset", "DATASET_NAMES",
    "CAMVID_CLASSES", "CAMVID_PALETTE",
    "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "synthetic_frames", "write_synthetic_video",
    "read_image", "read_mask",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # the one list (frames.py)
# CAMVID_* / CITYSCAPES_* class names and colours live in palettes.py (imported above).

# Cityscapes labelIds -> trainIds (cityscapesScripts helpers/labels.py); everything else -> 255.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                         25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a data set must remember (goes into the checkpoint's ``data``).

    Attributes:
        name: data set name (``synthetic``, ``camvid``...).
        classes: K class names, index = class id.
        palette: K ``[r, g, b]`` colours.
        ignore_index: mask value that is not a class (not trained on, not counted in mIoU).
        image_size: typical ``(H, W)`` of its images (the evaluation / export size), or None.
        mean, std: normalisation, ImageNet's by default.
    """

    name: str
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    image_size: tuple[int, int] | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_checkpoint_data(self, image_size: Sequence[int] | None = None) -> dict[str, Any]:
        """The checkpoint's ``data`` entry (see ``danet_edge.model.checkpoint``)."""
        size = image_size or self.image_size
        return {"dataset": self.name, "classes": list(self.classes), "palette": [list(c) for c in self.palette],
                "mean": list(self.mean), "std": list(self.std), "ignore_index": int(self.ignore_index),
                "image_size": [int(s) for s in size] if size else None}


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label map (8/16-bit grey or palette PNG holding class indices) as ``(H, W) int64``.

    Raises ``DataError`` when unreadable or when it has colour channels (an RGB rendering of
    the labels is not a label map).
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"{path}: mask has mode {im.mode}; expected single-channel class indices")
            arr = np.array(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ...
        raise DataError(f"{path}: cannot read mask ({type(e).__name__}: {e})") from None
    return arr.astype(np.int64)


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of ``(image file, mask file)`` pairs; item ``i`` -> raw ``(image, mask)``.

    Args:
        info: classes, palette, ignore index.
        pairs: image and mask paths.
        label_map: optional lookup table applied to raw mask values (e.g. Cityscapes labelIds ->
            trainIds), ``(256,) int64``.
    """

    def __init__(self, info: DatasetInfo, pairs: Sequence[tuple[Path, Path]], label_map: np.ndarray | None = None,
                 split: str = "train") -> None:
        self.info = info
        self.pairs = list(pairs)
        self.label_map = label_map
        self.split = split

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, i: int) -> Path | None:
        """The image file of item ``i`` (None for generated data)."""
        return self.pairs[i][0]

    def _check_mask(self, mask: np.ndarray, where: Any) -> np.ndarray:
        k, ign = self.info.num_classes, self.info.ignore_index
        bad = ((mask < 0) | (mask >= k)) & (mask != ign)
        if bad.any():
            values = sorted({int(v) for v in np.unique(mask[bad])[:5]})
            raise DataError(f"{where}: label values {values} outside 0..{k - 1} "
                            f"(ignore index {ign}) for {self.info.name}")
        return mask

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of item ``i``'s image from its header (no decoding).

        Raises:
            DataError: the file cannot be opened as an image.
        """
        return _image_header(self.pairs[i][0])

    def _read_labels(self, mask_path: Path) -> np.ndarray:
        """The class map of ``mask_path`` (``label_map`` applied), before the range check."""
        mask = read_mask(mask_path)
        if self.label_map is not None:
            if mask.min(initial=0) < 0 or mask.max(initial=0) >= len(self.label_map):
                raise DataError(f"{mask_path}: raw label values outside 0..{len(self.label_map) - 1}")
            mask = self.label_map[mask]
        return mask

    @staticmethod
    def _check_sizes(img_path: Path, mask_path: Path, image_hw: tuple[int, ...], mask: np.ndarray) -> None:
        if tuple(image_hw[:2]) != mask.shape[:2]:
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {img_path} "
                            f"is {image_hw[1]}x{image_hw[0]} (width x height)")

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = self.pairs[i]
        image = read_image(img_path)
        mask = self._read_labels(mask_path)
        self._check_sizes(img_path, mask_path, image.shape, mask)
        return image, self._check_mask(mask, mask_path)

    def verify(self, description: str | None = None) -> int:
        """Open every image and label file once, as a training run reads them, and fail on the first bad one.

        Per pair: the image's header opens (its size read without decoding; a PNG's chunk checksums are
        verified, which finds a truncated file), the label map decodes, has the image's size and holds only
        ``0..K-1`` or the ignore index. Draws a progress bar (``progress.track``). CamVid's 367 + 101 pairs
        take 0.7-1.3 s (measured on 2 busy cores; a Cityscapes-size pair about 20 ms).

        Returns:
            The number of pairs checked.

        Raises:
            DataError: the first bad file, named.
        """
        from ..core.progress import track

        what = description or f"checking {self.info.name} {self.split} files"
        for img_path, mask_path in track(self.pairs, what, total=len(self.pairs)):
            size = _image_header(img_path)
            mask = self._read_labels(mask_path)
            self._check_sizes(img_path, mask_path, size, mask)
            self._check_mask(mask, mask_path)
        return len(self.pairs)


def _image_header(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image file from its header; PNG chunk checksums verified (a cut file fails).

    A file PIL does not recognise is decoded with OpenCV (``read_image``) instead, so a format only the
    training run's reader knows is not refused here.

    Raises:
        DataError: unreadable, cut short or corrupt (one line naming the file).
    """
    try:
        im = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except Exception:  # noqa: BLE001 - not a format PIL knows (UnidentifiedImageError...): OpenCV decides
        return tuple(read_image(path).shape[:2])  # type: ignore[return-value]
    try:
        with im:
            w, h = im.size
            im.verify()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error... for a bad file
        raise DataError(f"{path}: corrupt or cut-short image ({type(e).__name__}: {e})") from None
    return int(h), int(w)


class SyntheticDataset(SegmentationDataset):
    """Procedural street scenes (see ``danet_edge.data.synthetic``), generated on the fly.

    Item ``i`` of split ``s`` depends only on ``(seed, s, i)``; train and val use different seeds.
    """

    SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

    def __init__(self, split: str = "train", size: Sequence[int] = (128, 160), length: int | None = None,
                 seed: int = 0) -> None:
        if split not in self.SPLIT_IDS:
            raise ConfigError(f"synthetic split must be one of {', '.join(self.SPLIT_IDS)}, got {split!r}")
        h, w = (int(s) for s in size)
        if h < 32 or w < 32:
            raise ConfigError(f"synthetic image size must be at least 32x32, got {h}x{w}")
        info = DatasetInfo("synthetic", list(SYNTHETIC_CLASSES), [list(c) for c in SYNTHETIC_PALETTE], 255, (h, w))
        super().__init__(info, [], split=split)
        self.size = (h, w)
        self.length = int(length if length is not None else (256 if split == "train" else 32))
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def image_path(self, i: int) -> Path | None:
        return None

    def image_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of every generated image."""
        return self.size

    def verify(self, description: str | None = None) -> int:
        """Nothing to open: generated scenes have no files. Returns 0."""
        return 0

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, self.SPLIT_IDS[self.split], i])
        return render_scene(rng, *self.size)


def _apply_limit(ds: SegmentationDataset, limit: int | None) -> SegmentationDataset:
    if limit is None:
        return ds
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if isinstance(ds, SyntheticDataset):
        ds.length = min(ds.length, limit)
    else:
        ds.pairs = ds.pairs[:limit]
    return ds


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}")
    return path


def _build_synthetic(root: Path | None, split: str, **kw: Any) -> SegmentationDataset:
    return SyntheticDataset(split, **kw)


def _read_pair_list(root: Path, list_file: Path) -> list[tuple[Path, Path]]:
    if not list_file.is_file():
        raise DataError(f"list file not found: {list_file}")
    pairs = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{list_file}:{n}: expected 'image label', got {line.strip()!r}")
        img, lab = (root / p.lstrip("/") for p in parts)
        if not img.is_file():
            raise DataError(f"{list_file}:{n}: image not found: {img}")
        if not lab.is_file():
            raise DataError(f"{list_file}:{n}: image {img.name} has no mask ({lab} not found)")
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f"{list_file}: no image/label pairs")
    return pairs


def _build_camvid(root: Path | None, split: str) -> SegmentationDataset:
    root = _require_dir(Path(root or "."), "CamVid")
    info = DatasetInfo("camvid", CAMVID_CLASSES, CAMVID_PALETTE, ignore_index=11, image_size=(360, 480))
    return SegmentationDataset(info, _read_pair_list(root, root / f"{split}.txt"), split=split)


def _build_cityscapes(root: Path | None, split: str) -> SegmentationDataset:
    root = Path(root or ".")
    img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes image")
    gt_dir = _require_dir(root / "gtFine" / split, "Cityscapes label")
    pairs = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        lab = gt_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        if not lab.is_file():
            raise DataError(f"{img}: no label map ({lab} not found)")
        pairs.append((img, lab))
    if not pairs:
        raise DataError(f"no *_leftImg8bit.png images under {img_dir}/<city>/")
    lut = np.full(256, 255, np.int64)
    for label_id, train_id in _CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    info = DatasetInfo("cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, 255, image_size=(1024, 2048))
    return SegmentationDataset(info, pairs, label_map=lut, split=split)


def _build_folder(root: Path | None, split: str, num_classes: int | None = None, ignore_index: int = 255,
                  classes: Sequence[str] | None = None) -> SegmentationDataset:
    root = _require_dir(Path(root or "."), "data")
    base = root / split if (root / split / "images").is_dir() else root
    img_dir = _require_dir(base / "images", "image")
    mask_dir = _require_dir(base / "masks", "mask")
    names = list(classes) if classes else None
    if names is None and (base / "classes.txt").is_file():
        names = [c.strip() for c in (base / "classes.txt").read_text().splitlines() if c.strip()]
    elif names is None and (root / "classes.txt").is_file():
        names = [c.strip() for c in (root / "classes.txt").read_text().splitlines() if c.strip()]
    if names is None:
        if num_classes is None:
            raise ConfigError(f"folder data set {root}: give classes.txt (one name a line) or --num-classes")
        names = [f"class{i}" for i in range(num_classes)]
    elif num_classes is not None and num_classes != len(names):
        raise ConfigError(f"--num-classes {num_classes} contradicts classes.txt ({len(names)} names)")
    if not 1 <= len(names) <= 255 or not 0 <= ignore_index <= 255:
        raise ConfigError("folder data set: need 1..255 classes and an ignore index in 0..255")
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = []
    for img in sorted(img_dir.iterdir()):
        if img.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if img.stem not in masks:
            raise DataError(f"{img}: no mask with stem {img.stem!r} in {mask_dir}")
        pairs.append((img, masks[img.stem]))
    if not pairs:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {img_dir}")
    info = DatasetInfo(root.name or "folder", names, palette_for(names), ignore_index)
    return SegmentationDataset(info, pairs, split=split)


_BUILDERS: dict[str, Callable[..., SegmentationDataset]] = {
    "synthetic": _build_synthetic,
    "camvid": _build_camvid,
    "cityscapes": _build_cityscapes,
    "folder": _build_folder,
}
DATASET_NAMES = tuple(_BUILDERS)


def build_dataset(name: str, root: str | os.PathLike[str] | None = None, split: str = "train",
                  limit: int | None = None, **kw: Any) -> SegmentationDataset:
    """Build a data set by name; raw samples, no transform.

    Args:
        name: ``synthetic`` (root ignored; kw ``size=(H, W)``, ``length``, ``seed``), ``camvid``
            (SegNet layout, ``<split>.txt``), ``cityscapes`` (``leftImg8bit``/``gtFine``), ``folder``
            (``root[/split]/images`` + ``masks`` with the same stems; kw ``num_classes``,
            ``ignore_index``, ``classes``; names from ``classes.txt`` when present).
        root: data set folder.
        split: ``train``, ``val`` or ``test``.
        limit: keep only the first ``limit`` samples.

    Raises:
        ConfigError: unknown name or options.
        DataError: missing folder or list file, image without mask.
    """
    if name not in _BUILDERS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    try:
        ds = _BUILDERS[name](Path(root) if root is not None else None, split, **kw)
    except TypeError as e:
        raise ConfigError(f"data set {name!r}: bad option ({e})") from None
    return _apply_limit(ds, limit)


