"""Reference bundles: what ``check`` needs on a device that has no PyTorch.

``export`` writes ``<out>/reference/`` beside the graphs; ``danet-edge check model.engine --reference
<out>/reference`` reads it with numpy only. A bundle holds:

* ``bundle.json``: format, the **preprocessing fingerprint** (input size ``(H, W)``, resize method,
  scale, mean, std, channel order, and its SHA-256), classes, ignore index, the data set the images
  came from, the PyTorch reference's mIoU / pixel accuracy / per-class IoU on them, the checkpoint's
  SHA-256, and the SHA-256 of ``bundle.npz``;
* ``bundle.npz`` (``numpy.savez_compressed``, read with ``allow_pickle=False``): ``image_0000`` ...
  ``(H0, W0, 3) uint8 RGB`` at their original size, ``label_0000`` ... ``(H0, W0)`` integer where the
  data set has labels, ``reference_labels`` ``(N, H, W) uint8`` (the PyTorch FP32 reference's class
  maps at the model's size) and, when at most ``max_logits_mib``, ``reference_logits`` ``(N, K, H, W)
  float16``.

The class maps are made by the same path as ``check --reference best.pt`` (each image resized with
``preprocess.resize_image`` to the static size, the checkpoint run eagerly in FP32 through the torch
backend at the artifact's batch size), so a check against the bundle gives the same agreement and mIoU
as a check against the checkpoint on the same images.

A bundle is refused when its fingerprint differs from the artifact's manifest: a different size,
mean/std or resize is the mismatch that silently breaks many deployments.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError, ManifestError
from ..core.utils import atomic_dir, read_json, sha256_file

__all__ = ["BUNDLE_FORMAT", "RESIZE_METHOD", "CHANNEL_ORDER", "preprocessing_fingerprint", "ReferenceBundle",
           "make_bundle", "write_bundle", "load_bundle", "is_bundle", "confusion_metrics"]

BUNDLE_FORMAT = "danet-edge-reference/1"
# preprocess.resize_image / normalize, in words: what the fingerprint pins down.
RESIZE_METHOD = "bilinear (area when shrinking both sides), OpenCV"
CHANNEL_ORDER = "RGB"
SCALE = "x / 255"
MAX_IMAGES = 1000
MAX_SIDE = 8192
_FINGERPRINT_KEYS = ("image_size", "resize", "scale", "mean", "std", "channel_order")


def preprocessing_fingerprint(manifest: Any) -> dict[str, Any]:
    """The preprocessing an artifact expects, from its manifest: ``image_size`` ``[H, W]`` (pixels),
    ``resize``, ``scale``, ``mean``, ``std`` (per RGB channel, on ``x / 255``), ``channel_order``, and
    ``sha256`` of those fields as canonical JSON (floats rounded to 6 decimals)."""
    fp = {"image_size": [int(v) for v in manifest.image_size], "resize": RESIZE_METHOD, "scale": SCALE,
          "mean": [round(float(v), 6) for v in manifest.mean], "std": [round(float(v), 6) for v in manifest.std],
          "channel_order": CHANNEL_ORDER}
    fp["sha256"] = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()
    return fp


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a bundle folder (holds ``bundle.json``) or its ``bundle.json``."""
    p = Path(path)
    return (p.is_dir() and (p / "bundle.json").is_file()) or (p.name == "bundle.json" and p.is_file())


