"""Options of the data stage: :class:`DataOptions` (what a ``folder`` or synthetic data set needs beyond its
name, shared by ``train`` and ``eval``) and :class:`CalibFillConfig` (``danet-edge calib fill``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.choices import DATASETS, SPLITS
from ..core.config import CALIB_DIR, CALIB_IMAGES, Config, check_choice, check_range, option
from ..core.errors import ConfigError

__all__ = ["CalibFillConfig", "DataOptions"]


@dataclass
class DataOptions(Config):
    """Extra options of a data set (``data.datasets.build_dataset``'s ``options``).

    Attributes:
        num_classes: classes of a ``folder`` data set without ``classes.txt`` (None: read from it).
        ignore_index: the label value ignored by the loss and the metrics (None: the data set's, 255).
        synthetic_size: ``(H, W)`` px of the synthetic scenes (None: the data set's default).
    """

    num_classes: int | None = option(None, "Classes of a 'folder' data set without classes.txt.")
    ignore_index: int | None = option(None, "Ignore index of a 'folder' data set (default 255).")
    synthetic_size: tuple[int, int] | None = option(None, "Image size H W of the synthetic data.")

    def validate(self) -> None:  # the values themselves are checked by the data set that takes them
        if self.synthetic_size is not None and len(self.synthetic_size) != 2:
            raise ConfigError("--synthetic-size takes two numbers: H W")

    def to_options(self) -> dict[str, Any]:
        """The keyword options ``build_dataset`` takes (only those given)."""
        opts: dict[str, Any] = {}
        if self.num_classes is not None:
            opts["num_classes"] = self.num_classes
        if self.ignore_index is not None:
            opts["ignore_index"] = self.ignore_index
        if self.synthetic_size is not None:
            opts["size"] = tuple(self.synthetic_size)
        return opts


@dataclass
class CalibFillConfig(Config):
    """Options of ``danet-edge calib fill`` (``data.calib.fill_calib_dir``).

    Attributes:
        dataset, data_root: the data set to pick from and its folder (not needed for synthetic).
        count: images to pick (class-balanced). out: the calibration folder to fill.
        split: the split to pick from. seed: seed of the tie-breaking order.
    """

    dataset: str = option("synthetic", "Data set.")
    data_root: Path | None = option(None, "Data set root folder (not needed for synthetic).")
    count: int = option(CALIB_IMAGES, "Images to pick.")
    out: Path = option(Path(CALIB_DIR), "Calibration folder to fill.")
    split: str = option("train", "Split to pick from.")
    seed: int = option(0, "Seed of the tie-breaking order.")

    def validate(self) -> None:
        check_choice("data set", self.dataset, DATASETS)
        check_choice("split", self.split, SPLITS)
        check_range("--calib-size", self.count, 1)
        if self.dataset != "synthetic" and self.data_root is None:
            raise ConfigError(f"--data is required for data set {self.dataset!r}")
