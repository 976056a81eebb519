"""danet-edge checkpoints: atomic save, safe load, model rebuild.

A checkpoint is a ``dict`` saved with ``torch.save`` and loaded with ``weights_only=True``::

    {
      "format": "danet-edge-checkpoint/1",
      "model": state_dict,                     # DANet.state_dict()
      "model_config": ModelConfig.to_dict(),
      "data": {"dataset": str, "classes": [K names], "palette": [[r, g, b]] * K,
               "mean": [3], "std": [3], "ignore_index": int, "image_size": [H, W]},
      "train_config": {...}, "epoch": int, "best_miou": float, "metrics": {...},
      "optimizer": ..., "scheduler": ..., "scaler": ..., "rng": {...},   # training state, optional
      "qat": {...},                            # QAT checkpoints only: the learned record (model.fakequant)
    }

A QAT checkpoint's ``model`` is a plain DANet state dict (its float weights, fine-tuned under fake
quantization); what makes it INT8 is the ``qat`` record, which only ``export`` and ``train --qat --resume`` read.
Every other command is given float checkpoints and refuses a QAT one in one line (:func:`load_model`).

``image_size`` is the evaluation / export size the model was validated at (the default for
``export --imgsz``). Official DANet checkpoints (``pretrained.*`` / ``head.*`` keys) load too,
through ``danet_edge.model.weights``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, ConfigError
from ..core.manifest import MAX_IMAGE_SIDE, Manifest
from .danet import DANet
from .weights import load_official_checkpoint
from .config import ImportConfig, ModelConfig
from .weights import safe_torch_load
from ..core.palettes import STANDARD_CLASSES, default_palette, palette_for
from .config import IMAGENET_MEAN, IMAGENET_STD
from ..core.utils import atomic_path, sha256_file

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "LoadedModel",
           "default_palette", "checkpoint_manifest", "import_official", "flush_denormals", "qat_refusal"]

CHECKPOINT_FORMAT = "danet-edge-checkpoint/1"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Save ``payload`` (see the module docstring) atomically: a crash never leaves a half file."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_path(path, _tensor_bytes(payload)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict / list (what ``torch.save`` writes, less a few KiB of pickle)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a danet-edge checkpoint dict safely (``weights_only=True``) and check its fields.

    Raises:
        CheckpointError: missing, unsafe, or not a danet-edge checkpoint; a ``model`` entry that is not a
            state_dict of tensors, a ``model_config`` or ``data`` entry that is not a dict.
    """
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a danet-edge checkpoint (no format {CHECKPOINT_FORMAT!r})")
    for key in ("model", "model_config", "data"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    weights = obj["model"]
    if not isinstance(weights, Mapping) or not weights:
        raise CheckpointError(f"{path}: 'model' must be a state_dict (names -> tensors), got "
                              f"{type(weights).__name__}")
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: 'model' entry {str(name)[:80]!r} is a {type(value).__name__}, "
                                  "not a tensor")
    for key in ("model_config", "data"):
        if not isinstance(obj[key], dict):
            raise CheckpointError(f"{path}: {key!r} must be a dict, got {type(obj[key]).__name__}")
    return obj


