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
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
from .inputs import RefMeta, chunks, frames, reference_kind
from .thresholds import (DEFAULT_THRESHOLDS, Thresholds, load_thresholds,  # noqa: F401
                         parse_threshold_overrides, thresholds_for)
from ..core.utils import ensure_output_names, staged_files, write_json
from ..runtime.backends import Backend, backend_spec, check_backend_opens, open_backend

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
Key = tuple[tuple[int, int], int]  # (image size (H, W), static batch): artifacts sharing one run one reference


@dataclass
class _Run:
    """One check: the opened backends, the reference per (size, batch) and the statistics they fill."""

    cfg: CheckConfig
    paths: list[Path]
    bundle: Any  # reference.ReferenceBundle, or None when the reference is a checkpoint
    backends: list[Backend] = field(default_factory=list)
    refs: dict[Key, Backend] = field(default_factory=dict)

    def key(self, b: Backend) -> Key:
        return b.manifest.image_size, b.manifest.batch_size

    def open(self, ref_src: Any) -> RefMeta:
        """Open every artifact (``cfg.backend`` or by suffix) and, with a checkpoint, the reference at each
        artifact's static size and batch (the torch backend, FP32, as ``infer`` runs it)."""
        for p in self.paths:
            self.backends.append(open_backend(p, backend=self.cfg.backend) if self.cfg.backend else open_backend(p))
            if self.bundle is not None:
                self.bundle.check_matches(self.backends[-1].manifest, p.name)
        if self.bundle is not None:
            m0, info = self.backends[0].manifest, self.bundle.info
            return RefMeta(len(info.classes), info.classes, info.ignore_index, m0.palette,
                           self.bundle.meta.get("checkpoint_sha256"))
        for key in sorted({self.key(b) for b in self.backends}):
            self.refs[key] = open_backend(ref_src, backend="torch", image_size=key[0], batch=key[1])
        m0 = next(iter(self.refs.values())).manifest
        return RefMeta(m0.num_classes, list(m0.classes), m0.ignore_index, m0.palette, m0.source_checkpoint_sha256)

    def close(self) -> None:
        for b in [*self.backends, *self.refs.values()]:
            b.close()

    def reference(self, key: Key, batch: np.ndarray, piece: list[Any]) -> tuple[np.ndarray | None, np.ndarray]:
        """The reference's logits (None when it has none) and class maps for the ``n`` frames of ``piece``."""
        if self.bundle is not None:
            return self.bundle.outputs([i for i, _, _ in piece])
        pred = self.refs[key].predict(batch)
        n = len(piece)
        return (None if pred.logits is None else pred.logits[:n]), pred.labels[:n]

    def predict(self, dataset: Any, ref_cms: dict[Key, ConfusionMatrix], accs: list[ArtifactStats]) -> int:
        """Run every frame through the reference and the artifacts at each (size, batch); returns the frame count.

        A static batch is padded with the last frame and the padding's outputs are dropped."""
        keys = sorted(ref_cms)
        chunk = max(bs for _, bs in keys)
        count = 0
        for group in track(chunks(frames(dataset, self.cfg.limit), chunk), f"check {len(self.paths)} artifact(s)"):
            count += len(group)
            for key in keys:
                size, bs = key
                for start in range(0, len(group), bs):
                    piece = group[start:start + bs]
                    n = len(piece)
                    batch = np.stack([resize_image(im, size) for _, im, _ in piece])
                    if n < bs:
                        batch = np.concatenate([batch, np.repeat(batch[-1:], bs - n, 0)])
                    ref_logits, ref_labels = self.reference(key, batch, piece)
                    for (_, _, mask), lab in zip(piece, ref_labels):
                        ref_cms[key].update(resize_labels(lab, mask.shape), mask)
                    for acc, b in zip(accs, self.backends):
                        if self.key(b) == key:
                            _accumulate(acc, b.predict(batch), n, piece, batch, ref_logits, ref_labels, self.cfg)
        if count == 0:
            raise DataError("the evaluation set is empty")
        return count


def _inputs(artifacts: Sequence[str | os.PathLike[str]], reference: Any, dataset: Any,
            backend: str | None = None) -> tuple[list[Path], Any, Any]:
    """The artifact paths, the reference (bundle or checkpoint path) and the data set, checked; ``backend``
    must be able to run every artifact (``backends.check_backend_opens``)."""
    if not artifacts:
        raise ConfigError("no artifacts to check")
    paths = [Path(a) for a in artifacts]
    for p in paths:
        if not p.exists():
            raise ConfigError(f"artifact {p} not found")
        check_backend_opens(p, backend)
    ref_src = reference_kind(reference)
    if not isinstance(ref_src, Path):
        if dataset is not None:
            raise ConfigError("a reference bundle brings its own images: give no data set with it")
        dataset = ref_src
    elif dataset is None:
        raise ConfigError("checking against a checkpoint needs a data set")
    return paths, ref_src, dataset


def _classes(dataset: Any, ref_m: RefMeta, run: _Run) -> tuple[list[str], int]:
    """The class names and ignore index: the data set's when it says, else the reference's; every artifact and
    the data set must have the reference's class count."""
    k = ref_m.num_classes
    info = getattr(dataset, "info", None)
    ignore = int(info.ignore_index) if info is not None else ref_m.ignore_index
    classes = list(getattr(info, "classes", None) or ref_m.classes)
    if len(classes) != k:
        raise DataError(f"the data set has {len(classes)} classes, the reference model {k}")
    for p, b in zip(run.paths, run.backends):
        if b.manifest.num_classes != k:
            raise ManifestError(f"{p}: {b.manifest.num_classes} classes, the reference {k}")
    return classes, ignore


