"""The one image preprocessing used everywhere: training eval, calibration, checks and inference.

Calibration reads images through exactly these functions, so an INT8 graph sees at calibration
what it sees at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.optional import import_cv2
from ..model.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["resize_image", "normalize", "preprocess", "resize_labels"]



def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``image: (H, W, 3) uint8 RGB`` to ``size = (height, width)`` (bilinear; area when shrinking).

    Returns the input itself when it already has that size (no OpenCV needed then).

    Raises:
        MissingDependencyError: a resize is needed and OpenCV is not importable (no other resize gives
            OpenCV's results bit for bit, and calibration, checks and inference must all see the same pixels).
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    cv2 = import_cv2()
    interp = cv2.INTER_AREA if (image.shape[0] > h and image.shape[1] > w) else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def normalize(images: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """``images: (N, H, W, 3) uint8 RGB`` -> ``(N, 3, H, W) float32``, ``(x/255 - mean) / std``."""
    x = images.astype(np.float32) * (1.0 / 255.0)
    x -= np.asarray(mean, np.float32)
    x /= np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def preprocess(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int],
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Frames ``(H, W, 3) uint8 RGB`` of any size -> model input ``(N, 3, h, w) float32`` at ``size``."""
    batch = np.stack([resize_image(np.asarray(im), size) for im in images])
    return normalize(batch, mean, std)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class map ``(h, w)`` integer -> ``(H, W)`` at ``size = (H, W)`` with nearest neighbour.

    Raises:
        MissingDependencyError: a resize is needed and OpenCV is not importable.
    """
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    cv2 = import_cv2()
    dtype = labels.dtype
    work = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels.astype(np.int32)
    return cv2.resize(work, (w, h), interpolation=cv2.INTER_NEAREST).astype(dtype)
