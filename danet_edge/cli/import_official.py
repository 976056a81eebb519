"""``danet-edge import-official``: an official DANet / PyTorch-Encoding checkpoint -> a danet-edge checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import choice_enum
from ._common import console


def register(app: typer.Typer) -> None:
    """Add ``import-official`` to the app."""

    from ..train.config import TrainConfig

    tc = TrainConfig()
    mc = tc.model

    @app.command("import-official")
    def import_official_cmd(
        checkpoint: Path = typer.Argument(..., help="Official DANet / PyTorch-Encoding checkpoint (.pth)."),
        out: Path = typer.Option(..., "--out", "-o", help="danet-edge checkpoint to write (.pt)."),
        multi_grid: bool = typer.Option(mc.multi_grid, "--multi-grid", help="Trained with --multi-grid "
                                        "(layer4 4, 8, 16); the released Cityscapes DANet-101 was. Weights cannot tell."),
        output_stride: int = typer.Option(mc.output_stride, "--output-stride", help="Output stride it was trained with."),
        dataset: Optional[choice_enum("OfficialDataset", ("camvid", "cityscapes"))] = typer.Option(  # type: ignore[valid-type]
            None, "--dataset", help="Take class names and palette from this data set."),
        imgsz: Optional[tuple[int, int]] = typer.Option(None, "--imgsz", help="Default export size H W."),
    ) -> None:
        """Convert an official DANet checkpoint once; export, check and infer then need no extra options."""
        from ..model.checkpoint import import_official
        from ..core.palettes import STANDARD_CLASSES

        from ..core.utils import ensure_output_file

        ensure_output_file(out, "--out")
        classes, palette = STANDARD_CLASSES[dataset.value] if dataset else (None, None)
        path = import_official(checkpoint, out, multi_grid, output_stride, classes, palette, imgsz)
        console.print(f"wrote {path}")
