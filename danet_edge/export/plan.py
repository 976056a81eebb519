"""What an export will do, decided and checked before anything is written: :class:`ExportPlan`.

``plan_export(checkpoint, cfg)`` loads the checkpoint, resolves the image size, the recipes, the calibration,
budget and reference-bundle images, the verification frames and the engine builder. A bad option, checkpoint, size or calibration folder fails here,
so the output folder is left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import CALIB_DIR, CALIB_IMAGES, check_stride_multiple
from ..core.errors import CheckpointError, ConfigError, MissingDependencyError
from ..data.calib import CalibrationSet, load_calibration_set
from ..core.utils import ensure_output_names
from ..model.checkpoint import LoadedModel, load_model
from .budget import BudgetImages, budget_images, export_images
from .config import ExportConfig
from .fp32 import synthetic_frames
from .recipes import PrecisionRecipe, get_recipe

__all__ = ["ExportPlan", "plan_export"]


@dataclass
class ExportPlan:
    """Everything an export needs, checked.

    Attributes:
        cfg: the options. loaded: the model (``checkpoint.load_model``). size: ``(H, W)`` pixels, multiples of
            the output stride. out_dir: where the artifacts go. recipes: the precision recipes, in order.
        calib_set: calibration images (None when no recipe calibrates and no ``--calib`` was given).
        budget_set, bundle_set: images for the accuracy budget and the reference bundle (None: not asked).
        frames: verification images ``(H, W, 3) uint8 RGB``.
        warnings: what the user should know (also logged). build_engine: the TensorRT builder with ``--engine``.
    """

    cfg: ExportConfig
    checkpoint: Path
    loaded: LoadedModel
    size: tuple[int, int]
    out_dir: Path
    recipes: list[PrecisionRecipe]
    calib_set: CalibrationSet | None
    budget_set: BudgetImages | None
    bundle_set: BudgetImages | None
    frames: list[np.ndarray]
    warnings: list[str] = field(default_factory=list)
    build_engine: Callable[..., Any] | None = None

    def output_names(self) -> tuple[list[str], list[str]]:
        """``(files, folders)`` the export writes in ``out_dir``: each graph and its ``.json`` sidecar, the
        engines (``--engine``), the budget's sensitivity rankings and the reference bundle's folder (calibration
        caches are named after the graph: ``plan_export`` checks them by pattern)."""
        graphs = ["model.onnx", *(r.file_name for r in self.recipes)]
        files = [*graphs, *(g + ".json" for g in graphs)]
        if self.cfg.engine:
            engines = [str(Path(g).with_suffix(".engine")) for g in graphs]
            files += [*engines, *(e + ".json" for e in engines)]
        if self.budget_set is not None:  # budget.apply_budget's ranking beside each INT8 graph
            files += [f"{Path(r.file_name).stem}.sensitivity{s}" for r in self.recipes if r.needs_calibration
                      for s in (".md", ".png")]
        return files, (["reference"] if self.bundle_set is not None else [])

    def rel_l2_limit(self, recipe: PrecisionRecipe) -> float | None:
        """The relative-L2 limit of ``recipe``'s graph against FP32: ``--fp16-tolerance`` for an FP16 graph
        when given, else the recipe's own ``max_rel_l2`` (``recipes.MAX_REL_L2`` unless stricter)."""
        if self.cfg.fp16_tolerance is not None and recipe.precision == "fp16":
            return self.cfg.fp16_tolerance
        return recipe.max_rel_l2


def _resolve_size(cfg: ExportConfig, loaded: LoadedModel) -> tuple[int, int]:
    size = cfg.imgsz or loaded.data.get("image_size")
    if size is None:
        raise ConfigError(f"{loaded.path}: the checkpoint records no image size; give --imgsz H W")
    h, w = int(size[0]), int(size[1])
    check_stride_multiple("--imgsz", (h, w), loaded.config.output_stride)
    return h, w


