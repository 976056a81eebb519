"""Closed sets of names the command line offers as choices, in one light module (no torch, no onnx).

``--help`` lists them and a typo is refused with the valid names before any work starts. The library
modules that own the behaviour take their names from here: ``data.DATASET_NAMES`` (the builders),
``calib.CALIB_METHODS`` / ``calib.TARGETS``; a test keeps the two in step.
"""

from __future__ import annotations

from enum import Enum

from .manifest import Target

__all__ = ["DATASETS", "CALIB_METHODS", "DEFAULT_CALIB_METHOD", "TARGETS", "SPLITS", "OPSET_RANGE", "ATTENTION_OPSET", "ATTENTION_TENSORRT", "QAT_RECIPES", "choice_enum", "Dataset", "CalibMethod", "Split", "Target"]

DATASETS = ("synthetic", "camvid", "cityscapes", "folder")
CALIB_METHODS = ("entropy", "percentile", "minmax")
#: The calibration method when none is given (``export``, ``quantize_int8``, the recipes).
DEFAULT_CALIB_METHOD = "entropy"
TARGETS = tuple(t.value for t in Target)
SPLITS = ("train", "val", "test")
#: The INT8 recipes quantization-aware fine-tuning simulates (``train --qat``, ``export.qat``).
QAT_RECIPES = ("int8-tensorrt", "int8-cpu")
#: ONNX opsets TensorRT 10.0-10.3's ONNX parser reads (its support matrix); ``trtcheck`` enforces it.
OPSET_RANGE = (9, 20)
#: ONNX's ``Attention`` operator: its opset, and the oldest TensorRT that imports it (as ``IAttention``; TensorRT
#: 10.14 release notes, which list x86, Windows and SBSA: no JetPack). On a Jetson that is TensorRT 11.4.1 on
#: JetPack 7.2.2+ (AGX Orin, AGX Thor; ``graph.boards``); JetPack 6's 10.3 and JetPack 7.0's 10.13 do not.
ATTENTION_OPSET, ATTENTION_TENSORRT = 23, (10, 14)


def choice_enum(name: str, values: tuple[str, ...] | list[str]) -> type[Enum]:
    """A str-valued Enum for a Typer option (members print and compare as their value)."""
    cls = Enum(name, {v.upper().replace("-", "_"): v for v in values}, type=str)
    cls.__str__ = str.__str__  # type: ignore[method-assign]
    cls.__format__ = str.__format__  # type: ignore[method-assign]
    return cls


Dataset = choice_enum("Dataset", DATASETS)
CalibMethod = choice_enum("CalibMethod", CALIB_METHODS)
Split = choice_enum("Split", SPLITS)
