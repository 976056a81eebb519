"""Options of the export stage: :class:`ExportConfig` (``danet-edge export``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.choices import CALIB_METHODS, DATASETS, OPSET_RANGE, SPLITS, TARGETS
from ..core.config import Config, check_choice, check_range
from ..core.errors import ConfigError
from ..core.manifest import MAX_IMAGE_SIDE
from .recipes import get_recipe

__all__ = ["ExportConfig"]


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
        min_agreement, max_miou_drop: an accuracy budget for the INT8 graphs (``budget.fit_budget``):
            least pixel agreement with the FP32 graph (%) and/or largest mIoU drop (points, needs
            ``dataset``); the most sensitive layers are kept in high precision until it holds.
        dataset, data, split: labelled images (``data.build_dataset``) the budget is measured on and the
            reference bundle holds (default: ``budget.export_images``).
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
        if self.imgsz is not None and (len(self.imgsz) != 2 or min(self.imgsz) < 1 or max(self.imgsz) > MAX_IMAGE_SIDE):
            raise ConfigError(f"--imgsz must be two sizes H W in 1..{MAX_IMAGE_SIDE}, got {self.imgsz}")
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


