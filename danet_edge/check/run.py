"""Accuracy check of deployed artifacts against the PyTorch reference checkpoint.

For every artifact (``.pt`` checkpoint, ONNX FP32/FP16/INT8 graph, TensorRT engine), opened
through ``runtime.backends.open_backend`` and seen only through the backend protocol:

* **mIoU and pixel accuracy** on the evaluation set, by the same path as ``infer``: each image
  ``(H, W, 3) uint8`` is resized to the artifact's static size, predicted, and the label map is
  brought back to ``(H, W)`` with nearest neighbour before it meets the ground truth;
* **change in mIoU** against the reference checkpoint run at the same static size (points of mIoU,
  ``artifact - reference``; the threshold bounds the drop);
* **pixel agreement** with the reference's predictions, at the artifact's size (percent);
* where the artifact gives logits: their error against the reference logits (max absolute,
  relative L2 ``||a - r|| / ||r||``, cosine similarity, over all frames) and a count of inf/NaN;
* the **precision the artifact really holds**: read from the ONNX graph
  (``precision.precision_report``), from the engine manifest for engines, ``fp32`` for
  checkpoints. A manifest that claims another precision than the graph fails the check.

Thresholds default per precision (:data:`DEFAULT_THRESHOLDS`) and can be overridden. The report
is returned as :class:`CheckReport`; ``CheckReport.raise_for_failure`` raises ``CheckFailed``.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError, DataError, ManifestError
from ..core.manifest import Manifest
from ..core.metrics import ConfusionMatrix
from ..data.preprocess import resize_image, resize_labels
from .report import write_html, write_markdown, write_pictures
from .results import ArtifactCheck, ArtifactStats, CheckReport
from ..core.progress import track
from .config import CheckConfig
from .thresholds import (DEFAULT_THRESHOLDS, Thresholds, load_thresholds,  # noqa: F401
                         parse_threshold_overrides, thresholds_for)
from ..core.utils import write_json
from ..runtime.backends import Backend, backend_spec, open_backend

__all__ = ["Thresholds", "DEFAULT_THRESHOLDS", "CheckConfig", "ArtifactCheck", "CheckReport",
           "check_artifacts", "artifact_precision", "parse_threshold_overrides", "load_thresholds"]


# ---------------------------------------------------------------------------------- precision
def artifact_precision(path: str | os.PathLike[str], manifest: Manifest) -> tuple[str, str]:
    """``(precision, source)``: what the artifact really holds and where that was read.

    ONNX: from the graph. Engines: the per-layer precision ``build`` read from TensorRT's engine
    inspector into the manifest's ``precision_report``. Checkpoints: ``fp32``.
    """
    return _precision_info(Path(path), manifest)[:2]


def _precision_info(p: Path, manifest: Manifest) -> tuple[str, str, dict[str, Any] | None]:
    return backend_spec(p).load().artifact_precision(p, manifest)


# ---------------------------------------------------------------------------------- running
def _open_backend(path: Path, backend: str | None) -> Backend:
    return open_backend(path, backend=backend) if backend else open_backend(path)


def _frames(dataset: Iterable[Any], limit: int | None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
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


def _chunks(it: Iterator[Any], n: int) -> Iterator[list[Any]]:
    buf: list[Any] = []
    for x in it:
        buf.append(x)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _open_reference(path: Path, size: tuple[int, int], batch: int):
    """The reference checkpoint run eagerly in FP32 at ``size`` (the torch backend, as ``infer`` runs it)."""
    from ..runtime.backends import open_backend

    return open_backend(path, backend="torch", image_size=size, batch=batch)


@dataclass
class _RefMeta:
    """What the check needs to know of the reference, from a checkpoint's manifest or a bundle."""

    num_classes: int
    classes: list[str]
    ignore_index: int
    palette: list[list[int]]
    source_checkpoint_sha256: str | None


def _reference_kind(reference: Any) -> Any:
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


