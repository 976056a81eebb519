"""``danet-edge export`` and ``danet-edge calib fill``: options -> config dataclass -> one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.choices import DEFAULT_CALIB_METHOD, CalibMethod, Dataset, Split, Target, choice_enum
from ._common import console, info


def _recipe_names() -> list[str]:
    from ..export.recipes import RECIPES

    return list(RECIPES)


def register(app: typer.Typer) -> None:
    """Add ``export`` and the ``calib`` group to ``app``."""

    from ..core.config import CALIB_DIR, CALIB_IMAGES
    from ..export.config import ExportConfig

    ec = ExportConfig()

    @app.command("export", epilog="\b\nExamples:\n  danet-edge export runs/camvid/best.pt --fp16 --int8 --calib calib/\n  "
                                   "danet-edge export best.pt --imgsz 512 1024 --int8 --target cpu -o export/cpu\n  "
                                   "danet-edge export best.pt --int8 --max-miou-drop 0.3 --dataset camvid "
                                   "--data CAMVID (keeps the most sensitive layers in FP16)")
    def export_cmd(
        checkpoint: Path = typer.Argument(..., help="danet-edge or official DANet checkpoint (.pt/.pth)."),
        imgsz: Optional[tuple[int, int]] = typer.Option(
            ec.imgsz, "--imgsz", help="Static input size H W, multiples of the output stride (default: the checkpoint's)."),
        batch: int = typer.Option(ec.batch, "--batch", help="Static batch size."),
        fp16: bool = typer.Option(ec.fp16, "--fp16", help="Also write the FP16 graph (FP32 I/O, FP32 attention islands)."),
        int8: bool = typer.Option(ec.int8, "--int8", help="Also write the INT8 Q/DQ graph (calibrated)."),
        recipe: list[choice_enum("Recipe", _recipe_names())] = typer.Option(list(ec.recipes), "--recipe",  # type: ignore[valid-type]
                                         help="More precision recipes by name (repeatable)."),
        calib: Optional[Path] = typer.Option(ec.calib, "--calib", help=f"Calibration folder (default {CALIB_DIR}/ with --int8)."),
        calib_method: Optional[CalibMethod] = typer.Option(ec.calib_method, "--calib-method",
                                                   help=f"Calibration method (default {DEFAULT_CALIB_METHOD})."),
        calib_size: Optional[int] = typer.Option(ec.calib_size, "--calib-size", help=f"Calibration images to draw (default {CALIB_IMAGES})."),
        seed: int = typer.Option(ec.seed, "--seed", help="Seed of the calibration draw."),
        target: Target = typer.Option(ec.target, "--target",
                                   help="tensorrt (symmetric Q/DQ, rules enforced) or cpu (uint8 activations)."),
        opset: int = typer.Option(ec.opset, "--opset", help="ONNX opset (TensorRT 10.3 parses 9..20)."),
        engine: bool = typer.Option(ec.engine, "--engine", help="Also build the TensorRT engine (needs TensorRT)."),
        fused_io: bool = typer.Option(ec.fused_io, "--fused-io/--logits", help="Deployment I/O: uint8 "
                                      "NHWC RGB in, class map out (normalise + argmax on the GPU); --logits: float32 NCHW "
                                      "in, logits out."),
        include_attention: bool = typer.Option(ec.include_attention, "--include-attention",
                                               help="Quantize attention MatMuls too."),
        memory_limit_mib: float = typer.Option(ec.memory_limit_mib, "--memory-limit-mib",
                                               help="Warn above this PAM map size (MiB)."),
        out: Optional[Path] = typer.Option(ec.out, "--out", "-o", help="Output folder (default export/<checkpoint stem>/)."),
        min_agreement: Optional[float] = typer.Option(ec.min_agreement, "--min-agreement", help="INT8 accuracy "
                                                      "budget: least pixel agreement with the FP32 graph (%)."),
        max_miou_drop: Optional[float] = typer.Option(ec.max_miou_drop, "--max-miou-drop", help="INT8 accuracy "
                                                      "budget: largest mIoU drop (points; needs --dataset)."),
        dataset: Optional[Dataset] = typer.Option(ec.dataset, "--dataset", "-d", "--budget-dataset",
                                                  help="Labelled data for the budget and the reference bundle."),
        data: Optional[Path] = typer.Option(ec.data, "--data", "--budget-data", help="Its folder."),
        split: Split = typer.Option(ec.split, "--split", "--budget-split", help="Its split."),
        budget_images: int = typer.Option(ec.budget_images, "--budget-images",
                                          help="Images for the budget and the per-layer sensitivity ranking."),
        reference_images: int = typer.Option(ec.reference_images, "--reference-images",
                                             help="Images in the reference bundle reference/ (0: none)."),
    ) -> None:
        """Export CHECKPOINT to verified static-shape ONNX: FP32, and FP16 / INT8 Q/DQ / engine on request."""
        from ..export.export import export_model

        cfg = ExportConfig(imgsz=tuple(imgsz) if imgsz else None, batch=batch, fp16=fp16, int8=int8,
                           recipes=tuple(r.value for r in recipe), calib=calib,
                           calib_method=calib_method.value if calib_method else None, calib_size=calib_size,
                           seed=seed, target=target.value, opset=opset,
                           engine=engine, fused_io=fused_io, include_attention=include_attention,
                           memory_limit_mib=memory_limit_mib, out=out, min_agreement=min_agreement,
                           max_miou_drop=max_miou_drop, dataset=dataset.value if dataset else None, data=data,
                           split=split.value, budget_images=budget_images, reference_images=reference_images)
        from ..core.config import EXPORT_DIR
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out if out is not None else EXPORT_DIR / checkpoint.stem, "--out")  # before any work
        result = export_model(checkpoint, cfg, log=info)
        for a in result.artifacts:
            console.print(f"{a.manifest.precision:5s} {a.path}", markup=False, highlight=False, soft_wrap=True)

    @app.command("cost", epilog="\b\nExamples:\n  danet-edge cost export/m/model_int8_trt.onnx\n  "
                                 "danet-edge cost export/m/*.onnx --json cost.json")
    def cost_cmd(
        graphs: list[Path] = typer.Argument(..., help="Static-shape ONNX graphs."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the costs (with every node) as JSON here."),
    ) -> None:
        """Compute by precision: GFLOP and MiB moved per precision, and a latency lower bound on Jetson GPUs."""
        import onnx
        from rich.table import Table

        from ..graph.cost import JETSON_TARGETS, graph_cost
        from ..core.errors import DataError
        from ..core.utils import ensure_output_file, write_json

        if json_out is not None:
            ensure_output_file(json_out, "--json")
        out = {}
        for path in graphs:
            try:
                model = onnx.load(str(path), load_external_data=False)
            except Exception as e:  # noqa: BLE001 - onnx raises several types for a bad file
                raise DataError(f"{path}: not a readable ONNX graph ({type(e).__name__})") from None
            cost = graph_cost(model)
            out[str(path)] = cost.to_dict(nodes=True)
            t = Table(title=f"{path.name}: {cost.total_gflop:.2f} GFLOP (estimate)")
            for col in ("runs at", "GFLOP", "share %", "MiB moved"):
                t.add_column(col, justify="left" if col == "runs at" else "right")
            for p, r in cost.by_precision.items():
                t.add_row(p, f"{r['gflop']:.3f}", f"{r['flop_share_pct']:.2f}", f"{r['mib']:.1f}")
            console.print(t)
            b = Table(title="latency lower bound (roofline on published dense peaks; not a prediction)")
            for col in ("target", "compute ms", "memory ms", "bound ms", "unfused traffic ms"):
                b.add_column(col, justify="left" if col == "target" else "right")
            for name, v in cost.bound_ms.items():
                b.add_row(JETSON_TARGETS[name].name, f"{v['compute_ms']:.2f}", f"{v['memory_ms']:.2f}",
                          f"{v['bound_ms']:.2f}", f"{v['unfused_memory_ms']:.2f}")
            console.print(b)
            if cost.unknown_shapes:
                console.print(f"warning: no static shape for {len(cost.unknown_shapes)} Conv/MatMul nodes")
        if json_out is not None:
            write_json(json_out, {"targets": {k: vars(v) for k, v in JETSON_TARGETS.items()}, "graphs": out})
            console.print(f"JSON: {json_out}")

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
