"""What export wrote: :class:`Artifact` (one file and its figures) and :class:`ExportResult` (the run)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.manifest import Manifest

__all__ = ["Artifact", "ExportResult"]


@dataclass
class Artifact:
    """One written file: path, manifest, seconds it took, precision report and verification figures."""

    path: Path
    manifest: Manifest
    seconds: float
    report: dict[str, Any] | None = None
    verification: dict[str, Any] = field(default_factory=dict)  # figures, and the numerics that judged them
    #: the graph's outputs on the verification images (ONNX Runtime), kept for the steps after it; never written
    outputs: Any = field(default=None, repr=False)


@dataclass
class ExportResult:
    """Artifacts written (FP32 first, engines last with --engine), PAM's form and the memory it was chosen by
    (``attention.AttentionChoice.record``), warnings, the calibration record and the reference bundle folder (None with 0 images)."""

    artifacts: list[Artifact]
    attention: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    reference_bundle: Path | None = None
