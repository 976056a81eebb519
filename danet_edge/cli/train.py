"""``danet-edge train``: options -> ``TrainConfig`` -> ``train.train.train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..core.choices import Dataset
from ._common import data_options, STATE, console


def register(app: typer.Typer) -> None:
    """Add ``train`` to the app."""

    from ..model.config import ModelConfig
    from ..train.config import TrainConfig

    tc = TrainConfig()
    mc = tc.model

    @app.command("train", epilog="\b\nExamples:\n  danet-edge train  (synthetic scenes)\n  danet-edge train --dataset camvid "
                                 "--data CAMVID --backbone resnet18 --epochs 80 -o runs/camvid\n  ... --resume")
    def train_cmd(
        dataset: Dataset = typer.Option(tc.dataset, "--dataset", "-d", help="Data set."),
        data: Optional[Path] = typer.Option(None, "--data", help="Data set folder (not needed for synthetic)."),
        backbone: str = typer.Option(mc.backbone, help="Registered backbone: resnet18, resnet34, resnet50, resnet101."),
        epochs: int = typer.Option(tc.epochs, help="Epochs."),
        batch_size: int = typer.Option(tc.batch_size, "--batch-size", "-b", help="Global batch size (split over --devices)."),
        crop_size: Optional[tuple[int, int]] = typer.Option(tc.crop_size, "--crop-size", help="Training crop H W "
                                                            "(default: the data set's image size)."),
        out: Path = typer.Option(Path(tc.out_dir), "--out", "-o", help="Output folder (last.pt, best.pt, metrics.jsonl)."),
        resume: bool = typer.Option(tc.resume, "--resume", help="Continue from OUT/last.pt."),
        exist_ok: bool = typer.Option(tc.exist_ok, "--exist-ok", help="Start a new run in an OUT that already holds "
                                      "one (last.pt, best.pt or metrics.jsonl), replacing it. Without it or --resume, "
                                      "train refuses such an OUT. The flag is named after Ultralytics' exist_ok; where "
                                      "Ultralytics picks a new numbered folder and Lightning warns that the checkpoint "
                                      "folder is not empty, train refuses."),
        limit_train: Optional[int] = typer.Option(tc.limit_train, help="Use only the first N training images."),
        limit_val: Optional[int] = typer.Option(tc.limit_val, help="Use only the first N validation images."),
        output_stride: int = typer.Option(mc.output_stride, help="Output stride: 8 (paper) or 16."),
        multi_grid: bool = typer.Option(mc.multi_grid, "--multi-grid", help="layer4 dilations 4, 8, 16."),
        deep_stem: bool = typer.Option(mc.deep_stem, "--deep-stem", help="Three-conv stem (PyTorch-Encoding)."),
        aux: bool = typer.Option(mc.aux, "--aux", help=f"FCN auxiliary head on layer3 (loss weight {tc.fcn_aux_weight})."),
        lr: float = typer.Option(tc.lr, help=f"Base learning rate (head: {tc.head_lr_mult:g}x), poly schedule."),
        weight_decay: float = typer.Option(tc.weight_decay, help="Weight decay."),
        aux_weight: float = typer.Option(tc.aux_weight, help="Weight of the PAM and CAM auxiliary losses."),
        grad_clip: Optional[float] = typer.Option(tc.grad_clip, help="Clip the gradient norm to this value."),
        amp: bool = typer.Option(tc.amp, "--amp", help="Mixed precision (CUDA only)."),
        seed: int = typer.Option(tc.seed, help="Random seed (initialisation, data order, augmentation)."),
        workers: int = typer.Option(tc.workers, help="DataLoader worker processes."),
        backbone_weights: Optional[Path] = typer.Option(None, help="Local torchvision ImageNet ResNet weights (.pth)."),
        eval_every: int = typer.Option(tc.eval_every, help="Validate every N epochs."),
        devices: int = typer.Option(tc.devices, help="Processes (DDP); under torchrun the launcher decides."),
        num_classes: Optional[int] = typer.Option(None, help="Classes of a 'folder' data set without classes.txt."),
        ignore_index: Optional[int] = typer.Option(None, help="Ignore index of a 'folder' data set (default 255)."),
        synthetic_size: Optional[tuple[int, int]] = typer.Option(None, help="Image size H W of the synthetic data."),
        no_progress: bool = typer.Option(not tc.progress, "--no-progress", help="No progress bar (plain log lines)."),
    ) -> None:
        """Train DANet (SGD, poly lr, multi-loss) and keep last.pt / best.pt (by val mIoU) in OUT."""
        from ..train.train import train

        model = ModelConfig(**{**mc.to_dict(), "backbone": backbone, "output_stride": output_stride,
                               "multi_grid": multi_grid, "deep_stem": deep_stem, "aux": aux})
        cfg = TrainConfig(
            dataset=dataset.value, data_root=str(data) if data else None, model=model, epochs=epochs,
            batch_size=batch_size, crop_size=tuple(crop_size) if crop_size else None, lr=lr, weight_decay=weight_decay,
            aux_weight=aux_weight, grad_clip=grad_clip, amp=amp, seed=seed, workers=workers, out_dir=str(out),
            resume=resume, exist_ok=exist_ok, limit_train=limit_train, limit_val=limit_val,
            backbone_weights=str(backbone_weights) if backbone_weights else None, eval_every=eval_every,
            devices=devices, data_options=data_options(num_classes, ignore_index, list(synthetic_size or [])),
            progress=not no_progress, quiet=STATE["verbosity"] < 0)
        from ..core.utils import ensure_output_dir

        ensure_output_dir(out, "--out")  # a file or a read-only folder: one line before any work
        best = train(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            console.print(f"best checkpoint: {best}")