def _check_chunks(cfg: ExportConfig, size: tuple[int, int], output_stride: int) -> None:
    """``--attention chunked`` needs a map of at least 2 positions, and ``--attention-chunks`` at most one chunk per
    position (query row): a count the graph cannot have is refused, never written as another.

    Raises:
        ConfigError: one line with the positions at ``size`` and what to give instead.
    """
    if cfg.attention != "chunked":
        return
    positions = (size[0] // output_stride) * (size[1] // output_stride)
    at = f"at {size[0]}x{size[1]} the attention map has {positions} position{'s' if positions > 1 else ''}"
    if positions < 2:
        raise ConfigError(f"--attention chunked: {at}, nothing to chunk; use --attention explicit")
    if cfg.attention_chunks is not None and cfg.attention_chunks > positions:
        raise ConfigError(f"--attention-chunks {cfg.attention_chunks}: {at} (query rows), so at most {positions} "
                          f"chunks; give --attention-chunks {positions} or fewer")


def _engine_builder() -> Callable[..., Any]:
    """``danet_edge.trt.build.build_engine``, imported lazily, or a clear MissingDependencyError."""
    from ..core.optional import import_tensorrt

    import_tensorrt()  # raises MissingDependencyError naming what to install
    try:
        from ..trt.build import build_engine
    except ImportError as e:
        raise MissingDependencyError(f"--engine needs danet_edge.trt.build (the TensorRT builder): {e}") from None
    return build_engine


def _calibration(cfg: ExportConfig, recipes: list[PrecisionRecipe], verify: int,
                 qat: bool = False) -> CalibrationSet | None:
    """The calibration images: ``--calib`` (or the default folder when a recipe calibrates), ``--calib-size``
    of them (default: :data:`CALIB_IMAGES` when calibrating, else the verification count). A QAT checkpoint's
    recipe does not calibrate: ``--calib`` then only gives the verification images."""
    calibrated = any(r.needs_calibration for r in recipes) and not qat
    calib_dir = cfg.calib if cfg.calib is not None else (CALIB_DIR if calibrated else None)
    if calib_dir is None:
        return None
    count = cfg.calib_size if cfg.calib_size is not None else (CALIB_IMAGES if calibrated else verify)
    return load_calibration_set(calib_dir, count, cfg.seed)


def _qat_config(cfg: ExportConfig, loaded: LoadedModel) -> ExportConfig:
    """The options for a QAT checkpoint: its one INT8 recipe (the FP32 graph is written as always), its target,
    no calibration options and no accuracy budget (QAT's graph is INT8 throughout).

    Raises:
        ConfigError: an option that asks for another precision, target, calibration or a budget.
    """
    name = loaded.qat["recipe"]
    recipe = get_recipe(name)
    why = f"{loaded.path} is a QAT checkpoint for {name}"
    others = [n for n in cfg.recipes if n != name]
    if cfg.fp16 or others:
        raise ConfigError(f"{why}: it exports that graph only (drop {'--fp16' if cfg.fp16 else '--recipe ' + others[0]}); "
                          "export the float checkpoint for other precisions")
    if cfg.target == "cpu" and recipe.target != "cpu":
        raise ConfigError(f"{why}: its graph is for TensorRT; drop --target cpu")
    for flag, value in (("--calib-method", cfg.calib_method), ("--calib-size", cfg.calib_size)):
        if value is not None:
            raise ConfigError(f"{why}: its scales are learned, nothing is calibrated; drop {flag}")
    if cfg.min_agreement is not None or cfg.max_miou_drop is not None:
        raise ConfigError(f"{why}: its graph is INT8 throughout; the accuracy budget applies to calibrated (PTQ) "
                          "graphs")
    if cfg.include_attention:
        raise ConfigError(f"{why}, fine-tuned without quantized attention MatMuls; drop --include-attention")
    return replace(cfg, fp16=False, int8=False, recipes=(name,), target=recipe.target or cfg.target)


def plan_export(checkpoint: str | os.PathLike[str], cfg: ExportConfig) -> ExportPlan:
    """Check everything ``cfg`` and the checkpoint ask for and return the plan; writes nothing.

    Raises:
        ConfigError, CheckpointError, CalibrationError, MissingDependencyError: bad input, an output name
            (a calibration cache's included) taken by a folder or a link, more chunks than the map has positions.
    """
    cfg.validate()
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    loaded = load_model(ckpt, qat=True)
    if loaded.qat is not None:
        cfg = _qat_config(cfg, loaded)
    h, w = _resolve_size(cfg, loaded)
    _check_chunks(cfg, (h, w), loaded.config.output_stride)
    recipes = [get_recipe(n) for n in cfg.recipe_names()]
    verify = cfg.verification_images((h, w))
    calib_set = _calibration(cfg, recipes, verify, loaded.qat is not None)
    budget_set = budget_images(cfg, calib_set, loaded.data)
    bundle_count = cfg.bundle_images((h, w))
    bundle_set = export_images(cfg, calib_set, loaded.data, bundle_count) if bundle_count else None
    build_engine = _engine_builder() if cfg.engine else None
    frames = list(calib_set.frames())[:verify] if calib_set is not None else synthetic_frames(verify, (h, w), cfg.seed)

    plan = ExportPlan(cfg, ckpt, loaded, (h, w), cfg.out_dir(ckpt), recipes, calib_set, budget_set, bundle_set,
                      frames, [], build_engine)
    files, folders = plan.output_names()
    caches = ["calib_" + "?" * 16 + "_*.json"] if calib_set is not None and loaded.qat is None and \
        any(r.needs_calibration for r in recipes) else []  # named after a graph not traced yet: all of them
    ensure_output_names(plan.out_dir, "--out", files, folders, caches)  # a link or a folder there: refused now
    return plan
