"""DANet model: dilated ResNet backbones, PAM/CAM head, builders and weight loading."""

from .backbone import BACKBONES, BasicBlock, Bottleneck, DilatedResNet
from .danet import CAM, DANet, DANetHead, FCNHead, ModelConfig, PAM, build_model
from .weights import load_backbone_weights, load_official_checkpoint, official_config_from_state_dict

__all__ = [
    "BACKBONES", "BasicBlock", "Bottleneck", "DilatedResNet", "CAM", "DANet", "DANetHead", "FCNHead",
    "ModelConfig", "PAM", "build_model", "load_backbone_weights", "load_official_checkpoint",
    "official_config_from_state_dict",
]
