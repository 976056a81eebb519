"""Class colours: one home, shared by data sets, checkpoints, manifests and overlays."""

from __future__ import annotations

__all__ = ["default_palette"]


def default_palette(num_classes: int) -> list[list[int]]:
    """A deterministic, well-separated colour per class (PASCAL VOC's bit-interleaving scheme)."""
    palette = []
    for i in range(num_classes):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette
