"""``danet-edge calib fill``: a class-balanced calibration folder from a data set (``data.calib.fill_calib_dir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import Dataset, Split
from ..data.config import CalibFillConfig as CF
from ._common import console, opt


def register(app: typer.Typer) -> None:
    """Add the ``calib`` group to ``app``."""

    calib_app = typer.Typer(help="Calibration folder for INT8 export.", no_args_is_help=True)

    @calib_app.command("fill")
    def calib_fill(
        dataset: Dataset = typer.Option(..., "--dataset", "-d", help=CF.help("dataset")),
        data: Optional[Path] = opt(CF, "data_root", "--data"),
        count: int = opt(CF, "count", "--calib-size", "--count"),
        out: Path = opt(CF, "out", "--out", "-o"),
        split: Split = opt(CF, "split", "--split"),
        seed: int = opt(CF, "seed", "--seed"),
    ) -> None:
        """Fill the calibration folder with a class-balanced sample of a data set (copies + calib.txt)."""
        from ..data.calib import fill_calib_dir
        from ..core.utils import ensure_output_dir

        cfg = CF.from_options(dict(dataset=dataset, data_root=data, count=count, out=out, split=split, seed=seed))
        ensure_output_dir(cfg.out, "--out")
        path = fill_calib_dir(cfg.dataset, cfg.data_root, cfg.count, cfg.out, cfg.split, cfg.seed)
        console.print(f"filled {path} (list {path / 'calib.txt'})", markup=False, highlight=False, soft_wrap=True)

    app.add_typer(calib_app, name="calib")
