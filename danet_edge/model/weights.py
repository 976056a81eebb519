"""Loading weights from local files: torchvision ImageNet ResNets and official DANet checkpoints.

Every file is loaded with ``torch.load(weights_only=True)`` (no arbitrary unpickling).

Official checkpoints (github.com/junfu1115/DANet, PyTorch-Encoding) name parameters
``pretrained.*`` (backbone), ``head.*`` (DANet head, same names as here) and ``auxlayer.*``
(FCN head, ``--aux``); they are saved either as a bare ``state_dict`` or as
``{'state_dict': ..., 'epoch': ..., ...}``, sometimes with a ``module.`` prefix from
DataParallel. What the weights alone tell: depth (blocks per stage), deep stem
(``pretrained.conv1.0.weight``), aux head and class count. What they cannot tell: multi-grid and
output stride (dilation has no parameters), so those must be given, and a wrong value gives
wrong logits silently; ``load_official_checkpoint`` says so in its error and docs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError
from .backbone import BACKBONES
from .danet import DANet
from .config import ModelConfig

__all__ = ["safe_torch_load", "load_backbone_weights", "official_config_from_state_dict",
           "load_official_checkpoint", "official_to_local"]


def safe_torch_load(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors.

    Raises:
        CheckpointError: missing file, not a torch file, or one that needs unsafe unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"{path}: {_load_failure(str(e))}") from None


def _load_failure(message: str) -> str:
    """One honest line from torch.load's multi-paragraph error (never advise weights_only=False)."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"holds a Python object ({found.group(1)}) besides tensors; refused, since loading it would "
                "need unsafe unpickling: re-save only the state_dict (torch.save(model.state_dict(), path))")
    return "not a readable PyTorch checkpoint (corrupt, truncated or another file type)"


def _tensor_dict(obj: Any, path: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(model: DANet, path: str | os.PathLike[str]) -> None:
    """Load torchvision-format ImageNet ResNet weights (``resnet50-*.pth``...) into ``model.backbone``.

    ``fc.*`` is ignored. Raises ``CheckpointError`` when a backbone key is missing or has another
    shape (for instance ResNet-101 weights into ResNet-50, or any 7x7-stem file into a deep stem).
    """
    sd = _tensor_dict(safe_torch_load(path), str(path))
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    bad_shape = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {unexpected[:3]}" if unexpected else
                  f"shape mismatch at {bad_shape[0]}: file {tuple(sd[bad_shape[0]].shape)} "
                  f"vs model {tuple(own[bad_shape[0]].shape)}")
        raise CheckpointError(
            f"{path}: not torchvision weights for {model.config.backbone}"
            f"{' with deep stem' if model.config.deep_stem else ''} ({detail})")
    model.backbone.load_state_dict(sd, strict=False)


def official_to_local(key: str) -> str | None:
    """Map an official parameter name onto this model's (``None``: not used, e.g. ``pretrained.fc``)."""
    if key.startswith("pretrained.fc."):
        return None
    if key.startswith("pretrained."):
        return "backbone." + key[len("pretrained."):]
    if key.startswith("auxlayer."):
        return "aux_head." + key[len("auxlayer."):]
    if key.startswith("head."):
        return key
    return None


def official_config_from_state_dict(sd: Mapping[str, torch.Tensor], multi_grid: bool = False,
                                    output_stride: int = 8) -> ModelConfig:
    """Infer backbone depth, deep stem, aux head and class count from official weights.

    Raises:
        CheckpointError: the keys do not look like an official DANet checkpoint.
    """
    if "head.conv8.1.weight" not in sd or not any(k.startswith("pretrained.layer4.") for k in sd):
        raise CheckpointError("not an official DANet checkpoint (no 'head.conv8.1.weight' / 'pretrained.layer4.*')")
    blocks = tuple(
        len({k.split(".")[2] for k in sd if k.startswith(f"pretrained.layer{i}.")}) for i in range(1, 5)
    )
    bottleneck = any(k.startswith("pretrained.layer1.0.conv3.") for k in sd)
    backbone = next(
        (name for name, spec in BACKBONES.items()
         if spec.layers == blocks and (spec.block.__name__ == "Bottleneck") == bottleneck), None)
    if backbone is None:
        raise CheckpointError(f"official checkpoint has blocks per stage {blocks}: no supported ResNet matches")
    return ModelConfig(
        backbone=backbone,
        num_classes=int(sd["head.conv8.1.weight"].shape[0]),
        output_stride=output_stride,
        multi_grid=multi_grid,
        deep_stem="pretrained.conv1.0.weight" in sd,
        aux=any(k.startswith("auxlayer.") for k in sd),
    )


def load_official_checkpoint(source: str | os.PathLike[str] | Mapping[str, Any], multi_grid: bool = False,
                             output_stride: int = 8) -> DANet:
    """Build a DANet from an official DANet / PyTorch-Encoding checkpoint.

    Depth, deep stem (``--no-deepstem`` checkpoints have a 7x7 ``pretrained.conv1.weight``), aux
    head and the number of classes are read from the weights. ``multi_grid`` (official
    ``--multi-grid``, layer4 dilations 4, 8, 16; the released Cityscapes DANet-101 uses it) and
    ``output_stride`` cannot be read from weights and must match how the model was trained.

    Returns the model in eval mode. Raises ``CheckpointError`` on a missing, unsafe or
    mismatching file, naming the first offending parameter.
    """
    name = str(source) if not isinstance(source, Mapping) else "<state_dict>"
    raw = source if isinstance(source, Mapping) else safe_torch_load(source)
    sd = _tensor_dict(raw, name)
    cfg = official_config_from_state_dict(sd, multi_grid, output_stride)
    model = DANet(cfg)
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        local = official_to_local(key)
        if local is None:
            continue
        if local not in own:
            raise CheckpointError(f"{name}: parameter {key!r} has no counterpart in DANet {cfg.backbone}")
        if own[local].shape != value.shape:
            raise CheckpointError(
                f"{name}: {key!r} has shape {tuple(value.shape)}, DANet {cfg.backbone} expects {tuple(own[local].shape)}")
        mapped[local] = value
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{name}: missing {len(missing)} parameters, first {missing[0]!r}")
    model.load_state_dict(mapped, strict=False)
    return model.eval()
