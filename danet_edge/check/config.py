"""Options of the check stage: :class:`CheckConfig` (``danet-edge check``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.choices import DATASETS, SPLITS
from ..core.config import Config, check_choice, check_range, option
from ..core.errors import ConfigError
from ..core.manifest import PRECISIONS

__all__ = ["CheckConfig"]


@dataclass
class CheckConfig(Config):
    """Options of ``checks.check_artifacts``.

    Attributes:
        limit: evaluate at most this many images (None: all).
        thresholds: limits per precision (``fp32``/``fp16``/``int8``) given by the user, as
            ``thresholds.Thresholds``; they win over a recipe's own thresholds. Precisions not given use the
            artifact's recipe's, else ``thresholds.DEFAULT_THRESHOLDS``.
        json_path: write the report as JSON here (atomic) when set.
        report_dir: write ``report.md`` and one disagreement PNG per artifact here when set.
        pictures: frames per artifact in the disagreement picture (those with most disagreement).
        backend: backend name passed to ``open_backend`` (None: from the file suffix).
        dataset, data, split: the labelled images when the reference is a checkpoint (the command line builds
            the data set with ``data.datasets.build_dataset``; a reference bundle brings its own images).
    """

    limit: int | None = option(None, "Evaluate at most N images.")
    thresholds: dict[str, Any] = option(help="Limits per precision (see the class docstring).", default_factory=dict)
    json_path: Path | None = option(None, "Write the report as JSON here.")
    report_dir: Path | None = option(None, "Folder for report.md, report.html (self-contained) and disagreement PNGs.")
    pictures: int = option(3, "Frames per artifact in the disagreement picture.")
    backend: str | None = option(None, "Run the artifacts on this backend (default: by file suffix), e.g. "
                                       "openvino-bf16: its accuracy is what that runtime gives, not the graph's.")
    dataset: str = option("synthetic", "Data set the images come from when the reference is a checkpoint (a "
                                       "reference bundle brings its own).")
    data: Path | None = option(None, "Data set folder (not needed for synthetic).")
    split: str = option("val", "Split to evaluate on.")

    def validate(self) -> None:
        check_range("limit", self.limit, 1, optional=True)
        check_range("pictures", self.pictures, 0, 64)
        check_choice("--dataset", self.dataset, DATASETS)
        check_choice("--split", self.split, SPLITS)
        unknown = set(self.thresholds) - set(PRECISIONS)
        if unknown:
            raise ConfigError(f"thresholds for unknown precision(s) {sorted(unknown)}; use {list(PRECISIONS)}")

