"""``danet-edge train``: options -> ``TrainConfig`` -> ``train.train.train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..core.choices import Dataset
from ..model.config import ModelConfig as MC
from ..train.config import TrainConfig as TC
from ..data.config import DataOptions as DO
from ._common import opt, STATE, console

#: The model ``train`` builds by default (``TrainConfig``'s, a ResNet-18), whose fields the model options show.
TRAIN_MODEL = TC().model


def register(app: typer.Typer) -> None:
    """Add ``train`` to the app. Defaults and help come from ``TrainConfig`` and ``ModelConfig``."""


    @app.command("train", epilog="\b\nExamples:\n  danet-edge train  (synthetic scenes)\n  danet-edge train --dataset camvid "
                                 "--data CAMVID --backbone resnet18 --epochs 80 -o runs/camvid\n  ... --resume")
    def train_cmd(
        dataset: Dataset = opt(TC, "dataset", "--dataset", "-d"),
        data: Optional[Path] = typer.Option(None, "--data", help=TC.help("data_root")),
        backbone: str = opt(TRAIN_MODEL, "backbone", "--backbone"),
        epochs: int = opt(TC, "epochs", "--epochs"),
        batch_size: int = opt(TC, "batch_size", "--batch-size", "-b"),
        crop_size: Optional[tuple[int, int]] = opt(TC, "crop_size", "--crop-size"),
        out: Path = typer.Option(Path(TC.default("out_dir")), "--out", "-o", help=TC.help("out_dir")),
        resume: bool = opt(TC, "resume", "--resume"),
        exist_ok: bool = opt(TC, "exist_ok", "--exist-ok"),
        limit_train: Optional[int] = opt(TC, "limit_train", "--limit-train"),
        limit_val: Optional[int] = opt(TC, "limit_val", "--limit-val"),
        output_stride: int = opt(TRAIN_MODEL, "output_stride", "--output-stride"),
        multi_grid: bool = opt(TRAIN_MODEL, "multi_grid", "--multi-grid"),
        deep_stem: bool = opt(TRAIN_MODEL, "deep_stem", "--deep-stem"),
        aux: bool = opt(TRAIN_MODEL, "aux", "--aux"),
        lr: float = opt(TC, "lr", "--lr"),
        weight_decay: float = opt(TC, "weight_decay", "--weight-decay"),
        aux_weight: float = opt(TC, "aux_weight", "--aux-weight"),
        grad_clip: Optional[float] = opt(TC, "grad_clip", "--grad-clip"),
        amp: bool = opt(TC, "amp", "--amp"),
        seed: int = opt(TC, "seed", "--seed"),
        workers: int = opt(TC, "workers", "--workers"),
        backbone_weights: Optional[Path] = typer.Option(None, "--backbone-weights", help=TC.help("backbone_weights")),
        eval_every: int = opt(TC, "eval_every", "--eval-every"),
        devices: int = opt(TC, "devices", "--devices"),
        num_classes: Optional[int] = opt(DO, "num_classes"),
        ignore_index: Optional[int] = opt(DO, "ignore_index"),
        synthetic_size: Optional[tuple[int, int]] = opt(DO, "synthetic_size"),
        progress: bool = opt(TC, "progress", "--progress/--no-progress"),
    ) -> None:
        """Train DANet (SGD, poly lr, multi-loss) and keep last.pt / best.pt (by val mIoU) in OUT."""
        from ..train.train import train

        model = MC(**{**TRAIN_MODEL.to_dict(), "backbone": backbone, "output_stride": output_stride,
                               "multi_grid": multi_grid, "deep_stem": deep_stem, "aux": aux})
        cfg = TC.from_options(locals(), model=model, data_root=str(data) if data else None, out_dir=str(out),
                              backbone_weights=str(backbone_weights) if backbone_weights else None,
                              data_options=DO(num_classes, ignore_index, synthetic_size).to_options(),
                              quiet=STATE["verbosity"] < 0)
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out, "--out")  # a file or a read-only folder: one line before any work
        best = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            console.print(f"best checkpoint: {best}")
