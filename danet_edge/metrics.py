"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy.

Definitions (as in Long et al. 2015 "Fully Convolutional Networks", section 5, and the
Cityscapes benchmark): with ``M[t, p]`` the number of pixels of true class ``t`` predicted as
``p`` (pixels whose target is the ignore index are not counted),

* IoU of class k = ``M[k,k] / (sum_p M[k,p] + sum_t M[t,k] - M[k,k])``; a class absent from both
  target and prediction has no IoU (NaN) and is left out of the mean;
* mIoU = mean of the defined IoUs;
* pixel accuracy = ``trace(M) / sum(M)``;
* mean class accuracy = mean over classes present in the target of ``M[k,k] / sum_p M[k,p]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, DataError

__all__ = ["ConfusionMatrix"]


def _to_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise DataError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.is_floating_point():
        raise DataError("pred and target must be integer class indices, not floats (take argmax first)")
    return x.detach().reshape(-1).to(torch.int64)


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix (rows: target, columns: prediction).

    Args:
        num_classes: K.
        ignore_index: target value that is not counted (e.g. 255, or 11 for CamVid void).

    ``update`` takes integer arrays or tensors of any shape (same number of elements). Target
    values outside ``0..K-1`` other than the ignore index raise ``DataError``; predictions
    outside that range too (a model cannot predict them).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> "ConfusionMatrix":
        """Add ``pred`` (predicted classes) vs ``target`` (true classes), both integer, same size."""
        p, t = _to_tensor(pred), _to_tensor(target)
        if p.numel() != t.numel():
            raise DataError(f"pred has {p.numel()} elements, target {t.numel()}")
        p, t = p.cpu(), t.cpu()
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        k = self.num_classes
        if t.numel():
            if int(t.min()) < 0 or int(t.max()) >= k:
                raise DataError(f"target values must be in 0..{k - 1} or {self.ignore_index}, "
                                 f"got {int(t.min())}..{int(t.max())}")
            if int(p.min()) < 0 or int(p.max()) >= k:
                raise DataError(f"predictions must be in 0..{k - 1}, got {int(p.min())}..{int(p.max())}")
            self.mat += torch.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix of the same size into this one (e.g. from another worker)."""
        if other.num_classes != self.num_classes:
            raise DataError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self.mat += other.mat
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over all processes of the default ``torch.distributed`` group (no-op when
        not initialised). Works with gloo (CPU) and NCCL (moves to the current CUDA device)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) \
                if dist.get_backend() == "nccl" else torch.device("cpu")
            t = self.mat.to(device)
            dist.all_reduce(t)
            self.mat = t.cpu()
        return self

    # ------------------------------------------------------------------ results
    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.mat.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU, ``(K,)`` float64; NaN for classes absent from target and prediction."""
        m = self.mat.double()
        tp = torch.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        return iou.numpy()

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (NaN when nothing was counted)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted right (NaN when nothing was counted)."""
        total = self.total
        return float(torch.diag(self.mat).sum()) / total if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall ``(K,)`` float64; NaN for classes absent from the target."""
        m = self.mat.double()
        support = m.sum(1)
        acc = torch.where(support > 0, torch.diag(m) / support.clamp(min=1), torch.full_like(support, float("nan")))
        return acc.numpy()

    def mean_class_accuracy(self) -> float:
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready results: ``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``per_class_iou``
        (name -> IoU or None), ``pixels`` and the raw ``confusion_matrix`` (rows: target)."""
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ConfigError(f"{len(names)} class names for {self.num_classes} classes")

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "miou": clean(self.miou()),
            "pixel_accuracy": clean(self.pixel_accuracy()),
            "mean_class_accuracy": clean(self.mean_class_accuracy()),
            "per_class_iou": {n: clean(float(v)) for n, v in zip(names, self.iou())},
            "pixels": self.total,
            "confusion_matrix": self.mat.tolist(),
        }
