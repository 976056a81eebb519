"""What check measured: :class:`ArtifactCheck` per artifact, the :class:`CheckReport`, and the running
:class:`ArtifactStats` of one artifact over the images; the runner (``run.py``) makes them, the report
writers (``report.py``) and the CLI render them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.compare import OutputComparison
from ..core.errors import CheckFailed
from ..core.metrics import ConfusionMatrix

__all__ = ["ArtifactCheck", "CheckReport", "ArtifactStats", "attention_line"]


@dataclass
class ArtifactCheck:
    """Result for one artifact. Percentages are 0..100; mIoU in points.

    ``miou_delta`` is ``artifact - reference`` at the artifact's size; ``agreement`` is the share
    of pixels whose label equals the reference's; the logit fields are None when the artifact
    outputs labels only. ``precision`` is what the artifact really holds, ``manifest_precision``
    what its manifest claims; ``provider`` what it ran on (a runtime's accuracy is part of the result: OpenVINO
    bf16 and ONNX Runtime give different mIoU on the same INT8 graph); ``attention`` PAM's form in the artifact.
    """

    path: str
    kind: str
    precision: str
    manifest_precision: str
    precision_source: str
    image_size: list[int]
    batch_size: int
    frames: int
    miou: float
    pixel_accuracy: float
    reference_miou: float
    reference_pixel_accuracy: float
    miou_delta: float
    agreement: float
    max_abs_error: float | None
    rel_l2_error: float | None
    cosine_similarity: float | None
    nonfinite: int | None
    thresholds: dict[str, float]
    passed: bool
    failures: list[str]
    notes: list[str] = field(default_factory=list)
    per_class_iou: list[float | None] = field(default_factory=list)
    reference_per_class_iou: list[float | None] = field(default_factory=list)
    picture: str | None = None
    precision_detail: dict[str, Any] | None = None
    provider: str = ""  # what it ran on: "ONNX Runtime 1.31.1 CPUExecutionProvider", "OpenVINO 2026.4.1 CPU (bf16 ...)"
    #: PAM's form and memory from the manifest (``form``, ``chunks``, ``map_mib``, ``total_mib``, ...) and, for an
    #: engine, ``fused``: true / false / "unknown" (whether TensorRT ran it as one attention kernel); None: no record
    attention: dict[str, Any] | None = None
    #: an INT8 artifact's scales: "PTQ" (calibrated) or "QAT" (learned; ``Manifest.quantization``); None otherwise
    quantization: str | None = None


@dataclass
class CheckReport:
    """All artifact results plus the reference and data description."""

    reference: str
    dataset: str
    frames: int
    classes: list[str]
    artifacts: list[ArtifactCheck]
    json_path: str | None = None
    markdown_path: str | None = None
    html_path: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(a.passed for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def raise_for_failure(self) -> None:
        """Raises:
            CheckFailed: when any artifact failed; the message names each failure.
        """
        bad = [a for a in self.artifacts if not a.passed]
        if bad:
            detail = "; ".join(f"{Path(a.path).name}: {', '.join(a.failures)}" for a in bad)
            raise CheckFailed(f"{len(bad)} of {len(self.artifacts)} artifact(s) failed the check ({detail})")


@dataclass
class ArtifactStats:
    """Running state for one artifact: its confusion matrix, the comparison with the reference's outputs
    (``compare.OutputComparison``, shared with export verification) and the frames with most disagreement:
    heap items ``(disagreeing pixels, -frame index, image, reference labels, artifact labels, ground truth)``,
    all at the artifact's size."""

    cm: ConfusionMatrix
    cmp: OutputComparison = field(default_factory=OutputComparison)
    worst: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)


def attention_line(att: dict[str, Any]) -> str:
    """PAM's form and memory as one line of the report (from ``ArtifactCheck.attention``)."""
    form = att.get("form", "?")
    text = f"PAM: {form}" + (f", {att.get('chunks')} query chunks" if form == "chunked" else "")
    if att.get("map_mib") is not None:
        text += f"; largest attention map {att['map_mib']:.1f} MiB"
    mem = att.get("memory") or {}
    if mem.get("total_mib") is not None:
        fits = mem.get("fits") or {}
        text += (f"; the graph needs {mem['total_mib']:.0f} MiB (weights + activations), fits: "
                 + (", ".join(f"{b} {'yes' if ok else 'no'}" for b, ok in fits.items()) or "-"))
    if "fused" in att:
        text += "; TensorRT fused attention: " + {True: "yes", False: "no"}.get(att["fused"], "unknown")
    return text