@dataclass
class LoadedModel:
    """A model ready for inference plus what to feed it.

    Attributes:
        model: DANet in eval mode, on CPU, float32.
        config: its ModelConfig.
        data: classes, palette, mean, std, ignore_index, image_size (see the module docstring).
        sha256: SHA-256 of the checkpoint file.
        path: the checkpoint file.
        qat: the learned QAT record of a QAT checkpoint (``model.fakequant``; only with ``load_model(qat=True)``),
            else None.
    """

    model: DANet
    config: ModelConfig
    data: dict[str, Any]
    sha256: str
    path: Path
    qat: dict[str, Any] | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _validate_data(data: Any, num_classes: int, path: Path) -> dict[str, Any]:
    """The checkpoint's ``data`` entry with defaults filled in, each field checked for type and range (the
    rules of ``manifest.Manifest.from_dict``, which every artifact made from it must pass too).

    Raises:
        CheckpointError: one line naming the field (``data.palette[2]``, ``data.std``...).
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: 'data' entry must be a dict")
    out = dict(data)
    classes = out.get("classes")
    classes = [f"class{i}" for i in range(num_classes)] if classes is None else classes
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: 'data.classes' must be a list of names")
    if len(classes) != num_classes:
        raise CheckpointError(f"{path}: 'data.classes' lists {len(classes)} names, the model has {num_classes} "
                              "classes")
    out["classes"] = list(classes)
    palette = out.get("palette")
    palette = palette_for(out["classes"]) if palette is None else palette
    if not isinstance(palette, (list, tuple)) or len(palette) != num_classes:
        n = len(palette) if isinstance(palette, (list, tuple)) else type(palette).__name__
        raise CheckpointError(f"{path}: 'data.palette' must hold one [r, g, b] colour per class ({num_classes}), "
                              f"got {n}")
    for i, c in enumerate(palette):
        if not (isinstance(c, (list, tuple)) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c)):
            raise CheckpointError(f"{path}: 'data.palette[{i}]' must be [r, g, b] with integers 0..255, "
                                  f"got {str(c)[:80]}")
    out["palette"] = [[int(v) for v in c] for c in palette]
    for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        v = out.get(key)
        v = default if v is None else v
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(_is_finite(x) for x in v):
            raise CheckpointError(f"{path}: 'data.{key}' must be three finite numbers (R, G, B), got {str(v)[:80]}")
        out[key] = [float(x) for x in v]
    if any(x <= 0 for x in out["std"]):
        raise CheckpointError(f"{path}: 'data.std' must be positive (the normalisation divides by it), "
                              f"got {out['std']}")
    ignore = out.get("ignore_index", 255)
    if not _is_int(ignore) or not 0 <= ignore <= 255:
        raise CheckpointError(f"{path}: 'data.ignore_index' must be an integer in 0..255, got {str(ignore)[:80]}")
    out["ignore_index"] = int(ignore)
    size = out.get("image_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) for s in size)):
            raise CheckpointError(f"{path}: 'data.image_size' must be [height, width], got {str(size)[:80]}")
        if not all(1 <= s <= MAX_IMAGE_SIDE for s in size):
            raise CheckpointError(f"{path}: 'data.image_size' {size[0]}x{size[1]} is outside 1..{MAX_IMAGE_SIDE} "
                                  "per side")
        out["image_size"] = [int(s) for s in size]
    if "dataset" in out and not isinstance(out["dataset"], str):
        raise CheckpointError(f"{path}: 'data.dataset' must be a name")
    return out


def flush_denormals() -> bool:
    """Run PyTorch's CPU ops with denormal floats flushed to zero (FTZ / DAZ), as ONNX Runtime's sessions here are.

    PAM's softmax over thousands of keys leaves most of its map below FP32's smallest normal (1.2e-38), and x86
    CPUs multiply such operands many times slower. Measured, DANet R-50 at 1024x2048, one synthetic street
    scene, PyTorch on 2 cores: 19 s a frame flushed against 125 s not, the same logits bit for bit (NOTES).
    The flag lives in each thread's MXCSR and new threads inherit it, so it takes full effect when set before
    PyTorch starts its thread pool (the first parallel op of the process); :func:`load_model` sets it first
    thing. Training (``build_model``) does not. Returns False where the CPU cannot (not x86 with SSE3).
    """
    return bool(torch.set_flush_denormal(True))


def qat_refusal(path: str | os.PathLike[str], ckpt: dict[str, Any], wanted: str) -> CheckpointError:
    """The one-line refusal of a QAT checkpoint where ``wanted`` (a float checkpoint) is expected."""
    recipe = ckpt["qat"].get("recipe", "INT8") if isinstance(ckpt.get("qat"), dict) else "INT8"
    return CheckpointError(f"{path} is a QAT checkpoint ({recipe}), not {wanted}: export it "
                           f"(danet-edge export {path}) and use its INT8 graph, or give the float checkpoint it "
                           "was fine-tuned from")


def load_model(path: str | os.PathLike[str], multi_grid: bool = False, output_stride: int = 8,
               qat: bool = False) -> LoadedModel:
    """Load a danet-edge or official DANet checkpoint into an eval-mode model, with PyTorch's denormals flushed
    (:func:`flush_denormals`).

    ``multi_grid`` and ``output_stride`` apply only to official checkpoints (danet-edge
    checkpoints record their own configuration). ``qat``: also take a QAT checkpoint (export): its float weights,
    and its record in ``LoadedModel.qat``; without it a QAT checkpoint is refused.

    Raises:
        CheckpointError: missing, unsafe or inconsistent file, weights that do not fit, or a ``data`` field of
            the wrong type or range (classes and palette not one per model class, a palette entry that is not
            three integers 0..255, mean / std not three finite numbers, std <= 0, image size outside 1..8192):
            one line naming the field.
    """
    path = Path(path)
    flush_denormals()  # inference on a CPU: before the first parallel op, so every PyTorch thread gets it
    raw = safe_torch_load(path)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        ckpt = load_checkpoint(path)
        try:
            config = ModelConfig.from_dict(ckpt["model_config"])
        except (TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{path}: bad model_config ({e})") from None
        data = _validate_data(ckpt["data"], config.num_classes, path)  # before the model is built: fails fast
        record = None
        if "qat" in ckpt:
            if not qat:
                raise qat_refusal(path, ckpt, "a float checkpoint")
            from .fakequant import validate_qat_record

            record = validate_qat_record(ckpt["qat"], str(path))
        model = DANet(config)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise CheckpointError(f"{path}: weights do not fit DANet {config.backbone} ({first})") from None
    else:
        model = load_official_checkpoint(raw if isinstance(raw, dict) else path, multi_grid, output_stride)
        config = model.config
        data = _validate_data({"dataset": "official"}, config.num_classes, path)
        record = None
    model.eval()
    return LoadedModel(model, config, data, sha256_file(path), path, record)


def checkpoint_manifest(loaded: LoadedModel, image_size: tuple[int, int] | None = None, batch: int = 1) -> Manifest:
    """The manifest a PyTorch checkpoint implies (kind ``checkpoint``, FP32 logits)."""
    size = image_size or tuple(loaded.data.get("image_size") or (512, 1024))
    h, w = int(size[0]), int(size[1])
    return Manifest(
        kind="checkpoint", precision="fp32", model=loaded.config.to_dict(),
        classes=list(loaded.data["classes"]), palette=loaded.data["palette"],
        mean=loaded.data["mean"], std=loaded.data["std"],
        input_shape=[batch, 3, h, w], output_shape=[batch, loaded.config.num_classes, h, w],
        ignore_index=loaded.data["ignore_index"], source_checkpoint_sha256=loaded.sha256,
    )


def import_official(src: str | os.PathLike[str], dst: str | os.PathLike[str], cfg: ImportConfig | None = None,
                    classes: list[str] | None = None, palette: list[list[int]] | None = None) -> Path:
    """Convert an official DANet / PyTorch-Encoding checkpoint into a danet-edge checkpoint.

    ``cfg``: how it was trained, its data set and export size (None: :class:`ImportConfig`'s defaults).
    ``classes`` / ``palette``: names and colours of its K classes (default: ``cfg.dataset``'s, else generic).

    The result records what the weights cannot tell (multi-grid, output stride), the class names,
    palette and export size, so ``export``, ``check`` and ``infer`` need no further options. The
    logits are unchanged (the same state_dict under this model's names).

    Raises:
        ConfigError: ``cfg`` is invalid (an image size not divisible by the output stride included).
        CheckpointError: the source is missing, unsafe or not an official DANet checkpoint;
            ``classes`` / ``palette`` of the wrong length.
    """
    cfg = cfg or ImportConfig()
    cfg.validate()
    if cfg.dataset is not None:
        std_classes, std_palette = STANDARD_CLASSES[cfg.dataset]
        classes, palette = classes or std_classes, palette or std_palette
    image_size, output_stride = cfg.image_size, cfg.output_stride
    src, dst = Path(src), Path(dst)
    model = load_official_checkpoint(src, cfg.multi_grid, output_stride)
    k = model.config.num_classes
    data: dict[str, Any] = {"dataset": "official"}
    if classes is not None:
        if len(classes) != k:
            raise CheckpointError(f"{src}: the checkpoint has {k} classes, {len(classes)} names were given")
        data["classes"] = list(classes)
    if palette is not None:
        if len(palette) != k:
            raise CheckpointError(f"{src}: the checkpoint has {k} classes, {len(palette)} colours were given")
        data["palette"] = [list(c) for c in palette]
    if image_size is not None:  # a multiple of the output stride: ImportConfig.validate (a usage error, exit 2)
        data["image_size"] = [int(image_size[0]), int(image_size[1])]
    _validate_data(data, k, src)
    return save_checkpoint(dst, {"model": model.state_dict(), "model_config": model.config.to_dict(), "data": data,
                                 "source": {"official_checkpoint": src.name, "sha256": sha256_file(src)}})
