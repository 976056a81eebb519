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

from .errors import ConfigError, DataError

__all__ = ["ConfusionMatrix"]


def _to_array(x: Any) -> np.ndarray:
    """An integer numpy array or torch tensor (any device; duck-typed, torch is not imported) as flat int64."""
    if not isinstance(x, np.ndarray):
        if not all(callable(getattr(x, a, None)) for a in ("detach", "cpu", "numpy")):
            raise DataError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
        if callable(getattr(x, "is_floating_point", None)) and x.is_floating_point():  # before .numpy(): bf16
            raise DataError("pred and target must be integer class indices, not floats (take argmax first)")
        x = x.detach().cpu().numpy()
    if x.dtype.kind == "f":
        raise DataError("pred and target must be integer class indices, not floats (take argmax first)")
    if x.dtype.kind not in "iub":
        raise DataError(f"pred and target must be integer class indices, got dtype {x.dtype}")
    return x.reshape(-1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulates a ``(K, K)`` int64 confusion matrix (rows: target, columns: prediction) in numpy.

    Args:
        num_classes: K.
        ignore_index: target value that is not counted (e.g. 255, or 11 for CamVid void).

    ``update`` takes integer numpy arrays or torch tensors (on any device; converted with
    ``.detach().cpu().numpy()``, torch itself is never imported here) of any shape, same number of
    elements. Target values outside ``0..K-1`` other than the ignore index raise ``DataError``;
    predictions outside that range too (a model cannot predict them). ``mat`` is a numpy
    ``(K, K) int64`` array.

    Raises:
        ConfigError: ``num_classes < 1``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = np.zeros((num_classes, num_classes), np.int64)

    def reset(self) -> None:
        """Set every count back to zero."""
        self.mat[...] = 0

    def update(self, pred: Any, target: Any) -> "ConfusionMatrix":
        """Add ``pred`` (predicted classes) vs ``target`` (true classes), both integer, same size.

        Args:
            pred, target: integer ``np.ndarray`` or torch tensors of any shape with the same number of elements.

        Returns:
            self (for chaining).

        Raises:
            DataError: not an array / tensor, float values, different sizes, or values out of range.
        """
        p, t = _to_array(pred), _to_array(target)
        if p.size != t.size:
            raise DataError(f"pred has {p.size} elements, target {t.size}")
        keep = t != self.ignore_index
        p, t = p[keep], t[keep]
        k = self.num_classes
        if t.size:
            if int(t.min()) < 0 or int(t.max()) >= k:
                raise DataError(f"target values must be in 0..{k - 1} or {self.ignore_index}, "
                                 f"got {int(t.min())}..{int(t.max())}")
            if int(p.min()) < 0 or int(p.max()) >= k:
                raise DataError(f"predictions must be in 0..{k - 1}, got {int(p.min())}..{int(p.max())}")
            self.mat += np.bincount(t * k + p, minlength=k * k).astype(np.int64, copy=False).reshape(k, k)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix of the same size into this one (e.g. from another worker).

        Raises:
            DataError: the two matrices have different class counts.
        """
        if other.num_classes != self.num_classes:
            raise DataError(f"cannot merge {other.num_classes}-class and {self.num_classes}-class matrices")
        self.mat += np.asarray(other.mat, np.int64)
        return self

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the matrix over all processes of the default ``torch.distributed`` group (no-op when
        torch is not installed or the group is not initialised). Works with gloo (CPU) and NCCL (moves
        to the current CUDA device). torch is imported here only, for distributed training."""
        try:
            import torch
            import torch.distributed as dist
        except ImportError:  # no torch, hence no process group to reduce over
            return self
        if dist.is_available() and dist.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device()) \
                if dist.get_backend() == "nccl" else torch.device("cpu")
            t = torch.from_numpy(self.mat.copy()).to(device)
            dist.all_reduce(t)
            self.mat = t.cpu().numpy().astype(np.int64, copy=False)
        return self

    # ------------------------------------------------------------------ results
    @property
    def total(self) -> int:
        """Number of counted (non-ignored) pixels."""
        return int(self.mat.sum())

    def iou(self) -> np.ndarray:
        """Per-class IoU, ``(K,)`` float64; NaN for classes absent from target and prediction."""
        m = self.mat.astype(np.float64)
        tp = np.diag(m)
        union = m.sum(0) + m.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1.0), np.nan)

    def miou(self) -> float:
        """Mean IoU over classes with a defined IoU (NaN when nothing was counted)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted right (NaN when nothing was counted)."""
        total = self.total
        return float(np.trace(self.mat)) / total if total else float("nan")

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall ``(K,)`` float64; NaN for classes absent from the target."""
        m = self.mat.astype(np.float64)
        support = m.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(support > 0, np.diag(m) / np.maximum(support, 1.0), np.nan)

    def mean_class_accuracy(self) -> float:
        """Mean of :meth:`class_accuracy` over classes present in the target (NaN when nothing was counted)."""
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready results: ``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``per_class_iou``
        (name -> IoU or None), ``pixels`` and the raw ``confusion_matrix`` (rows: target).

        Raises:
            ConfigError: ``class_names`` does not have one name per class.
        """
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
