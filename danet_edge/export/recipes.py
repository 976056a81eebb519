"""Precision recipes: one registry of the graphs ``export`` can derive from the FP32 ONNX.

A recipe is a row: its name, the precision the graph holds, its file name, how it is made from the
FP32 graph (``convert``), how far it may drift from FP32 at export (``max_rel_l2``, relative L2 of the
logits on the verification images, :data:`MAX_REL_L2` unless the recipe is stricter; ``min_label_kappa``, the
chance-corrected agreement of its class maps with FP32's, a floor every recipe has) and the default ``check`` thresholds for it (pixel agreement with
the PyTorch reference and mIoU drop). ``export`` loops over the recipes asked for; ``check`` reads the
recipe name from the manifest (``extra["recipe"]``) for its default thresholds. A new precision is one
file with a ``convert`` function plus one :func:`register_recipe` call.

Built-in rows: ``fp16`` (FP16 with FP32 islands for the attention, ``precision.convert_fp16``),
``int8-tensorrt`` (symmetric INT8 Q/DQ, TensorRT's explicit quantization) and ``int8-cpu`` (uint8
activations for ONNX Runtime's CPU kernels), both through ``quantize.quantize_int8``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.choices import DEFAULT_CALIB_METHOD
from ..core.errors import ConfigError

if TYPE_CHECKING:  # an annotation only: the command line imports this module without NumPy's image stack
    from ..data.calib import CalibrationSet

__all__ = ["RecipeInput", "RecipeOutput", "PrecisionRecipe", "RECIPES", "register_recipe", "get_recipe",
           "DEFAULT_THRESHOLDS", "MIN_LABEL_KAPPA", "AGREEMENT_BEYOND_DOUBT", "MAX_REL_L2"]

#: The export floor of every recipe: the chance-corrected agreement (Cohen's kappa, ``compare.OutputComparison``)
#: of its class maps with the FP32 graph's on the verification images; 0 is what a map of one class everywhere,
#: or noise, gets. Raw agreement cannot be the floor: a poisoned calibration cache gave 0.06 % on one model and
#: 95 % on another whose maps are mostly one class (kappa about 0 both), while an honest but poor INT8 graph
#: (the 2-epoch R-50, cpu target, -11 mIoU) agrees on 54 % of CamVid val pixels at kappa 0.31.
MIN_LABEL_KAPPA = 0.1

#: Agreement at or above which the kappa floor does not apply: when FP32's maps are almost one class (random
#: test weights: 99.98 %), chance agreement is almost 1 and kappa says nothing about an INT8 graph that differs on
#: 0.016 % of pixels; such a graph is judged by the relative L2 ceiling alone.
AGREEMENT_BEYOND_DOUBT = 0.99

#: The export ceiling of every recipe on the logits' relative L2 error against FP32 (``--fp16-tolerance`` and
#: the FP16 recipe are stricter): 10 is an error ten times the logits themselves (the poisoned cache: 2.6e30);
#: honest graphs measured here stay below 0.75 (a QAT graph against its weights' own FP32 graph: 0.71).
MAX_REL_L2 = 10.0

#: Default ``check`` limits per precision: minimum pixel agreement with the reference (%), largest mIoU
#: drop (points). Recipes carry their own; these apply to artifacts without a recipe (checkpoints, FP32).
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_agreement": 99.9, "max_miou_drop": 0.1},
    "fp16": {"min_agreement": 99.5, "max_miou_drop": 0.2},
    "int8": {"min_agreement": 98.0, "max_miou_drop": 1.0},
}


@dataclass(frozen=True)
class RecipeOptions:
    """The export options a recipe may read.

    Attributes:
        mean, std: the graph's normalisation (RGB, 0..1 scale), from the FP32 graph's manifest.
        calib_method: calibration method (``choices.CALIB_METHODS``; None: ``choices.DEFAULT_CALIB_METHOD``).
        include_attention: also quantize the attention MatMuls.
        target: ``tensorrt`` or ``cpu`` (the export's ``--target``).
        qat: a QAT checkpoint's learned record (``model.fakequant``): the INT8 recipes quantize with its scales
            (``export.qat.learned_ranges``) instead of calibrating, and check that they quantize exactly its tensors.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    calib_method: str | None = None
    include_attention: bool = False
    target: str = "tensorrt"
    qat: dict[str, Any] | None = None


@dataclass(frozen=True)
class RecipeInput:
    """What a recipe's ``convert`` gets.

    Attributes:
        fp32_path: the verified FP32 graph (with its ``.json`` manifest).
        out: where to write the derived graph (``out_dir / recipe.file_name``).
        calib_set: calibration images (``data.calib.CalibrationSet``) or None.
        options: the export options a recipe may read.
    """

    fp32_path: Path
    out: Path
    calib_set: CalibrationSet | None
    options: RecipeOptions


@dataclass(frozen=True)
class RecipeOutput:
    """What ``convert`` returns: the graph path, manifest fields to add, and lines for the log."""

    path: Path
    manifest_fields: dict[str, Any] = field(default_factory=dict)
    log: tuple[str, ...] = ()


@dataclass(frozen=True)
class PrecisionRecipe:
    """One row of the recipe registry (see the module docstring)."""

    name: str
    precision: str
    file_name: str
    convert: Callable[[RecipeInput], RecipeOutput]
    max_rel_l2: float = MAX_REL_L2
    min_label_kappa: float = MIN_LABEL_KAPPA
    thresholds: dict[str, float] = field(default_factory=dict)
    needs_calibration: bool = False
    target: str | None = None
    attention_quantized: bool = False  # may the attention MatMuls be quantized (with include_attention)
    help: str = ""


RECIPES: dict[str, PrecisionRecipe] = {}


def register_recipe(recipe: PrecisionRecipe) -> PrecisionRecipe:
    """Add a row (or replace the row of the same name).

    Raises:
        ConfigError: unknown precision, or a file name another recipe writes.
    """
    if recipe.precision not in DEFAULT_THRESHOLDS:
        raise ConfigError(f"recipe {recipe.name}: precision must be one of {', '.join(DEFAULT_THRESHOLDS)}")
    for other in RECIPES.values():
        if other.name != recipe.name and other.file_name == recipe.file_name:
            raise ConfigError(f"recipe {recipe.name}: {recipe.file_name} is already written by {other.name}")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> PrecisionRecipe:
    """The row named ``name``.

    Raises:
        ConfigError: no such recipe (lists the valid ones).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown precision recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def _fp16(inp: RecipeInput) -> RecipeOutput:
    from .fp16 import convert_fp16

    return RecipeOutput(convert_fp16(inp.fp32_path, inp.out))


def _int8(target: str, high_precision: str | None = None, residual_add: bool | None = None
          ) -> Callable[[RecipeInput], RecipeOutput]:
    """``quantize.quantize_int8`` for ``target``; None = that function's defaults for the target."""
    def convert(inp: RecipeInput) -> RecipeOutput:
        from .quantize import quantize_int8

        o = inp.options
        method = o.calib_method or DEFAULT_CALIB_METHOD
        if o.qat is not None:  # QAT: the learned scales, no calibration
            from .qat import check_placement, learned_ranges, qat_provenance

            res = quantize_int8(inp.fp32_path, None, inp.out, target, method, o.include_attention, o.mean, o.std,
                                high_precision=high_precision, residual_add=residual_add, ranges=learned_ranges(o.qat))
            check_placement(res.path, inp.fp32_path, o.qat)
            calibration = {**res.record, "qat": qat_provenance(o.qat)}
            note = (f"scales learned by QAT ({o.qat['epochs']} epochs from checkpoint "
                    f"{o.qat['source_sha256'][:12]}); no calibration")
            return RecipeOutput(res.path, {"calibration": calibration}, (note,))
        res = quantize_int8(inp.fp32_path, inp.calib_set, inp.out, target, method, o.include_attention,
                            o.mean, o.std, high_precision=high_precision, residual_add=residual_add)
        calibration = {**res.record, "record": res.record_path.name}
        note = (f"calibration {method} on {len(inp.calib_set)} images{', ranges reused' if res.reused else ''}; "
                f"record {res.record_path}")
        refused = () if res.cache_refused is None else \
            (f"calibration cache {res.ranges_path.name} not used, {res.cache_refused}: calibrated again",)
        return RecipeOutput(res.path, {"calibration": calibration}, (*refused, note))

    return convert


register_recipe(PrecisionRecipe("fp16", "fp16", "model_fp16.onnx", _fp16, max_rel_l2=5e-2,
                                thresholds=DEFAULT_THRESHOLDS["fp16"],
                                help="FP16 with FP32 islands for CAM energy, row max, softmaxes, PAM energy"))
register_recipe(PrecisionRecipe("int8-tensorrt", "int8", "model_int8_trt.onnx", _int8("tensorrt"),
                                thresholds=DEFAULT_THRESHOLDS["int8"], needs_calibration=True, target="tensorrt",
                                attention_quantized=True,
                                help="symmetric INT8 Q/DQ on Conv inputs and residual skips, the rest FP16 with the "
                                     "FP16 graph's FP32 islands (TensorRT, strong typing)"))
register_recipe(PrecisionRecipe("int8-tensorrt-fp32", "int8", "model_int8_trt_fp32.onnx",
                                _int8("tensorrt", "fp32", False),
                                thresholds=DEFAULT_THRESHOLDS["int8"], needs_calibration=True, target="tensorrt",
                                attention_quantized=True,
                                help="symmetric INT8 Q/DQ on Conv inputs only, the rest FP32 (the 0.1 form; slower "
                                     "under strong typing)"))
register_recipe(PrecisionRecipe("int8-cpu", "int8", "model_int8_cpu.onnx", _int8("cpu"),
                                thresholds=DEFAULT_THRESHOLDS["int8"], needs_calibration=True, target="cpu",
                                attention_quantized=True, help="uint8 activations, int8 weights (ONNX Runtime CPU)"))
