"""How much memory a training step needs, checked against the machine before training starts: activation
bytes per crop pixel per backbone and output stride (measured with PyTorch's profiler here), the PAM attention
map counted in the form the model really uses (L^2 entries kept for backward by the explicit and chunked forms, 8 L^2 by
the heads form, none by SDPA on CUDA)."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..core.errors import ConfigError
from ..model.config import ModelConfig
from ..model.forms import PAM_HEADS
from .config import TrainConfig

__all__ = ['activation_memory']


# Saved activations per image pixel (bytes, FP32) of a DANet training step, backbone and head, measured with
# autograd's saved-tensor hooks at 128-384 px crops (CPU, batch 2; weights excluded). PAM adds its (L x L)
# attention map (4 bytes per entry, L = positions) where it is kept (every form but SDPA on CUDA).
_BYTES_PER_PIXEL = {("resnet18", 8): 955, ("resnet18", 16): 533, ("resnet34", 8): 1467, ("resnet34", 16): 758,
                    ("resnet50", 8): 4373, ("resnet50", 16): 2135, ("resnet101", 8): 7641, ("resnet101", 16): 2955}


def activation_memory(crop: tuple[int, int], batch: int, model: ModelConfig, form: str = "explicit",
                      amp: bool = False) -> tuple[float, float]:
    """A lower-bound estimate of the activations one training step keeps for backward, in bytes.

    Args:
        crop: ``(H, W)`` training crop. batch: images in one process's batch.
        model: backbone and output stride (an unregistered backbone counts as ResNet-18, the smallest).
        form: PAM's form as it runs (``model.forms``): ``explicit`` and ``chunked`` keep the whole ``(L x L)``
            softmax for backward (every chunk's slice is saved), ``heads`` one per head (8), ``sdpa`` on CUDA none
            (its kernels recompute it in backward); on a CPU ``sdpa`` runs as ``chunked``.
        amp: mixed precision (activations about half).

    Returns:
        ``(total bytes, bytes of the attention map per image)``.
    """
    h, w = crop
    per_px = _BYTES_PER_PIXEL.get((model.backbone, model.output_stride),
                                  _BYTES_PER_PIXEL[("resnet18", model.output_stride)])
    positions = (h // model.output_stride) * (w // model.output_stride)
    maps = {"sdpa": 0, "heads": PAM_HEADS}.get(form, 1)
    attention = 4.0 * positions * positions * maps
    total = batch * (per_px * h * w + attention) * (0.5 if amp else 1.0)
    return total, attention


def _check_memory(cfg: TrainConfig, train_ds: Any, val_ds: Any) -> None:
    """Refuse a crop (or the data set's own size) whose activations cannot fit in this machine's memory
    (the RAM available on CPU, the GPU's memory on CUDA), naming the estimate."""
    import psutil

    crop = tuple(cfg.crop_size) if cfg.crop_size else tuple(train_ds.info.image_size or val_ds.image_size(0))
    cuda = torch.cuda.is_available()
    per_proc = cfg.batch_size // cfg.devices
    batch = per_proc if cuda else cfg.batch_size  # CPU processes share one RAM
    form = cfg.model.attention if cuda or cfg.model.attention != "sdpa" else "chunked"  # PAM.forward's rule
    need, att = activation_memory(crop, batch, cfg.model, form, amp=cfg.amp)
    if cuda:  # the GPU's size (no CUDA context is made here: under torchrun every rank runs this)
        gpu = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        have, where = torch.cuda.get_device_properties(gpu).total_memory, "the GPU has"
    else:
        have, where = psutil.virtual_memory().available, "of RAM available"
    if need > have:
        pam = f" (PAM's attention map alone {_gb(att)} per image)" if att > need / (2 * batch) else ""
        raise ConfigError(f"crop {crop[0]}x{crop[1]} needs about {_gb(need)} of activations for a batch of {batch}"
                          f"{pam}, more than the {_gb(have)} {where}: use a smaller --crop-size or --batch-size, "
                          "or --output-stride 16")


def _gb(n: float) -> str:
    return f"{n / 1e12:.1f} TB" if n >= 1e12 else f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"
