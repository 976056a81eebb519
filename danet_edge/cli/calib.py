"""``danet-edge calib fill``: a class-balanced calibration folder from a data set (``data.calib.fill_calib_dir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import Dataset, Split
from ..core.config import CALIB_DIR, CALIB_IMAGES
from ._common import console


def register(app: typer.Typer) -> None:
    """Add the ``calib`` group to ``app``."""

    calib_app = typer.Typer(help="Calibration folder for INT8 export.", no_args_is_help=True)

    @calib_app.command("fill")
    def calib_fill(
        dataset: Dataset = typer.Option(..., "--dataset", "-d", help="Data set."),
        data: Optional[Path] = typer.Option(None, "--data", help="Data set root folder."),
        count: int = typer.Option(CALIB_IMAGES, "--calib-size", "--count", help="Images to pick."),
        out: Path = typer.Option(CALIB_DIR, "--out", "-o", help="Calibration folder to fill."),
        split: Split = typer.Option("train", "--split", help="Split to pick from."),
        seed: int = typer.Option(0, "--seed", help="Seed of the tie-breaking order."),
    ) -> None:
        """Fill the calibration folder with a class-balanced sample of a data set (copies + calib.txt)."""
        from ..data.calib import fill_calib_dir
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out, "--out")
        path = fill_calib_dir(dataset.value, data, count, out, split.value, seed)
        console.print(f"filled {path} (list {path / 'calib.txt'})", markup=False, highlight=False, soft_wrap=True)

    app.add_typer(calib_app, name="calib")
