"""Evaluation: mIoU, per-class IoU and pixel accuracy of a model on a data set.

Every image is evaluated at its own size (no resize of the labels): the normalised image is
padded at the bottom/right to a multiple of the output stride with zeros (the mean colour after
normalisation), and the logits are cropped back. Multi-scale testing (paper section 4.2.3, "MS")
averages the softmax probabilities of the image resized by each scale factor (and its left-right
mirror with ``flip``), each resized back to the image size bilinearly. Unlike PyTorch-Encoding's
``MultiEvalModule`` this runs the whole image at each scale, never a sliding window.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConfigError
from ..core.metrics import ConfusionMatrix
from ..model.config import IMAGENET_MEAN, IMAGENET_STD
from ..data.preprocess import normalize

__all__ = ["EvalResult", "evaluate", "predict_logits", "confusion_on", "write_result", "DEFAULT_SCALES"]

DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass
class EvalResult:
    """Result of ``evaluate``.

    Attributes:
        confusion: the accumulated ``ConfusionMatrix``.
        classes: class names.
        miou, pixel_accuracy, mean_class_accuracy: fractions in [0, 1] (NaN when no pixel counted).
        per_class_iou: name -> IoU (NaN for classes absent from labels and predictions).
        num_images: images evaluated.
        seconds: wall time of the evaluation loop (s); ``ms_per_image`` the mean per image (ms).
        multi_scale, flip, scales: how it was run.
        source: what was evaluated (checkpoint path or "model").
    """

    confusion: ConfusionMatrix
    classes: list[str]
    num_images: int
    seconds: float
    multi_scale: bool = False
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    source: str = "model"
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        return self.confusion.miou()

    @property
    def pixel_accuracy(self) -> float:
        return self.confusion.pixel_accuracy()

    @property
    def mean_class_accuracy(self) -> float:
        return self.confusion.mean_class_accuracy()

    @property
    def per_class_iou(self) -> dict[str, float]:
        return {n: float(v) for n, v in zip(self.classes, self.confusion.iou())}

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.num_images if self.num_images else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = self.confusion.to_dict(self.classes)
        return {"source": self.source, "dataset": self.dataset, "num_images": self.num_images,
                "multi_scale": self.multi_scale, "flip": self.flip, "scales": list(self.scales),
                "miou": d["miou"], "pixel_accuracy": d["pixel_accuracy"],
                "mean_class_accuracy": d["mean_class_accuracy"], "per_class_iou": d["per_class_iou"],
                "seconds": round(self.seconds, 3), "ms_per_image": round(self.ms_per_image, 2),
                "pixels": d["pixels"], "confusion_matrix": d["confusion_matrix"], **self.extra}

    def to_json(self) -> str:
        """JSON text (NaN written as null)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _forward_padded(model: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``x: (N, 3, H, W)`` -> logits ``(N, K, H, W)``, padding H, W up to ``multiple`` then cropping."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    out = model(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out[..., :h, :w]


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, multi_scale: bool = False, flip: bool = False,
                   scales: Sequence[float] = DEFAULT_SCALES, multiple: int = 8) -> torch.Tensor:
    """Scores for ``x: (N, 3, H, W) float32`` normalised -> ``(N, K, H, W)`` float32.

    Single scale without flip returns the logits; otherwise the mean of softmax probabilities
    over scales (and mirrors), each resized back to ``(H, W)`` (bilinear, align_corners=True as
    the model's own upsampling).
    """
    if not multi_scale and not flip:
        return _forward_padded(model, x, multiple)
    h, w = x.shape[-2:]
    total: torch.Tensor | None = None
    for s in (scales if multi_scale else (1.0,)):
        size = (max(multiple, round(h * s)), max(multiple, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        for mirrored in ((False, True) if flip else (False,)):
            inp = xs.flip(-1) if mirrored else xs
            p = torch.softmax(_forward_padded(model, inp, multiple).float(), dim=1)
            if mirrored:
                p = p.flip(-1)
            if size != (h, w):
                p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=True)
            total = p if total is None else total + p
    assert total is not None
    return total


def confusion_on(model: nn.Module, dataset: Any, indices: Iterable[int], num_classes: int, ignore_index: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 multi_scale: bool = False, flip: bool = False, scales: Sequence[float] = DEFAULT_SCALES,
                 device: torch.device | str = "cpu", progress: Any = None) -> tuple[ConfusionMatrix, int]:
    """Accumulate the confusion matrix of ``model`` (eval mode) on raw samples ``dataset[i]``.

    Returns ``(matrix, images)``. ``progress`` is an optional callable called after each image.
    """
    cm = ConfusionMatrix(num_classes, ignore_index)
    multiple = int(getattr(getattr(model, "config", None), "output_stride", 8))
    n = 0
    for i in indices:
        image, mask = dataset[i]
        x = torch.from_numpy(normalize(image[None], mean, std)).to(device)
        scores = predict_logits(model, x, multi_scale, flip, scales, multiple)
        cm.update(scores.argmax(1).cpu(), torch.from_numpy(mask)[None])
        n += 1
        if progress is not None:
            progress()
    return cm, n


def evaluate(model_or_checkpoint: nn.Module | str | os.PathLike[str], dataset: Any, multi_scale: bool = False,
             flip: bool = False, scales: Sequence[float] = DEFAULT_SCALES, limit: int | None = None,
             device: str | torch.device = "cpu", multi_grid: bool = False, show_progress: bool = False) -> EvalResult:
    """Evaluate a model or checkpoint on a raw ``SegmentationDataset`` (``danet_edge.data.datasets``).

    Args:
        model_or_checkpoint: a DANet (any mode; evaluated in eval mode and restored), or a
            danet-edge / official DANet checkpoint path (``multi_grid`` applies to official ones).
        dataset: raw samples ``(image (H, W, 3) uint8, mask (H, W) int64)`` with ``.info``.
        multi_scale, flip, scales: multi-scale / mirrored testing (see the module docstring).
        limit: evaluate only the first ``limit`` images.

    Mean and std come from the checkpoint when one is given, else from ``dataset.info``.

    Raises:
        ConfigError: the model's class count differs from the data set's, or bad scales.
        CheckpointError, DataError: from loading the checkpoint or reading the data.
    """
    info = dataset.info
    if isinstance(model_or_checkpoint, nn.Module):
        model, source = model_or_checkpoint, "model"
        mean, std = info.mean, info.std
    else:
        from ..model.checkpoint import load_model

        loaded = load_model(model_or_checkpoint, multi_grid=multi_grid)
        model, source = loaded.model, str(model_or_checkpoint)
        mean, std = loaded.data["mean"], loaded.data["std"]
    k = int(getattr(getattr(model, "config", None), "num_classes", info.num_classes))
    if k != info.num_classes:
        raise ConfigError(f"model predicts {k} classes but data set {info.name} has {info.num_classes}")
    if multi_scale and (not scales or any(s <= 0 for s in scales)):
        raise ConfigError(f"scales must be positive, got {tuple(scales)}")
    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    was_training = model.training
    model.eval().to(device)
    t0 = time.perf_counter()
    try:
        if show_progress:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("evaluating", total=n)
                cm, count = confusion_on(model, dataset, range(n), k, info.ignore_index, mean, std, multi_scale,
                                         flip, scales, device, progress=lambda: bar.advance(task))
        else:
            cm, count = confusion_on(model, dataset, range(n), k, info.ignore_index, mean, std, multi_scale,
                                     flip, scales, device)
    finally:
        model.train(was_training)
    return EvalResult(cm, list(info.classes), count, time.perf_counter() - t0, multi_scale, flip,
                      tuple(scales) if multi_scale else (1.0,), source, info.name)


def write_result(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """Write ``result.to_json()`` atomically."""
    from ..core.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(result.to_json())
    return path