def check_artifacts(artifacts: Sequence[str | os.PathLike[str]], reference: Any,
                    dataset: Any = None, cfg: CheckConfig | None = None) -> CheckReport:
    """Check each artifact against the PyTorch reference on ``dataset``.

    Args:
        artifacts: paths of ``.pt``/``.onnx``/``.engine``/``.plan`` files, each with its manifest.
        reference: the PyTorch checkpoint the artifacts were made from (run here, needs torch), or a reference
            bundle (``reference.ReferenceBundle`` or its folder) that ``export`` wrote: its stored class maps
            and logits are the reference and its images the data set (no torch needed).
        dataset: iterable of ``(image (H, W, 3) uint8 RGB, mask (H, W) int)`` with ``.info``
            (``classes``, ``ignore_index``), as ``data.build_dataset`` returns; must be None with a bundle.
        cfg: options; writes the JSON / Markdown report when their paths are set.

    Returns:
        CheckReport (``passed`` False when any artifact misses a threshold, holds another precision
        than its manifest claims, or outputs inf/NaN). Does not raise on failure: call
        ``report.raise_for_failure()``.

    Raises:
        ConfigError: no artifacts, a data set given with a bundle; DataError: empty or malformed data set or
        bundle, class count mismatch; ManifestError: an artifact whose preprocessing or classes differ from
        the bundle's; CheckpointError / EngineError from loading the artifacts.
    """
    cfg = cfg or CheckConfig()
    cfg.validate()
    if not artifacts:
        raise ConfigError("no artifacts to check")
    paths = [Path(a) for a in artifacts]
    for p in paths:
        if not p.exists():
            raise ConfigError(f"artifact {p} not found")
    ref_src = _reference_kind(reference)
    bundle = None if isinstance(ref_src, Path) else ref_src
    if bundle is not None:
        if dataset is not None:
            raise ConfigError("a reference bundle brings its own images: give no data set with it")
        dataset = bundle
    elif dataset is None:
        raise ConfigError("checking against a checkpoint needs a data set")
    backends: list[Any] = []
    refs: dict[tuple[tuple[int, int], int], Any] = {}
    try:
        for p in paths:
            backends.append(_open_backend(p, cfg.backend))
            if bundle is not None:
                bundle.check_matches(backends[-1].manifest, p.name)
        keys = sorted({(b.manifest.image_size, b.manifest.batch_size) for b in backends})
        if bundle is None:
            for key in keys:
                refs[key] = _open_reference(ref_src, *key)
            m0 = refs[keys[0]].manifest
            ref_m = _RefMeta(m0.num_classes, list(m0.classes), m0.ignore_index, m0.palette, m0.source_checkpoint_sha256)
        else:
            m0 = backends[0].manifest
            ref_m = _RefMeta(len(bundle.info.classes), bundle.info.classes, bundle.info.ignore_index, m0.palette,
                             bundle.meta.get("checkpoint_sha256"))
        k = ref_m.num_classes
        info = getattr(dataset, "info", None)
        ignore = int(info.ignore_index) if info is not None else ref_m.ignore_index
        classes = list(getattr(info, "classes", None) or ref_m.classes)
        if len(classes) != k:
            raise DataError(f"the data set has {len(classes)} classes, the reference model {k}")
        for p, b in zip(paths, backends):
            if b.manifest.num_classes != k:
                raise ManifestError(f"{p}: {b.manifest.num_classes} classes, the reference {k}")
        ref_cms = {key: ConfusionMatrix(k, ignore) for key in keys}
        accs = [ArtifactStats(ConfusionMatrix(k, ignore)) for _ in paths]
        chunk = max(bs for _, bs in keys)
        frames = 0
        for group in track(_chunks(_frames(dataset, cfg.limit), chunk), f"check {len(paths)} artifact(s)"):
            frames += len(group)
            for key in keys:
                size, bs = key
                for start in range(0, len(group), bs):
                    piece = group[start:start + bs]
                    n = len(piece)
                    batch = np.stack([resize_image(im, size) for _, im, _ in piece])
                    if n < bs:  # static batch: pad with the last frame, drop its outputs
                        batch = np.concatenate([batch, np.repeat(batch[-1:], bs - n, 0)])
                    if bundle is not None:
                        ref_logits, ref_labels = bundle.outputs([i for i, _, _ in piece])
                    else:
                        ref_pred = refs[key].predict(batch)
                        ref_logits, ref_labels = ref_pred.logits[:n], ref_pred.labels[:n]
                    for (_, _, mask), lab in zip(piece, ref_labels):
                        ref_cms[key].update(resize_labels(lab, mask.shape), mask)
                    for j, b in enumerate(backends):
                        if (b.manifest.image_size, b.manifest.batch_size) == key:
                            _accumulate(accs[j], b.predict(batch), n, piece, batch, ref_logits, ref_labels, cfg)
        if frames == 0:
            raise DataError("the evaluation set is empty")
        labelled = bundle is None or bundle.labelled
        results, art_ref_cms = [], []
        for p, b, acc in zip(paths, backends, accs):
            key = (b.manifest.image_size, b.manifest.batch_size)
            art_ref_cms.append(ref_cms[key])
            results.append(_result(p, b.manifest, acc, ref_cms[key], frames, ref_m, cfg, labelled,
                                   getattr(b, "provider", "")))
    finally:
        for b in [*backends, *refs.values()]:
            b.close()

    report = CheckReport(reference=str(getattr(bundle, "path", reference)),
                         dataset=str(getattr(info, "name", "") or ""), frames=frames, classes=classes, artifacts=results)
    if cfg.report_dir is not None:
        write_pictures(report, accs, ref_m.palette, Path(cfg.report_dir), labelled, ignore)
        report.markdown_path = str(Path(cfg.report_dir) / "report.md")
        report.html_path = str(Path(cfg.report_dir) / "report.html")
    if cfg.json_path is not None:
        report.json_path = str(cfg.json_path)
        write_json(cfg.json_path, report.to_dict())
    if cfg.report_dir is not None:
        write_markdown(report, Path(report.markdown_path))
        write_html(report, accs, art_ref_cms, ref_m.palette, Path(report.html_path), labelled, ignore)
    return report


