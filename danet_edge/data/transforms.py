"""Augmentation for training and the fixed resize for evaluation, on (image, label) pairs of a data set
(torchvision transforms v2 for the geometric and photometric parts; labels resized with nearest neighbour)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..core.errors import ConfigError
from ..model.config import IMAGENET_MEAN, IMAGENET_STD
from .preprocess import preprocess, resize_labels
from .datasets import SegmentationDataset

__all__ = ['EvalTransform', 'TrainTransform', 'TransformedDataset']


# ---------------------------------------------------------------------------------- transforms
class TrainTransform:
    """Training augmentation (paper section 4.1: random scaling, cropping, left-right flip).

    ``(image (H, W, 3) uint8, mask (H, W) int)`` -> ``(image (3, h, w) float32 normalised, mask (h, w) int64)``
    with ``(h, w) = crop_size``: random scale in ``scale`` (bilinear image, nearest mask), crop
    padded with 0 (image) / ``ignore_index`` (mask) where the scaled image is smaller, optional
    horizontal flip and colour jitter, then ``(x/255 - mean)/std`` as ``danet_edge.data.preprocess``.
    Built on ``torchvision.transforms.v2``; randomness comes from torch's global RNG (seeded per
    DataLoader worker by PyTorch, so runs with the same seed are repeatable).
    """

    def __init__(self, crop_size: Sequence[int], scale: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                 jitter: bool = True, ignore_index: int = 255, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        if len(crop_size) != 2 or min(crop_size) < 8:
            raise ConfigError(f"crop size must be (height, width) >= 8, got {tuple(crop_size)}")
        if not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"scale range must be 0 < low <= high, got {scale}")
        if not 0 <= ignore_index <= 255:
            raise ConfigError(f"ignore index must be in 0..255, got {ignore_index}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.ignore_index = int(ignore_index)
        self._tv = tv_tensors
        self._F = v2.functional
        ops: list[Any] = [v2.RandomCrop(self.crop_size, pad_if_needed=True,
                                        fill={tv_tensors.Image: 0, tv_tensors.Mask: self.ignore_index})]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        if jitter:
            ops.append(v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.02))
        ops += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                v2.Normalize(list(mean), list(std))]
        self.ops = v2.Compose(ops)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tv, F = self._tv, self._F
        img = tv.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv.Mask(torch.from_numpy(mask.astype(np.uint8)))
        lo, hi = self.scale
        if hi > lo or lo != 1.0:
            s = lo + (hi - lo) * float(torch.rand(()))
            h, w = img.shape[-2:]
            size = [max(1, round(h * s)), max(1, round(w * s))]
            img = F.resize(img, size, antialias=True)
            msk = F.resize(msk, size)  # nearest for Mask
        img, msk = self.ops(img, msk)
        return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor).to(torch.int64)


class EvalTransform:
    """Evaluation transform: ``danet_edge.data.preprocess`` (resize to ``size`` when given, normalise).

    ``size=None`` keeps the image's own size (the way to measure mIoU). With a size, the mask is
    resized with nearest neighbour.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: Sequence[int] | None = None) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.size = (int(size[0]), int(size[1])) if size is not None else None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size or image.shape[:2]
        x = preprocess([image], size, self.mean, self.std)[0]
        m = resize_labels(mask, size) if self.size is not None else mask
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))


class TransformedDataset(torch.utils.data.Dataset):
    """Wraps a raw data set and applies ``transform(image, mask)`` -> tensors."""

    def __init__(self, dataset: SegmentationDataset,
                 transform: Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.dataset = dataset
        self.transform = transform
        self.info = dataset.info

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.dataset[i])
