"""``danet-edge export``: options (default and help from ``ExportConfig``) -> ``export_model``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import CalibMethod, Dataset, Split, Target, choice_enum
from ..export.config import ExportConfig as EC
from ..graph.boards import BOARD_MEMORY_GIB
from ..model.forms import EXPORT_FORMS
from ._common import check_outputs, console, info, opt


def _recipe_names() -> list[str]:
    from ..export.recipes import RECIPES

    return list(RECIPES)


def register(app: typer.Typer) -> None:
    """Add ``export`` to ``app``."""

    @app.command("export", epilog="\b\nExamples:\n  danet-edge export runs/camvid/best.pt --fp16 --int8 --calib calib/\n  "
                                   "danet-edge export best.pt --imgsz 512 1024 --int8 --target cpu -o export/cpu\n  "
                                   "danet-edge export best.pt --int8 --max-miou-drop 0.3 --dataset camvid "
                                   "--data CAMVID (keeps the most sensitive layers in FP16)\n  "
                                   "danet-edge export best.pt --imgsz 1024 2048 --fp16 (PAM chunked to fit an Orin Nano)")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="danet-edge or official DANet checkpoint (.pt/.pth)."),
        imgsz: Optional[tuple[int, int]] = opt(EC, "imgsz", "--imgsz"),
        batch: int = opt(EC, "batch", "--batch"),
        fp16: bool = opt(EC, "fp16", "--fp16"),
        int8: bool = opt(EC, "int8", "--int8"),
        recipes: list[choice_enum("Recipe", _recipe_names())] = opt(EC, "recipes", "--recipe"),  # type: ignore[valid-type]
        calib: Optional[Path] = opt(EC, "calib", "--calib"),
        calib_method: Optional[CalibMethod] = opt(EC, "calib_method", "--calib-method"),
        calib_size: Optional[int] = opt(EC, "calib_size", "--calib-size"),
        seed: int = opt(EC, "seed", "--seed"),
        target: Target = opt(EC, "target", "--target"),
        opset: Optional[int] = opt(EC, "opset", "--opset"),
        engine: bool = opt(EC, "engine", "--engine"),
        fused_io: bool = opt(EC, "fused_io", "--fused-io/--logits"),
        include_attention: bool = opt(EC, "include_attention", "--include-attention"),
        attention: choice_enum("AttentionForm", ("auto", *EXPORT_FORMS)) = opt(  # type: ignore[valid-type]
            EC, "attention", "--attention"),
        attention_chunks: Optional[int] = opt(EC, "attention_chunks", "--attention-chunks"),
        jetson: choice_enum("Jetson", tuple(BOARD_MEMORY_GIB)) = opt(EC, "jetson", "--jetson"),  # type: ignore[valid-type]
        memory_limit_mib: Optional[float] = opt(EC, "memory_limit_mib", "--memory-limit-mib"),
        out: Optional[Path] = opt(EC, "out", "--out", "-o"),
        min_agreement: Optional[float] = opt(EC, "min_agreement", "--min-agreement"),
        max_miou_drop: Optional[float] = opt(EC, "max_miou_drop", "--max-miou-drop"),
        dataset: Optional[Dataset] = opt(EC, "dataset", "--dataset", "-d", "--budget-dataset"),
        data: Optional[Path] = opt(EC, "data", "--data", "--budget-data"),
        split: Split = opt(EC, "split", "--split", "--budget-split"),
        budget_images: int = opt(EC, "budget_images", "--budget-images"),
        reference_images: Optional[int] = opt(EC, "reference_images", "--reference-images"),
    ) -> None:
        """Export CHECKPOINT to verified static-shape ONNX: FP32, and FP16 / INT8 Q/DQ / engine on request."""
        from ..export.export import export_model

        cfg = EC.from_options(locals())
        check_outputs(out=cfg.out_dir(checkpoint))  # before any work
        result = export_model(checkpoint, cfg, log=info)
        for a in result.artifacts:
            console.print(f"{a.manifest.precision:5s} {a.path}", markup=False, highlight=False, soft_wrap=True)
