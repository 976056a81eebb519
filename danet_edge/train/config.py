"""Options of the training stage: :class:`TrainConfig` (stored in every checkpoint as ``train_config``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..core.choices import DATASETS, QAT_RECIPES, SPLITS
from ..core.config import CALIB_IMAGES, MAX_CROP_SIDE, Config, check_choice, check_range, option
from ..core.errors import ConfigError
from ..model.config import ModelConfig

__all__ = ["EvalConfig", "TrainConfig", "QAT_CALIB_IMAGES", "QAT_EPOCHS", "QAT_LR", "QAT_OUT_DIR"]

#: Quantization-aware fine-tuning defaults: a few epochs at a tenth of training's base learning rate
#: (NVIDIA's QAT guidance: about 10 % of the original schedule, a small learning rate; measured in NOTES).
QAT_EPOCHS, QAT_LR = 2, 0.001
#: Images a QAT run without ``--calib`` calibrates its initial scales on: drawn from its own training set (as
#: ``calib fill`` draws, class-balanced), as many as export calibrates on by default (ModelOpt's QAT examples
#: calibrate on a slice of the training loader).
QAT_CALIB_IMAGES = CALIB_IMAGES
#: Where a QAT run goes without ``--out``: not ``out_dir``'s default, which holds the float run it starts from
#: (``train`` then ``train --qat ... --weights runs/train/best.pt`` runs with no other option).
QAT_OUT_DIR = "runs/qat"


def _train_model() -> ModelConfig:
    return ModelConfig(backbone="resnet18")


@dataclass
class TrainConfig(Config):
    """Everything a training run needs; stored in every checkpoint (``train_config``).

    Attributes:
        dataset, data_root: data set name (``choices.DATASETS``) and folder.
        model: the DANet to train (default ResNet-18, OS 8); its ``num_classes`` is replaced by the data
            set's class count when training starts.
        epochs, batch_size: ``batch_size`` is the global batch, split over ``devices`` processes.
        crop_size: training crop ``(H, W)`` px; None = the data set's image size.
        lr, momentum, weight_decay, poly_power, head_lr_mult: the optimiser (see ``train``'s docstring).
        aux_weight: weight of the PAM and CAM auxiliary losses (1.0 as official).
        fcn_aux_weight: weight of the FCN aux head's loss (with ``model.aux``; 0.2 as PyTorch-Encoding).
        grad_clip: max global gradient norm, or None.
        amp: mixed precision (CUDA only; checked when training starts).
        seed: fixes initialisation, data order and augmentation.
        workers: DataLoader worker processes.
        out_dir: where checkpoints and metrics go.
        resume: continue from ``out_dir/last.pt`` at the same iteration of the poly schedule; with
            a larger ``epochs`` than before the schedule is stretched to the new length (the lr
            rises again to the new curve's value and decays to 0 at the new end).
        exist_ok: start a new run in an ``out_dir`` that already holds a run (``last.pt``, ``best.pt`` or
            ``metrics.jsonl``), replacing it; without it (or ``resume``) ``train`` refuses such a folder.
        limit_train, limit_val: use only the first N samples.
        backbone_weights: local torchvision ImageNet ResNet file.
        weights: start from this danet-edge checkpoint's weights (fine-tuning; its ``model_config`` must be
            ``model`` with the data set's classes). A QAT checkpoint is refused (``--resume`` continues QAT).
        qat: quantization-aware fine-tuning for this INT8 recipe (``int8-tensorrt`` or ``int8-cpu``): the record of
            where its graph quantizes is given to ``train(cfg, qat_record=...)`` (``export.qat.qat_train`` makes it)
            or read from ``last.pt`` on ``resume``. BatchNorm is frozen; the scales learn at ``lr`` without weight
            decay. Defaults for QAT runs: :data:`QAT_EPOCHS`, :data:`QAT_LR`.
        eval_every: validate every N epochs (and after the last).
        devices: processes (DDP); >1 spawns them unless already under torchrun.
        data_options: extra options for ``data.build_dataset`` (e.g. ``num_classes`` for ``folder``).
        progress: show a progress bar.
        quiet: no bar and no per-iteration lines (the epoch summaries stay).
    """

    dataset: str = option("synthetic", "Data set.")
    data_root: str | None = option(None, "Data set folder (not needed for synthetic).")
    model: ModelConfig = field(default_factory=_train_model)
    epochs: int = option(10, "Epochs.")
    batch_size: int = option(8, "Global batch size (split over --devices).")
    crop_size: tuple[int, int] | None = option(None, "Training crop H W (default: the data set's image size).")
    lr: float = option(0.01, "Base learning rate (the head's is head_lr_mult times it), poly schedule.")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(1e-4, "Weight decay.")
    poly_power: float = option(0.9, "Power of the poly learning-rate schedule.")
    head_lr_mult: float = option(10.0, "Learning-rate multiplier of the head.")
    aux_weight: float = option(1.0, "Weight of the PAM and CAM auxiliary losses.")
    fcn_aux_weight: float = option(0.2, "Weight of the FCN auxiliary head's loss (with --aux).")
    grad_clip: float | None = option(None, "Clip the gradient norm to this value.")
    amp: bool = option(False, "Mixed precision (CUDA only).")
    seed: int = option(0, "Random seed (initialisation, data order, augmentation).")
    workers: int = option(2, "DataLoader worker processes.")
    out_dir: str = option("runs/train", "Output folder (last.pt, best.pt, metrics.jsonl).")
    resume: bool = option(False, "Continue from OUT/last.pt.")
    exist_ok: bool = option(False, "Start a new run in an OUT that already holds one (last.pt, best.pt or "
                                   "metrics.jsonl), replacing it. Without it or --resume, train refuses such an OUT. "
                                   "The flag is named after Ultralytics' exist_ok; where Ultralytics picks a new "
                                   "numbered folder and Lightning warns that the checkpoint folder is not empty, "
                                   "train refuses.")
    limit_train: int | None = option(None, "Use only the first N training images.")
    limit_val: int | None = option(None, "Use only the first N validation images.")
    backbone_weights: str | None = option(None, "Local torchvision ImageNet ResNet weights (.pth).")
    weights: str | None = option(None, "Start from this danet-edge checkpoint's weights (fine-tuning).")
    qat: str | None = option(None, "Quantization-aware fine-tuning for this INT8 recipe: int8-tensorrt or int8-cpu "
                                   "(needs --weights, a float checkpoint).")
    eval_every: int = option(1, "Validate every N epochs.")
    devices: int = option(1, "Processes (DDP); under torchrun the launcher decides.")
    data_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = option(True, "Progress bar (--no-progress: plain log lines).")
    quiet: bool = False

    def validate(self) -> None:
        check_choice("data set", self.dataset, DATASETS)
        if self.dataset != "synthetic" and not self.data_root:
            raise ConfigError(f"--data is required for data set {self.dataset!r}")
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        for name in ("epochs", "batch_size", "eval_every", "devices"):
            check_range(name.replace("_", "-"), getattr(self, name), 1)
        if self.batch_size % self.devices:
            raise ConfigError(f"batch size {self.batch_size} is not divisible by {self.devices} devices")
        if self.batch_size // self.devices < 2:
            raise ConfigError("each process needs a batch of at least 2 (BatchNorm)")
        for name in ("lr", "momentum", "weight_decay", "poly_power", "head_lr_mult", "aux_weight", "fcn_aux_weight"):
            check_range(f"--{name.replace('_', '-')}", getattr(self, name), 0, integer=False)  # finite, >= 0
        check_range("--grad-clip", self.grad_clip, optional=True, integer=False)
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not self.momentum < 1:
            raise ConfigError(f"momentum must be in 0..1 (exclusive), got {self.momentum}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"grad clip must be > 0, got {self.grad_clip}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 16
                                           or max(self.crop_size) > MAX_CROP_SIDE):
            raise ConfigError(f"--crop-size must be two sizes H W in 16..{MAX_CROP_SIDE}, got {self.crop_size}")
        check_range("workers", self.workers, 0)
        if self.qat is not None:
            check_choice("--qat recipe", self.qat, QAT_RECIPES)
        if self.qat is not None and not (self.weights or self.resume):
            raise ConfigError("--qat starts from a trained float checkpoint: give --weights CHECKPOINT")
        if self.qat is not None and self.amp:
            raise ConfigError("--qat runs in FP32 (the fake quantization is the reduced precision); drop --amp")

    def model_config(self, num_classes: int) -> ModelConfig:
        """The model to build: ``model`` with the data set's class count."""
        return ModelConfig(**{**self.model.to_dict(), "num_classes": num_classes})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_size"] = list(self.crop_size) if self.crop_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Read ``train_config`` back (a nested ``model``, or the flat model fields of 0.1 checkpoints)."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        model = d.get("model") if isinstance(d.get("model"), dict) else \
            {k: d[k] for k in ("backbone", "output_stride", "multi_grid", "deep_stem", "aux") if k in d}
        kw["model"] = ModelConfig.from_dict({**_train_model().to_dict(), **model})
        if kw.get("crop_size") is not None:
            kw["crop_size"] = tuple(kw["crop_size"])
        return cls(**kw)




@dataclass
class EvalConfig(Config):
    """Options of ``danet-edge eval`` (``train.evaluate.evaluate``).

    Attributes:
        dataset, data_root, split: the data set, its folder (not needed for synthetic) and the split.
        multi_scale, flip: average the softmax over scales 0.5..1.75 / the mirrored image (the paper's MS and
            flip testing, DANet section 4.2.1). limit: evaluate only the first N images (None: all).
        multi_grid: official checkpoints only: trained with multi-grid (the weights cannot tell).
    """

    dataset: str = option("synthetic", "Data set.")
    data_root: str | None = option(None, "Data set folder (not needed for synthetic).")
    split: str = option("val", "Split to evaluate.")
    multi_scale: bool = option(False, "Average over scales 0.5-1.75 (paper MS).")
    flip: bool = option(False, "Also average the left-right mirrored image.")
    limit: int | None = option(None, "Evaluate only the first N images.")
    multi_grid: bool = option(False, "Official checkpoints only: trained with multi-grid.")

    def validate(self) -> None:
        check_choice("data set", self.dataset, DATASETS)
        check_choice("split", self.split, SPLITS)
        check_range("--limit", self.limit, 1, optional=True)
        if self.dataset != "synthetic" and not self.data_root:
            raise ConfigError(f"--data is required for data set {self.dataset!r}")
