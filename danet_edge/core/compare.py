"""One comparison of an artifact's outputs with a reference's, used by export verification and ``check``.

Polygraphy's split is the model: run each model once, then compare the results many ways. Here the
results are class maps ``(N, h, w)`` and, when the artifact gives them, logits ``(N, K, h, w)``;
:class:`OutputComparison` accumulates batch by batch (memory stays flat over a data set) and reports
pixel agreement, relative L2 error ``||a - r|| / ||r||``, largest absolute error, cosine similarity and
the count of inf/NaN logits. Export verification (FP16 / INT8 graph vs the FP32 graph, with each
recipe's tolerance) and ``check`` (each artifact vs the PyTorch reference, with per-precision
thresholds) differ only in what they compare and the limits they apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OutputComparison", "relative_l2"]


def relative_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """``||a - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    c = OutputComparison()
    c.update_logits(np.asarray(a), np.asarray(ref))
    return c.rel_l2


@dataclass
class OutputComparison:
    """Running sums; feed batches with :meth:`update` (labels, and logits when present)."""

    agree: int = 0
    pixels: int = 0
    max_abs: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    sq_art: float = 0.0
    dot: float = 0.0
    nonfinite: int = 0
    has_logits: bool = True
    hist: np.ndarray | None = None  # (2, K) pixel counts per class: the artifact's maps, the reference's

    def update(self, labels: np.ndarray, ref_labels: np.ndarray, logits: np.ndarray | None = None,
               ref_logits: np.ndarray | None = None) -> np.ndarray:
        """Add one batch. ``labels``/``ref_labels``: ``(N, h, w)`` int; logits ``(N, K, h, w)`` or None
        (the artifact outputs labels only). Returns the per-pixel agreement mask ``(N, h, w)`` bool."""
        labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
        same = labels == ref_labels
        self.agree += int(same.sum())
        self.pixels += same.size
        if same.size:
            k = int(max(labels.max(), ref_labels.max(), 0)) + 1
            if self.hist is None or self.hist.shape[1] < k:
                grown = np.zeros((2, max(k, 0 if self.hist is None else self.hist.shape[1])), np.int64)
                if self.hist is not None:
                    grown[:, :self.hist.shape[1]] = self.hist
                self.hist = grown
            for row, lab in enumerate((labels, ref_labels)):
                valid = lab.ravel()
                valid = valid[valid >= 0]
                self.hist[row, :k] += np.bincount(valid, minlength=k)[:k]
        if logits is None or ref_logits is None:
            self.has_logits = False
        else:
            self.update_logits(logits, ref_logits)
        return same

    def update_logits(self, logits: np.ndarray, ref_logits: np.ndarray) -> None:
        """Add the logit error of one batch; inf/NaN are counted and compared as 0."""
        bad = ~np.isfinite(logits)
        self.nonfinite += int(bad.sum())
        a = np.where(bad, 0.0, logits).astype(np.float64)
        r = np.asarray(ref_logits, np.float64)
        if a.size:
            self.max_abs = max(self.max_abs, float(np.abs(a - r).max()))
        self.sq_err += float(((a - r) ** 2).sum())
        self.sq_ref += float((r ** 2).sum())
        self.sq_art += float((a ** 2).sum())
        self.dot += float((a * r).sum())

    @property
    def agreement(self) -> float:
        """Fraction of pixels with the same class (0..1)."""
        return self.agree / max(self.pixels, 1)

    @property
    def chance_agreement(self) -> float:
        """The agreement two independent maps with these class frequencies would reach: ``sum_k p_k q_k``
        (a map of one class everywhere agrees with the reference on that class's share of pixels)."""
        if self.hist is None or not self.pixels:
            return 0.0
        p = self.hist / np.maximum(self.hist.sum(1, keepdims=True), 1)
        return float((p[0] * p[1]).sum())

    @property
    def kappa(self) -> float:
        """Cohen's kappa of the class maps: ``(agreement - chance) / (1 - chance)``; 1 identical, 0 no better
        than chance (Cohen 1960, "A coefficient of agreement for nominal scales"). 1 when chance is 1 and the
        maps agree."""
        pe = self.chance_agreement
        return (self.agreement - pe) / (1.0 - pe) if pe < 1.0 else (1.0 if self.agreement >= 1.0 else 0.0)

    @property
    def rel_l2(self) -> float:
        return math.sqrt(self.sq_err) / math.sqrt(self.sq_ref) if self.sq_ref > 0 else math.sqrt(self.sq_err)

    @property
    def cosine(self) -> float:
        return self.dot / math.sqrt(self.sq_ref * self.sq_art) if self.sq_ref * self.sq_art > 0 else 1.0

    def logit_fields(self) -> dict[str, Any]:
        """``max_abs_error``, ``rel_l2_error``, ``cosine_similarity``, ``nonfinite`` (None without logits)."""
        if not self.has_logits:
            return dict(max_abs_error=None, rel_l2_error=None, cosine_similarity=None, nonfinite=None)
        return dict(max_abs_error=self.max_abs, rel_l2_error=self.rel_l2, cosine_similarity=self.cosine,
                    nonfinite=self.nonfinite)
