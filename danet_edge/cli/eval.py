"""``danet-edge eval``: mIoU, per-class IoU and pixel accuracy of a checkpoint on a data set (``train.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import ConfigError
from ..core.choices import Dataset, Split
from .render import eval_table
from ._common import data_options, STATE, console


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the app."""

    @app.command("eval")
    def eval_cmd(
        checkpoint: Path = typer.Argument(..., help="danet-edge or official DANet checkpoint (.pt/.pth)."),
        dataset: Dataset = typer.Option("synthetic", "--dataset", "-d", help="Data set."),
        data: Optional[Path] = typer.Option(None, "--data", help="Data set folder (not needed for synthetic)."),
        split: Split = typer.Option("val", help="Split to evaluate."),
        multi_scale: bool = typer.Option(False, "--multi-scale", help="Average over scales 0.5-1.75 (paper MS)."),
        flip: bool = typer.Option(False, "--flip", help="Also average the left-right mirrored image."),
        limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
        multi_grid: bool = typer.Option(False, "--multi-grid", help="Official checkpoints only: trained with multi-grid."),
        num_classes: Optional[int] = typer.Option(None, help="Classes of a 'folder' data set without classes.txt."),
        ignore_index: Optional[int] = typer.Option(None, help="Ignore index of a 'folder' data set."),
        synthetic_size: Optional[tuple[int, int]] = typer.Option(None, help="Image size H W of the synthetic data."),
    ) -> None:
        """mIoU, per-class IoU and pixel accuracy of a checkpoint, each image at its own size."""
        from ..data.datasets import build_dataset
        from ..train.evaluate import evaluate, write_result

        if dataset != "synthetic" and data is None:
            raise ConfigError(f"--data is required for data set {dataset!r}")
        if json_out is not None:
            from ..core.utils import ensure_output_file

            ensure_output_file(json_out, "--json")
        ds = build_dataset(dataset.value, data, split.value, limit,
                           **data_options(num_classes, ignore_index, list(synthetic_size or [])))
        result = evaluate(checkpoint, ds, multi_scale=multi_scale, flip=flip, multi_grid=multi_grid,
                          show_progress=STATE["verbosity"] >= 0)
        console.print(eval_table(result))
        if json_out is not None:
            write_result(result, json_out)
            console.print(f"wrote {json_out}")