@dataclass
class _Info:
    name: str
    classes: list[str]
    ignore_index: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class ReferenceBundle:
    """A loaded bundle: a data set (``len``, ``[i] -> (image (H0, W0, 3) uint8, mask (H0, W0) int64)``,
    ``.info``) and the reference's outputs for each image.

    Attributes:
        path: the bundle folder.
        meta: ``bundle.json`` as read (validated).
        images, labels: the images and their masks; ``labels`` None when the data set had none (masks are
            then all ``ignore_index`` and only agreement / logit error can be checked).
        reference_labels: ``(N, H, W) uint8`` the PyTorch reference's class maps at the model's size.
        reference_logits: ``(N, K, H, W) float16`` or None when the bundle was too large to hold them.
    """

    path: Path
    meta: dict[str, Any]
    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    reference_labels: np.ndarray
    reference_logits: np.ndarray | None

    @property
    def info(self) -> _Info:
        return _Info(self.meta["dataset"], list(self.meta["classes"]), int(self.meta["ignore_index"]))

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    @property
    def image_size(self) -> tuple[int, int]:
        h, w = self.meta["fingerprint"]["image_size"]
        return int(h), int(w)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.images[i]
        if self.labels is None:
            return img, np.full(img.shape[:2], self.info.ignore_index, np.int64)
        return img, self.labels[i].astype(np.int64)

    def outputs(self, indices: Sequence[int]) -> tuple[np.ndarray | None, np.ndarray]:
        """``(logits (n, K, H, W) float32 or None, labels (n, H, W) int64)`` of the reference for these images."""
        idx = list(indices)
        logits = None if self.reference_logits is None else self.reference_logits[idx].astype(np.float32)
        return logits, self.reference_labels[idx].astype(np.int64)

    def check_matches(self, manifest: Any, artifact: str) -> None:
        """Refuse an artifact whose preprocessing or classes differ from the bundle's.

        Raises:
            ManifestError: one line naming each differing field (bundle value vs artifact value).
        """
        want = preprocessing_fingerprint(manifest)
        have = self.meta["fingerprint"]
        diff = [f"{k} {have.get(k)} vs {want[k]}" for k in _FINGERPRINT_KEYS if have.get(k) != want[k]]
        if list(manifest.classes) != list(self.meta["classes"]):
            diff.append(f"classes {len(self.meta['classes'])} vs {len(manifest.classes)}")
        if diff:
            raise ManifestError(f"reference bundle {self.path} does not match {artifact}: "
                                f"{'; '.join(diff)} (bundle vs artifact): export the bundle with this artifact")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def write_bundle(out_dir: str | os.PathLike[str], manifest: Any, images: Sequence[np.ndarray],
                 labels: Sequence[np.ndarray] | None, reference_labels: np.ndarray, reference_logits: np.ndarray | None,
                 dataset: str, reference_metrics: dict[str, Any], checkpoint_sha256: str | None,
                 max_logits_mib: float = 32.0, ignore_index: int | None = None) -> Path:
    """Write a reference bundle to ``out_dir`` (a folder), atomically: a temporary folder beside it is
    renamed onto it, so an interrupted export leaves the old bundle or none.

    Args:
        manifest: the FP32 graph's manifest (size, mean, std, classes, ignore index).
        images: ``(H0, W0, 3) uint8 RGB`` at their original size.
        labels: ``(H0, W0)`` integer masks, one per image, or None.
        reference_labels: ``(N, H, W)`` integer class maps of the PyTorch reference at the model's size.
        reference_logits: ``(N, K, H, W)`` float logits or None; stored as float16 only when that takes at most
            ``max_logits_mib`` MiB.
        dataset: what the images are (for instance ``"camvid val, first 16"``).
        reference_metrics: ``{"miou": .., "pixel_accuracy": .., "per_class_iou": [...]}`` in percent (None
            without labels).
        ignore_index: the labels' ignore value (None: the manifest's).

    Returns:
        The bundle folder.

    Raises:
        DataError: mismatched counts or shapes.
    """
    n = len(images)
    if n == 0 or reference_labels.shape[0] != n or (labels is not None and len(labels) != n):
        raise DataError(f"reference bundle: {n} images, {reference_labels.shape[0]} reference maps, "
                        f"{'no' if labels is None else len(labels)} labels")
    k = len(manifest.classes)
    arrays: dict[str, np.ndarray] = {}
    for i, img in enumerate(images):
        arrays[f"image_{i:04d}"] = np.ascontiguousarray(img, np.uint8)
        if labels is not None:
            lab = np.asarray(labels[i])
            arrays[f"label_{i:04d}"] = lab.astype(np.uint8 if lab.max(initial=0) < 256 and lab.min(initial=0) >= 0
                                                  else np.int32)
    arrays["reference_labels"] = reference_labels.astype(np.uint8 if k <= 256 else np.uint16)
    logits_note = "not given"
    if reference_logits is not None:
        mib = reference_logits.size * 2 / 2**20
        if mib <= max_logits_mib:
            arrays["reference_logits"] = reference_logits.astype(np.float16)
            logits_note = f"float16, {mib:.1f} MiB"
        else:
            logits_note = f"left out: {mib:.0f} MiB in float16 > {max_logits_mib:g} MiB"
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        np.savez_compressed(tmp / "bundle.npz", **arrays)
        meta = {"format": BUNDLE_FORMAT, "fingerprint": preprocessing_fingerprint(manifest), "count": n,
                "labelled": labels is not None, "dataset": dataset, "classes": list(manifest.classes),
                "ignore_index": int(manifest.ignore_index if ignore_index is None else ignore_index),
                "reference": {"kind": "pytorch fp32 eager", **reference_metrics},
                "reference_logits": logits_note, "checkpoint_sha256": checkpoint_sha256,
                "npz_sha256": sha256_file(tmp / "bundle.npz"), "array_mib": round(_npz_bytes(arrays) / 2**20, 2)}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _need(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise DataError(f"reference bundle {path}: {what}")


def load_bundle(path: str | os.PathLike[str]) -> ReferenceBundle:
    """Read and validate a bundle (a folder, or its ``bundle.json``); untrusted input: JSON fields, counts,
    array keys, dtypes and shapes are checked, the npz must match its recorded SHA-256, and nothing is unpickled.

    Raises:
        DataError: missing files, a format this version does not read, or inconsistent contents (one line).
    """
    p = Path(path)
    folder = p.parent if p.name == "bundle.json" else p
    if not (folder / "bundle.json").is_file():
        raise DataError(f"reference bundle {folder}: no bundle.json (give the reference/ folder export wrote)")
    try:
        meta = read_json(folder / "bundle.json")
    except (OSError, ValueError) as e:
        raise DataError(f"reference bundle {folder}: {e}") from None
    _need(isinstance(meta, dict) and meta.get("format") == BUNDLE_FORMAT, folder,
          f"format must be {BUNDLE_FORMAT!r}, got {meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}")
    fp, classes, n = meta.get("fingerprint"), meta.get("classes"), meta.get("count")
    _need(isinstance(fp, dict) and all(k in fp for k in _FINGERPRINT_KEYS), folder, "fingerprint is incomplete")
    size = fp["image_size"]
    _need(isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and 1 <= v <= MAX_SIDE for v in size),
          folder, f"fingerprint image_size must be [H, W] in 1..{MAX_SIDE}")
    _need(isinstance(classes, list) and 1 <= len(classes) <= 65535 and all(isinstance(c, str) for c in classes),
          folder, "classes must be a list of names")
    _need(isinstance(n, int) and 1 <= n <= MAX_IMAGES, folder, f"count must be 1..{MAX_IMAGES}")
    _need(isinstance(meta.get("ignore_index"), int), folder, "ignore_index must be an integer")
    _need(isinstance(meta.get("dataset"), str), folder, "dataset must be a string")
    npz = folder / "bundle.npz"
    _need(npz.is_file(), folder, "bundle.npz is missing")
    _need(sha256_file(npz) == meta.get("npz_sha256"), folder, "bundle.npz does not match its SHA-256 in bundle.json")
    labelled = bool(meta.get("labelled"))
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"reference bundle {folder}: bundle.npz is unreadable ({type(e).__name__})") from None
    images, labels = [], []
    for i in range(n):
        img = arrays.get(f"image_{i:04d}")
        _need(img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
              and max(img.shape[:2]) <= MAX_SIDE, folder, f"image_{i:04d} must be (H, W, 3) uint8")
        images.append(img)
        if labelled:
            lab = arrays.get(f"label_{i:04d}")
            _need(lab is not None and lab.dtype.kind in "iu" and lab.shape == img.shape[:2], folder,
                  f"label_{i:04d} must be an integer (H, W) mask of its image's size")
            labels.append(lab)
    h, w = size
    ref = arrays.get("reference_labels")
    _need(ref is not None and ref.dtype.kind == "u" and ref.shape == (n, h, w), folder,
          f"reference_labels must be ({n}, {h}, {w}) unsigned")
    _need(int(ref.max(initial=0)) < len(classes), folder, "reference_labels hold classes out of range")
    logits = arrays.get("reference_logits")
    _need(logits is None or (logits.dtype == np.float16 and logits.shape == (n, len(classes), h, w)), folder,
          f"reference_logits must be ({n}, {len(classes)}, {h}, {w}) float16")
    _need(logits is None or bool(np.isfinite(logits).all()), folder, "reference_logits hold inf or NaN")
    return ReferenceBundle(folder, meta, images, labels if labelled else None, ref, logits)