def _write_reports(report: CheckReport, cfg: CheckConfig, accs: list[ArtifactStats],
                   ref_cms: list[ConfusionMatrix], palette: list[list[int]], labelled: bool, ignore: int) -> None:
    """Pictures, JSON, Markdown and HTML where ``cfg`` asks for them; their paths go into ``report``. The report
    folder's files are written together (``utils.staged_files``): a failure (a full disk) changes none of them."""
    if cfg.report_dir is None:
        if cfg.json_path is not None:
            report.json_path = str(cfg.json_path)
            write_json(cfg.json_path, report.to_dict())
        return
    folder = Path(cfg.report_dir)
    with staged_files(folder) as stage:
        write_pictures(report, accs, palette, stage, labelled, ignore)
        for res in report.artifacts:
            if res.picture:
                res.picture = str(folder / Path(res.picture).name)
        report.markdown_path = str(folder / "report.md")
        report.html_path = str(folder / "report.html")
        report.json_path = str(cfg.json_path) if cfg.json_path is not None else None
        write_markdown(report, stage / "report.md")
        write_html(report, accs, ref_cms, palette, stage / "report.html", labelled, ignore)
    if cfg.json_path is not None:
        write_json(cfg.json_path, report.to_dict())


def check_artifacts(artifacts: Sequence[str | os.PathLike[str]], reference: Any,
                    dataset: Any = None, cfg: CheckConfig | None = None) -> CheckReport:
    """Check each artifact against the PyTorch reference on ``dataset``.

    Steps: check the inputs -> open the artifacts and the reference -> run every frame through both ->
    one :class:`ArtifactCheck` per artifact -> write the reports asked for.

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
        ConfigError: no artifacts, a data set given with a bundle, a report name taken by a folder, a backend
        that cannot run an artifact; DataError: empty or malformed data set or
        bundle, class count mismatch; ManifestError: an artifact whose preprocessing or classes differ from
        the bundle's; CheckpointError / EngineError from loading the artifacts; StorageError: the disk filled
        while the reports were written (the report folder is as it was).
    """
    cfg = cfg or CheckConfig()
    cfg.validate()
    if cfg.report_dir is not None:  # a report name taken by a folder: refused before the (long) check
        ensure_output_names(cfg.report_dir, "--report", ["report.md", "report.html"])
    paths, ref_src, dataset = _inputs(artifacts, reference, dataset, cfg.backend)
    bundle = None if isinstance(ref_src, Path) else ref_src
    run = _Run(cfg, paths, bundle)
    try:
        ref_m = run.open(ref_src)
        classes, ignore = _classes(dataset, ref_m, run)
        ref_cms = {run.key(b): ConfusionMatrix(ref_m.num_classes, ignore) for b in run.backends}
        accs = [ArtifactStats(ConfusionMatrix(ref_m.num_classes, ignore)) for _ in paths]
        count = run.predict(dataset, ref_cms, accs)
        labelled = bundle is None or bundle.labelled
        art_ref_cms = [ref_cms[run.key(b)] for b in run.backends]
        results = [_result(p, b.manifest, acc, cm, count, ref_m, cfg, labelled, getattr(b, "provider", ""))
                   for p, b, acc, cm in zip(paths, run.backends, accs, art_ref_cms)]
    finally:
        run.close()
    info = getattr(dataset, "info", None)
    report = CheckReport(reference=str(getattr(bundle, "path", reference)),
                         dataset=str(getattr(info, "name", "") or ""), frames=count, classes=classes, artifacts=results)
    _write_reports(report, cfg, accs, art_ref_cms, ref_m.palette, labelled, ignore)
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


def _result(path: Path, m: Manifest, acc: ArtifactStats, ref_cm: ConfusionMatrix, frames: int, ref_m: RefMeta,
            cfg: CheckConfig, labelled: bool = True, provider: str = "") -> ArtifactCheck:
    precision, source, detail = _precision_info(path, m)
    th = thresholds_for(precision, m, cfg.thresholds)
    miou, ref_miou = _pct(acc.cm.miou()), _pct(ref_cm.miou())
    agreement = 100.0 * acc.cmp.agreement
    delta = miou - ref_miou
    failures, notes = [], []
    if precision != m.precision:
        failures.append(f"manifest claims {m.precision} but the {source.split(' ')[0]} holds {precision}")
    qat = (m.calibration or {}).get("qat") if isinstance(m.calibration, dict) else None
    fine_tuned = isinstance(qat, dict) and qat.get("source_sha256") == ref_m.source_checkpoint_sha256 and labelled
    if fine_tuned:  # QAT changed the weights on purpose: its mIoU against the float model is the measure
        notes.append(f"QAT graph of this reference, fine-tuned {qat.get('epochs')} epochs: judged by its mIoU change; "
                     f"agreement with the float model ({agreement:.3f} %) is not a fidelity measure here")
    elif agreement < th.min_agreement:
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
        provider=provider, attention=m.attention(), quantization=m.quantization(),
        per_class_iou=[None if math.isnan(v) else 100.0 * float(v) for v in acc.cm.iou()],
        reference_per_class_iou=[None if math.isnan(v) else 100.0 * float(v) for v in ref_cm.iou()], **logit_fields)
