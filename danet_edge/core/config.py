"""Option sets of the stages, validated in one style, importable without PyTorch or ONNX.

**The one style.** Every stage's options are a dataclass deriving from :class:`Config`: its
``validate()`` raises :class:`~danet_edge.core.errors.ConfigError` naming the option, ``__post_init__``
calls it (so an invalid config cannot be built, nor made with ``dataclasses.replace``), and the stage
function calls it again on entry (dataclasses stay mutable). Checks that depend on the machine or the
artifact (a CUDA device for ``--amp``, TensorRT's version in ``engine_plan.plan_build``, the
checkpoint's output stride in ``export``) belong to the stage, not to the config.

**Defaults in one place.** The command line takes every default from these classes with
:meth:`Config.default` (no instance is built, nothing heavy is imported), so ``--help`` and the library
cannot disagree.

This module holds the configs of the stages whose own modules import PyTorch or ONNX (model, train,
export, check); the light stages keep theirs beside the code (``engine_plan.EngineConfig``,
``runtime.pipeline.InferConfig``, ``bench.BenchConfig``, ``demo.DemoConfig``), on the same base class.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .choices import CALIB_METHODS, DATASETS, OPSET_RANGE, SPLITS, TARGETS
from .errors import ConfigError
from .manifest import PRECISIONS
from ..export.recipes import get_recipe

__all__ = ["Config", "ModelConfig", "TrainConfig", "ExportConfig", "CheckConfig", "check_range", "check_choice",
           "check_threads", "CALIB_DIR", "CALIB_IMAGES", "EXPORT_DIR", "MAX_CROP_SIDE"]

AttentionImpl = Literal["sdpa", "explicit"]

#: The project's default folders (relative to the working directory) and calibration draw, shared by
#: ``export``, ``calib fill`` and ``build --int8-calib``.
CALIB_DIR = Path("calib")
EXPORT_DIR = Path("export")
CALIB_IMAGES = 100
#: Largest training crop side (px); the memory a crop needs is checked against the machine when training starts.
MAX_CROP_SIDE = 8192


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                optional: bool = False, integer: bool = True) -> None:
    """Raise ConfigError unless ``value`` is a number (an int when ``integer``) in ``lo..hi`` (inclusive).

    ``optional`` lets None through. ``name`` is the option as the user typed it (``--batch``).
    """
    if value is None and optional:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)) \
            or (isinstance(value, float) and not math.isfinite(value)):
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {value}")
    if lo is not None and value < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {value}")


def check_threads(name: str, value: int | None, lo: int = 1) -> None:
    """Raise ConfigError unless ``value`` (None lets through) is a thread count in ``lo..4 x the CPUs here``.

    A stage check (it depends on the machine): far more threads than cores only adds switching, and
    a count like 100000 made ONNX Runtime hang creating them.
    """
    import os

    check_range(name, value, lo, 4 * (os.cpu_count() or 1), optional=True)


def check_choice(name: str, value: Any, choices: tuple[str, ...] | list[str], optional: bool = False) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices`` (listed in the message)."""
    if value is None and optional:
        return
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


class Config:
    """Base of every stage's options: validated at construction, defaults readable without an instance."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError on a value that cannot work; the message names the option."""

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (a ``default_factory`` is called), for the command line's options."""
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == name:
                if f.default is not MISSING:
                    return f.default
                if f.default_factory is not MISSING:
                    return f.default_factory()
                raise ConfigError(f"{cls.__name__}.{name} has no default")
        raise ConfigError(f"{cls.__name__} has no field {name!r}")


