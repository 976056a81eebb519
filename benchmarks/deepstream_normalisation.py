"""What DeepStream's single-scale normalisation costs on a trained logits graph.

Gst-nvinfer computes ``net-scale-factor * (x - offsets_c)`` with ONE scale for the three channels
(danet_edge/deepstream.py); the graph was trained on ``(x/255 - mean_c) / std_c``. This runs the graph on the
same resized pixels with both and prints the pixel agreement of the class maps and the pixel accuracy of each
against the labels (CamVid layout: val.txt lists "image label" pairs).

    python benchmarks/deepstream_normalisation.py runs/export_camvid/model.onnx ../shared/datasets/camvid --images 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from danet_edge.deploy.deepstream import normalisation_error, nvinfer_input, single_scale_normalisation
from danet_edge.core.manifest import read_manifest
from danet_edge.data.preprocess import normalize, resize_image, resize_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx", type=Path, help="a logits graph (float32 NCHW in) with its manifest")
    ap.add_argument("camvid", type=Path, help="CamVid in the SegNet layout")
    ap.add_argument("--images", type=int, default=8)
    args = ap.parse_args()
    import onnxruntime as ort

    m = read_manifest(args.onnx)
    k, off = single_scale_normalisation(m.mean, m.std)
    sess = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    pairs = [line.split() for line in (args.camvid / "val.txt").read_text().splitlines() if line.strip()]
    agree = total = right_exact = right_approx = labelled = 0
    pix = []
    for img_rel, lab_rel in pairs[: args.images]:
        img = np.asarray(Image.open(args.camvid / img_rel.lstrip("/").split("CamVid/")[-1]).convert("RGB"))
        lab = np.asarray(Image.open(args.camvid / lab_rel.lstrip("/").split("CamVid/")[-1]))
        pixels = resize_image(img, m.image_size)[None]
        pix.append(pixels)
        a = sess.run(None, {m.input_name: normalize(pixels, m.mean, m.std)})[0].argmax(1)[0]
        b = sess.run(None, {m.input_name: nvinfer_input(pixels, k, off)})[0].argmax(1)[0]
        lab = resize_labels(lab, m.image_size)
        valid = lab != m.ignore_index
        agree += int((a == b).sum())
        total += a.size
        right_exact += int((a == lab)[valid].sum())
        right_approx += int((b == lab)[valid].sum())
        labelled += int(valid.sum())
    err = normalisation_error(m.mean, m.std, k, off, pixels=np.concatenate(pix))
    print(f"graph {args.onnx} ({m.image_size[0]}x{m.image_size[1]}, {m.num_classes} classes), "
          f"{len(pix)} CamVid val images")
    print(f"net-scale-factor {k:.8f} (= 1/(255 x {1 / (255 * k):.4f})), offsets {[round(o, 3) for o in off]}")
    print(f"normalised-input error on these pixels: max {err['max_abs']:.4f}, mean {err['mean_abs']:.4f}")
    print(f"class-map agreement exact vs nvinfer: {100 * agree / total:.3f} %")
    print(f"pixel accuracy vs labels: exact {100 * right_exact / labelled:.3f} %, "
          f"nvinfer {100 * right_approx / labelled:.3f} %")


if __name__ == "__main__":
    main()
