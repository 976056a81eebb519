"""The accuracy budget of an INT8 export: which layers stay in high precision so that the graph keeps a minimum
agreement with FP32 (and / or a largest mIoU drop), chosen from the per-layer sensitivity ranking
(sensitivity.py), and the images it is judged on (the export's data set, or the calibration images)."""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..graph.cost import graph_cost
from ..core.errors import ConfigError
from ..core.utils import atomic_path
from ..data.calib import CalibrationSet
from .config import ExportConfig
from .sensitivity import (Evaluator, LayerSensitivity, Log, SensitivityReport, keep_high_precision, rank_layers,
                          write_ranking)

__all__ = ['BudgetImages', 'BudgetResult', 'apply_budget', 'budget_images', 'export_images', 'fit_budget']


@dataclass
class BudgetResult:
    """What :func:`fit_budget` kept and why. ``model`` is the graph that meets the budget (or the best
    reached when ``met`` is False); ``history`` has the figures after each kept layer."""

    model: onnx.ModelProto
    kept: list[str]
    met: bool
    budget: dict[str, float | None]
    reference: dict[str, float | None]
    final: dict[str, float | None]
    int8_share_pct: float
    history: list[dict[str, Any]] = field(default_factory=list)
    ranking: SensitivityReport | None = None

    def record(self) -> dict[str, Any]:
        """JSON for the manifest (``extra["budget"]``)."""
        return {"budget": self.budget, "met": self.met, "kept_high_precision": self.kept,
                "reference": self.reference, "final": self.final, "int8_flop_share_pct": self.int8_share_pct,
                "history": self.history,
                "why": {x.name: {"gain": round(x.gain, 4), "agreement_gain": x.agreement_gain, "gflop": x.gflop} for x in
                        (self.ranking.layers if self.ranking else []) if x.name in self.kept}}


def _meets(score: dict[str, float | None], ref: dict[str, float | None], min_agreement: float | None,
           max_miou_drop: float | None) -> bool:
    ok = min_agreement is None or (score["agreement"] or 0.0) >= min_agreement
    if max_miou_drop is not None:
        ok = ok and ref["miou"] is not None and score["miou"] is not None and ref["miou"] - score["miou"] <= max_miou_drop
    return ok


def _progress(score: dict[str, float | None], ref: dict[str, float | None], min_agreement: float | None,
              max_miou_drop: float | None) -> float:
    """How close ``score`` is to the budget, one number (higher is closer): the agreement short of
    ``min_agreement`` plus the mIoU drop beyond ``max_miou_drop`` (points), negated."""
    short = 0.0
    if min_agreement is not None:
        short += max(0.0, min_agreement - (score["agreement"] or 0.0))
    if max_miou_drop is not None and ref["miou"] is not None and score["miou"] is not None:
        short += max(0.0, ref["miou"] - score["miou"] - max_miou_drop)
    return -short


def fit_budget(int8: onnx.ModelProto, fp32: onnx.ModelProto, evaluator: Evaluator,
               min_agreement: float | None = None, max_miou_drop: float | None = None,
               log: Log | None = None, ranking: SensitivityReport | None = None) -> BudgetResult:
    """Keep the fewest GFLOP of layers in high precision that make the budget hold (module docstring).
    ``ranking``: a :func:`rank_layers` result for these graphs and images (computed when needed if None).

    Raises:
        ConfigError: no budget given, or ``max_miou_drop`` without labels in ``evaluator``.
    """
    if min_agreement is None and max_miou_drop is None:
        raise ConfigError("give an accuracy budget: a minimum agreement (%) and/or a largest mIoU drop (points)")
    if max_miou_drop is not None and evaluator.labels is None:
        raise ConfigError("a largest mIoU drop needs labelled images (a data set), not only calibration images")
    log = log or (lambda _m: None)
    budget = {"min_agreement": min_agreement, "max_miou_drop": max_miou_drop}
    ref = evaluator.reference
    score = evaluator.evaluate(int8)
    history = [{"kept": 0, **score}]
    kept: list[str] = []
    model = int8
    if not _meets(score, ref, min_agreement, max_miou_drop):
        ranking = ranking or rank_layers(int8, fp32, evaluator, log=log)
        # rank by what the budget asks: mIoU gain for a largest mIoU drop, else agreement gain (with labels the
        # ranking's own order is by mIoU, which on a handful of images is too noisy for an agreement budget)

        def gain(x: LayerSensitivity) -> float:
            return x.gain if max_miou_drop is not None else x.agreement_gain

        order = sorted((x for x in ranking.layers if gain(x) > 0 or x.rel_l2_gain > 0),
                       key=lambda x: (gain(x) / max(x.gflop, 1e-6), x.rel_l2_gain), reverse=True)
        for layer in order:
            trial = keep_high_precision(int8, fp32, [*kept, layer.name])
            got = evaluator.evaluate(trial)
            # a layer stays out of INT8 only if it helps with the others already kept (single-layer gains do not
            # add up: on CamVid R-50 most small layers' gains vanished once the head convs were kept)
            helps = _progress(got, ref, min_agreement, max_miou_drop) > _progress(score, ref, min_agreement,
                                                                                   max_miou_drop)
            history.append({"kept": len(kept) + helps, "layer": layer.name, "accepted": helps, **got})
            log(f"{'kept' if helps else 'left INT8'} {layer.name}: agreement {got['agreement']:.3f} %"
                + (f", mIoU {got['miou']:.2f}" if got["miou"] is not None else ""))
            if helps:
                kept.append(layer.name)
                model, score = trial, got
            if _meets(score, ref, min_agreement, max_miou_drop):
                break
    cost = graph_cost(model)
    return BudgetResult(model, kept, _meets(score, ref, min_agreement, max_miou_drop), budget, ref, score,
                        cost.share("int8"), history, ranking)


