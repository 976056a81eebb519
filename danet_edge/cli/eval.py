"""``danet-edge eval``: mIoU, per-class IoU and pixel accuracy of a checkpoint on a data set (``train.evaluate``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import Dataset, Split
from .render import eval_table
from ..data.config import DataOptions as DO
from ..train.config import EvalConfig as EC
from ._common import opt, STATE, console


def register(app: typer.Typer) -> None:
    """Add ``eval`` to the app."""

    @app.command("eval")
    def eval_cmd(
        checkpoint: Path = typer.Argument(..., help="danet-edge or official DANet checkpoint (.pt/.pth)."),
        dataset: Dataset = opt(EC, "dataset", "--dataset", "-d"),
        data: Optional[Path] = opt(EC, "data_root", "--data"),
        split: Split = opt(EC, "split"),
        multi_scale: bool = opt(EC, "multi_scale", "--multi-scale"),
        flip: bool = opt(EC, "flip", "--flip"),
        limit: Optional[int] = opt(EC, "limit"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
        multi_grid: bool = opt(EC, "multi_grid", "--multi-grid"),
        num_classes: Optional[int] = opt(DO, "num_classes"),
        ignore_index: Optional[int] = opt(DO, "ignore_index"),
        synthetic_size: Optional[tuple[int, int]] = opt(DO, "synthetic_size"),
    ) -> None:
        """mIoU, per-class IoU and pixel accuracy of a checkpoint, each image at its own size."""
        from ..data.datasets import build_dataset
        from ..train.evaluate import evaluate, write_result

        cfg = EC.from_options(dict(dataset=dataset, data_root=None if data is None else str(data), split=split,
                                   multi_scale=multi_scale, flip=flip, limit=limit, multi_grid=multi_grid))
        if json_out is not None:
            from ..core.utils import ensure_output_file

            ensure_output_file(json_out, "--json")
        ds = build_dataset(cfg.dataset, cfg.data_root, cfg.split, cfg.limit,
                           **DO(num_classes, ignore_index, synthetic_size).to_options())
        result = evaluate(checkpoint, ds, multi_scale=cfg.multi_scale, flip=cfg.flip, multi_grid=cfg.multi_grid,
                          show_progress=STATE["verbosity"] >= 0)
        console.print(eval_table(result))
        if json_out is not None:
            write_result(result, json_out)
            console.print(f"wrote {json_out}")