@dataclass(frozen=True)
class ModelConfig(Config):
    """Everything needed to rebuild a DANet; stored in every checkpoint and manifest.

    The backbone name is checked against ``model.backbone.BACKBONE_REGISTRY`` when the model is built
    (``build_backbone``), so that reading a config never imports PyTorch.

    Attributes:
        backbone: a registered backbone (resnet18, resnet34, resnet50, resnet101 built in).
        num_classes: K, the number of output channels (logits), 1..255 (labels are uint8).
        output_stride: 8 (paper) or 16 (4x fewer PAM positions, 16x smaller attention map).
        multi_grid: layer4 dilations (4, 8, 16) at OS 8, as the released Cityscapes model.
        deep_stem: PyTorch-Encoding's three-conv stem (the official default; the released
            Cityscapes model was trained with ``--no-deepstem``).
        aux: FCN auxiliary head on layer3 (training only).
        attention: PAM implementation, ``"sdpa"`` or ``"explicit"`` (same result).
    """

    backbone: str = "resnet50"
    num_classes: int = 19
    output_stride: int = 8
    multi_grid: bool = False
    deep_stem: bool = False
    aux: bool = False
    attention: AttentionImpl = "sdpa"

    def validate(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"backbone must be a name, got {self.backbone!r}")
        check_range("num_classes", self.num_classes, 1, 255)
        check_choice("output stride", self.output_stride, (8, 16))  # type: ignore[arg-type]
        check_choice("attention", self.attention, ("sdpa", "explicit"))
        for key in ("multi_grid", "deep_stem", "aux"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"model config field {key!r} must be true or false")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ModelConfig":
        """Build from a dict (checkpoint or manifest), ignoring unknown keys.

        Raises:
            ConfigError: not a dict, or a field with an invalid value or type.
        """
        if not isinstance(d, dict):
            raise ConfigError("model config must be a JSON object")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


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
        eval_every: validate every N epochs (and after the last).
        devices: processes (DDP); >1 spawns them unless already under torchrun.
        data_options: extra options for ``data.build_dataset`` (e.g. ``num_classes`` for ``folder``).
        progress: show a progress bar.
        quiet: no bar and no per-iteration lines (the epoch summaries stay).
    """

    dataset: str = "synthetic"
    data_root: str | None = None
    model: ModelConfig = field(default_factory=_train_model)
    epochs: int = 10
    batch_size: int = 8
    crop_size: tuple[int, int] | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    head_lr_mult: float = 10.0
    aux_weight: float = 1.0
    fcn_aux_weight: float = 0.2
    grad_clip: float | None = None
    amp: bool = False
    seed: int = 0
    workers: int = 2
    out_dir: str = "runs/train"
    resume: bool = False
    exist_ok: bool = False
    limit_train: int | None = None
    limit_val: int | None = None
    backbone_weights: str | None = None
    eval_every: int = 1
    devices: int = 1
    data_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
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
class ExportConfig(Config):
    """Options of ``danet-edge export`` (None = not given; defaults are resolved in ``export.export_model``).

    Attributes:
        imgsz: ``(H, W)`` in pixels, multiples of the output stride (default: checkpoint's data.image_size).
        batch: static batch size N, 1..64.
        fp16, int8: also write the FP16 / INT8 Q/DQ graph (the ``fp16`` / ``int8-<target>`` recipes).
        recipes: more precision recipes by name (``recipes.RECIPES``), after those.
        calib: calibration folder (default :data:`CALIB_DIR` with ``int8``; also the verification images); refused
            unless a recipe that calibrates is asked for (``int8`` or such a recipe).
        calib_method: ``entropy`` (default), ``percentile`` or ``minmax``; INT8 only.
        calib_size: images drawn from the calibration folder (default :data:`CALIB_IMAGES`); INT8 only.
        seed: seed of that draw and of synthetic verification images.
        target: ``tensorrt`` (TensorRT rules enforced, symmetric Q/DQ) or ``cpu`` (rules reported, uint8 Q/DQ);
            ``cpu`` is refused unless a recipe for the CPU target is asked for (``int8`` or ``int8-cpu``).
        opset: ONNX opset, in TensorRT 10.3's range (11..20 here; Resize ``align_corners`` needs 11).
        engine: also build the TensorRT engine (needs tensorrt and ``danet_edge.trt.build``).
        fused_io: uint8 NHWC input, class-index output (``graph_io.fuse_io``), the default: at 512x1024 with
            19 classes it saves about 69 ms of host work per frame (``benchmarks/host_io.py``); False keeps
            logits graphs (float32 NCHW in, logits out) for logit-level checks.
        include_attention: quantize the attention MatMuls too (INT8 only).
        memory_limit_mib: warn when PAM's attention map needs more (MiB).
        out: output folder (default ``EXPORT_DIR/<checkpoint stem>/``).
        tolerance: FP32 ONNX vs PyTorch relative L2 limit.
        fp16_tolerance: FP16 vs FP32 ONNX relative L2 limit.
        verify_images: images used for verification.
        min_agreement, max_miou_drop: an accuracy budget for the INT8 graphs (``sensitivity.fit_budget``):
            least pixel agreement with the FP32 graph (%) and/or largest mIoU drop (points, needs
            ``dataset``); the most sensitive layers are kept in high precision until it holds.
        dataset, data, split: labelled images (``data.build_dataset``) the budget is measured on and the
            reference bundle holds (default: ``sensitivity.export_images``).
        budget_images: how many images the budget and the sensitivity ranking use.
        reference_images: images in the reference bundle ``<out>/reference/`` that ``check`` reads on a device
            without PyTorch (0: no bundle).
    """

    imgsz: tuple[int, int] | None = None
    batch: int = 1
    fp16: bool = False
    int8: bool = False
    recipes: tuple[str, ...] = ()
    calib: Path | None = None
    calib_method: str | None = None
    calib_size: int | None = None
    seed: int = 0
    target: str = "tensorrt"
    opset: int = 17
    engine: bool = False
    fused_io: bool = True
    include_attention: bool = False
    memory_limit_mib: float = 1024.0
    out: Path | None = None
    tolerance: float = 1e-4
    fp16_tolerance: float = 5e-2
    verify_images: int = 2
    min_agreement: float | None = None
    max_miou_drop: float | None = None
    dataset: str | None = None
    data: Path | None = None
    split: str = "val"
    budget_images: int = 16
    reference_images: int = 16

    def validate(self) -> None:
        check_range("--batch", self.batch, 1, 64)
        check_choice("--target", self.target, TARGETS)
        check_range("--opset", self.opset, max(11, OPSET_RANGE[0]), OPSET_RANGE[1])
        if not self.int8 and not any(get_recipe(n).needs_calibration for n in self.recipes):
            for name, value in (("--calib-method", self.calib_method), ("--calib-size", self.calib_size)):
                if value is not None:
                    raise ConfigError(f"{name} applies to INT8 only; add --int8 or drop {name}")
            if self.include_attention:
                raise ConfigError("--include-attention applies to INT8 only; add --int8 or drop it")
        check_choice("--calib-method", self.calib_method, CALIB_METHODS, optional=True)
        check_range("--calib-size", self.calib_size, 1, 100_000, optional=True)
        if self.engine and self.int8 and self.target == "cpu":
            raise ConfigError("--engine builds a TensorRT engine; --target cpu makes a graph for ONNX Runtime on CPU")
        check_range("--memory-limit-mib", self.memory_limit_mib, integer=False)
        if self.memory_limit_mib <= 0:
            raise ConfigError(f"--memory-limit-mib must be positive, got {self.memory_limit_mib}")
        if self.imgsz is not None and (len(self.imgsz) != 2 or min(self.imgsz) < 1 or max(self.imgsz) > 8192):
            raise ConfigError(f"--imgsz must be two sizes H W in 1..8192, got {self.imgsz}")
        check_range("verify images", self.verify_images, 1, 1000)
        check_range("--min-agreement", self.min_agreement, 0, 100, optional=True, integer=False)
        check_range("--max-miou-drop", self.max_miou_drop, 0, 100, optional=True, integer=False)
        check_range("--budget-images", self.budget_images, 1, 1000)
        check_range("--reference-images", self.reference_images, 0, 1000)
        check_choice("--dataset", self.dataset, DATASETS, optional=True)
        check_choice("--split", self.split, SPLITS)
        budget = self.min_agreement is not None or self.max_miou_drop is not None
        if budget and not self.int8:
            raise ConfigError("an accuracy budget (--min-agreement / --max-miou-drop) applies to INT8: add --int8")
        if self.max_miou_drop is not None and self.dataset is None:
            raise ConfigError("--max-miou-drop needs labelled images: give --dataset (and --data)")
        if self.dataset not in (None, "synthetic") and self.data is None:
            raise ConfigError(f"--dataset {self.dataset} needs --data DIR")
        recipes = [get_recipe(name) for name in self.recipe_names()]  # an unknown name fails here, before writing
        if self.target == "cpu" and not any(r.target == "cpu" for r in recipes):
            raise ConfigError("--target cpu selects the INT8 graph for ONNX Runtime on CPU: add --int8 "
                              "(or --recipe int8-cpu), or drop --target cpu")
        if self.calib is not None and not any(r.needs_calibration for r in recipes):
            raise ConfigError("--calib is the calibration folder of INT8: add --int8 (or a recipe that calibrates), "
                              "or drop --calib")

    def recipe_names(self) -> list[str]:
        """The recipes asked for, in order: ``--fp16``, ``--int8`` (for ``--target``), then ``recipes``."""
        names = (["fp16"] if self.fp16 else []) + ([f"int8-{self.target}"] if self.int8 else []) + list(self.recipes)
        return list(dict.fromkeys(names))


@dataclass
class CheckConfig(Config):
    """Options of ``checks.check_artifacts``.

    Attributes:
        limit: evaluate at most this many images (None: all).
        thresholds: limits per precision (``fp32``/``fp16``/``int8``) given by the user, as
            ``thresholds.Thresholds``; they win over a recipe's own thresholds. Precisions not given use the
            artifact's recipe's, else ``thresholds.DEFAULT_THRESHOLDS``.
        json_path: write the report as JSON here (atomic) when set.
        report_dir: write ``report.md`` and one disagreement PNG per artifact here when set.
        pictures: frames per artifact in the disagreement picture (those with most disagreement).
        backend: backend name passed to ``open_backend`` (None: from the file suffix).
    """

    limit: int | None = None
    thresholds: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None
    report_dir: Path | None = None
    pictures: int = 3
    backend: str | None = None

    def validate(self) -> None:
        check_range("limit", self.limit, 1, optional=True)
        check_range("pictures", self.pictures, 0, 64)
        unknown = set(self.thresholds) - set(PRECISIONS)
        if unknown:
            raise ConfigError(f"thresholds for unknown precision(s) {sorted(unknown)}; use {list(PRECISIONS)}")
