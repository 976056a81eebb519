"""``danet-edge check``: accuracy of artifacts against the PyTorch reference or a reference bundle (``check.run.check_artifacts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from ..core.errors import ConfigError
from ..core.choices import Dataset, Split, choice_enum
from ..check.config import CheckConfig as CC
from ._common import opt, backend_names, check_outputs
from .render import console, print_check_table


def register(app: typer.Typer) -> None:
    """Add ``check`` to the app. Defaults and help come from ``CheckConfig``."""

    @app.command(epilog="\b\nExamples:\n  danet-edge check export/m/*.onnx -r best.pt --dataset camvid --data CAMVID -o runs/check\n  "
                        "danet-edge check model_int8_trt.engine -r export/m/reference  (on the device, no PyTorch)\n  "
                        "danet-edge check model_int8_trt.engine -r best.pt --min-agreement int8=98.5")
    def check(
        artifacts: list[Path] = typer.Argument(..., help="Artifacts to check: .onnx, .engine/.plan, .pt (with manifests)."),
        reference: Path = typer.Option(..., "--reference", "-r", help="The PyTorch checkpoint the artifacts came "
                                       "from, or the reference bundle export wrote (reference/: no PyTorch needed)."),
        dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help=CC.help("dataset")),
        data: Optional[Path] = opt(CC, "data", "--data"),
        split: Split = opt(CC, "split", "--split"),
        limit: Optional[int] = opt(CC, "limit", "--limit"),
        thresholds: Optional[Path] = typer.Option(None, help="JSON thresholds per precision "
                                                  '({"fp16": {"min_agreement": 99.5, "max_miou_drop": 0.2}}).'),
        min_agreement: list[str] = typer.Option([], help="Minimum agreement (%): '99.0' (all) or 'fp16=99.0'; repeatable."),
        max_miou_drop: list[str] = typer.Option([], help="Largest mIoU drop (points): '0.5' or 'int8=1.5'; repeatable."),
        json_path: Optional[Path] = opt(CC, "json_path", "--json"),
        report_dir: Optional[Path] = opt(CC, "report_dir", "--report", "-o"),
        pictures: int = opt(CC, "pictures", "--pictures"),
        backend: Optional[choice_enum("Backend", backend_names())] = opt(CC, "backend", "--backend"),  # type: ignore[valid-type]
    ) -> None:
        """Accuracy of each artifact against the PyTorch reference: mIoU, agreement, logit error, real precision.

        Exit code 1 when any artifact misses its thresholds (after writing the reports).
        """
        from ..check.run import check_artifacts
        from ..check.thresholds import load_thresholds, parse_threshold_overrides
        from ..export.reference import is_bundle

        if thresholds is not None and (min_agreement or max_miou_drop):
            raise ConfigError("give thresholds either as --thresholds FILE or as --min-agreement/--max-miou-drop, not both")
        th = load_thresholds(thresholds) if thresholds is not None else \
            parse_threshold_overrides(min_agreement, max_miou_drop)
        cfg = CC.from_options(locals(), thresholds=th, dataset=(dataset or "synthetic"))
        check_outputs(json=json_path, report=report_dir)  # before the (long) check: a bad path is one line now
        if is_bundle(reference):
            if dataset is not None or data is not None:
                raise ConfigError("a reference bundle brings its own images: drop --dataset/--data")
            ds = None
        else:
            from ..data.datasets import build_dataset  # torch: a checkpoint reference needs it anyway

            ds = build_dataset(cfg.dataset, cfg.data, split=cfg.split, limit=cfg.limit)
        result = check_artifacts(artifacts, reference, ds, cfg)
        print_check_table(result)
        for label, path in (("JSON", result.json_path), ("report", result.markdown_path),
                            ("HTML report", result.html_path)):
            if path:
                console.print(f"{label}: {path}")
        for w in result.warnings:
            console.print(f"[yellow]warning:[/] {escape(str(w))}")
        result.raise_for_failure()
