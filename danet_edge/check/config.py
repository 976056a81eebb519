"""Options of the check stage: :class:`CheckConfig` (``danet-edge check``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import Config, check_range
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
    """

    limit: int | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    report_dir: Path | None = None
    pictures: int = 3
    backend: str | None = None

    def validate(self) -> None:
        check_range("limit", self.limit, 1, optional=True)
        check_range("pictures", self.pictures, 0, 64)
        unknown = set(self.thresholds) - set(PRECISIONS)
        if unknown:
            raise ConfigError(f"thresholds for unknown precision(s) {sorted(unknown)}; use {list(PRECISIONS)}")

