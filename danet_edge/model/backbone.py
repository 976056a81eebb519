"""Dilated ResNet backbones (ResNet-18/34/50/101) with output stride 8 or 16.

Encoder contract, written once: ``DilatedResNet.forward(x)`` takes
``x: (N, 3, H, W) float32`` and returns ``(c3, c4)``, the outputs of ``layer3`` and ``layer4``:

=============  =================  ==================  ==================
backbone       c3 channels        c4 channels         spatial size
=============  =================  ==================  ==================
resnet18/34    256                512                 H/OS x W/OS
resnet50/101   1024               2048                H/OS x W/OS
=============  =================  ==================  ==================

With output stride (OS) 8, ``layer3`` keeps stride 1 with dilation 2 and ``layer4`` stride 1
with dilation 4; the first block of each dilated stage takes the previous dilation (1 for layer3,
2 for layer4), as torchvision and the official DANet / PyTorch-Encoding code do. With OS 16 only
``layer4`` is dilated (first block 1, then 2). Multi-grid replaces layer4's dilations by
``(1, 2, 4) * dilation(layer4)``: ``(4, 8, 16)`` at OS 8 (Fu et al. 2019, section 4.2.2).

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1..4``, ``downsample.0/1``), so
torchvision ImageNet weights load directly; the deep stem (three 3x3 convs, ``conv1.0/1/3/4/6``)
follows PyTorch-Encoding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ConfigError

__all__ = ["BACKBONES", "BACKBONE_REGISTRY", "check_backbone", "build_backbone", "BasicBlock", "Bottleneck",
           "DilatedResNet", "BackboneSpec", "register_backbone"]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs) that accepts dilation.

    torchvision's ``BasicBlock`` raises ``NotImplementedError`` for dilation > 1, so dilated
    ResNet-18/34 need this one. Parameter names match torchvision's.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.skip = nn.Identity()  # the residual Add's skip input: where QAT fake-quantizes it (model.fakequant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(identity))


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3 with stride and dilation, 1x1), stride on the 3x3 ("v1.5")."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.skip = nn.Identity()  # the residual Add's skip input: where QAT fake-quantizes it (model.fakequant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.skip(identity))


@dataclass(frozen=True)
class BackboneSpec:
    """Block type and blocks per stage of one ResNet depth."""

    block: type[nn.Module]
    layers: tuple[int, int, int, int]


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(BasicBlock, (2, 2, 2, 2)),
    "resnet34": BackboneSpec(BasicBlock, (3, 4, 6, 3)),
    "resnet50": BackboneSpec(Bottleneck, (3, 4, 6, 3)),
    "resnet101": BackboneSpec(Bottleneck, (3, 4, 23, 3)),
}


#: name -> factory ``(output_stride=8, multi_grid=False, deep_stem=False) -> nn.Module`` following the
#: encoder contract of the module docstring (``forward(x) -> (c3, c4)``, attributes ``out_channels``,
#: ``c3_channels``, ``output_stride``). A new backbone is one module plus one :func:`register_backbone`.
BACKBONE_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(name: str, factory: Callable[..., nn.Module]) -> None:
    """Register ``factory`` under ``name`` (replacing an earlier one of that name)."""
    BACKBONE_REGISTRY[name] = factory


def check_backbone(name: str) -> None:
    """Raise ConfigError unless ``name`` is registered (the message lists the registered names)."""
    if name not in BACKBONE_REGISTRY:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_REGISTRY)}")


def build_backbone(name: str, output_stride: int = 8, multi_grid: bool = False,
                   deep_stem: bool = False) -> nn.Module:
    """Build the backbone ``name`` and check its contract.

    Raises:
        ConfigError: unknown name, output stride not 8/16, or a module missing the contract's attributes.
    """
    check_backbone(name)
    if output_stride not in (8, 16):
        raise ConfigError(f"output stride must be 8 or 16, got {output_stride}")
    module = BACKBONE_REGISTRY[name](output_stride=output_stride, multi_grid=multi_grid, deep_stem=deep_stem)
    missing = [a for a in ("out_channels", "c3_channels", "output_stride") if not hasattr(module, a)]
    if missing:
        raise ConfigError(f"backbone {name!r} does not follow the encoder contract: no {', '.join(missing)}")
    return module


class DilatedResNet(nn.Module):
    """Dilated ResNet feature extractor returning ``(c3, c4)`` (see the module docstring).

    Args:
        name: one of ``BACKBONES`` (resnet18, resnet34, resnet50, resnet101).
        output_stride: 8 or 16.
        multi_grid: layer4 dilations ``(1, 2, 4) * d`` instead of ``(d/2 or 1, d, d)``.
        deep_stem: three 3x3 convs (64, 64, 128 channels) instead of one 7x7 conv.

    Raises:
        ConfigError: unknown name or output stride.
    """

    def __init__(self, name: str = "resnet50", output_stride: int = 8, multi_grid: bool = False,
                 deep_stem: bool = False) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
        if output_stride not in (8, 16):
            raise ConfigError(f"output stride must be 8 or 16, got {output_stride}")
        spec = BACKBONES[name]
        block = spec.block
        self.name = name
        self.output_stride = output_stride
        if deep_stem:
            self.conv1 = nn.Sequential(
                nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.Conv2d(64, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                nn.Conv2d(64, 128, 3, 1, 1, bias=False),
            )
            self.inplanes = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.inplanes = 64
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)

        d3, d4 = (2, 4) if output_stride == 8 else (1, 2)
        self.layer1 = self._make_layer(block, 64, spec.layers[0], stride=1, dilations=[1] * spec.layers[0])
        self.layer2 = self._make_layer(block, 128, spec.layers[1], stride=2, dilations=[1] * spec.layers[1])
        self.layer3 = self._make_layer(
            block, 256, spec.layers[2], stride=2 if d3 == 1 else 1,
            dilations=[1] + [d3] * (spec.layers[2] - 1))
        if multi_grid:
            grid = (1, 2, 4)
            dil4 = [d4 * grid[i % len(grid)] for i in range(spec.layers[3])]
        else:
            dil4 = [max(d4 // 2, 1)] + [d4] * (spec.layers[3] - 1)
        self.layer4 = self._make_layer(block, 512, spec.layers[3], stride=1, dilations=dil4)
        self.out_channels = 512 * block.expansion
        self.c3_channels = 256 * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int,
                    dilations: list[int]) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, dilations[0], downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, d) for d in dilations[1:]]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (N, 3, H, W)`` -> ``(c3, c4)``, each ``(N, C, H/OS, W/OS)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4


for _name in BACKBONES:
    register_backbone(_name, functools.partial(DilatedResNet, _name))
