"""What ``check`` reads: the evaluation frames (validated, in chunks) and the reference (a checkpoint or a
reference bundle) with what the check needs to know of it (:class:`RefMeta`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError

__all__ = ["RefMeta", "chunks", "frames", "reference_kind"]


def frames(dataset: Iterable[Any], limit: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, image (H, W, 3) uint8 RGB, mask (H, W) int)`` of the first ``limit`` items (None: all).

    Raises:
        DataError: an item whose image or mask has the wrong shape or dtype (named by index).
    """
    items: Iterable[Any] = dataset
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        count = len(dataset) if limit is None else min(len(dataset), limit)
        items = (dataset[i] for i in range(count))
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        image, mask = item[0], item[1]
        image, mask = np.asarray(image), np.asarray(mask)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DataError(f"dataset item {i}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        if mask.shape != image.shape[:2]:
            raise DataError(f"dataset item {i}: mask {mask.shape} does not match image {image.shape[:2]}")
        yield i, image, mask


def chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    """Lists of ``n`` items of ``it`` (the last may be shorter)."""
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


@dataclass
class RefMeta:
    """What the check needs to know of the reference, from a checkpoint's manifest or a bundle."""

    num_classes: int
    classes: list[str]
    ignore_index: int
    palette: list[list[int]]
    source_checkpoint_sha256: str | None


def reference_kind(reference: Any) -> Any:
    """A loaded ``reference.ReferenceBundle`` when ``reference`` is one (or its folder), else the checkpoint path."""
    from ..export.reference import ReferenceBundle, is_bundle, load_bundle

    if isinstance(reference, ReferenceBundle):
        return reference
    if is_bundle(reference):
        return load_bundle(reference)
    path = Path(reference)
    if path.is_dir():
        raise DataError(f"reference {path} is a folder without bundle.json: give the checkpoint (.pt) or the "
                        "reference/ folder export wrote")
    if not path.exists():
        raise DataError(f"reference {path} does not exist: give the checkpoint (.pt) or the reference/ folder "
                        "export wrote")
    return path