def _accumulate(acc: ArtifactStats, pred: Any, n: int, piece: list[tuple[int, np.ndarray, np.ndarray]], batch: np.ndarray,
                ref_logits: np.ndarray, ref_labels: np.ndarray, cfg: CheckConfig) -> None:
    labels = np.asarray(pred.labels)[:n]
    for (_, _, mask), lab in zip(piece, labels):
        acc.cm.update(resize_labels(lab.astype(np.int64), mask.shape), mask)
    logits = None if pred.logits is None else np.asarray(pred.logits)[:n]
    same = acc.cmp.update(labels, ref_labels, logits, ref_logits)
    if cfg.pictures and cfg.report_dir is not None:
        for (idx, _, mask), img, lab, rl, s in zip(piece, batch, labels, ref_labels, same):
            item = (int((~s).sum()), -idx, img, rl.astype(np.uint8), lab.astype(np.uint8),
                    resize_labels(np.asarray(mask), img.shape[:2]))
            if len(acc.worst) < cfg.pictures:
                heapq.heappush(acc.worst, item)
            elif item[:2] > acc.worst[0][:2]:
                heapq.heapreplace(acc.worst, item)


def _pct(x: float) -> float:
    return 100.0 * x if math.isfinite(x) else float("nan")


def _result(path: Path, m: Manifest, acc: ArtifactStats, ref_cm: ConfusionMatrix, frames: int, ref_m: _RefMeta,
            cfg: CheckConfig, labelled: bool = True, provider: str = "") -> ArtifactCheck:
    precision, source, detail = _precision_info(path, m)
    th = thresholds_for(precision, m, cfg.thresholds)
    miou, ref_miou = _pct(acc.cm.miou()), _pct(ref_cm.miou())
    agreement = 100.0 * acc.cmp.agreement
    delta = miou - ref_miou
    failures, notes = [], []
    if precision != m.precision:
        failures.append(f"manifest claims {m.precision} but the {source.split(' ')[0]} holds {precision}")
    if agreement < th.min_agreement:
        failures.append(f"agreement {agreement:.3f} % < {th.min_agreement} %")
    if not labelled:
        notes.append("the reference bundle has no labels: agreement and logit error only, no mIoU")
    elif math.isnan(delta) or -delta > th.max_miou_drop:
        failures.append(f"mIoU drop {-delta:.3f} > {th.max_miou_drop}")
    if acc.cmp.has_logits and acc.cmp.nonfinite:
        failures.append(f"{acc.cmp.nonfinite} inf/NaN logits")
    if m.source_checkpoint_sha256 and m.source_checkpoint_sha256 != ref_m.source_checkpoint_sha256:
        notes.append("made from another checkpoint than the reference (SHA-256 differs)")
    if not acc.cmp.has_logits:
        notes.append("outputs labels only: no logit error")
    logit_fields = acc.cmp.logit_fields()
    return ArtifactCheck(
        path=str(path), kind=m.kind, precision=precision, manifest_precision=m.precision, precision_source=source,
        image_size=list(m.image_size), batch_size=m.batch_size, frames=frames, miou=miou,
        pixel_accuracy=_pct(acc.cm.pixel_accuracy()), reference_miou=ref_miou,
        reference_pixel_accuracy=_pct(ref_cm.pixel_accuracy()), miou_delta=delta, agreement=agreement,
        thresholds=asdict(th), passed=not failures, failures=failures, notes=notes, precision_detail=detail,
        provider=provider,
        per_class_iou=[None if math.isnan(v) else 100.0 * float(v) for v in acc.cm.iou()],
        reference_per_class_iou=[None if math.isnan(v) else 100.0 * float(v) for v in ref_cm.iou()], **logit_fields)
