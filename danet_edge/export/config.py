"""Options of the export stage: :class:`ExportConfig` (``danet-edge export``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.choices import ATTENTION_OPSET, CALIB_METHODS, DATASETS, DEFAULT_CALIB_METHOD, OPSET_RANGE, SPLITS, TARGETS
from ..core.config import CALIB_DIR, CALIB_IMAGES, EXPORT_DIR, Config, check_choice, check_image_size, check_range, option
from ..core.errors import ConfigError
from ..graph.boards import BOARD_MEMORY_GIB, DEFAULT_BOARD, board_budget_mib
from ..model.forms import EXPORT_FORMS, MAX_CHUNKS
from ..trt.plan import EngineConfig
from .recipes import get_recipe

__all__ = ["ExportConfig", "DEFAULT_OPSET", "MIN_OPSET", "MIN_REFERENCE_IMAGES", "REFERENCE_IMAGES", "REFERENCE_PIXELS", "VERIFY_IMAGES"]

#: Lowest opset export writes (Resize with ``align_corners`` needs 11); the highest is TensorRT 10.3's.
MIN_OPSET = 11
#: The opset export writes when ``--opset`` is not given (``--attention attention-op`` writes ``ATTENTION_OPSET``).
DEFAULT_OPSET = 17
#: The reference bundle by default: 16 images at up to 512x1024 pixels; at larger sizes as many as hold the same
#: pixels (each costs a PyTorch forward at export: about 47 s for R-50 at 1024x2048 on 2 CPU cores), never
#: fewer than 4. ``check``'s agreement is a per-pixel figure; the pixels it counts stay the same.
REFERENCE_IMAGES, REFERENCE_PIXELS, MIN_REFERENCE_IMAGES = 16, 16 * 512 * 1024, 4
#: Images every graph is verified on by default, up to 512x1024 (one above it).
VERIFY_IMAGES = 2


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
        opset: ONNX opset, in TensorRT 10.3's range (11..20 here; Resize ``align_corners`` needs 11); None:
            :data:`DEFAULT_OPSET`. Refused with ``attention="attention-op"``, whose graph is opset 23 (ONNX's
            ``Attention`` operator): a value given is never rewritten (:meth:`onnx_opset`: the opset traced).
        engine: also build the TensorRT engine (needs tensorrt and ``danet_edge.trt.build``).
        fused_io: uint8 NHWC input, class-index output (``graph_io.fuse_io``), the default: at 512x1024 with
            19 classes it saves about 69 ms of host work per frame (``benchmarks/host_io.py``); False keeps
            logits graphs (float32 NCHW in, logits out) for logit-level checks.
        include_attention: quantize the attention MatMuls too (INT8 only).
        attention: PAM's form in the graph (``model.forms``): ``auto`` (explicit where the graph fits ``jetson``'s
            memory, else chunked with the fewest chunks that fit), ``explicit``, ``chunked``, ``heads`` or
            ``attention-op`` (``graph.attention_op``: TensorRT >= 10.14 only).
        attention_chunks: query chunks of ``chunked`` (None: the fewest that fit).
        jetson: the board whose memory the graph must fit (``graph.boards.BOARD_MEMORY_GIB``).
        memory_limit_mib: the most a graph may need, weights + activation peak (MiB; None: ``jetson``'s memory less
            ``graph.boards.RESERVE_MIB`` and TensorRT's workspace). A graph above it is refused.
        out: output folder (default ``EXPORT_DIR/<checkpoint stem>/``).
        tolerance: FP32 ONNX vs PyTorch relative L2 limit.
        fp16_tolerance: FP16 vs FP32 ONNX relative L2 limit (None: the FP16 recipe's ``max_rel_l2``).
        verify_images: images used for verification (None: :meth:`verification_images`).
        min_agreement, max_miou_drop: an accuracy budget for the INT8 graphs (``budget.fit_budget``):
            least pixel agreement with the FP32 graph (%) and/or largest mIoU drop (points, needs
            ``dataset``); the most sensitive layers are kept in high precision until it holds.
        dataset, data, split: labelled images (``data.build_dataset``) the budget is measured on and the
            reference bundle holds (default: ``budget.export_images``).
        budget_images: how many images the budget and the sensitivity ranking use.
        reference_images: images in the reference bundle ``<out>/reference/`` that ``check`` reads on a device
            without PyTorch (0: no bundle; None: :meth:`bundle_images`).
    """

    imgsz: tuple[int, int] | None = option(None, "Static input size H W, multiples of the output stride (default: "
                                                 "the checkpoint's).")
    batch: int = option(1, "Static batch size.")
    fp16: bool = option(False, "Also write the FP16 graph (FP32 I/O, FP32 attention islands).")
    int8: bool = option(False, "Also write the INT8 Q/DQ graph (calibrated).")
    recipes: tuple[str, ...] = option((), "More precision recipes by name (repeatable).")
    calib: Path | None = option(None, f"Calibration folder (default {CALIB_DIR}/ with --int8).")
    calib_method: str | None = option(None, f"Calibration method (default {DEFAULT_CALIB_METHOD}).")
    calib_size: int | None = option(None, f"Calibration images to draw (default {CALIB_IMAGES}).")
    seed: int = option(0, "Seed of the calibration draw.")
    target: str = option("tensorrt", "tensorrt (symmetric Q/DQ, rules enforced) or cpu (uint8 activations).")
    opset: int | None = option(None, f"ONNX opset, {MIN_OPSET}..{OPSET_RANGE[1]} (default {DEFAULT_OPSET}; TensorRT "
                                     f"10.3 parses {OPSET_RANGE[0]}..{OPSET_RANGE[1]}; Resize align_corners needs "
                                     f"{MIN_OPSET}). --attention attention-op writes opset {ATTENTION_OPSET} and "
                                     "refuses --opset.")
    engine: bool = option(False, "Also build the TensorRT engine (needs TensorRT).")
    fused_io: bool = option(True, "Deployment I/O: uint8 NHWC RGB in, class map out (normalise + argmax on the "
                                  "GPU); --logits: float32 NCHW in, logits out.")
    include_attention: bool = option(False, "Quantize attention MatMuls too.")
    attention: str = option("auto", "PAM form: auto (explicit where it fits --jetson's memory, else chunked), "
                                    "explicit, chunked, heads (Q, K, V of one head size, for fused attention) or "
                                    "attention-op (heads as ONNX Attention, opset 23: TensorRT >= 10.14; on a "
                                    "Jetson JetPack 7.2.2+'s 11.4.1, not JetPack 6).")
    attention_chunks: int | None = option(None, "Query chunks of --attention chunked (default: the fewest that fit).")
    jetson: str = option(DEFAULT_BOARD, f"Board the graph must fit: {', '.join(BOARD_MEMORY_GIB)}.")
    memory_limit_mib: float | None = option(None, "Most the graph may need, weights + activations (MiB; default: "
                                                  "--jetson's memory less a reserve for the OS and video).")
    out: Path | None = option(None, f"Output folder (default {EXPORT_DIR}/<checkpoint stem>/).")
    tolerance: float = option(1e-4, "FP32 ONNX vs PyTorch relative L2 limit.")
    fp16_tolerance: float | None = option(None, "FP16 vs FP32 ONNX relative L2 limit (default: the fp16 recipe's).")
    verify_images: int | None = option(None, "Images used for verification (default: 2 up to 512x1024, 1 above).")
    min_agreement: float | None = option(None, "INT8 accuracy budget: least pixel agreement with the FP32 graph (%).")
    max_miou_drop: float | None = option(None, "INT8 accuracy budget: largest mIoU drop (points; needs --dataset).")
    dataset: str | None = option(None, "Labelled data for the budget and the reference bundle.")
    data: Path | None = option(None, "Its folder.")
    split: str = option("val", "Its split.")
    budget_images: int = option(16, "Images for the budget and the per-layer sensitivity ranking.")
    reference_images: int | None = option(None, f"Images in the reference bundle reference/ (0: none; default "
                                                f"{REFERENCE_IMAGES} up to 512x1024, fewer above: the same pixels, at "
                                                f"least {MIN_REFERENCE_IMAGES}).")

    def validate(self) -> None:
        check_range("--batch", self.batch, 1, 64)
        check_choice("--target", self.target, TARGETS)
        check_range("--opset", self.opset, max(MIN_OPSET, OPSET_RANGE[0]), OPSET_RANGE[1], optional=True)
        if self.opset is not None and self.attention == "attention-op":
            raise ConfigError(f"--opset {self.opset}: --attention attention-op writes opset {ATTENTION_OPSET} (ONNX's "
                              "Attention operator starts there); drop --opset, or choose another --attention")
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
        check_range("--memory-limit-mib", self.memory_limit_mib, optional=True, integer=False)
        if self.memory_limit_mib is not None and self.memory_limit_mib <= 0:
            raise ConfigError(f"--memory-limit-mib must be positive, got {self.memory_limit_mib}")
        check_choice("--attention", self.attention, ("auto", *EXPORT_FORMS))
        check_choice("--jetson", self.jetson, tuple(BOARD_MEMORY_GIB))
        check_range("--attention-chunks", self.attention_chunks, 1, MAX_CHUNKS, optional=True)
        if self.include_attention and self.attention == "attention-op":
            raise ConfigError("--include-attention quantizes PAM's MatMuls; --attention attention-op has none (one "
                              "Attention node, kept in FP32): use --attention heads, or drop --include-attention")
        if self.attention_chunks is not None and self.attention != "chunked":
            raise ConfigError("--attention-chunks applies to --attention chunked; add it or drop --attention-chunks")
        check_image_size("--imgsz", self.imgsz)
        check_range("verify images", self.verify_images, 1, 1000, optional=True)
        check_range("--min-agreement", self.min_agreement, 0, 100, optional=True, integer=False)
        check_range("--max-miou-drop", self.max_miou_drop, 0, 100, optional=True, integer=False)
        check_range("--budget-images", self.budget_images, 1, 1000)
        check_range("--reference-images", self.reference_images, 0, 1000, optional=True)
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
        if self.fp16_tolerance is not None and not any(r.precision == "fp16" for r in recipes):  # never dropped
            raise ConfigError("--fp16-tolerance is the FP16 graph's limit and no FP16 graph is asked for: add --fp16 "
                              "or drop --fp16-tolerance")
        if self.dataset is not None and self.reference_images == 0 and not budget:
            raise ConfigError("--dataset gives the accuracy budget and the reference bundle their images; with "
                              "--reference-images 0 and no budget nothing reads it: drop --dataset")
        if self.target == "cpu" and not any(r.target == "cpu" for r in recipes):
            raise ConfigError("--target cpu selects the INT8 graph for ONNX Runtime on CPU: add --int8 "
                              "(or --recipe int8-cpu), or drop --target cpu")
        if self.calib is not None and not any(r.needs_calibration for r in recipes):
            raise ConfigError("--calib is the calibration folder of INT8: add --int8 (or a recipe that calibrates), "
                              "or drop --calib")

    def onnx_opset(self) -> int:
        """The opset PyTorch traces at: ``opset``, else :data:`DEFAULT_OPSET` (``attention-op`` then raises the
        traced graph to ``ATTENTION_OPSET``)."""
        return DEFAULT_OPSET if self.opset is None else self.opset

    def out_dir(self, checkpoint: str | os.PathLike[str]) -> Path:
        """The folder the graphs go to: ``out``, else ``EXPORT_DIR/<checkpoint stem>/``."""
        return Path(self.out) if self.out is not None else EXPORT_DIR / Path(checkpoint).stem

    def memory_budget_mib(self) -> float:
        """The most a graph may need (MiB): ``memory_limit_mib``, else ``jetson``'s memory less the reserve and
        TensorRT's workspace limit (``EngineConfig.workspace_mib``: scratch the engine may use beside it)."""
        if self.memory_limit_mib is not None:
            return self.memory_limit_mib
        return board_budget_mib(self.jetson) - EngineConfig.default("workspace_mib")

    def verification_images(self, size: tuple[int, int]) -> int:
        """Images each graph is verified on at ``size`` ``(H, W)``: ``verify_images`` when given, else
        :data:`VERIFY_IMAGES` up to 512x1024 and 1 above (one 1024x2048 image holds the pixels of 4 at 512x1024;
        each costs an ONNX Runtime and a PyTorch forward, about a minute each for R-50 there on 2 CPU cores)."""
        if self.verify_images is not None:
            return self.verify_images
        return VERIFY_IMAGES if size[0] * size[1] <= REFERENCE_PIXELS // REFERENCE_IMAGES else 1

    def bundle_images(self, size: tuple[int, int]) -> int:
        """Images of the reference bundle at ``size`` ``(H, W)``: ``reference_images`` when given, else
        :data:`REFERENCE_IMAGES`, fewer where that many hold more than :data:`REFERENCE_PIXELS` pixels (the same
        pixels in fewer, larger images), never fewer than :data:`MIN_REFERENCE_IMAGES`."""
        if self.reference_images is not None:
            return self.reference_images
        return max(MIN_REFERENCE_IMAGES, min(REFERENCE_IMAGES, REFERENCE_PIXELS // (size[0] * size[1])))

    def recipe_names(self) -> list[str]:
        """The recipes asked for, in order: ``--fp16``, ``--int8`` (for ``--target``), then ``recipes``."""
        names = (["fp16"] if self.fp16 else []) + ([f"int8-{self.target}"] if self.int8 else []) + list(self.recipes)
        return list(dict.fromkeys(names))


