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
    }

``image_size`` is the evaluation / export size the model was validated at (the default for
``export --imgsz``). Official DANet checkpoints (``pretrained.*`` / ``head.*`` keys) load too,
through ``danet_edge.model.weights``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError
from .manifest import Manifest
from .model import DANet, ModelConfig, load_official_checkpoint
from .model.weights import safe_torch_load
from .palettes import default_palette
from .preprocess import IMAGENET_MEAN, IMAGENET_STD
from .utils import atomic_path, sha256_file

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "load_model", "LoadedModel",
           "default_palette", "checkpoint_manifest", "import_official"]

CHECKPOINT_FORMAT = "danet-edge-checkpoint/1"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Save ``payload`` (see the module docstring) atomically: a crash never leaves a half file."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a danet-edge checkpoint dict safely (``weights_only=True``) and check its fields.

    Raises:
        CheckpointError: missing, unsafe, or not a danet-edge checkpoint.
    """
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a danet-edge checkpoint (no format {CHECKPOINT_FORMAT!r})")
    for key in ("model", "model_config", "data"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
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
    """

    model: DANet
    config: ModelConfig
    data: dict[str, Any]
    sha256: str
    path: Path


def _validate_data(data: Any, num_classes: int, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: 'data' entry must be a dict")
    out = dict(data)
    classes = out.get("classes") or [f"class{i}" for i in range(num_classes)]
    if not isinstance(classes, list) or len(classes) != num_classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: 'data.classes' must list {num_classes} names")
    out["classes"] = classes
    palette = out.get("palette") or default_palette(num_classes)
    if len(palette) != num_classes:
        raise CheckpointError(f"{path}: 'data.palette' must have {num_classes} colours")
    out["palette"] = [[int(v) for v in c] for c in palette]
    out["mean"] = [float(v) for v in out.get("mean", IMAGENET_MEAN)]
    out["std"] = [float(v) for v in out.get("std", IMAGENET_STD)]
    out["ignore_index"] = int(out.get("ignore_index", 255))
    size = out.get("image_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
            raise CheckpointError(f"{path}: 'data.image_size' must be [height, width]")
        out["image_size"] = [int(s) for s in size]
    return out


def load_model(path: str | os.PathLike[str], multi_grid: bool = False, output_stride: int = 8) -> LoadedModel:
    """Load a danet-edge or official DANet checkpoint into an eval-mode model.

    ``multi_grid`` and ``output_stride`` apply only to official checkpoints (danet-edge
    checkpoints record their own configuration).

    Raises:
        CheckpointError: missing, unsafe or inconsistent file, or weights that do not fit.
    """
    path = Path(path)
    raw = safe_torch_load(path)
    if isinstance(raw, dict) and raw.get("format") == CHECKPOINT_FORMAT:
        ckpt = load_checkpoint(path)
        try:
            config = ModelConfig.from_dict(ckpt["model_config"])
        except (TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"{path}: bad model_config ({e})") from None
        model = DANet(config)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise CheckpointError(f"{path}: weights do not fit DANet {config.backbone} ({first})") from None
        data = ckpt["data"]
    else:
        model = load_official_checkpoint(raw if isinstance(raw, dict) else path, multi_grid, output_stride)
        config = model.config
        data = {"dataset": "official"}
    model.eval()
    return LoadedModel(model, config, _validate_data(data, config.num_classes, path), sha256_file(path), path)


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


def import_official(src: str | os.PathLike[str], dst: str | os.PathLike[str], multi_grid: bool = False,
                    output_stride: int = 8, classes: list[str] | None = None,
                    palette: list[list[int]] | None = None, image_size: tuple[int, int] | None = None) -> Path:
    """Convert an official DANet / PyTorch-Encoding checkpoint into a danet-edge checkpoint.

    The result records what the weights cannot tell (multi-grid, output stride), the class names,
    palette and export size, so ``export``, ``check`` and ``infer`` need no further options. The
    logits are unchanged (the same state_dict under this model's names).

    Raises:
        CheckpointError: the source is missing, unsafe or not an official DANet checkpoint;
            ``classes`` / ``palette`` of the wrong length, or an image size not divisible by the
            output stride.
    """
    src, dst = Path(src), Path(dst)
    model = load_official_checkpoint(src, multi_grid, output_stride)
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
    if image_size is not None:
        if image_size[0] % output_stride or image_size[1] % output_stride:
            raise CheckpointError(f"image size {image_size[0]}x{image_size[1]} is not divisible by the "
                                  f"output stride {output_stride}")
        data["image_size"] = [int(image_size[0]), int(image_size[1])]
    _validate_data(data, k, src)
    return save_checkpoint(dst, {"model": model.state_dict(), "model_config": model.config.to_dict(), "data": data,
                                 "source": {"official_checkpoint": src.name, "sha256": sha256_file(src)}})
