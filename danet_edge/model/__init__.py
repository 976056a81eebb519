"""DANet model: dilated ResNet backbones, PAM/CAM head, builders and weight loading."""

from .backbone import (BACKBONE_REGISTRY, BACKBONES, BasicBlock, Bottleneck, DilatedResNet, check_backbone,
                       register_backbone)
from .danet import CAM, DANet, DANetHead, FCNHead, ModelConfig, PAM, build_model
from .weights import load_backbone_weights, load_official_checkpoint, official_config_from_state_dict

__all__ = [
    "BACKBONE_REGISTRY", "BACKBONES", "register_backbone", "check_backbone", "BasicBlock", "Bottleneck",
    "DilatedResNet", "CAM", "DANet", "DANetHead", "FCNHead",
    "ModelConfig", "PAM", "build_model", "load_backbone_weights", "load_official_checkpoint",
    "official_config_from_state_dict",
]
