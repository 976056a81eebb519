"""``danet-edge import-official``: an official DANet / PyTorch-Encoding checkpoint -> a danet-edge checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import choice_enum
from ._common import console, opt


def register(app: typer.Typer) -> None:
    """Add ``import-official`` to the app. Defaults and help come from ``ImportConfig``."""
    from ..model.config import ImportConfig as IC

    @app.command("import-official")
    def import_official_cmd(
        checkpoint: Path = typer.Argument(..., help="Official DANet / PyTorch-Encoding checkpoint (.pth)."),
        out: Path = typer.Option(..., "--out", "-o", help="danet-edge checkpoint to write (.pt)."),
        multi_grid: bool = opt(IC, "multi_grid", "--multi-grid"),
        output_stride: int = opt(IC, "output_stride", "--output-stride"),
        dataset: Optional[choice_enum("OfficialDataset", ("camvid", "cityscapes"))] = opt(  # type: ignore[valid-type]
            IC, "dataset", "--dataset"),
        imgsz: Optional[tuple[int, int]] = opt(IC, "image_size", "--imgsz"),
    ) -> None:
        """Convert an official DANet checkpoint once; export, check and infer then need no extra options."""
        from ..model.checkpoint import import_official
        from ..core.utils import ensure_output_file

        ensure_output_file(out, "--out")
        cfg = IC.from_options(dict(multi_grid=multi_grid, output_stride=output_stride, dataset=dataset,
                                   image_size=imgsz))
        path = import_official(checkpoint, out, cfg)
        console.print(f"wrote {path}")
