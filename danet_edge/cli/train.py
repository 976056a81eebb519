"""``danet-edge train``: options -> ``TrainConfig`` -> ``train.train.train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..core.choices import CalibMethod, Dataset, choice_enum, QAT_RECIPES
from ..export.config import ExportConfig as EC
from ..model.config import ModelConfig as MC
from ..train.config import QAT_CALIB_IMAGES, QAT_EPOCHS, QAT_LR, QAT_OUT_DIR, TrainConfig as TC
from ..data.config import DataOptions as DO
from ._common import opt, STATE, console

#: The model ``train`` builds by default (``TrainConfig``'s, a ResNet-18), whose fields the model options show.
TRAIN_MODEL = TC().model
QatRecipe = choice_enum("QatRecipe", QAT_RECIPES)


def register(app: typer.Typer) -> None:
    """Add ``train`` to the app. Defaults and help come from ``TrainConfig`` and ``ModelConfig``."""


    @app.command("train", epilog="\b\nExamples:\n  danet-edge train  (synthetic scenes)\n  danet-edge train --dataset camvid "
                                 "--data CAMVID --backbone resnet18 --epochs 80 -o runs/camvid\n  ... --resume\n"
                                 "  danet-edge train --qat int8-tensorrt --weights runs/camvid/best.pt --dataset camvid "
                                 "--data CAMVID -o runs/camvid_qat  (quantization-aware fine-tuning)")
    def train_cmd(
        ctx: typer.Context,
        dataset: Dataset = opt(TC, "dataset", "--dataset", "-d"),
        data: Optional[Path] = typer.Option(None, "--data", help=TC.help("data_root")),
        backbone: str = opt(TRAIN_MODEL, "backbone", "--backbone"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help=f"{TC.help('epochs')} [default: "
                                             f"{TC.default('epochs')}; {QAT_EPOCHS} with --qat]"),
        batch_size: int = opt(TC, "batch_size", "--batch-size", "-b"),
        crop_size: Optional[tuple[int, int]] = opt(TC, "crop_size", "--crop-size"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"{TC.help('out_dir')} [default: "
                                           f"{TC.default('out_dir')}; {QAT_OUT_DIR} with --qat]"),
        resume: bool = opt(TC, "resume", "--resume"),
        exist_ok: bool = opt(TC, "exist_ok", "--exist-ok"),
        limit_train: Optional[int] = opt(TC, "limit_train", "--limit-train"),
        limit_val: Optional[int] = opt(TC, "limit_val", "--limit-val"),
        output_stride: int = opt(TRAIN_MODEL, "output_stride", "--output-stride"),
        multi_grid: bool = opt(TRAIN_MODEL, "multi_grid", "--multi-grid"),
        deep_stem: bool = opt(TRAIN_MODEL, "deep_stem", "--deep-stem"),
        aux: bool = opt(TRAIN_MODEL, "aux", "--aux"),
        lr: Optional[float] = typer.Option(None, "--lr", help=f"{TC.help('lr')} [default: {TC.default('lr')}; "
                                           f"{QAT_LR} with --qat]"),
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
        weights: Optional[Path] = typer.Option(None, "--weights", help=TC.help("weights")),
        qat: Optional[QatRecipe] = typer.Option(None, "--qat", help=TC.help("qat") + " Defaults then: "
                                                f"--epochs {QAT_EPOCHS}, --lr {QAT_LR}."),
        calib: Optional[Path] = typer.Option(None, "--calib", help="--qat: calibration folder of the initial "
                                             f"scales (default: {QAT_CALIB_IMAGES} images drawn from the training "
                                             "set, class-balanced as `calib fill` draws)."),
        calib_size: Optional[int] = typer.Option(None, "--calib-size", help="--qat: calibration images (default: "
                                                 f"{QAT_CALIB_IMAGES}, from --calib or the training set)."),
        calib_method: Optional[CalibMethod] = opt(EC, "calib_method", "--calib-method"),
        imgsz: Optional[tuple[int, int]] = typer.Option(None, "--imgsz", help="--qat: the size of the graph it "
                                                        "simulates (default: the checkpoint's)."),
    ) -> None:
        """Train DANet (SGD, poly lr, multi-loss) and keep last.pt / best.pt (by val mIoU) in OUT; with --qat,
        fine-tune a trained checkpoint with INT8 simulated where the recipe's graph quantizes."""
        from ..core.errors import ConfigError
        from ..train.train import train

        epochs = epochs if epochs is not None else (QAT_EPOCHS if qat is not None else TC.default("epochs"))
        lr = lr if lr is not None else (QAT_LR if qat is not None else TC.default("lr"))
        out = out if out is not None else Path(QAT_OUT_DIR if qat is not None else TC.default("out_dir"))
        if qat is None:
            for flag, value in (("--calib", calib), ("--calib-size", calib_size), ("--calib-method", calib_method),
                                ("--imgsz", imgsz)):
                if value is not None:
                    raise ConfigError(f"{flag} sets up --qat; add --qat RECIPE or drop {flag}")
        else:  # QAT fine-tunes the model of --weights as it is: a model option given would be silently replaced
            for name in ("backbone", "output_stride", "multi_grid", "deep_stem", "aux", "backbone_weights"):
                if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE":
                    flag = "--" + name.replace("_", "-")
                    raise ConfigError(f"{flag}: --qat fine-tunes the model of --weights as it is (its backbone, "
                                      f"output stride and heads); drop {flag}")

        model = MC(**{**TRAIN_MODEL.to_dict(), "backbone": backbone, "output_stride": output_stride,
                               "multi_grid": multi_grid, "deep_stem": deep_stem, "aux": aux})
        cfg = TC.from_options(locals(), model=model, data_root=str(data) if data else None, out_dir=str(out),
                              backbone_weights=str(backbone_weights) if backbone_weights else None,
                              data_options=DO(num_classes, ignore_index, synthetic_size).to_options(),
                              quiet=STATE["verbosity"] < 0, epochs=epochs, lr=lr,
                              weights=str(weights) if weights else None, qat=None)
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out, "--out")  # a file or a read-only folder: one line before any work
        if qat is not None:
            from ..export.qat_train import qat_train

            if weights is None:
                raise ConfigError("--qat starts from a trained float checkpoint: give --weights CHECKPOINT")
            best = qat_train(weights, qat.value, cfg, calib, calib_size,
                             calib_method.value if calib_method else None, imgsz, log=console.print)
        else:
            best = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            console.print(f"best checkpoint: {best}")
