"""Options of the model stage: :class:`ModelConfig` (stored in every checkpoint and manifest) and the
normalisation a DANet expects by default (the ImageNet statistics its backbone was pretrained with)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..core.config import Config, check_choice, check_image_size, check_range, check_stride_multiple, option
from ..core.errors import ConfigError
from .forms import ATTENTION_IMPLS, AttentionImpl

__all__ = ["ImportConfig", "ModelConfig", "AttentionImpl", "IMAGENET_MEAN", "IMAGENET_STD"]


#: ImageNet statistics (RGB, 0..1 scale): the default normalisation of a DANet (its backbone's pretraining).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

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

    backbone: str = option("resnet50", "Registered backbone: resnet18, resnet34, resnet50, resnet101.")
    num_classes: int = option(19, "Classes (K): the logits' channels.")
    output_stride: int = option(8, "Output stride: 8 (paper) or 16.")
    multi_grid: bool = option(False, "layer4 dilations 4, 8, 16.")
    deep_stem: bool = option(False, "Three-conv stem (PyTorch-Encoding).")
    aux: bool = option(False, "FCN auxiliary head on layer3.")
    attention: AttentionImpl = option("sdpa", "PAM implementation: sdpa (fused on CUDA; chunked on a CPU), explicit, "
                                                "chunked or heads (model.attention).")

    def validate(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError(f"backbone must be a name, got {self.backbone!r}")
        check_range("num_classes", self.num_classes, 1, 255)
        check_choice("output stride", self.output_stride, (8, 16))  # type: ignore[arg-type]
        check_choice("attention", self.attention, ATTENTION_IMPLS)
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




@dataclass(frozen=True)
class ImportConfig(Config):
    """Options of ``danet-edge import-official`` (``model.checkpoint.import_official``): what an official DANet /
    PyTorch-Encoding checkpoint's weights cannot tell.

    Attributes:
        multi_grid, output_stride: how it was trained (ModelConfig's defaults: no multi-grid, OS 8).
        dataset: take class names and palette from this data set (``core.palettes.STANDARD_CLASSES``); None:
            generic names. image_size: ``(H, W)`` px, the default export size recorded (None: none).
    """

    multi_grid: bool = option(ModelConfig.default("multi_grid"), "Trained with --multi-grid (layer4 4, 8, 16); the "
                              "released Cityscapes DANet-101 was. Weights cannot tell.")
    output_stride: int = option(ModelConfig.default("output_stride"), "Output stride it was trained with.")
    dataset: str | None = option(None, "Take class names and palette from this data set.")
    image_size: tuple[int, int] | None = option(None, "Default export size H W.")

    def validate(self) -> None:
        check_choice("output stride", self.output_stride, (8, 16))  # type: ignore[arg-type]
        check_choice("--dataset", self.dataset, ("camvid", "cityscapes"), optional=True)
        check_image_size("--imgsz", self.image_size)
        check_stride_multiple("--imgsz", self.image_size, self.output_stride)  # a usage error, as in export
