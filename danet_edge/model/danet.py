"""DANet: Dual Attention Network for Scene Segmentation (Fu et al., CVPR 2019, arXiv 1809.02983).

Structure (paper section 3, official code ``encoding/models/sseg/danet.py``)::

    image (N, 3, H, W)
      -> dilated ResNet -> c4 (N, Cb, H/OS, W/OS)
      -> conv5a -> PAM -> conv51 --+--> conv6 (aux logits, PAM branch)
      -> conv5c -> CAM -> conv52 --+--> conv7 (aux logits, CAM branch)
                                   +--> sum -> conv8 (fused logits)
      every output upsampled bilinearly (align_corners=True) to (H, W)

In eval mode ``DANet.forward`` returns only the fused logits ``(N, K, H, W)`` (the export path);
in train mode it returns the tuple ``(fused, pam_aux, cam_aux)`` plus the FCN auxiliary head's
logits when ``aux=True``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import pam_chunked, pam_explicit, pam_for_export, pam_heads
from .config import ModelConfig
from .forms import ATTENTION_IMPLS, AttentionImpl, reference_chunks
from ..core.errors import ConfigError
from .backbone import build_backbone

__all__ = ["ModelConfig", "PAM", "CAM", "DANetHead", "FCNHead", "DANet", "build_model"]



class PAM(nn.Module):
    """Position attention module (paper section 3.2, Fig. 2A).

    For ``A: (N, C, H, W)``, with ``L = H*W`` positions: ``Q, K = conv1x1(A) -> C/8`` channels,
    ``V = conv1x1(A) -> C``; ``S = softmax(Q^T K)`` over the last axis, an ``(L, L)`` map per
    image, without the 1/sqrt(d) scale; ``E = gamma * (V S^T) + A`` with ``gamma`` a learned
    scalar initialised to 0.

    Its forms give the same result to float32 rounding (``model.attention``; costs in ``model.forms``):

    * ``"sdpa"`` (default): on CUDA ``torch.nn.functional.scaled_dot_product_attention`` with ``scale=1.0``,
      one head, query/key/value laid out as ``(N, 1, L, d)``; its memory-efficient and flash kernels never
      store the ``(L, L)`` map. On a CPU it runs as ``"chunked"`` (PyTorch's CPU kernels would hold the map).
    * ``"explicit"``: the paper's bmm -> softmax -> bmm. It materialises ``N * L * L`` floats
      (256 MiB per image in FP32 at 512x1024, output stride 8).
    * ``"chunked"``: the explicit form over ``chunks`` static slices of the queries (None: as many as keep one
      slice of the map at or under ``forms.REFERENCE_CHUNK_MIB``).
    * ``"heads"``: V as 8 heads of ``C/8`` channels, Q and K shared: the form TensorRT's fused attention matches.

    Export writes ``explicit``, ``chunked`` or ``heads`` (``export --attention``).
    """

    def __init__(self, channels: int, impl: AttentionImpl = "sdpa", chunks: int | None = None) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.impl: AttentionImpl = impl
        self.chunks = chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query_conv(x).flatten(2).transpose(1, 2)  # (N, L, C/8)
        k = self.key_conv(x).flatten(2)  # (N, C/8, L)
        v = self.value_conv(x).flatten(2)  # (N, C, L)
        impl = self.impl
        if impl == "sdpa" and x.device.type == "cpu":
            impl = "chunked"
        if impl in ("explicit", "heads") and torch.onnx.is_in_onnx_export():
            out = pam_for_export(q, k, v, impl)  # the form's nodes, without holding its map while tracing
        elif impl == "sdpa":
            out = F.scaled_dot_product_attention(
                q.unsqueeze(1), k.transpose(1, 2).unsqueeze(1), v.transpose(1, 2).unsqueeze(1), scale=1.0
            )  # (N, 1, L, C)
            out = out.squeeze(1).transpose(1, 2)  # (N, C, L)
        elif impl == "chunked":
            out = pam_chunked(q, k, v, self.chunks or reference_chunks(int(n), int(h * w)))
        elif impl == "heads":
            out = pam_heads(q, k, v)
        else:
            out = pam_explicit(q, k, v)
        return self.gamma * out.reshape(n, c, h, w) + x


class CAM(nn.Module):
    """Channel attention module (paper section 3.3, Fig. 2B), no convolutions.

    For ``A: (N, C, H, W)``: ``X = A A^T`` a ``(C, C)`` energy map; as in the official code the
    softmax takes ``rowmax(X) - X``; ``E = gamma * softmax(...) A + A`` with ``gamma`` (called
    ``beta`` in the paper, ``gamma`` in the official parameter names) initialised to 0.

    The energy sums ``H*W`` products of post-ReLU activations, so it can pass FP16's largest
    finite value (65504) at large inputs; the FP16 export keeps this module in FP32.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        a = x.flatten(2)  # (N, C, L)
        energy = torch.bmm(a, a.transpose(1, 2))  # (N, C, C)
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = torch.softmax(energy, dim=-1)
        out = torch.bmm(attention, a).reshape(n, c, h, w)
        return self.gamma * out + x


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def _classifier(cin: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout2d(0.1, False), nn.Conv2d(cin, num_classes, 1))


class DANetHead(nn.Module):
    """Dual attention head; parameter names follow the official code (``head.*``).

    ``forward(c4: (N, Cin, h, w))`` -> ``(fused, pam_aux, cam_aux)``, each ``(N, K, h, w)``.
    ``inter = Cin // 4`` (512 for ResNet-50/101, 128 for ResNet-18/34).
    """

    def __init__(self, in_channels: int, num_classes: int, attention: AttentionImpl = "sdpa") -> None:
        super().__init__()
        inter = in_channels // 4
        self.conv5a = _conv_bn_relu(in_channels, inter)
        self.conv5c = _conv_bn_relu(in_channels, inter)
        self.sa = PAM(inter, attention)
        self.sc = CAM()
        self.conv51 = _conv_bn_relu(inter, inter)
        self.conv52 = _conv_bn_relu(inter, inter)
        self.conv6 = _classifier(inter, num_classes)
        self.conv7 = _classifier(inter, num_classes)
        self.conv8 = _classifier(inter, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sa_conv = self.conv51(self.sa(self.conv5a(x)))
        sc_conv = self.conv52(self.sc(self.conv5c(x)))
        fused = self.conv8(sa_conv + sc_conv)
        if not self.training:
            return fused, fused, fused  # aux branches are not needed at inference
        return fused, self.conv6(sa_conv), self.conv7(sc_conv)


class FCNHead(nn.Sequential):
    """Optional auxiliary FCN head on ``layer3`` (PyTorch-Encoding ``--aux``): 3x3 conv, BN, ReLU,
    Dropout2d(0.1), 1x1 conv. Kept in a ``conv5`` child so names match ``auxlayer.conv5.*``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__()
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False), nn.BatchNorm2d(inter), nn.ReLU(),
            nn.Dropout2d(0.1, False), nn.Conv2d(inter, num_classes, 1),
        )


class DANet(nn.Module):
    """DANet segmentation model.

    ``forward(x: (N, 3, H, W) float32, ImageNet-normalised)``:

    * eval mode: fused logits ``(N, K, H, W)`` float32 (one tensor, the export contract);
    * train mode: ``(fused, pam_aux, cam_aux[, fcn_aux])``, each ``(N, K, H, W)``.

    H and W must be multiples of the output stride for exact alignment (not enforced here;
    export refuses other sizes).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.backbone, config.output_stride, config.multi_grid, config.deep_stem)
        self.head = DANetHead(self.backbone.out_channels, config.num_classes, config.attention)
        self.aux_head = FCNHead(self.backbone.c3_channels, config.num_classes) if config.aux else None

    def set_attention(self, impl: AttentionImpl, chunks: int | None = None) -> None:
        """Switch PAM's form (``model.attention``; weights are unchanged). ``chunks``: query chunks of the
        ``"chunked"`` form (None: by size, ``forms.reference_chunks``).

        Raises:
            ConfigError: an unknown form, or ``chunks`` < 1.
        """
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention must be one of {', '.join(ATTENTION_IMPLS)}, got {impl!r}")
        if chunks is not None and (not isinstance(chunks, int) or chunks < 1):
            raise ConfigError(f"attention chunks must be a positive integer, got {chunks!r}")
        self.head.sa.impl, self.head.sa.chunks = impl, chunks

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        size = x.shape[-2:]
        c3, c4 = self.backbone(x)
        fused, pam_aux, cam_aux = self.head(c4)

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

        if not self.training:
            return up(fused)
        outs = [up(fused), up(pam_aux), up(cam_aux)]
        if self.aux_head is not None:
            outs.append(up(self.aux_head(c3)))
        return tuple(outs)


def build_model(config: ModelConfig | None = None, **overrides: Any) -> DANet:
    """Build a DANet from a ``ModelConfig`` (or keyword overrides of the default one).

    Raises:
        ConfigError: invalid configuration (unknown backbone, output stride not 8/16...).
    """
    cfg = config or ModelConfig()
    if overrides:
        cfg = ModelConfig(**{**cfg.to_dict(), **overrides})
    return DANet(cfg)