def confusion_metrics(cm: Any) -> dict[str, Any]:
    """``{"miou", "pixel_accuracy", "per_class_iou"}`` in percent from a ``metrics.ConfusionMatrix``
    (None for values that are not defined)."""
    def pct(v: float) -> float | None:
        return None if math.isnan(v) else round(100.0 * float(v), 6)

    return {"miou": pct(cm.miou()), "pixel_accuracy": pct(cm.pixel_accuracy()),
            "per_class_iou": [pct(v) for v in cm.iou()]}


def make_bundle(checkpoint: str | os.PathLike[str], manifest: Any, images: Sequence[np.ndarray],
                labels: Sequence[np.ndarray] | None, ignore_index: int, dataset: str, out_dir: str | os.PathLike[str],
                max_logits_mib: float = 32.0) -> Path:
    """Run the PyTorch reference on ``images`` the way ``check --reference <checkpoint>`` does and write the bundle.

    Each image ``(H0, W0, 3) uint8`` is resized with ``preprocess.resize_image`` to the manifest's static size,
    batched at its static batch size (the last batch padded), and run eagerly in FP32 through the torch
    backend; the reference mIoU compares its class maps, resized back with nearest neighbour, with ``labels``.
    Needs torch (export has it); the bundle is then read without it.

    Before PyTorch runs, the memory model's estimate for it (the chunked form of the graph's weights at the
    manifest's size and batch, ``limits.check_bundle_memory``) is compared with the memory this machine has.

    Raises:
        CheckpointError: unreadable checkpoint. DataError: as :func:`write_bundle`. ConfigError: the estimate is
            above the memory available (one line: both figures and the fix).
    """
    from .limits import check_bundle_memory

    check_bundle_memory(manifest)
    from ..data.frames import static_batches
    from ..core.metrics import ConfusionMatrix
    from ..data.preprocess import resize_image, resize_labels
    from ..runtime.backends import open_backend

    size, batch, k = tuple(manifest.image_size), manifest.batch_size, len(manifest.classes)
    keep_logits = len(images) * k * size[0] * size[1] * 2 / 2**20 <= max_logits_mib
    ref_labels: list[np.ndarray] = []
    ref_logits: list[np.ndarray] = []
    # a QAT checkpoint's bundle holds its float weights' outputs: the model its INT8 graph was exported from
    ref = open_backend(checkpoint, backend="torch", image_size=size, batch=batch, qat_float=True)
    try:
        for x, n in static_batches((resize_image(np.asarray(im), size) for im in images), batch):
            pred = ref.predict(x)
            ref_labels.extend(np.asarray(pred.labels)[:n])
            if keep_logits:
                ref_logits.extend(np.asarray(pred.logits, np.float32)[:n].astype(np.float16))
    finally:
        ref.close()
    metrics: dict[str, Any] = {"miou": None, "pixel_accuracy": None, "per_class_iou": None}
    if labels is not None:
        cm = ConfusionMatrix(k, ignore_index)
        for lab, mask in zip(ref_labels, labels):
            cm.update(resize_labels(lab, np.asarray(mask).shape), np.asarray(mask))
        metrics = confusion_metrics(cm)
    return write_bundle(out_dir, manifest, images, labels, np.stack(ref_labels),
                        np.stack(ref_logits) if keep_logits else None, dataset, metrics,
                        manifest.source_checkpoint_sha256, max_logits_mib, ignore_index)