@dataclass
class BudgetImages:
    """The images an accuracy budget is measured on: ``frames`` ``(H, W, 3) uint8``, ``labels`` ``(H, W)``
    (None: agreement only), the data set's class count and ignore index, and a line saying what they are."""

    frames: list[np.ndarray]
    labels: list[np.ndarray] | None
    num_classes: int | None
    ignore_index: int
    source: str

    def evaluator(self, fp32_path: Path, manifest: Any) -> Evaluator:
        """An :class:`Evaluator` of these images against the FP32 graph at ``fp32_path``."""
        return Evaluator(onnx.load(str(fp32_path)), manifest, self.frames, self.labels, self.num_classes,
                         self.ignore_index)


def export_images(cfg: ExportConfig, calib_set: CalibrationSet | None, data: dict[str, Any], count: int) -> BudgetImages:
    """The images ``export`` measures a budget on and writes into the reference bundle (``cfg``: a
    ``config.ExportConfig``; ``data``: the checkpoint's ``data`` dict), the first ``count`` of:

    1. the labelled data set ``cfg.dataset`` (``cfg.data``, ``cfg.split``) when given;
    2. else, for a checkpoint trained on the synthetic scenes, those scenes (labelled);
    3. else the calibration images (no labels: agreement only);
    4. else synthetic scenes without labels (agreement only).

    Read before anything is written, so a bad data set leaves the output folder alone.

    Raises:
        ConfigError: a data set whose class count is not the model's. DataError: unreadable data.
    """
    num_classes = len(data["classes"])
    if cfg.dataset is None and calib_set is not None and data.get("dataset") != "synthetic":
        frames = list(calib_set.frames())[:count]
        return BudgetImages(frames, None, None, 255, f"{len(frames)} calibration images (no labels)")
    from ..data.datasets import build_dataset  # torch: export has it already

    name = cfg.dataset or "synthetic"
    ds = build_dataset(name, cfg.data, cfg.split, count)  # synthetic: the scenes check's default data set uses
    items = [ds[i] for i in range(len(ds))]
    frames = [np.asarray(x[0]) for x in items]
    if ds.info.num_classes != num_classes:
        if cfg.dataset is not None:
            raise ConfigError(f"--dataset {cfg.dataset} has {ds.info.num_classes} classes, the model {num_classes}")
        return BudgetImages(frames, None, None, 255, f"{len(frames)} synthetic scenes (no labels)")
    return BudgetImages(frames, [np.asarray(x[1]) for x in items], num_classes, ds.info.ignore_index,
                        f"{name} {cfg.split}, first {len(items)}")


def budget_images(cfg: ExportConfig, calib_set: CalibrationSet | None, data: dict[str, Any]) -> BudgetImages | None:
    """The images ``export``'s accuracy budget is measured on (:func:`export_images`, ``cfg.budget_images`` of
    them; a budget without a data set uses the calibration images); None without a budget.

    Raises:
        ConfigError, DataError: as :func:`export_images`.
    """
    if cfg.min_agreement is None and cfg.max_miou_drop is None:
        return None
    if cfg.dataset is None:
        frames = list(calib_set.frames())[:cfg.budget_images] if calib_set is not None else []
        return BudgetImages(frames, None, None, 255, f"{len(frames)} calibration images")
    return export_images(cfg, calib_set, data, cfg.budget_images)


def apply_budget(cfg: ExportConfig, fp32_path: Path, int8_path: Path, evaluator: Evaluator, warnings: list[str],
                 log: Log) -> dict[str, Any]:
    """Keep the most sensitive layers of ``int8_path`` in high precision until the budget holds; rewrites the
    graph in place and writes the sensitivity ranking (``.sensitivity.md`` / ``.png``) beside it."""
    res = fit_budget(onnx.load(str(int8_path)), onnx.load(str(fp32_path)), evaluator, cfg.min_agreement,
                     cfg.max_miou_drop, log)
    with atomic_path(int8_path, res.model.ByteSize()) as tmp:
        onnx.save(res.model, str(tmp))
    if res.ranking is not None:
        stem = int8_path.with_suffix("")
        write_ranking(res.ranking, Path(f"{stem}.sensitivity.md"), Path(f"{stem}.sensitivity.png"))
    final = res.final
    log(f"budget {res.budget}: {'met' if res.met else 'NOT met'} with {len(res.kept)} layer(s) kept in high "
        f"precision; agreement {final['agreement']:.3f} %" + (f", mIoU {final['miou']:.2f} (FP32 "
                                                               f"{res.reference['miou']:.2f})" if final["miou"] is not None else "")
        + f"; INT8 share of compute {res.int8_share_pct:.1f} %")
    if not res.met:
        warnings.append(f"{int8_path.name}: the accuracy budget {res.budget} is not met even with every helpful "
                        "layer kept in high precision")
    return res.record()
