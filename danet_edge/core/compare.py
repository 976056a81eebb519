"""One comparison of an artifact's outputs with a reference's, used by export verification and ``check``.

Polygraphy's split is the model: run each model once, then compare the results many ways. Here the
results are class maps ``(N, h, w)`` and, when the artifact gives them, logits ``(N, K, h, w)``;
:class:`OutputComparison` accumulates batch by batch (memory stays flat over a data set) and reports
pixel agreement, relative L2 error ``||a - r|| / ||r||``, largest absolute error, cosine similarity and
the count of inf/NaN logits; :func:`cohen_kappa` corrects agreement for chance, on whole maps. Export
verification (FP16 / INT8 graph vs the FP32 graph, with each
recipe's tolerance) and ``check`` (each artifact vs the PyTorch reference, with per-precision
thresholds) differ only in what they compare and the limits they apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["OutputComparison", "relative_l2", "chance_agreement", "cohen_kappa"]


def relative_l2(a: np.ndarray, ref: np.ndarray) -> float:
    """``||a - ref|| / ||ref||`` in float64 (0 when both are zero)."""
    c = OutputComparison()
    c.update_logits(np.asarray(a), np.asarray(ref))
    return c.rel_l2


def chance_agreement(labels: np.ndarray, ref_labels: np.ndarray) -> float:
    """The agreement two independent class maps with these class frequencies would reach: ``sum_k p_k q_k`` over
    the classes (a map of one class everywhere agrees with the reference on that class's share of pixels).
    ``labels``, ``ref_labels``: integer maps of one shape, e.g. ``(N, H, W)``; negative values are not counted."""
    a, b = np.asarray(labels).ravel(), np.asarray(ref_labels).ravel()
    a, b = a[a >= 0], b[b >= 0]
    if not a.size or not b.size:
        return 0.0
    k = int(max(a.max(), b.max())) + 1
    return float((np.bincount(a, minlength=k) / a.size * np.bincount(b, minlength=k) / b.size).sum())


def cohen_kappa(labels: np.ndarray, ref_labels: np.ndarray) -> float:
    """Cohen's kappa of two class maps: ``(agreement - chance) / (1 - chance)`` (:func:`chance_agreement`); 1
    identical, 0 no better than chance (Cohen 1960, "A coefficient of agreement for nominal scales"); 1 when
    chance is 1 and the maps agree."""
    agree = float((np.asarray(labels) == np.asarray(ref_labels)).mean()) if np.size(labels) else 0.0
    pe = chance_agreement(labels, ref_labels)
    return (agree - pe) / (1.0 - pe) if pe < 1.0 else (1.0 if agree >= 1.0 else 0.0)


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

    def update(self, labels: np.ndarray, ref_labels: np.ndarray, logits: np.ndarray | None = None,
               ref_logits: np.ndarray | None = None) -> np.ndarray:
        """Add one batch. ``labels``/``ref_labels``: ``(N, h, w)`` int; logits ``(N, K, h, w)`` or None
        (the artifact outputs labels only). Returns the per-pixel agreement mask ``(N, h, w)`` bool."""
        same = np.asarray(labels) == np.asarray(ref_labels)
        self.agree += int(same.sum())
        self.pixels += same.size
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
